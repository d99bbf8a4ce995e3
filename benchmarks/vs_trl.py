"""The same context-distillation job run by ctxdistill and by TRL's SDFTTrainer, side by side, in one run.

Job (both sides): the default model, LoRA r=16 / alpha 32 on all linear layers, AdamW lr 2e-3, grad clip 1.0;
each optimizer step samples 8 completions of exactly 96 tokens for 8 different questions about a 129-token
fictional document (the privileged context), scores them with the teacher (same weights, adapter off, document in
context) and the student (question only), and minimizes TRL's default SDFT loss: generalized JSD (beta 0.5) on the
student's top-100 tokens, renormalized. Two settings:
- student generates (on-policy): samples come from the student without the document;
- teacher generates (off-policy; TRL `generate_from_teacher=True`): samples come from the document-conditioned prompt.

Each side runs in a fresh process, so peak RSS is its own; seconds per step leave out the first (warm-up) step.
TRL is a benchmark-only dependency: `pip install -e ".[bench]"`. Run:

    python benchmarks/vs_trl.py [--steps 4] [--skip-trl] [--backend torch|llamacpp|both]

`--backend llamacpp` samples our side with llama.cpp (docs/generation.md; the student's LoRA swapped in each step).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from trl_sdft import DOCUMENT, QUESTIONS  # noqa: E402  (the TRL side's document and questions, shared)


def run_ours(steps: int, generate_from_teacher: bool, gradient_checkpointing: bool = False, batch_size: int = 8,
             completion_tokens: int = 96, seed: int = 0, backend: str = "torch") -> dict:
    import torch

    from ctxdistill.core.generation import MergedCopy, generate, make_backend
    from ctxdistill.core.losses import DistillLoss, collate_pairs
    from ctxdistill.core.models import add_lora, bf16_supported, enable_gradient_checkpointing, load_model
    from ctxdistill.core.objectives import Objective
    from ctxdistill.core.pairs import Context, assistant_header, build_pair, render_prompt
    from ctxdistill.core.teacher import Teacher

    torch.manual_seed(seed)
    device = torch.device("cpu")
    model, tok, _ = load_model("default", "auto", device)
    student = add_lora(model, r=16, alpha=32, dropout=0.0, targets="all-linear")
    if gradient_checkpointing:
        enable_gradient_checkpointing(student)
    context = Context(DOCUMENT, "prefix")  # the document before the question in the user turn, as TRL's template
    header = assistant_header(tok)
    t_prompts = [render_prompt(tok, q, context) for q in QUESTIONS]
    s_prompts = [render_prompt(tok, q) for q in QUESTIONS]
    teacher = Teacher(student)
    prefix = teacher.encode_shared_prefix(t_prompts, [len(p) for p in t_prompts])
    loss_fn = DistillLoss(student, teacher, Objective({"jsd": 1.0}, jsd_beta=0.5, top_k=100, support="student"))
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    engine = make_backend("llamacpp", student, tok, base="default") if backend == "llamacpp" else None
    sampler = None if generate_from_teacher or engine is not None else MergedCopy(student)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_supported(device))

    step_seconds, gen_seconds, tokens, losses = [], [], [], []
    for step in range(steps):
        t0 = time.perf_counter()
        qs = [(step * batch_size + i) % len(QUESTIONS) for i in range(batch_size)]
        if engine is not None:  # llama.cpp: the base (teacher) or the student's current LoRA swapped in
            engine.use_lora(None if generate_from_teacher else student)
            ys = engine.generate([(t_prompts if generate_from_teacher else s_prompts)[i] for i in qs],
                                 max_new_tokens=completion_tokens, min_new_tokens=completion_tokens,
                                 temperature=1.0, batch_size=batch_size, show_progress=False)
        elif generate_from_teacher:  # the teacher: base weights (adapter off) with the document
            with student.disable_adapter():
                ys = generate(student, tok, [t_prompts[i] for i in qs], max_new_tokens=completion_tokens,
                              min_new_tokens=completion_tokens, temperature=1.0, batch_size=batch_size,
                              show_progress=False, prefix=prefix)  # the document's KV cache, as the teacher's
        else:  # the current student, adapter folded in, without the document
            ys = generate(sampler.model, tok, [s_prompts[i] for i in qs], max_new_tokens=completion_tokens,
                          min_new_tokens=completion_tokens, temperature=1.0, batch_size=batch_size,
                          show_progress=False)
        t_gen = time.perf_counter() - t0
        pairs = [build_pair(t_prompts[i], s_prompts[i], y, header) for i, y in zip(qs, ys)]
        n_tokens = sum(p.completion_len for p in pairs)
        student.train()
        with autocast:
            loss, _ = loss_fn(collate_pairs(pairs, tok.pad_token_id))
        (loss / n_tokens).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if sampler is not None:
            sampler.sync()
        step_seconds.append(time.perf_counter() - t0)
        gen_seconds.append(t_gen)
        tokens.append(n_tokens)
        losses.append(float(loss.detach()) / n_tokens)
    timed = sum(step_seconds[1:])
    return {"seconds_per_step": timed / (steps - 1), "tokens_per_s": sum(tokens[1:]) / timed,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "generation_seconds_per_step": sum(gen_seconds[1:]) / (steps - 1), "step_seconds": step_seconds,
            "completion_tokens_per_step": tokens, "losses": losses, "teacher_prefix_tokens": len(prefix or []),
            "dtype": "bf16 autocast" if bf16_supported(device) else "fp32", "backend": backend}


def _child(args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        subprocess.run([sys.executable, *args, "--json-out", str(out)], check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per run; the first is warm-up")
    p.add_argument("--skip-trl", action="store_true", help="run the ctxdistill side only")
    p.add_argument("--checkpointing", choices=["off", "on", "both"], default="both",
                   help="activation (gradient) checkpointing on both sides; TRL's default is on")
    p.add_argument("--child", choices=["student", "teacher"], help=argparse.SUPPRESS)
    p.add_argument("--gc", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", choices=["torch", "llamacpp", "both"], default="torch",
                   help="who samples on our side: the torch loop, llama.cpp (the llamacpp extra), or each in turn")
    p.add_argument("--json-out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.steps < 2:
        p.error("--steps must be >= 2 (the first step is warm-up)")
    if a.child:
        Path(a.json_out).write_text(json.dumps(run_ours(a.steps, a.child == "teacher", a.gc, backend=a.backend)))
        return
    rows = []
    for gc in {"off": [False], "on": [True], "both": [False, True]}[a.checkpointing]:
        for setting in ("student", "teacher"):
            ours_runs = [_child([__file__, "--child", setting, "--steps", str(a.steps), "--backend", backend]
                                + (["--gc"] if gc else []))
                         for backend in (["torch", "llamacpp"] if a.backend == "both" else [a.backend])]
            trl = None
            if not a.skip_trl:
                trl = _child([str(HERE / "trl_sdft.py"), "--steps", str(a.steps)]
                             + (["--generate-from-teacher"] if setting == "teacher" else [])
                             + (["--gradient-checkpointing"] if gc else []))
            for ours in ours_runs:
                rows.append((setting, gc, ours, trl))
                print(f"{setting} generates, checkpointing {gc}, {ours['backend']}: ours "
                      f"{ours['seconds_per_step']:.2f} s/step"
                      + (f", TRL {trl['seconds_per_step']:.2f} s/step" if trl else ""), file=sys.stderr, flush=True)
    print(f"\nsteps per run: {a.steps} (first not timed); batch 8 x 96-token completions; ours in "
          f"{rows[0][2]['dtype']}, TRL in fp32\n")
    print("| setting | checkpointing | our sampler | TRL s/step | ours s/step | speed-up | TRL tok/s | ours tok/s | TRL peak MB "
          "| ours peak MB "
          "| ours generation s/step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for setting, gc, ours, trl in rows:
        name = "student generates (on-policy)" if setting == "student" else "teacher generates (off-policy)"
        name += f" | {'on' if gc else 'off'} | {ours['backend']}"
        if trl:
            print(f"| {name} | {trl['seconds_per_step']:.2f} | {ours['seconds_per_step']:.2f} | "
                  f"{trl['seconds_per_step'] / ours['seconds_per_step']:.2f}x | {trl['tokens_per_s']:.1f} | "
                  f"{ours['tokens_per_s']:.1f} | {trl['peak_rss_mb']:.0f} | {ours['peak_rss_mb']:.0f} | "
                  f"{ours['generation_seconds_per_step']:.2f} |")
        else:
            print(f"| {name} | - | {ours['seconds_per_step']:.2f} | - | - | {ours['tokens_per_s']:.1f} | - | "
                  f"{ours['peak_rss_mb']:.0f} | {ours['generation_seconds_per_step']:.2f} |")


if __name__ == "__main__":
    main()
