"""The same context-distillation job run by ctxdistill and by TRL's SDFTTrainer, side by side, in one run.

Job (both sides): the default model, LoRA r=16 / alpha 32 on all linear layers, AdamW lr 2e-3, grad clip 1.0;
each optimizer step samples 8 completions of exactly 96 tokens for 8 different rows, scores them with the teacher
(same weights, adapter off, privileged context in view) and the student (question only), and minimizes TRL's default
SDFT loss: generalized JSD (beta 0.5) on the student's top-100 tokens, renormalized. Contexts (`--contexts`):
- shared: one 129-token fictional document is every row's privileged context (before the question); ours encodes it
  once and reuses its KV cache in every teacher forward and teacher sample;
- per-row: 16 rows, each with a fictional document of its own (about 60 to 200 tokens; benchmarks/trl_sdft.py), in
  TRL's columns `prompt` / `privileged_context` and TRL's default teacher template. Ours reads the same rows as
  `distill onpolicy --data` does (data/per_row.py, recipes/common.per_row_views) and has no prefix to reuse: the
  teacher runs its views in groups of similar length. Both sides take the rows in the same order.
Two settings each:
- student generates (on-policy): samples come from the student without the context;
- teacher generates (off-policy; TRL `generate_from_teacher=True`): samples come from the teacher's view.

Each side runs in a fresh process, so peak RSS is its own; seconds per step leave out the first (warm-up) step.
TRL is a benchmark-only dependency: `pip install -e ".[bench]"`. Run:

    python benchmarks/vs_trl.py [--steps 4] [--contexts shared|per-row|both] [--skip-trl]
                                [--backend torch|llamacpp|both] [--model NAME_OR_DIR]

`--backend llamacpp` samples our side with llama.cpp (docs/generation.md; the student's LoRA swapped in each step).
The last lines are machine-readable, one per contexts setting measured (per-row last), from the first measured row
of each setting (checkpointing off if measured, the first sampler): `VS_TRL <shared|per_row> student=<TRL s/step /
ours s/step> teacher=<same> peak_mb_student=<ours>/<TRL> peak_mb_teacher=<ours>/<TRL>` (`na` without TRL).
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

from trl_sdft import DOCUMENT, QUESTIONS, per_row_dataset  # noqa: E402  (the TRL side's rows, shared)

CONTEXTS = {"shared": ["shared"], "per-row": ["per-row"], "both": ["shared", "per-row"]}


def per_row_views_of(tokenizer, rows: list[dict], completion_tokens: int, window: int) -> list[tuple[list, list]]:
    """(teacher view, student view) token ids of TRL SDFT rows, made as `distill onpolicy --data` makes them: each row
    read by data/per_row.py with onpolicy's default templates, rendered by recipes/common.per_row_views (which refuses
    a row whose teacher view + completion passes the window)."""
    from ctxdistill.config import OnpolicyConfig
    from ctxdistill.data.per_row import Templates, example_of
    from ctxdistill.recipes.common import per_row_views

    templates = Templates.of(OnpolicyConfig())
    examples = [example_of(row, templates, f"benchmark row {n}") for n, row in enumerate(rows, 1)]
    return per_row_views(tokenizer, examples, None, completion_tokens, window, "(the benchmark's per-row rows)")


def job_views(tokenizer, contexts: str, completion_tokens: int, window: int) -> tuple[list[list[int]], list[list[int]]]:
    """(teacher views, student views) of the job's rows: the shared document before each question, or each row's
    own context."""
    from ctxdistill.core.pairs import Context, render_prompt

    if contexts == "shared":  # the document before the question in the user turn, as TRL's template there
        context = Context(DOCUMENT, "prefix")
        return [render_prompt(tokenizer, q, context) for q in QUESTIONS], [render_prompt(tokenizer, q)
                                                                           for q in QUESTIONS]
    views = per_row_views_of(tokenizer, per_row_dataset(), completion_tokens, window)
    return [t for t, _ in views], [s for _, s in views]


def run_ours(steps: int, generate_from_teacher: bool, gradient_checkpointing: bool = False, batch_size: int = 8,
             completion_tokens: int = 96, seed: int = 0, backend: str = "torch", contexts: str = "shared",
             model_name: str = "default") -> dict:
    import torch

    from ctxdistill.config import OnpolicyConfig
    from ctxdistill.core.generation import MergedCopy, generate, make_backend
    from ctxdistill.core.losses import DistillLoss, collate_pairs
    from ctxdistill.core.models import add_lora, bf16_supported, enable_gradient_checkpointing, load_model
    from ctxdistill.core.objectives import Objective
    from ctxdistill.core.pairs import assistant_header, build_pair
    from ctxdistill.core.teacher import Teacher, length_groups
    from ctxdistill.recipes.common import model_window

    torch.manual_seed(seed)
    device = torch.device("cpu")
    model, tok, _ = load_model(model_name, "auto", device)
    student = add_lora(model, r=16, alpha=32, dropout=0.0, targets="all-linear")
    if gradient_checkpointing:
        enable_gradient_checkpointing(student)
    header = assistant_header(tok)
    t_prompts, s_prompts = job_views(tok, contexts, completion_tokens, model_window(model, OnpolicyConfig()))
    teacher = Teacher(student)
    # Shared: the document, a prefix of every teacher view, is encoded once. Per-row: no prefix, so Teacher.states
    # runs the teacher views in groups of similar length (core/teacher.py, states_by_length).
    prefix = teacher.encode_shared_prefix(t_prompts, [len(p) for p in t_prompts]) if contexts == "shared" else None
    loss_fn = DistillLoss(student, teacher, Objective({"jsd": 1.0}, jsd_beta=0.5, top_k=100, support="student"))
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    engine = make_backend("llamacpp", student, tok, base=model_name) if backend == "llamacpp" else None
    sampler = None if generate_from_teacher or engine is not None else MergedCopy(student)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_supported(device))

    step_seconds, gen_seconds, tokens, losses, groups = [], [], [], [], []
    for step in range(steps):
        t0 = time.perf_counter()
        # Rows in order, as the TRL side reads the per-row dataset (shuffle off): both sides see the same rows.
        qs = [(step * batch_size + i) % len(t_prompts) for i in range(batch_size)]
        if engine is not None:  # llama.cpp: the base (teacher) or the student's current LoRA swapped in
            engine.use_lora(None if generate_from_teacher else student)
            ys = engine.generate([(t_prompts if generate_from_teacher else s_prompts)[i] for i in qs],
                                 max_new_tokens=completion_tokens, min_new_tokens=completion_tokens,
                                 temperature=1.0, batch_size=batch_size, show_progress=False)
        elif generate_from_teacher:  # the teacher: base weights (adapter off) with the context
            with student.disable_adapter():
                ys = generate(student, tok, [t_prompts[i] for i in qs], max_new_tokens=completion_tokens,
                              min_new_tokens=completion_tokens, temperature=1.0, batch_size=batch_size,
                              show_progress=False, prefix=prefix)  # shared: the document's KV cache, as the teacher's
        else:  # the current student, adapter folded in, without the context
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
        if prefix is None:  # how many teacher forwards states_by_length runs for this batch
            groups.append(len(length_groups([len(p.teacher_ids) for p in pairs])))
    timed = sum(step_seconds[1:])
    return {"seconds_per_step": timed / (steps - 1), "tokens_per_s": sum(tokens[1:]) / timed,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "generation_seconds_per_step": sum(gen_seconds[1:]) / (steps - 1), "step_seconds": step_seconds,
            "completion_tokens_per_step": tokens, "losses": losses, "teacher_prefix_tokens": len(prefix or []),
            "teacher_prompt_tokens": [min(map(len, t_prompts)), max(map(len, t_prompts))],
            "teacher_length_groups_per_step": groups, "contexts": contexts,
            "dtype": "bf16 autocast" if bf16_supported(device) else "fp32", "backend": backend}


def _child(args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        subprocess.run([sys.executable, *args, "--json-out", str(out)], check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def _ratio(row: dict | None) -> str:
    return f"{row['trl']['seconds_per_step'] / row['ours']['seconds_per_step']:.2f}" if row and row["trl"] else "na"


def _memory(row: dict | None) -> str:
    return f"{row['ours']['peak_rss_mb']:.0f}/{row['trl']['peak_rss_mb']:.0f}" if row and row["trl"] else "na"


def summary_lines(rows: list[dict]) -> list[str]:
    """One machine-readable line per contexts setting, in the order measured: TRL's seconds per step over ours
    (above 1: ours is faster) and peak MB ours/TRL, from the first measured row of each generating setting."""
    lines = []
    for contexts in dict.fromkeys(r["contexts"] for r in rows):
        first = {s: next((r for r in rows if r["contexts"] == contexts and r["setting"] == s), None)
                 for s in ("student", "teacher")}
        lines.append(f"VS_TRL {contexts.replace('-', '_')} student={_ratio(first['student'])} "
                     f"teacher={_ratio(first['teacher'])} peak_mb_student={_memory(first['student'])} "
                     f"peak_mb_teacher={_memory(first['teacher'])}")
    return lines


def table_row(row: dict) -> str:
    ours, trl = row["ours"], row["trl"]
    name = "student generates (on-policy)" if row["setting"] == "student" else "teacher generates (off-policy)"
    head = f"| {row['contexts']} | {name} | {'on' if row['checkpointing'] else 'off'} | {ours['backend']}"
    if trl:
        return (f"{head} | {trl['seconds_per_step']:.2f} | {ours['seconds_per_step']:.2f} | {_ratio(row)}x | "
                f"{trl['tokens_per_s']:.1f} | {ours['tokens_per_s']:.1f} | {trl['peak_rss_mb']:.0f} | "
                f"{ours['peak_rss_mb']:.0f} | {ours['generation_seconds_per_step']:.2f} |")
    return (f"{head} | - | {ours['seconds_per_step']:.2f} | - | - | {ours['tokens_per_s']:.1f} | - | "
            f"{ours['peak_rss_mb']:.0f} | {ours['generation_seconds_per_step']:.2f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per run; the first is warm-up")
    p.add_argument("--skip-trl", action="store_true", help="run the ctxdistill side only")
    p.add_argument("--contexts", choices=list(CONTEXTS), default="both",
                   help="one document shared by every row, a context of its own per row (SDFT's use), or each")
    p.add_argument("--checkpointing", choices=["off", "on", "both"], default="both",
                   help="activation (gradient) checkpointing on both sides; TRL's default is on")
    p.add_argument("--child", choices=["student", "teacher"], help=argparse.SUPPRESS)
    p.add_argument("--gc", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", choices=["torch", "llamacpp", "both"], default="torch",
                   help="who samples on our side: the torch loop, llama.cpp (the llamacpp extra), or each in turn")
    p.add_argument("--model", default="default",
                   help="the model of both sides (a name or a local folder); a tiny one makes a quick smoke run")
    p.add_argument("--json-out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.steps < 2:
        p.error("--steps must be >= 2 (the first step is warm-up)")
    if a.child:
        if a.contexts == "both":
            p.error("a --child run measures one --contexts setting: shared or per-row")
        result = run_ours(a.steps, a.child == "teacher", a.gc, backend=a.backend, contexts=a.contexts,
                          model_name=a.model)
        from ctxdistill.core.files import atomic_write_json

        atomic_write_json(Path(a.json_out), result)
        return
    rows = []
    for contexts in CONTEXTS[a.contexts]:
        for gc in {"off": [False], "on": [True], "both": [False, True]}[a.checkpointing]:
            for setting in ("student", "teacher"):
                ours_runs = [_child([__file__, "--child", setting, "--contexts", contexts, "--steps", str(a.steps),
                                     "--backend", backend, "--model", a.model] + (["--gc"] if gc else []))
                             for backend in (["torch", "llamacpp"] if a.backend == "both" else [a.backend])]
                trl = None
                if not a.skip_trl:
                    trl = _child([str(HERE / "trl_sdft.py"), "--steps", str(a.steps), "--contexts", contexts]
                                 + (["--model", a.model] if a.model != "default" else [])
                                 + (["--generate-from-teacher"] if setting == "teacher" else [])
                                 + (["--gradient-checkpointing"] if gc else []))
                for ours in ours_runs:
                    rows.append({"contexts": contexts, "setting": setting, "checkpointing": gc, "ours": ours,
                                 "trl": trl})
                    print(f"{contexts} contexts, {setting} generates, checkpointing {gc}, {ours['backend']}: ours "
                          f"{ours['seconds_per_step']:.2f} s/step"
                          + (f", TRL {trl['seconds_per_step']:.2f} s/step" if trl else ""), file=sys.stderr,
                          flush=True)
    per_row = next((r["ours"] for r in rows if r["contexts"] == "per-row"), None)
    spans = (f"; per-row teacher prompts of {per_row['teacher_prompt_tokens'][0]}-{per_row['teacher_prompt_tokens'][1]}"
             f" tokens ({len(per_row_dataset())} rows, each its own context)" if per_row else "")
    print(f"\nsteps per run: {a.steps} (first not timed); batch 8 x 96-token completions; ours in "
          f"{rows[0]['ours']['dtype']}, TRL in fp32{spans}\n")
    print("| contexts | setting | checkpointing | our sampler | TRL s/step | ours s/step | speed-up | TRL tok/s "
          "| ours tok/s | TRL peak MB | ours peak MB | ours generation s/step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(table_row(row))
    print()
    for line in summary_lines(rows):
        print(line)


if __name__ == "__main__":
    main()
