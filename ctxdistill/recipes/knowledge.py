"""Knowledge modules by Deep Context Distillation (Caccia et al. 2025): documents → plug-in LoRA modules.

1. documents are cut into token chunks (with overlap);
2. data: with a chunk in context the model writes summaries and quiz questions, and answers its questions with the
   chunk still in context (cached on disk per chunk) — or, `knowledge_data=raw`, windows of the document itself;
3. pairs: teacher view = chunk + prompt + y (raw: the whole window), student view = prompt + y (raw: the window's
   last part alone), the same y ids in both;
4. the student (base + a fresh LoRA, one per document with --per-document, else one for the corpus) matches the
   teacher (the same base, adapter off, chunk in context) on y: forward KL on the logits plus the hidden-state
   term over all layers. Baselines (`--objective`): next-token prediction on the document text (ntp-doc), and on
   the synthetic QA/summaries plus the text (ntp-synth, pre-instruction-training style);
5. each module is saved as a plain PEFT adapter with `module.json`; the report compares closed-book, open-book,
   retrieval, module and module + retrieval, with retention.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

from ctxdistill import CtxDistillError
from ctxdistill.config import DistillConfig
from ctxdistill.core.files import atomic_write_text, read_jsonl, write_jsonl
from ctxdistill.core.losses import DistillLoss, collate_pairs
from ctxdistill.core.models import add_lora, cache_dir, enable_gradient_checkpointing, load_adapter
from ctxdistill.core.objectives import Objective
from ctxdistill.core.pairs import Context, Pair, assistant_header, build_pair, render_prompt
from ctxdistill.core.teacher import Teacher
from ctxdistill.core.training import train
from ctxdistill.data.anchors import make_anchors, with_anchors
from ctxdistill.data.chunks import Chunk, chunk_document
from ctxdistill.data.documents import Document, gather_qa, read_documents
from ctxdistill.data.inputs import read_retention
from ctxdistill.data.splits import split_pair, whole_text_pairs
from ctxdistill.data.synthetic import SynthSettings, synthesize
from ctxdistill.eval.evaluation import DriftProbe, score
from ctxdistill.eval.knowledge_eval import (
    base_rows,
    knowledge_result,
    knowledge_table,
    module_rows,
    question_set,
    retention_rows,
    write_knowledge_report,
)
from ctxdistill.recipes.artifacts import save_adapter, sha256_text, write_manifest
from ctxdistill.recipes.common import main_process_writes, open_run, train_settings, training_fingerprint_config
from ctxdistill.recipes.module_library import write_module_manifest

DEFAULTS = {"lora_r": 16, "lora_alpha": 16, "lr": 1e-3, "objective": "forward_kl", "hidden_weight": 1.0,
            "batch_size": 8, "micro_batch_size": 8, "epochs": 16.0, "warmup_ratio": 0.05, "anchor_fraction": 0.5}
TITLES = {"dcd": "Knowledge modules: deep context distillation",
          "ntp-doc": "Baseline: next-token prediction on the documents",
          "ntp-synth": "Baseline: next-token prediction on synthetic QA/summaries + the documents"}


def raw_pairs(ids: list[int], window: int, loss_fraction: float) -> list[Pair]:
    """Windows ending every `span` tokens: the teacher reads the whole window, the student only the token before
    the last `span` tokens (its prompt) and those `span` tokens, which carry the loss. The spans tile the text, so
    every token with something before it to learn from is scored exactly once."""
    span = max(1, round(window * loss_fraction))
    pairs = []
    for first in range(span + 1, len(ids), span):  # the first scored token of each span
        end, at = min(first + span, len(ids)), first - 1  # `at`: the student's prompt token
        start = max(0, end - window)
        pairs.append(split_pair(ids[start:end], at - start, window, span + 1))
    return pairs


def synth_settings(cfg: DistillConfig) -> SynthSettings:
    return SynthSettings(tuple(cfg.summary_prompts), cfg.summaries_per_prompt, cfg.question_prompt,
                         cfg.questions_per_chunk, cfg.answers_per_question, cfg.synth_temperature, cfg.max_new_tokens,
                         cfg.seed, cfg.gen_batch_size)


def synthetic_pairs(tokenizer, rows: list[dict], chunks: dict[str, Chunk], window: int, teacher: bool,
                    summary_view: str = "text") -> list[Pair]:
    """teacher=True: chunk + prompt + y vs the student's view of y (DCD); False: the student's view on both sides
    (next-token). The student's view of a QA row is its question + y; of a summary, with summary_view=text, y alone
    as plain text (its first token is the prompt), as in the paper: an instruction such as "Summarize the document
    above" names no document, so under it the student would learn every document's summary for the same words."""
    header = assistant_header(tokenizer)
    special = set(tokenizer.all_special_ids)
    pairs = []
    for row in rows:
        ctx = Context(chunks[row["chunk"]].text, "document")
        y = list(row["completion_ids"])
        if row["kind"] == "summary" and summary_view == "text":
            while y and y[-1] in special:  # plain text: no end-of-turn token to learn
                y.pop()
            if len(y) < 2:
                continue
            t_prompt = render_prompt(tokenizer, row["prompt"], ctx) if teacher else []
            pairs.append(Pair(t_prompt + y, y, len(t_prompt) + 1, 1))
            continue
        student = render_prompt(tokenizer, row["prompt"])
        t_prompt = render_prompt(tokenizer, row["prompt"], ctx) if teacher else student
        pairs.append(build_pair(t_prompt, student, y, header, window))
    return pairs


