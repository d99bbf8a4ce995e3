"""Learning a stream of documents: the shared loop of DiSC and its fine-tuning baselines.

Documents arrive in order, in batches (one batch of all documents unless streaming). For each batch the method turns
every document into pairs (fresh ones each epoch), one optimizer step per document; after each batch the model is
evaluated: closed-book QA on the documents seen so far, and retention (general questions, KL to the initial model).
The points form a curve: knowledge learned vs what was kept.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ctxdistill import CtxDistillError
from ctxdistill.config import DistillConfig
from ctxdistill.core.files import atomic_write_text, read_jsonl, write_jsonl
from ctxdistill.core.losses import DistillLoss, collate_pairs
from ctxdistill.core.models import add_lora, enable_gradient_checkpointing
from ctxdistill.core.objectives import Objective
from ctxdistill.core.pairs import Context, Pair
from ctxdistill.core.teacher import Teacher
from ctxdistill.core.training import total_steps_for, train
from ctxdistill.data.documents import gather_qa, read_documents
from ctxdistill.data.inputs import BUNDLED_RETENTION, read_qa
from ctxdistill.data.splits import TokenizedDoc, tokenize_document
from ctxdistill.eval.evaluation import DriftProbe, answers, score
from ctxdistill.recipes.artifacts import save_trained, sha256_text, write_manifest
from ctxdistill.recipes.common import open_run, train_settings, training_fingerprint_config


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


def _settings(cfg: DistillConfig, deadline: float | None):
    # The examples are already one per (document, epoch), so the loop makes a single pass over them.
    return train_settings(cfg, deadline, epochs=1, max_steps=0)


def _doc_rng(seed: int, doc_id: str, epoch: int) -> random.Random:
    return random.Random(f"{seed}:{doc_id}:{epoch}")


def run_stream(cfg: DistillConfig, method: DocMethod, docs_file: str, out_dir: str, resume: bool = False,
               qa_file: str | None = None, retention_file: str | None = None, stream: bool = False) -> dict:
    t_start = time.time()
    docs = read_documents(docs_file)
    qa_by_doc = gather_qa(docs, qa_file)
    retention = read_qa(retention_file or BUNDLED_RETENTION, "--retention")
    out = Path(out_dir)

    accelerator, model, tokenizer, base_path = open_run(cfg, out, resume)
    window = getattr(model.config, "max_position_embeddings", None) or 2048
    window = min(window, cfg.max_seq_len) if cfg.max_seq_len else window

    # Documents that give the method nothing to learn from are skipped, with a warning, not crashed on.
    tokenized, skipped = [], []
    for d in docs:
        doc = tokenize_document(tokenizer, d.id, d.text)
        (tokenized if method.pairs_for(doc, _doc_rng(cfg.seed, d.id, 0), window) else skipped).append(doc)
    if skipped:
        warnings.warn(f"{len(skipped)} document(s) too short to split for {method.name} were skipped: "
                      f"{', '.join(d.id for d in skipped[:10])}.", stacklevel=2)
    if not tokenized:
        raise CtxDistillError(f"No document can be used by {method.name}: each needs at least two sentences "
                              "(or, for split_strategy=token, a few tokens).")
    per_batch = cfg.docs_per_batch if stream else len(tokenized)
    batches = [tokenized[i:i + per_batch] for i in range(0, len(tokenized), per_batch)]
    epochs = max(1, math.ceil(cfg.epochs))
    texts = {d.id: d.text for d in docs}

    # Before any update: the initial model's answers, closed-book and open-book, and the forgetting probe.
    model.eval()
    probe = DriftProbe(model, tokenizer, retention, cfg.eval_max_new_tokens)
    used = {d.id for d in tokenized} | {"*"}  # questions about a skipped document are not asked
    all_qa = [(doc_id, x) for doc_id, items in qa_by_doc.items() if doc_id in used for x in items]
    questions = [x["q"] for _, x in all_qa]
    reference = {}
    if all_qa:
        closed = answers(model, tokenizer, questions, None, False, cfg.eval_max_new_tokens)
        open_ctx = [Context(texts[doc_id], "document") if doc_id in texts else
                    Context("\n\n".join(texts.values()), "document") for doc_id, _ in all_qa]
        opened = answers(model, tokenizer, questions, open_ctx, False, cfg.eval_max_new_tokens)
        reference = {"closed_book": closed, "open_book": opened}

    def evaluate_point(seen: set[str], steps: int, seconds: float) -> dict:
        model.eval()
        asked = [i for i, (doc_id, _) in enumerate(all_qa) if doc_id in seen or (doc_id == "*" and
                                                                                  len(seen) == len(tokenized))]
        got = answers(model, tokenizer, [questions[i] for i in asked], None, True, cfg.eval_max_new_tokens) \
            if asked else []
        kept = probe.measure(model)
        return {"docs_seen": len(seen), "steps": steps, "train_seconds": round(seconds, 1),
                "knowledge": score(got, [all_qa[i][1] for i in asked]), "questions": len(asked),
                "knowledge_answers": dict(zip([questions[i] for i in asked], got)),
                "retention": kept["accuracy"], "retention_n": kept["n"],
                "kl_to_initial": round(kept["kl_to_initial"], 5), "retention_answers": kept["answers"]}

    student = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets) \
        if cfg.finetune == "lora" else model.requires_grad_(True)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(student)
    teacher = Teacher(student, frozen_copy=cfg.finetune == "full") if method.objective.needs_teacher else None
    loss_module = DistillLoss(student, teacher, method.objective, cfg.chunk_size)

    curve_path = out / "curve.jsonl"
    curve = read_jsonl(curve_path, str(curve_path)) if resume and curve_path.exists() else []
    if not curve:
        base_point = {"docs_seen": 0, "steps": 0, "train_seconds": 0.0,
                      "knowledge": 0, "questions": 0, "knowledge_answers": {},
                      "retention": score(probe.initial_answers, retention), "retention_n": len(retention),
                      "kl_to_initial": 0.0, "retention_answers": probe.initial_answers}
        curve = [base_point]
    budget_free = training_fingerprint_config(cfg)
    results, seen, steps = [], set(), 0
    for n, batch in enumerate(batches):
        examples = [DocStep(d.id, method.pairs_for(d, _doc_rng(cfg.seed, d.id, e), window))
                    for e in range(epochs) for d in batch]
        examples = [ex for ex in examples if ex.pairs]
        deadline = None
        if cfg.max_minutes:  # the time left is shared by the batches still to come, in proportion to their steps
            planned = [total_steps_for(epochs * len(b), _settings(cfg, None)) for b in batches[n:]]
            deadline = time.time() + (t_start + cfg.max_minutes * 60 - time.time()) * planned[0] / sum(planned)
        fingerprint = hashlib.sha256(json.dumps([method.name, budget_free, n, [d.ids for d in batch]])
                                     .encode()).hexdigest()
        if len(batches) > 1:
            accelerator.print(f"Batch {n + 1}/{len(batches)}: {', '.join(d.id for d in batch)}")
        result = train(accelerator, loss_module, examples,
                       lambda steps_: collate_pairs([p for ex in steps_ for p in ex.pairs], tokenizer.pad_token_id),
                       _settings(cfg, deadline), out / "checkpoint" / f"state_batch{n}.pt", resume=resume,
                       fingerprint=fingerprint)
        results.append(result)
        seen.update(d.id for d in batch)
        steps += result.steps_done
        if len(curve) <= n + 1 and accelerator.is_main_process:
            curve.append(evaluate_point(seen, steps, sum(r.seconds for r in results)))
            write_jsonl(curve_path, curve)
        accelerator.wait_for_everyone()

    summary = {}
    if accelerator.is_main_process:
        student.eval()
        save_trained(student, tokenizer, out, cfg.finetune)
        history = [loss for r in results for loss in r.loss_history]
        metrics = {"train_steps": steps, "total_steps": sum(r.total_steps for r in results),
                   "stopped_by_budget": any(r.stopped_by_budget for r in results),
                   "train_seconds": round(sum(r.seconds for r in results), 1),
                   "total_seconds": round(time.time() - t_start, 1), "loss_history": history,
                   "closed_book_initial": score(reference.get("closed_book", []), [x for _, x in all_qa]),
                   "open_book_initial": score(reference.get("open_book", []), [x for _, x in all_qa]),
                   "questions": len(all_qa), "curve": [{k: v for k, v in p.items() if not k.endswith("answers")}
                                                       for p in curve]}
        write_manifest(out, {"recipe": method.name, "base_model": cfg.model, "base_model_path": base_path,
                             "documents": [{"id": d.id, "sha256": sha256_text(texts[d.id]), "tokens": len(d.ids)}
                                           for d in tokenized],
                             "skipped_documents": [d.id for d in skipped], "stream": stream,
                             "config": cfg.to_dict(), "metrics": metrics})
        write_stream_report(out, method, cfg, metrics, curve, reference, all_qa)
        summary = {"metrics": metrics, "table": curve_table({method.name: metrics})}
    accelerator.wait_for_everyone()
    return summary


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


def write_stream_report(out: Path, method: DocMethod, cfg: DistillConfig, metrics: dict, curve: list[dict],
                        reference: dict, all_qa: list) -> None:
    plot_curves(out / "report.png", {method.name: metrics})
    n = metrics["questions"]
    lines = [f"# {method.title}", "", f"- base model: `{cfg.model}`, fine-tuning: {cfg.finetune}",
             f"- training: {metrics['train_steps']}/{metrics['total_steps']} steps (one per document per epoch) in "
             f"{metrics['train_seconds']:.0f}s" + (" (stopped by the time budget)" if metrics["stopped_by_budget"]
                                                   else ""),
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

