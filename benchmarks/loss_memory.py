"""Peak memory and time of the divergence on completion rows: ours (chunked, from hidden states) vs naive logits.

Each variant runs in a fresh subprocess so its peak RSS is its own. Default sizes: batch 8 × 512 completion tokens,
hidden 576, vocab 49,152 (the default model's). Run: python benchmarks/loss_memory.py [--rows 4096]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch, torch.nn.functional as F
from ctxdistill.core.objectives import Objective, TeacherLogits, head_loss
variant, name, rows, hidden, vocab, dtype = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6]), sys.argv[6]
OBJECTIVES = {"forward_kl": Objective({"forward_kl": 1.0}), "reverse_kl": Objective({"reverse_kl": 1.0}),
              "jsd_0.5": Objective({"jsd": 1.0}, jsd_beta=0.5),
              "reverse_kl_top256_student": Objective({"reverse_kl": 1.0}, top_k=256, support="student"),
              "sampled_kl": Objective({"sampled_kl": 1.0}), "sft": Objective({"sft": 1.0})}
dt = getattr(torch, dtype)
torch.manual_seed(0)
s_h = (torch.randn(rows, hidden) * 0.5).to(dt).requires_grad_(True)
t_h = (torch.randn(rows, hidden) * 0.5).to(dt)
head = torch.nn.Linear(hidden, vocab, bias=False).to(dt).requires_grad_(False)
labels = torch.randint(0, vocab, (rows,))


def naive(name):
    # What one writes with full logits: both models' N x V logits, log-softmax in fp32, autograd keeps them all.
    s_logp = torch.log_softmax((s_h @ head.weight.T).float(), -1)
    t_logp = torch.log_softmax((t_h @ head.weight.T).float(), -1)
    if name == "forward_kl":
        return (t_logp.exp() * (t_logp - s_logp)).sum()
    if name == "reverse_kl":
        return (s_logp.exp() * (s_logp - t_logp)).sum()
    if name == "jsd_0.5":
        m = torch.logaddexp(t_logp, s_logp) - torch.log(torch.tensor(2.0))
        return 0.5 * (t_logp.exp() * (t_logp - m)).sum() + 0.5 * (s_logp.exp() * (s_logp - m)).sum()
    if name == "reverse_kl_top256_student":
        idx = s_logp.detach().topk(256, -1).indices
        s_k, t_k = torch.log_softmax(s_logp.gather(-1, idx), -1), torch.log_softmax(t_logp.gather(-1, idx), -1)
        return (s_k.exp() * (s_k - t_k)).sum()
    if name == "sampled_kl":
        s_y, t_y = s_logp.gather(-1, labels[:, None]), t_logp.gather(-1, labels[:, None])
        ratio = (s_y - t_y).detach()
        return (ratio + ratio * (s_y - s_y.detach())).sum()
    return F.nll_loss(s_logp, labels, reduction="sum")


base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.time()
with torch.autocast("cpu", dtype=dt, enabled=dt == torch.bfloat16):
    if variant == "ours":
        loss = head_loss(s_h, head, TeacherLogits(t_h, head), labels, OBJECTIVES[name])
    else:
        loss = naive(name)
loss.backward()
seconds = time.time() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mb": (peak - base) / 1024, "loss": float(loss) / rows}))
"""

NAMES = ("forward_kl", "reverse_kl", "jsd_0.5", "reverse_kl_top256_student", "sampled_kl", "sft")


def measure(variant, objective, rows, hidden, vocab, dtype):
    out = subprocess.run([sys.executable, "-c", CHILD, variant, objective, str(rows), str(hidden), str(vocab), dtype],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=8 * 512)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--dtype", default="bfloat16")
    a = p.parse_args()
    print(f"rows={a.rows} hidden={a.hidden} vocab={a.vocab} dtype={a.dtype} (forward + backward); peak = extra RSS "
          "over the inputs, each variant in its own process\n")
    print("| objective | ours s | naive s | time ratio | ours peak MB | naive peak MB | memory ratio | loss match |")
    print("|---|---|---|---|---|---|---|---|")
    for objective in NAMES:
        ours = measure("ours", objective, a.rows, a.hidden, a.vocab, a.dtype)
        naive = measure("naive", objective, a.rows, a.hidden, a.vocab, a.dtype)
        print(f"| {objective} | {ours['seconds']:.2f} | {naive['seconds']:.2f} "
              f"| {naive['seconds'] / ours['seconds']:.2f}x "
              f"| {ours['peak_mb']:.0f} | {naive['peak_mb']:.0f} | {naive['peak_mb'] / max(ours['peak_mb'], 1):.1f}x "
              f"| {abs(ours['loss'] - naive['loss']) < 1e-2 * max(1, abs(naive['loss']))} |")


if __name__ == "__main__":
    main()
