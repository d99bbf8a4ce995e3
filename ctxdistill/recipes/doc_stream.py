"""Learning a stream of documents: the shared loop of DiSC and its fine-tuning baselines.

Documents arrive in order, in batches (one batch of all documents unless streaming). For each batch the method turns
every document into pairs (fresh ones each epoch), one optimizer step per document; after each batch the model is
evaluated: closed-book QA on the documents seen so far, and retention (general questions, KL to the initial model).
The points form a curve: knowledge learned vs what was kept.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

from ctxdistill import CtxDistillError
from ctxdistill.config import DiscConfig, FinetuneConfig
from ctxdistill.core.files import atomic_write_text, read_jsonl, write_jsonl
from ctxdistill.core.losses import DistillLoss, collate_pairs
from ctxdistill.core.objectives import Objective
from ctxdistill.core.pairs import Context, Pair
from ctxdistill.core.teacher import Teacher
from ctxdistill.core.tracking import end_trackers, log_evaluation
from ctxdistill.core.training import TrainResult, total_steps_for, train
from ctxdistill.data.documents import Document, gather_qa, read_documents
from ctxdistill.data.inputs import read_retention
from ctxdistill.data.splits import TokenizedDoc, tokenize_document
from ctxdistill.eval.evaluation import DriftProbe, answers, score
from ctxdistill.eval.reports import planned_note
from ctxdistill.recipes.artifacts import save_trained, sha256_text, write_manifest
from ctxdistill.recipes.base import RunResult
from ctxdistill.recipes.common import (budget_deadline, check_data_inputs, fingerprint, make_student, model_window,
                                       open_run, share_budget, train_settings, training_fingerprint_config)

DocConfig = DiscConfig | FinetuneConfig  # the baselines' configs are FinetuneConfig or subclasses of it
DOC_INPUTS = ("docs", "qa", "retention", "stream")  # what every document recipe takes
CURVE = "curve.jsonl"


@dataclass
class DocMethod:
    """What a recipe contributes: how a document becomes pairs, and what the student minimizes on them."""

    name: str
    title: str
    pairs_for: Callable[[TokenizedDoc, random.Random, int], list[Pair]]  # (doc, rng, window) → one step's pairs
    objective: Objective


@dataclass
class DocStep:
    """One optimizer step: the pairs of one document in one epoch."""

    doc: str
    pairs: list[Pair]


@dataclass
class StreamInputs:
    """What a run reads before any model is loaded, so a bad file fails fast."""

    documents: list[Document]
    qa_by_doc: dict[str, list[dict]]  # document id (or "*": about the whole corpus) -> its questions
    retention: list[dict]
    stream: bool


@dataclass
class StreamRun:
    """What the steps of one run share; each step fills in the fields after `inputs`, in order."""

    cfg: DocConfig
    method: DocMethod
    out: Path
    resume: bool
    t_start: float
    inputs: StreamInputs
    accelerator: Any
    model: Any
    tokenizer: Any
    base_path: str
    window: int
    used: list[TokenizedDoc] = field(default_factory=list)
    skipped: list[TokenizedDoc] = field(default_factory=list)
    batches: list[list[TokenizedDoc]] = field(default_factory=list)
    all_qa: list[tuple[str, dict]] = field(default_factory=list)  # (document id or "*", question) of used documents
    reference: dict = field(default_factory=dict)  # the initial model's answers: closed_book, open_book
    probe: DriftProbe | None = None
    student: Any = None
    loss_module: DistillLoss | None = None
    curve: list[dict] = field(default_factory=list)
    results: list[TrainResult] = field(default_factory=list)

    @property
    def texts(self) -> dict[str, str]:
        return {d.id: d.text for d in self.inputs.documents}

    @property
    def questions(self) -> list[str]:
        return [x["q"] for _, x in self.all_qa]


def run_stream(cfg: DocConfig, method: DocMethod, out: str, resume: bool = False, *, docs: str | None = None,
               qa: str | None = None, retention: str | None = None, stream: bool = False,
               columns: dict | None = None) -> RunResult | None:
    """The method learns the documents batch by batch, evaluated after each; the result on the main process.
    `columns`: the dataset columns of inputs given as datasets, and their split (see data/hf_datasets.py)."""
    t_start = time.time()
    inputs = read_inputs(method.name, docs, qa, retention, stream, columns)
    run = set_up(cfg, method, Path(out), resume, inputs, t_start)
    if run.accelerator.is_main_process:  # before OUT/curve.jsonl is reused: its points were measured on these
        check_data_inputs(run.out, {
            "recipe": method.name, "stream": inputs.stream,
            "docs_per_batch": cfg.docs_per_batch if inputs.stream else None,
            "documents": [{"id": d.id, "sha256": sha256_text(d.text)} for d in inputs.documents],
            "questions_sha256": fingerprint(inputs.qa_by_doc, inputs.retention)})
    choose_documents(run)
    measure_initial(run)
    make_learner(run)
    start_curve(run)
    for n in range(len(run.batches)):
        learn_batch(run, n)
    return write_artifacts(run)


def read_inputs(name: str, docs: str | None, qa: str | None, retention: str | None, stream: bool,
                columns=None) -> StreamInputs:
    if not docs:
        raise CtxDistillError(f"The {name} recipe learns from documents: pass --docs FILE_OR_FOLDER.")
    documents = read_documents(docs, columns)
    return StreamInputs(documents, gather_qa(documents, qa, columns), read_retention(retention, columns),
                        bool(stream))


def set_up(cfg: DocConfig, method: DocMethod, out: Path, resume: bool, inputs: StreamInputs,
           t_start: float) -> StreamRun:
    accelerator, model, tokenizer, base_path = open_run(cfg, out, resume)
    return StreamRun(cfg, method, out, resume, t_start, inputs, accelerator, model, tokenizer, base_path,
                     model_window(model, cfg))


def _settings(cfg: DocConfig, deadline: float | None):
    # The examples are already one per (document, epoch), so the loop makes a single pass over them.
    return train_settings(cfg, deadline, epochs=1, max_steps=0)


def _epochs(cfg: DocConfig) -> int:
    return max(1, math.ceil(cfg.epochs))


def _doc_rng(seed: int, doc_id: str, epoch: int) -> random.Random:
    return random.Random(f"{seed}:{doc_id}:{epoch}")


def choose_documents(run: StreamRun) -> None:
    """Tokenize every document once and cut the used ones into batches (one batch of all unless streaming).

    Documents that give the method nothing to learn from are skipped, with a warning, not crashed on."""
    for d in run.inputs.documents:
        doc = tokenize_document(run.tokenizer, d.id, d.text)
        usable = run.method.pairs_for(doc, _doc_rng(run.cfg.seed, d.id, 0), run.window)
        (run.used if usable else run.skipped).append(doc)
    if run.skipped:
        warnings.warn(f"{len(run.skipped)} document(s) too short to split for {run.method.name} were skipped: "
                      f"{', '.join(d.id for d in run.skipped[:10])}.", stacklevel=3)
    if not run.used:
        raise CtxDistillError(f"No document can be used by {run.method.name}: each needs at least two sentences "
                              "(or, for split_strategy=token, a few tokens).")
    per_batch = run.cfg.docs_per_batch if run.inputs.stream else len(run.used)
    run.batches = [run.used[i:i + per_batch] for i in range(0, len(run.used), per_batch)]


def measure_initial(run: StreamRun) -> None:
    """Before any update: the forgetting probe, and the initial model's answers closed-book and with the document
    in context (what the curve's knowledge is measured against)."""
    model, tokenizer, max_new = run.model.eval(), run.tokenizer, run.cfg.eval_max_new_tokens
    run.probe = DriftProbe(model, tokenizer, run.inputs.retention, max_new)
    used = {d.id for d in run.used} | {"*"}  # questions about a skipped document are not asked
    run.all_qa = [(doc_id, x) for doc_id, items in run.inputs.qa_by_doc.items() if doc_id in used for x in items]
    if not run.all_qa:
        return
    texts = run.texts
    whole = Context("\n\n".join(texts.values()), "document")  # for the questions about the whole corpus
    open_ctx = [Context(texts[doc_id], "document") if doc_id in texts else whole for doc_id, _ in run.all_qa]
    run.reference = {"closed_book": answers(model, tokenizer, run.questions, None, False, max_new),
                     "open_book": answers(model, tokenizer, run.questions, open_ctx, False, max_new)}


def make_learner(run: StreamRun) -> None:
    """The student, the frozen initial model as teacher where the objective has a divergence term, and the loss."""
    run.student = make_student(run.model, run.cfg)
    objective = run.method.objective
    teacher = Teacher(run.student, frozen_copy=run.cfg.finetune == "full") if objective.needs_teacher else None
    run.loss_module = DistillLoss(run.student, teacher, objective, run.cfg.chunk_size)


def start_curve(run: StreamRun) -> None:
    """The curve so far (a resumed run keeps its points), else its first point: the initial model."""
    path = run.out / CURVE
    run.curve = read_jsonl(path, str(path)) if run.resume and path.exists() else []
    if not run.curve:
        retention, initial = run.inputs.retention, run.probe.initial_answers
        run.curve = [{"docs_seen": 0, "steps": 0, "train_seconds": 0.0,
                      "knowledge": 0, "questions": 0, "knowledge_answers": {},
                      "retention": score(initial, retention), "retention_n": len(retention),
                      "kl_to_initial": 0.0, "retention_answers": initial}]
        log_point(run, run.curve[0])


def learn_batch(run: StreamRun, n: int) -> None:
    """One optimizer step per document per epoch on batch `n` (fresh pairs each epoch), then a point of the curve
    unless a resumed run has it already."""
    cfg, batch, epochs = run.cfg, run.batches[n], _epochs(run.cfg)
    examples = [DocStep(d.id, run.method.pairs_for(d, _doc_rng(cfg.seed, d.id, e), run.window))
                for e in range(epochs) for d in batch]
    planned = [total_steps_for(epochs * len(b), _settings(cfg, None)) for b in run.batches[n:]]
    deadline = share_budget(budget_deadline(cfg, run.t_start), planned)
    key = fingerprint(run.method.name, training_fingerprint_config(cfg), n, [d.ids for d in batch])
    if len(run.batches) > 1:
        run.accelerator.print(f"Batch {n + 1}/{len(run.batches)}: {', '.join(d.id for d in batch)}")
    run.results.append(train(run.accelerator, run.loss_module, [ex for ex in examples if ex.pairs],
                             partial(collate_steps, pad_id=run.tokenizer.pad_token_id), _settings(cfg, deadline),
                             run.out / "checkpoint" / f"state_batch{n}.pt", resume=run.resume, fingerprint=key))
    if len(run.curve) <= n + 1 and run.accelerator.is_main_process:
        seen = {d.id for b in run.batches[:n + 1] for d in b}
        run.curve.append(evaluate_point(run, seen))
        write_jsonl(run.out / CURVE, run.curve)
        log_point(run, run.curve[-1])
    run.accelerator.wait_for_everyone()


def collate_steps(steps: list[DocStep], pad_id: int):
    return collate_pairs([p for step in steps for p in step.pairs], pad_id)


def evaluate_point(run: StreamRun, seen: set[str]) -> dict:
    """Closed-book QA on the documents seen so far (corpus-wide questions once all are seen), and retention."""
    model = run.model.eval()  # the student's weights: LoRA layers are injected into it, full fine-tuning is it
    every = len(seen) == len(run.used)
    asked = [i for i, (doc_id, _) in enumerate(run.all_qa) if doc_id in seen or (doc_id == "*" and every)]
    every_question = run.questions
    questions = [every_question[i] for i in asked]
    got = answers(model, run.tokenizer, questions, None, True, run.cfg.eval_max_new_tokens) if asked else []
    kept = run.probe.measure(model)
    return {"docs_seen": len(seen), "steps": sum(r.steps_done for r in run.results),
            "train_seconds": round(sum(r.seconds for r in run.results), 1),
            "knowledge": score(got, [run.all_qa[i][1] for i in asked]), "questions": len(asked),
            "knowledge_answers": dict(zip(questions, got)),
            "retention": kept["accuracy"], "retention_n": kept["n"],
            "kl_to_initial": round(kept["kl_to_initial"], 5), "retention_answers": kept["answers"]}


def log_point(run: StreamRun, point: dict) -> None:
    """A point of the curve to the trackers (report_to), at the steps trained so far: the trained model's rows."""
    log_evaluation(run.accelerator, {
        "n": point["questions"], "accuracy": {"student": point["knowledge"]},
        "retention": {"n": point["retention_n"], "accuracy": {"student": point["retention"]},
                      "kl_to_base": {"student": point["kl_to_initial"]}}})


def stream_metrics(run: StreamRun) -> dict:
    results, items = run.results, [x for _, x in run.all_qa]
    return {"train_steps": sum(r.steps_done for r in results), "total_steps": sum(r.total_steps for r in results),
            "planned_steps": sum(r.planned_steps for r in results),
            "stopped_by_budget": any(r.stopped_by_budget for r in results),
            "train_seconds": round(sum(r.seconds for r in results), 1),
            "total_seconds": round(time.time() - run.t_start, 1),
            "loss_history": [loss for r in results for loss in r.loss_history],
            "closed_book_initial": score(run.reference.get("closed_book", []), items),
            "open_book_initial": score(run.reference.get("open_book", []), items),
            "questions": len(items),
            "curve": [{k: v for k, v in p.items() if not k.endswith("answers")} for p in run.curve]}


def stream_manifest(run: StreamRun, metrics: dict) -> dict:
    texts = run.texts
    return {"recipe": run.method.name, "base_model": run.cfg.model, "base_model_path": run.base_path,
            "documents": [{"id": d.id, "sha256": sha256_text(texts[d.id]), "tokens": len(d.ids)} for d in run.used],
            "skipped_documents": [d.id for d in run.skipped], "stream": run.inputs.stream,
            "config": run.cfg.to_dict(), "metrics": metrics}


def write_artifacts(run: StreamRun) -> RunResult | None:
    """OUT/adapter (or OUT/model), manifest.json, curve.jsonl (written as it grew) and report.md (+ report.png)."""
    result = None
    if run.accelerator.is_main_process:
        run.student.eval()
        trained = save_trained(run.student, run.tokenizer, run.out, run.cfg.finetune)
        metrics = stream_metrics(run)
        write_manifest(run.out, stream_manifest(run, metrics))
        write_stream_report(run.out, run.method, run.cfg, metrics, run.curve, run.reference, run.all_qa)
        result = RunResult(run.out, [trained.name, "manifest.json", CURVE, "report.md"], metrics,
                           curve_table({run.method.name: metrics}))
    run.accelerator.wait_for_everyone()
    end_trackers(run.accelerator)
    return result


def curve_table(runs: dict[str, dict]) -> str:
    """One row per evaluation point of each run: knowledge (closed-book QA on documents seen) vs retention."""
    lines = ["| method | docs seen | steps | closed-book QA (seen docs) | retention | KL(initial ‖ model) |",
             "|---|---|---|---|---|---|"]
    for name, m in runs.items():
        for p in m["curve"]:
            qa = f"{p['knowledge']}/{p['questions']}" if p["questions"] else "-"
            lines.append(f"| {name} | {p['docs_seen']} | {p['steps']} | {qa} | {p['retention']}/{p['retention_n']} "
                         f"| {p['kl_to_initial']:.4f} |")
    return "\n".join(lines)


def plot_curves(path: Path, runs: dict[str, dict]) -> None:
    """Knowledge learned (x) against retention (y), one line per method; each point is one evaluation."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, m in runs.items():
        pts = m["curve"]
        know = [p["knowledge"] / p["questions"] if p["questions"] else 0.0 for p in pts]
        axes[0].plot(know, [p["retention"] / p["retention_n"] for p in pts], marker="o", label=name)
        axes[1].plot(know, [p["kl_to_initial"] for p in pts], marker="o", label=name)
    axes[0].set_xlabel("closed-book QA accuracy (documents seen)"), axes[0].set_ylabel("retention accuracy")
    axes[1].set_xlabel("closed-book QA accuracy (documents seen)"), axes[1].set_ylabel("KL(initial ‖ model) / token")
    axes[0].set_title("knowledge vs retention"), axes[1].set_title("knowledge vs drift")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name("." + path.name)
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def write_stream_report(out: Path, method: DocMethod, cfg: DocConfig, metrics: dict, curve: list[dict],
                        reference: dict, all_qa: list) -> None:
    plot_curves(out / "report.png", {method.name: metrics})
    n = metrics["questions"]
    lines = [f"# {method.title}", "", f"- base model: `{cfg.model}`, fine-tuning: {cfg.finetune}",
             f"- training: {metrics['train_steps']}/{metrics['total_steps']} steps (one per document per epoch) in "
             f"{metrics['train_seconds']:.0f}s" + planned_note(metrics),
             f"- initial model on the {n} questions: {metrics['closed_book_initial']}/{n} closed-book, "
             f"{metrics['open_book_initial']}/{n} with its document in context" if n else "- no QA given", "",
             "## Curve", "", curve_table({method.name: metrics}), "", "![curve](report.png)", ""]
    if all_qa:
        last = curve[-1]["knowledge_answers"]
        lines += ["## Answers", "", "| question | initial, closed | initial, open book | after |", "|---|---|---|---|"]
        clean = lambda s: s.replace("|", "\\|").replace("\n", " ")[:120]  # noqa: E731
        for i, (_, x) in enumerate(all_qa):
            lines.append(f"| {clean(x['q'])} | {clean(reference['closed_book'][i])} | "
                         f"{clean(reference['open_book'][i])} | {clean(last.get(x['q'], '(not asked)'))} |")
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")

