"""fp32 vs bf16 for one distillation training step on the default model: time, peak memory, and loss agreement.

Modes (each in a fresh process): fp32 weights without autocast; fp32 weights under bf16 autocast (what full
fine-tuning uses: fp32 master weights); bf16 weights under bf16 autocast (what LoRA uses: the frozen base in bf16).
The softmax/KL reductions are fp32 in every mode. Job: LoRA r=16 all linear layers, batch 8, 96-token completions,
a 129-token document as the teacher's context, forward KL on the full vocabulary. Run:

    python benchmarks/precision.py [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from trl_sdft import DOCUMENT, QUESTIONS  # noqa: E402

MODES = {"fp32": ("float32", False), "fp32 weights + bf16 autocast": ("float32", True),
         "bf16 weights + bf16 autocast": ("bfloat16", True)}


def run(mode: str, steps: int) -> dict:
    import torch

    from ctxdistill.core.losses import DistillLoss, collate_pairs
    from ctxdistill.core.models import add_lora, load_model
    from ctxdistill.core.pairs import Context, assistant_header, build_pair, render_prompt
    from ctxdistill.core.teacher import Teacher

    weights, autocast = MODES[mode]
    torch.manual_seed(0)
    model, tok, _ = load_model("default", weights, torch.device("cpu"))
    student = add_lora(model, r=16, alpha=32)
    context, header = Context(DOCUMENT, "prefix"), assistant_header(tok)
    g = torch.Generator().manual_seed(0)
    pairs = [build_pair(render_prompt(tok, q, context), render_prompt(tok, q),
                        torch.randint(100, 20000, (96,), generator=g).tolist(), header) for q in QUESTIONS[:8]]
    batch = collate_pairs(pairs, tok.pad_token_id)
    teacher = Teacher(student)
    teacher.encode_shared_prefix([p.teacher_ids for p in pairs], [p.teacher_prompt_len for p in pairs])
    loss_fn = DistillLoss(student, teacher)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    times, losses = [], []
    student.train()
    for _ in range(steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss, _ = loss_fn(batch)
        (loss / 768).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()) / 768)
    return {"seconds_per_step": sum(times[1:]) / (steps - 1), "first_loss": losses[0], "losses": losses,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(run(a.child, a.steps)))
        return
    results = {}
    for mode in MODES:
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--steps", str(a.steps)],
                             capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    ref = results["fp32"]
    print("| mode | s/step | speed-up vs fp32 | peak MB | first-step loss | rel. diff vs fp32 |")
    print("|---|---|---|---|---|---|")
    for mode, r in results.items():
        print(f"| {mode} | {r['seconds_per_step']:.2f} | {ref['seconds_per_step'] / r['seconds_per_step']:.2f}x | "
              f"{r['peak_rss_mb']:.0f} | {r['first_loss']:.5f} | "
              f"{abs(r['first_loss'] - ref['first_loss']) / ref['first_loss']:.2%} |")


if __name__ == "__main__":
    main()
