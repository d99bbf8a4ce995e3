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
from ctxdistill.objectives import forward_kl, sft
variant, objective, rows, hidden, vocab, dtype = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6]), sys.argv[6]
dt = getattr(torch, dtype)
torch.manual_seed(0)
s_h = (torch.randn(rows, hidden) * 0.5).to(dt).requires_grad_(True)
t_h = (torch.randn(rows, hidden) * 0.5).to(dt)
head = torch.nn.Linear(hidden, vocab, bias=False).to(dt).requires_grad_(False)
labels = torch.randint(0, vocab, (rows,))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.time()
if variant == "ours":
    loss = forward_kl(s_h, head, t_h, head) if objective == "forward_kl" else sft(s_h, head, labels)
else:
    s_logits = (s_h @ head.weight.T).float()
    if objective == "forward_kl":
        t_logp = torch.log_softmax((t_h @ head.weight.T).float(), -1)
        loss = (t_logp.exp() * (t_logp - torch.log_softmax(s_logits, -1))).sum()
    else:
        loss = F.cross_entropy(s_logits, labels, reduction="sum")
loss.backward()
seconds = time.time() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mb": (peak - base) / 1024, "loss": float(loss) / rows}))
"""


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
    print(f"rows={a.rows} hidden={a.hidden} vocab={a.vocab} dtype={a.dtype} (forward + backward)\n")
    print("| objective | ours s | naive s | time ratio | ours peak MB | naive peak MB | memory ratio | loss match |")
    print("|---|---|---|---|---|---|---|---|")
    for objective in ("forward_kl", "sft"):
        ours = measure("ours", objective, a.rows, a.hidden, a.vocab, a.dtype)
        naive = measure("naive", objective, a.rows, a.hidden, a.vocab, a.dtype)
        print(f"| {objective} | {ours['seconds']:.2f} | {naive['seconds']:.2f} | {naive['seconds'] / ours['seconds']:.2f}x "
              f"| {ours['peak_mb']:.0f} | {naive['peak_mb']:.0f} | {naive['peak_mb'] / max(ours['peak_mb'], 1):.1f}x "
              f"| {abs(ours['loss'] - naive['loss']) < 1e-2 * max(1, abs(naive['loss']))} |")


if __name__ == "__main__":
    main()
