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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ctxdistill import CtxDistillError
from ctxdistill.config import ExperienceConfig, OnpolicyConfig
from ctxdistill.core.files import atomic_write_json, atomic_write_text, read_jsonl, write_jsonl
from ctxdistill.core.generation import TorchBackend, chosen_engine
from ctxdistill.core.models import load_adapter, load_model
from ctxdistill.core.pairs import Context, render_prompt
from ctxdistill.core.tracking import end_trackers, log_evaluation
from ctxdistill.data import hf_datasets
from ctxdistill.eval.checkers import load_checker, validate_checker
from ctxdistill.eval.evaluation import answers, one_lora_adapter
from ctxdistill.recipes import onpolicy
from ctxdistill.recipes.base import Recipe, RunResult
from ctxdistill.recipes.common import make_accelerator, prepare_out_dir, start_tracking

NOTES_PROMPT = (
    "You solved some tasks. Here are your attempts and whether each was right:\n\n{traces}\n\n"
    "Write at most {max_notes} short notes that would help you solve similar tasks next time: what worked, what "
    "went wrong, and how to avoid it. One note per line, starting with '- '."
)
ARTIFACTS = ["notes.json", "traces.jsonl", "consolidated", "report.md"]


def read_tasks(path, columns=None) -> list[dict]:
    """A .jsonl of {"prompt", "answer"}; or a dataset, or .jsonl rows in another shape, mapped by `columns`
    ({"prompt": ..., "answer": ..., "split": ...}; see hf_datasets)."""
    p = Path(path)
    if hf_datasets.is_dataset(path):
        rows = hf_datasets.tasks_of(hf_datasets.load_table(path, "--tasks", columns), columns)
    elif not p.is_file():
        raise CtxDistillError(f"Tasks file not found: {p}. Pass a .jsonl of {{\"prompt\", \"answer\"}} to --tasks.")
    else:
        rows = read_jsonl(p, "--tasks")
    if hf_datasets.foreign_rows(rows, ("prompt",)):
        table = hf_datasets.rows_table(rows, p, "--tasks", '{"prompt": ..., "answer": ...} per line')
        rows = hf_datasets.tasks_of(table, columns)
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


