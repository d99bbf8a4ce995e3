"""Experiential knowledge: the model solves tasks, writes notes from its own traces, keeps the notes that help most,
and consolidates them into weights with the onpolicy recipe.

1. tasks ({"prompt", "answer"}) are split (seeded) into train / select / test;
2. the model answers the train tasks (greedy); a checker marks each trace right or wrong;
3. shown a handful of its traces at a time, the model writes `experience_candidates` sets of short notes (what
   worked, what failed), sampled;
4. each candidate set is placed in context (system prompt) on the select tasks; the best-scoring set is kept;
5. the kept notes are consolidated with `onpolicy` (the notes as context, the train tasks as queries);
6. the report: test accuracy without notes, with the notes in context, and after consolidation without notes.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from ctxdistill import CtxDistillError
from ctxdistill.config import DistillConfig
from ctxdistill.core.files import atomic_write_json, atomic_write_text, read_jsonl, write_jsonl
from ctxdistill.core.generation import generate
from ctxdistill.core.models import load_adapter, load_model
from ctxdistill.core.pairs import Context, render_prompt
from ctxdistill.eval.checkers import load_checker
from ctxdistill.eval.evaluation import answers
from ctxdistill.recipes import onpolicy
from ctxdistill.recipes.common import make_accelerator, prepare_out_dir

NOTES_PROMPT = (
    "You solved some tasks. Here are your attempts and whether each was right:\n\n{traces}\n\n"
    "Write at most {max_notes} short notes that would help you solve similar tasks next time: what worked, what "
    "went wrong, and how to avoid it. One note per line, starting with '- '."
)


def read_tasks(path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise CtxDistillError(f"Tasks file not found: {p}. Pass a .jsonl of {{\"prompt\", \"answer\"}} to --tasks.")
    rows = read_jsonl(p, "--tasks")
    bad = [n for n, r in enumerate(rows, 1) if not (isinstance(r, dict) and isinstance(r.get("prompt"), str)
                                                     and isinstance(r.get("answer"), (str, int, float)))]
    if bad:
        raise CtxDistillError(f"{p}: line(s) {bad[:5]} need a string \"prompt\" and an \"answer\".")
    if len(rows) < 6:
        raise CtxDistillError(f"{p} has {len(rows)} tasks; experience needs at least 6 (train, select and test "
                              "splits).")
    return [{"prompt": r["prompt"], "answer": str(r["answer"])} for r in rows]


def split_tasks(tasks: list[dict], seed: int, select_fraction: float, test_fraction: float):
    order = list(range(len(tasks)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(test_fraction * len(tasks)))
    n_select = max(1, round(select_fraction * len(tasks)))
    test = [tasks[i] for i in order[:n_test]]
    select = [tasks[i] for i in order[n_test:n_test + n_select]]
    train = [tasks[i] for i in order[n_test + n_select:]]
    return train, select, test


def clean_notes(text: str, max_notes: int) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    notes = [ln if ln.startswith("- ") else "- " + ln.lstrip("-*• ") for ln in lines]
    return "\n".join(dict.fromkeys(notes[:max_notes]))


def run(cfg: DistillConfig, tasks_file: str, out_dir: str, checker: str = "exact", resume: bool = False) -> dict:
    t_start = time.time()
    tasks = read_tasks(tasks_file)
    check = load_checker(checker)
    out = Path(out_dir)
    accelerator = make_accelerator(cfg)
    prepare_out_dir(accelerator, out, resume)
    if accelerator.num_processes > 1:
        raise CtxDistillError("experience runs in one process; launch it without accelerate's multi-process mode.")
    train, select, test = split_tasks(tasks, cfg.seed, cfg.select_fraction, cfg.test_fraction)
    if not train:
        raise CtxDistillError("No tasks left for the train split; add tasks or lower select/test_fraction.")
    model, tokenizer, _ = load_model(cfg.model, cfg.dtype, accelerator.device)

    def accuracy(model_, items, notes: str | None, adapter: bool = False) -> tuple[int, list[str]]:
        context = Context(notes, "system") if notes else None
        got = answers(model_, tokenizer, [t["prompt"] for t in items], context, adapter, cfg.eval_max_new_tokens)
        return sum(check(t["prompt"], g, t["answer"]) for t, g in zip(items, got)), got

    # 1-2. Traces on the train split.
    n_right, responses = accuracy(model, train, None)
    traces = [{"prompt": t["prompt"], "response": r, "answer": t["answer"], "correct": check(t["prompt"], r,
                                                                                             t["answer"])}
              for t, r in zip(train, responses)]
    write_jsonl(out / "traces.jsonl", traces)

    # 3. Candidate note sets, each written from its own sample of traces (right and wrong ones mixed).
    rng = random.Random(cfg.seed)
    prompts = []
    for _ in range(cfg.experience_candidates):
        shown = rng.sample(traces, min(cfg.traces_per_note, len(traces)))
        listing = "\n\n".join(f"Task: {x['prompt']}\nYour answer: {x['response'][:300]}\n"
                              f"{'Right' if x['correct'] else 'Wrong; the answer was ' + x['answer']}."
                              for x in shown)
        prompts.append(render_prompt(tokenizer, NOTES_PROMPT.format(traces=listing, max_notes=cfg.max_notes)))
    outs = generate(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.sample_temperature,
                    batch_size=cfg.gen_batch_size, seed=cfg.seed, desc="writing notes")
    candidates = [c for c in dict.fromkeys(clean_notes(tokenizer.decode(y, skip_special_tokens=True), cfg.max_notes)
                                           for y in outs) if c]
    if not candidates:
        raise CtxDistillError("The model wrote no usable notes; raise max_new_tokens or experience_candidates.")

    # 4. Keep the set that scores best on the select split, in context.
    scored = [{"notes": c, "select_correct": accuracy(model, select, c)[0]} for c in candidates]
    best = max(scored, key=lambda s: s["select_correct"])
    atomic_write_json(out / "notes.json", {"context": best["notes"], "prompts": [t["prompt"] for t in train],
                                           "candidates": scored})

    # 5. Consolidate the kept notes with onpolicy.
    base_test, base_answers = accuracy(model, test, None)
    notes_test, notes_answers = accuracy(model, test, best["notes"])
    del model
    summary = onpolicy.run(cfg, str(out / "notes.json"), None, str(out / "consolidated"), resume=resume)
    model, tokenizer, _ = load_model(cfg.model, cfg.dtype, accelerator.device)
    student = load_adapter(model, str(out / "consolidated" / "adapter"))
    student.eval()
    after_test, after_answers = accuracy(student, test, None, adapter=True)

    # 6. Report.
    n = len(test)
    result = {"splits": {"train": len(train), "select": len(select), "test": n}, "checker": checker,
              "train_correct_without_notes": n_right,
              "test_accuracy": {"without_notes": base_test, "notes_in_context": notes_test,
                                "consolidated_without_notes": after_test},
              "notes": best["notes"], "candidates": len(candidates),
              "seconds": round(time.time() - t_start, 1),
              "consolidation": {k: summary.get("metrics", {}).get(k) for k in ("train_steps", "train_seconds",
                                                                              "generation_seconds")},
              "answers": [{"prompt": t["prompt"], "answer": t["answer"], "without_notes": a, "notes_in_context": b,
                           "consolidated": c} for t, a, b, c in zip(test, base_answers, notes_answers, after_answers)]}
    atomic_write_json(out / "experience.json", result)
    table = "\n".join(["| model | notes in context | test accuracy |", "|---|---|---|",
                       f"| base | no | {base_test}/{n} |", f"| base | yes | {notes_test}/{n} |",
                       f"| consolidated (onpolicy) | no | {after_test}/{n} |"])
    notes_md = best["notes"].replace("\n", "\n    ")
    atomic_write_text(out / "report.md", "\n".join([
        "# experience: notes from the model's own traces, consolidated", "",
        f"- tasks: {len(train)} train, {len(select)} select, {n} test; checker `{checker}`",
        f"- the model solved {n_right}/{len(train)} train tasks without notes; {len(candidates)} candidate note "
        f"sets, the kept one solved {best['select_correct']}/{len(select)} select tasks in context", "",
        table, "", "## Kept notes", "", "    " + notes_md, ""]))
    return {"table": table, **result}