def module_name(doc_id: str) -> str:
    return re.sub(r"[^\w.-]+", "_", doc_id) or "doc"


def run(cfg: DistillConfig, docs_file: str, out_dir: str, resume: bool = False, qa_file: str | None = None,
        retention_file: str | None = None, per_document: bool = False) -> dict:
    t_start = time.time()
    deadline_at = t_start + cfg.max_minutes * 60 if cfg.max_minutes else None  # generation + training
    if cfg.finetune != "lora":
        raise CtxDistillError("A knowledge module is a LoRA adapter: the knowledge recipe needs finetune=lora.")
    docs = read_documents(docs_file)
    qa_by_doc = gather_qa(docs, qa_file)
    retention = read_retention(retention_file)
    out = Path(out_dir)
    objective_name = cfg.knowledge_objective
    uses_synthetic = objective_name == "ntp-synth" or (objective_name == "dcd" and cfg.knowledge_data == "synthetic")

    accelerator, model, tokenizer, base_path = open_run(cfg, out, resume)
    window = getattr(model.config, "max_position_embeddings", None) or 2048
    window = min(window, cfg.max_seq_len) if cfg.max_seq_len else window
    if cfg.chunk_tokens + cfg.max_new_tokens + 64 > window:
        raise CtxDistillError(f"chunk_tokens ({cfg.chunk_tokens}) + max_new_tokens ({cfg.max_new_tokens}) does not "
                              f"fit the model window ({window}) with a prompt. Lower chunk_tokens.")
    chunks = [c for d in docs for c in chunk_document(tokenizer, d.id, d.text, cfg.chunk_tokens, cfg.chunk_overlap)]
    by_key = {c.key: c for c in chunks}
    doc_ids = {d.id: tokenizer(d.text, add_special_tokens=False)["input_ids"] for d in docs}

    # 1. Synthetic data (main process; cached per chunk, so baselines on the same documents reuse it).
    t0 = time.time()
    rows = []
    if uses_synthetic:
        if accelerator.is_main_process:
            model.eval()
            rows = synthesize(model, tokenizer, chunks, synth_settings(cfg), cache_dir() / "synthetic",
                              f"{cfg.model}|{base_path}")
            write_jsonl(out / "data" / "synthetic.jsonl", rows)
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            rows = read_jsonl(out / "data" / "synthetic.jsonl", "synthetic data")
    generation_seconds = time.time() - t0

    # Anchors: general prompts and the base's own answers, which a DCD module is held to (not to learn the document
    # into everything it says); made before any adapter exists.
    anchors = []
    if objective_name == "dcd" and cfg.anchor_fraction > 0:
        anchors = main_process_writes(accelerator, out / "data" / "anchors.jsonl",
                                      lambda: make_anchors(cfg, model, tokenizer))

    # 2. The references, before any adapter exists: base closed-book, open-book, retrieval; the retention probe.
    items = [(doc_id if doc_id != "*" else None, x) for doc_id, qs in qa_by_doc.items() for x in qs]
    texts = {d.id: d.text for d in docs}
    qs = question_set(items, texts, chunks, cfg.retrieval_top_k) if items else None
    reference, probe = {}, None
    t_eval = time.time()
    if accelerator.is_main_process:
        model.eval()
        probe = DriftProbe(model, tokenizer, retention, cfg.eval_max_new_tokens)
        if qs:
            reference = base_rows(model, tokenizer, qs, cfg.eval_max_new_tokens)
    eval_seconds = time.time() - t_eval

    # 3. One module per document, or one for the corpus.
    groups = [(module_name(d.id), [d]) for d in docs] if per_document else [("corpus", docs)]
    objective = cfg.build_objective() if objective_name == "dcd" else Objective({"sft": 1.0})
    base_fingerprint = training_fingerprint_config(cfg)
    module_answers: dict[str, list[str | None]] = {k: [None] * len(items) for k in ("module", "module_retrieval")}
    module_reports, measured, train_seconds = [], [], 0.0  # measured: each module's retention probe
    for n, (name, group) in enumerate(groups):
        target = out / "modules" / name if per_document else out / "adapter"
        pairs = group_pairs(cfg, objective_name, tokenizer, group, doc_ids, rows, by_key, window)
        pairs = with_anchors(pairs, anchors, cfg.anchor_fraction, tokenizer, f"{cfg.seed}:{name}")
        if not pairs:
            raise CtxDistillError(f"No training data for {name}: " + (
                "the synthetic data is empty (raise questions_per_chunk or check question_prompt)." if uses_synthetic
                else "its documents are too short (one token)."))
        fingerprint = hashlib.sha256(json.dumps([base_fingerprint, name, [p.teacher_ids for p in pairs],
                                                 [p.student_ids for p in pairs]]).encode()).hexdigest()
        done = (target / "module.json").is_file() and \
            json.loads((target / "module.json").read_text()).get("fingerprint") == fingerprint
        if done:  # finished before a resume
            accelerator.print(f"Module {name}: already trained, loaded from {target}.")
            student, result = load_adapter(model, str(target)), None
        else:
            student = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
            if cfg.gradient_checkpointing:
                enable_gradient_checkpointing(student)
            teacher = Teacher(student) if objective.needs_teacher else None
            loss_module = DistillLoss(student, teacher, objective, cfg.chunk_size)
            deadline = None
            if deadline_at:  # the time left is shared equally by the modules still to train; evaluating is free
                deadline = time.time() + (deadline_at + eval_seconds - time.time()) / (len(groups) - n)
            if len(groups) > 1:
                accelerator.print(f"Module {n + 1}/{len(groups)}: {name}, {len(pairs)} pairs.")
            result = train(accelerator, loss_module, pairs, lambda b: collate_pairs(b, tokenizer.pad_token_id),
                           train_settings(cfg, deadline), out / "checkpoint" / f"{name}.pt", resume=resume,
                           fingerprint=fingerprint)
            train_seconds += result.seconds
        # 4. This module: its own questions (per document) or all of them, closed-book and with retrieval.
        report = {"name": name, "path": str(target), "pairs": len(pairs)}
        if accelerator.is_main_process:
            student.eval()
            t_eval = time.time()
            # A question names its document, or goes to the module of the document retrieval ranks first.
            mine = [i for i, (doc_id, _) in enumerate(items) if not per_document or doc_id == group[0].id
                    or (doc_id is None and qs.retrieved_docs[i] == group[0].id)]
            got = module_rows(student, tokenizer, qs, cfg.eval_max_new_tokens, mine) if qs and mine else {}
            for key, answers in got.items():
                for i, a in zip(mine, answers):
                    module_answers[key][i] = a
            kept = probe.measure(student)
            eval_seconds += time.time() - t_eval
            measured.append(kept)
            report.update({"knowledge": score([module_answers["module"][i] for i in mine], [items[i][1] for i in mine]),
                           "questions": len(mine), "retention": kept["accuracy"], "retention_n": kept["n"],
                           "kl_to_base": round(kept["kl_to_initial"], 5), "retention_answers": kept["answers"]})
            if result is not None:
                report.update({"train_steps": result.steps_done, "total_steps": result.total_steps,
                               "stopped_by_budget": result.stopped_by_budget,
                               "train_seconds": round(result.seconds, 1), "final_loss": result.final_loss})
                save_adapter(student, target)
                write_module_manifest(target, {
                    "name": name, "recipe": "knowledge", "objective": objective_name,
                    "data": cfg.knowledge_data if objective_name == "dcd" else objective_name,
                    "base_model": cfg.model, "base_model_path": base_path,
                    "documents": [{"id": d.id, "sha256": sha256_text(d.text),
                                   "chunks": sum(c.doc_id == d.id for c in chunks)} for d in group],
                    "config": cfg.to_dict(), "fingerprint": fingerprint,
                    "metrics": {k: v for k, v in report.items() if k not in ("name", "path", "retention_answers")}})
            else:
                report.update(json.loads((target / "module.json").read_text()).get("metrics", {}))
        module_reports.append(report)
        accelerator.wait_for_everyone()
        model = student.unload()  # the plain base again, for the next module

    # 5. Report (main process).
    summary = None
    if accelerator.is_main_process:
        result = None
        if qs:
            answers = {**reference, **{k: [a or "" for a in v] for k, v in module_answers.items()}}
            result = knowledge_result(qs, answers, retention_rows(probe, measured))
        total_steps = sum(r.get("train_steps", 0) for r in module_reports)
        metrics = {"generation_seconds": round(generation_seconds, 1), "train_seconds": round(train_seconds, 1),
                   "eval_seconds": round(eval_seconds, 1), "total_seconds": round(time.time() - t_start, 1),
                   "train_steps": total_steps, "synthetic_rows": len(rows), "chunks": len(chunks),
                   "modules": module_reports}
        if result:
            metrics["knowledge"] = {k: v for k, v in result.items() if k != "questions"}
        write_manifest(out, {"recipe": "knowledge", "objective": objective_name, "base_model": cfg.model,
                             "base_model_path": base_path, "per_document": per_document,
                             "documents": [{"id": d.id, "sha256": sha256_text(d.text)} for d in docs],
                             "config": cfg.to_dict(), "metrics": metrics})
        kinds = {k: sum(r["kind"] == k for r in rows) for k in ("summary", "qa")}
        lines = [f"- base model: `{cfg.model}`; objective: {objective_name}"
                 + (f" ({cfg.knowledge_data} data)" if objective_name == "dcd" else ""),
                 f"- documents: {len(docs)} in {len(chunks)} chunks of ≤{cfg.chunk_tokens} tokens; modules: "
                 + ", ".join(f"`{r['path']}`" for r in module_reports),
                 (f"- synthetic data: {kinds['summary']} summaries and {kinds['qa']} question–answer pairs"
                  if uses_synthetic else "- data: the document text"),
                 f"- training: {total_steps} steps" + (" (stopped by the time budget)" if any(
                     r.get("stopped_by_budget") for r in module_reports) else ""),
                 *(["- per module (its own questions; retention on the general set): " + "; ".join(
                     f"{r['name']} {r['knowledge']}/{r['questions']}, retention {r['retention']}/{r['retention_n']}, "
                     f"KL {r['kl_to_base']:.3f}" for r in module_reports)] if len(module_reports) > 1 else []),
                 f"- time: generation {generation_seconds:.0f}s, training {train_seconds:.0f}s, evaluation "
                 f"{eval_seconds:.0f}s, total {time.time() - t_start:.0f}s"]
        if result:
            write_knowledge_report(out, TITLES[objective_name], lines, result)
        else:
            atomic_write_text(out / "report.md", "\n".join([f"# {TITLES[objective_name]}", "", *lines,
                                                            "", "(no questions: give documents a \"qa\" list or "
                                                            "pass --qa)", ""]))
        summary = {"metrics": metrics, "result": result, "table": knowledge_table(result) if result else ""}
    accelerator.wait_for_everyone()
    return summary or {}


def group_pairs(cfg: DistillConfig, objective_name: str, tokenizer, group: list[Document],
                doc_ids: dict[str, list[int]], rows: list[dict], chunks: dict[str, Chunk], window: int) -> list[Pair]:
    """The training pairs of one module."""
    mine = {d.id for d in group}
    text_windows = [p for d in group for p in whole_text_pairs(doc_ids[d.id], min(window, cfg.chunk_tokens))]
    own_rows = [r for r in rows if chunks[r["chunk"]].doc_id in mine]
    if objective_name == "ntp-doc":
        return text_windows
    if objective_name == "ntp-synth":
        return synthetic_pairs(tokenizer, own_rows, chunks, window, False, cfg.summary_view) + text_windows
    if cfg.knowledge_data == "raw":
        return [p for d in group for p in raw_pairs(doc_ids[d.id], min(window, cfg.raw_window),
                                                    cfg.raw_loss_fraction)]
    return synthetic_pairs(tokenizer, own_rows, chunks, window, True, cfg.summary_view)