@dataclass
class Experience:
    """What the steps share: the splits, the model that solves the tasks and the rule that checks the answers."""

    cfg: ExperienceConfig
    out: Path
    checker: str
    check: Callable[[str, str, str], bool]
    train: list[dict]
    select: list[dict]
    test: list[dict]
    device: object
    model: object | None  # None while the consolidation run holds its own copy
    tokenizer: object
    backend: object = None  # llama.cpp where generation_backend resolves to it (open_engine); None: the torch loop
    answered_by: dict = field(default_factory=dict)  # each test row's backend, for experience.json

    def solve(self, items: list[dict], notes: str | None = None, model=None, adapter: bool = False):
        """(correct answers, the answers) on `items`, with the notes as the system prompt if given."""
        context = Context(notes, "system") if notes else None
        got = answers(model if model is not None else self.model, self.tokenizer, [t["prompt"] for t in items],
                      context, adapter, self.cfg.eval_max_new_tokens, self.backend)
        return sum(self.check(t["prompt"], g, t["answer"]) for t, g in zip(items, got)), got

    def open_engine(self, model) -> None:
        """llama.cpp over `model`'s base weights where generation_backend resolves to it: it writes the traces and
        the notes and answers every test row, so the three rows of the report come from one backend."""
        self.backend = chosen_engine(self.cfg.generation_backend, model, self.tokenizer, base=self.cfg.model,
                                     device=self.device, outtype=self.cfg.llamacpp_outtype)
        if self.backend is not None:
            print(f"Traces, notes and answers by llama.cpp ({self.cfg.llamacpp_outtype} GGUF of the base; "
                  f"generation_backend={self.cfg.generation_backend}).", flush=True)

    def close_engine(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    @property
    def backend_name(self) -> str:
        return self.backend.name if self.backend is not None else "torch"


def open_experience(cfg: ExperienceConfig, out: Path, resume: bool, tasks: str | None, checker: str,
                    columns=None) -> Experience:
    if not tasks:
        raise CtxDistillError('experience learns from tasks: pass --tasks FILE (a .jsonl of {"prompt", "answer"}).')
    rows = read_tasks(tasks, columns)
    check = load_checker(checker)
    validate_checker(checker, check, rows, tasks)
    accelerator = make_accelerator(cfg)
    prepare_out_dir(accelerator, out, resume)
    if accelerator.num_processes > 1:
        raise CtxDistillError("experience runs in one process; launch it without accelerate's multi-process mode.")
    train, select, test = split_tasks(rows, cfg.seed, cfg.select_fraction, cfg.test_fraction)
    if not train:
        raise CtxDistillError("No tasks left for the train split; add tasks or lower select/test_fraction.")
    model, tokenizer, _ = load_model(cfg.model, cfg.dtype, accelerator.device)
    x = Experience(cfg, out, checker, check, train, select, test, accelerator.device, model, tokenizer)
    x.open_engine(model)
    return x


def collect_traces(x: Experience) -> list[dict]:
    """The model's own answers to the train tasks (greedy), each marked right or wrong."""
    _, responses = x.solve(x.train)
    traces = [{"prompt": t["prompt"], "response": r, "answer": t["answer"],
               "correct": x.check(t["prompt"], r, t["answer"])} for t, r in zip(x.train, responses)]
    write_jsonl(x.out / "traces.jsonl", traces)
    return traces


def write_candidates(x: Experience, traces: list[dict]) -> list[str]:
    """Candidate note sets, each written from its own sample of traces (right and wrong ones mixed)."""
    cfg, rng, prompts = x.cfg, random.Random(x.cfg.seed), []
    for _ in range(cfg.experience_candidates):
        shown = rng.sample(traces, min(cfg.traces_per_note, len(traces)))
        listing = "\n\n".join(f"Task: {t['prompt']}\nYour answer: {t['response'][:300]}\n"
                               f"{'Right' if t['correct'] else 'Wrong; the answer was ' + t['answer']}."
                               for t in shown)
        prompts.append(render_prompt(x.tokenizer, NOTES_PROMPT.format(traces=listing, max_notes=cfg.max_notes)))
    outs = (x.backend or TorchBackend(x.model, x.tokenizer)).generate(
        prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.sample_temperature, batch_size=cfg.gen_batch_size,
        seed=cfg.seed, desc="writing notes")
    candidates = [c for c in dict.fromkeys(clean_notes(x.tokenizer.decode(y, skip_special_tokens=True),
                                                       cfg.max_notes) for y in outs) if c]
    if not candidates:
        raise CtxDistillError("The model wrote no usable notes; raise max_new_tokens or experience_candidates.")
    return candidates


def keep_best(x: Experience, candidates: list[str]) -> dict:
    """The set that scores best on the select split, in context; written as the consolidation's context file."""
    scored = [{"notes": c, "select_correct": x.solve(x.select, c)[0]} for c in candidates]
    best = max(scored, key=lambda s: s["select_correct"])
    atomic_write_json(x.out / "notes.json", {"context": best["notes"], "prompts": [t["prompt"] for t in x.train],
                                             "candidates": scored})
    return best


def consolidate(x: Experience, resume: bool) -> tuple[dict, tuple[int, list[str]]]:
    """The kept notes into weights with onpolicy (the notes as context, the train tasks as queries); returns its
    metrics and the test score of the consolidated model without notes."""
    x.model = None  # the onpolicy run loads its own copy: do not hold two
    used = x.backend_name
    x.close_engine()  # nor two engines
    onpolicy_cfg = OnpolicyConfig(**{k: v for k, v in x.cfg.to_dict().items() if k in OnpolicyConfig.model_fields})
    done = onpolicy.run(onpolicy_cfg, str(x.out / "consolidated"), resume, context=[str(x.out / "notes.json")])
    model, _, _ = load_model(x.cfg.model, x.cfg.dtype, x.device)
    student = load_adapter(model, str(x.out / "consolidated" / "adapter"))
    student.eval()
    if used != "torch" and one_lora_adapter(student):
        x.open_engine(model)  # the base's GGUF is cached: loaded again, not written again
    elif used != "torch":
        print("The consolidated model is not one LoRA adapter: its test row is answered by the torch loop.",
              flush=True)
    try:
        x.answered_by["consolidated"] = x.backend_name
        return done.metrics, x.solve(x.test, None, student, adapter=True)
    finally:
        x.close_engine()


def write_outputs(x: Experience, traces: list[dict], n_candidates: int, best: dict, scores: dict,
                  consolidation: dict, t_start: float) -> RunResult:
    """experience.json (every test answer of the three rows) and the report."""
    (base, base_answers), (with_notes, notes_answers), (after, after_answers) = scores.values()
    n, n_right = len(x.test), sum(t["correct"] for t in traces)
    result = {"splits": {"train": len(x.train), "select": len(x.select), "test": n}, "checker": x.checker,
              "train_correct_without_notes": n_right,
              "test_accuracy": {"without_notes": base, "notes_in_context": with_notes,
                                "consolidated_without_notes": after},
              "eval_backend": x.answered_by,
              "notes": best["notes"], "candidates": n_candidates, "seconds": round(time.time() - t_start, 1),
              "consolidation": {k: consolidation.get(k) for k in ("train_steps", "train_seconds",
                                                                 "generation_seconds")},
              "answers": [{"prompt": t["prompt"], "answer": t["answer"], "without_notes": a, "notes_in_context": b,
                           "consolidated": c} for t, a, b, c in zip(x.test, base_answers, notes_answers,
                                                                    after_answers)]}
    atomic_write_json(x.out / "experience.json", result)
    table = "\n".join(["| model | notes in context | test accuracy |", "|---|---|---|",
                       f"| base | no | {base}/{n} |", f"| base | yes | {with_notes}/{n} |",
                       f"| consolidated (onpolicy) | no | {after}/{n} |"])
    notes_md = best["notes"].replace("\n", "\n    ")
    atomic_write_text(x.out / "report.md", "\n".join([
        "# experience: notes from the model's own traces, consolidated", "",
        f"- tasks: {len(x.train)} train, {len(x.select)} select, {n} test; checker `{x.checker}`",
        f"- the model solved {n_right}/{len(x.train)} train tasks without notes; {n_candidates} candidate note "
        f"sets, the kept one solved {best['select_correct']}/{len(x.select)} select tasks in context", "",
        table, "", "## Kept notes", "", "    " + notes_md, ""]))
    return RunResult(x.out, ARTIFACTS, result, table)


def run(cfg: ExperienceConfig, out: str, resume: bool = False, *, tasks: str | None = None,
        checker: str | None = "exact", columns=None) -> RunResult:
    t_start = time.time()
    x = open_experience(cfg, Path(out), resume, tasks, checker or "exact", columns)
    traces = collect_traces(x)
    candidates = write_candidates(x, traces)
    best = keep_best(x, candidates)
    scores = {"without_notes": x.solve(x.test), "notes_in_context": x.solve(x.test, best["notes"])}
    x.answered_by.update({row: x.backend_name for row in scores})
    consolidation, scores["consolidated"] = consolidate(x, resume)
    done = write_outputs(x, traces, len(candidates), best, scores, consolidation, t_start)
    log_test_accuracy(cfg, x.out, done.metrics)
    return done


def log_test_accuracy(cfg: ExperienceConfig, out: Path, result: dict) -> None:
    """The three test rows to the trackers of report_to (OUT/logs), at the consolidation's last step. Started only
    now: the consolidation run (OUT/consolidated) has closed its own trackers, so two W&B runs never overlap."""
    if cfg.report_to == "none":
        return
    accelerator = make_accelerator(cfg, out)
    start_tracking(accelerator, cfg, out)
    log_evaluation(accelerator, {"n": result["splits"]["test"], "accuracy": result["test_accuracy"]},
                   step=result["consolidation"]["train_steps"] or 0)
    end_trackers(accelerator)


RECIPES = [Recipe("experience", "solve tasks, write notes from the model's own traces, keep the best set and "
                                "consolidate it into weights on-policy", ExperienceConfig, ("tasks", "checker"), run)]
