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
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from ctxdistill import CtxDistillError
from ctxdistill.config import KnowledgeConfig
from ctxdistill.core.files import atomic_write_text, read_jsonl, write_jsonl
from ctxdistill.core.generation import chosen_engine
from ctxdistill.core.losses import DistillLoss, collate_pairs
from ctxdistill.core.models import cache_dir, load_adapter
from ctxdistill.core.objectives import Objective
from ctxdistill.core.pairs import Context, Pair, assistant_header, build_pair, render_prompt
from ctxdistill.core.teacher import Teacher
from ctxdistill.core.tracking import end_trackers, log_evaluation, run_log
from ctxdistill.core.training import TrainResult, train
from ctxdistill.data.anchors import make_anchors, with_anchors
from ctxdistill.data.chunks import Chunk, chunk_document
from ctxdistill.data.documents import Document, gather_qa, read_documents
from ctxdistill.data.inputs import read_retention
from ctxdistill.data.splits import split_pair, whole_text_pairs
from ctxdistill.data.synthetic import SynthSettings, synthesize
from ctxdistill.eval.evaluation import DriftProbe, score
from ctxdistill.eval.reports import planned_note
from ctxdistill.eval.knowledge_eval import (
    QuestionSet,
    base_rows,
    knowledge_result,
    knowledge_table,
    module_rows,
    question_set,
    retention_rows,
    write_knowledge_report,
)
from ctxdistill.recipes.artifacts import save_adapter, sha256_text, write_manifest
from ctxdistill.recipes.base import Recipe, RunResult
from ctxdistill.recipes.common import (
    budget_deadline,
    check_data_inputs,
    fingerprint,
    main_process_writes,
    make_student,
    model_window,
    open_run,
    share_budget,
    train_settings,
    training_fingerprint_config,
)
from ctxdistill.recipes.module_library import write_module_manifest

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


def synth_settings(cfg: KnowledgeConfig) -> SynthSettings:
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


DATA_KEYS = ("anchor_prompts", "max_new_tokens", "chunk_tokens", "chunk_overlap")  # what the chunks and anchors need
NO_QUESTIONS = "(no questions: give the documents a \"qa\" list or pass --qa)"


PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
HASHED_NAME = re.compile(r".*-[0-9a-f]{8}")


def module_name(doc_id: str, hashed: bool = False) -> str:
    """A document module's folder under OUT/modules: the id itself when it is a plain file name; else (or when
    `hashed`) a slug of it and a hash of the whole id, so that ids differing anywhere (`a/b`, `a b`) get folders of
    their own and none (`.`, `..`, `../x`, ``) lands outside OUT/modules or on it. A plain id that looks hashed is
    hashed too, so it cannot take the folder of another id."""
    if not hashed and PLAIN_NAME.fullmatch(doc_id) and not HASHED_NAME.fullmatch(doc_id):
        return doc_id
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", doc_id).strip("._-")[:48] or "doc"
    return f"{slug}-{hashlib.sha256(doc_id.encode('utf-8')).hexdigest()[:8]}"


def module_names(doc_ids: list[str]) -> dict[str, str]:
    """Each document id's module folder; ids that differ only in case are hashed as well, so they do not share a
    folder on a case-insensitive file system."""
    names = {i: module_name(i) for i in doc_ids}
    folded = Counter(n.casefold() for n in names.values())
    return {i: module_name(i, hashed=True) if folded[n.casefold()] > 1 else n for i, n in names.items()}


@dataclass
class Inputs:
    docs: list[Document]
    qa_by_doc: dict[str, list[dict]]  # document id (or "*": any) -> its questions
    retention: list[dict]


@dataclass
class Module:
    """One module to train: a document (--per-document) or the corpus, and where it goes."""

    name: str
    group: list[Document]
    target: Path
    pairs: list[Pair] = field(default_factory=list)
    fingerprint: str = ""


@dataclass
class KnowledgeRun:
    """What the steps share: the settings, the model, the documents, and what each step adds."""

    cfg: KnowledgeConfig
    out: Path
    resume: bool
    per_document: bool
    inputs: Inputs
    t_start: float
    accelerator: Accelerator
    model: Any  # the plain base between modules
    tokenizer: Any
    base_path: str
    window: int
    chunks: list[Chunk]
    doc_ids: dict[str, list[int]]  # each document's token ids
    objective: Objective
    rows: list[dict] = field(default_factory=list)  # synthetic data
    anchors: list[dict] = field(default_factory=list)
    items: list[tuple[str | None, dict]] = field(default_factory=list)  # (document id or None, question)
    qs: QuestionSet | None = None
    reference: dict[str, list[str]] = field(default_factory=dict)  # the base's rows of the table
    probe: DriftProbe | None = None
    module_answers: dict[str, list[str | None]] = field(default_factory=dict)
    module_reports: list[dict] = field(default_factory=list)
    measured: list[dict] = field(default_factory=list)  # each module's retention probe
    generation_seconds: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    backend: Any = None  # llama.cpp for the base's samples (synthetic data, anchors): made on first use (base_sampler)

    @property
    def objective_name(self) -> str:
        return self.cfg.knowledge_objective

    @property
    def uses_synthetic(self) -> bool:
        return self.objective_name == "ntp-synth" or (self.objective_name == "dcd"
                                                      and self.cfg.knowledge_data == "synthetic")

    @property
    def by_key(self) -> dict[str, Chunk]:
        return {c.key: c for c in self.chunks}


def run(cfg: KnowledgeConfig, out: str, resume: bool = False, *, docs: str | None = None, qa: str | None = None,
        retention: str | None = None, per_document: bool = False, columns: dict | None = None) -> RunResult | None:
    """`columns`: the dataset columns of inputs given as datasets, and their split (see data/hf_datasets.py)."""
    t_start = time.time()
    state = set_up(cfg, Path(out), resume, read_inputs(docs, qa, retention, columns), per_document, t_start)
    if state.accelerator.is_main_process:  # before OUT/data (anchors) and finished modules are reused
        check_data_inputs(state.out, {
            "documents": [{"id": d.id, "sha256": sha256_text(d.text)} for d in state.inputs.docs],
            "model": cfg.model, "objective": state.objective_name,
            "synthetic": asdict(synth_settings(cfg)) if state.uses_synthetic else None,
            **{k: getattr(cfg, k) for k in DATA_KEYS}})
    make_synthetic_data(state)
    make_run_anchors(state)
    if state.backend is not None:  # the base's samples are all drawn
        state.backend.close()
        state.backend = None
    measure_references(state)
    modules = plan_modules(state.inputs.docs, state.out, state.per_document)
    for n, module in enumerate(modules):
        distill_module(state, module, n, len(modules))
    return write_artifacts(state)


def read_inputs(docs: str | None, qa: str | None, retention: str | None, columns=None) -> Inputs:
    """Read before the model is loaded, so a bad file fails at once."""
    if not docs:
        raise CtxDistillError("The knowledge recipe learns from documents: pass --docs FILE_OR_FOLDER.")
    documents = read_documents(docs, columns)
    return Inputs(documents, gather_qa(documents, qa, columns), read_retention(retention, columns))


def set_up(cfg: KnowledgeConfig, out: Path, resume: bool, inputs: Inputs, per_document: bool,
           t_start: float) -> KnowledgeRun:
    accelerator, model, tokenizer, base_path = open_run(cfg, out, resume)
    window = model_window(model, cfg)
    if cfg.chunk_tokens + cfg.max_new_tokens + 64 > window:
        raise CtxDistillError(f"chunk_tokens ({cfg.chunk_tokens}) + max_new_tokens ({cfg.max_new_tokens}) does not "
                              f"fit the model window ({window}) with a prompt. Lower chunk_tokens.")
    chunks = [c for d in inputs.docs
              for c in chunk_document(tokenizer, d.id, d.text, cfg.chunk_tokens, cfg.chunk_overlap)]
    doc_ids = {d.id: tokenizer(d.text, add_special_tokens=False)["input_ids"] for d in inputs.docs}
    objective = cfg.build_objective() if cfg.knowledge_objective == "dcd" else Objective({"sft": 1.0})
    return KnowledgeRun(cfg, out, resume, per_document, inputs, t_start, accelerator, model, tokenizer, base_path,
                        window, chunks, doc_ids, objective)


def make_synthetic_data(state: KnowledgeRun) -> None:
    """Summaries and QA about each chunk, by the main process; cached per chunk, so baselines on the same documents
    reuse it."""
    if not state.uses_synthetic:
        return
    t0, accelerator, path = time.time(), state.accelerator, state.out / "data" / "synthetic.jsonl"
    if accelerator.is_main_process:
        state.model.eval()
        cfg, backend = state.cfg, base_sampler(state)
        # llama.cpp's samples are other draws: they get their own cache entries
        state.rows = synthesize(state.model, state.tokenizer, state.chunks, synth_settings(cfg),
                                cache_dir() / "synthetic",
                                f"{cfg.model}|{state.base_path}" + ("|llamacpp" if backend else ""), backend)
        write_jsonl(path, state.rows)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        state.rows = read_jsonl(path, "synthetic data")
    state.generation_seconds = time.time() - t0


def base_sampler(state: KnowledgeRun):
    """The llama.cpp backend that samples the base (generation_backend resolves to it), made once for the
    synthetic data and the anchors; None: the torch loop. The evaluation stays on the torch loop."""
    if state.backend is None:
        cfg = state.cfg
        state.backend = chosen_engine(cfg.generation_backend, state.model, state.tokenizer, base=cfg.model,
                                      device=state.accelerator.device, outtype=cfg.llamacpp_outtype)
    return state.backend


def make_run_anchors(state: KnowledgeRun) -> None:
    """General prompts and the base's own answers, which a DCD module is held to so that it does not learn the
    document into everything it says; made before any adapter exists."""
    if state.objective_name == "dcd" and state.cfg.anchor_fraction > 0:
        state.anchors = main_process_writes(state.accelerator, state.out / "data" / "anchors.jsonl",
                                            lambda: make_anchors(state.cfg, state.model, state.tokenizer,
                                                                 base_sampler(state)))


def measure_references(state: KnowledgeRun) -> None:
    """Before any adapter exists: the base closed-book, open-book and with retrieval, and the retention probe."""
    state.items = [(doc_id if doc_id != "*" else None, x) for doc_id, qs in state.inputs.qa_by_doc.items()
                   for x in qs]
    texts = {d.id: d.text for d in state.inputs.docs}
    state.qs = question_set(state.items, texts, state.chunks, state.cfg.retrieval_top_k) if state.items else None
    state.module_answers = {k: [None] * len(state.items) for k in ("module", "module_retrieval")}
    t_eval = time.time()
    if state.accelerator.is_main_process:
        state.model.eval()
        state.probe = DriftProbe(state.model, state.tokenizer, state.inputs.retention, state.cfg.eval_max_new_tokens)
        if state.qs:
            state.reference = base_rows(state.model, state.tokenizer, state.qs, state.cfg.eval_max_new_tokens)
    state.eval_seconds = time.time() - t_eval


def plan_modules(docs: list[Document], out: Path, per_document: bool) -> list[Module]:
    """One module per document (OUT/modules/NAME), or one for the corpus (OUT/adapter)."""
    if per_document:
        names = module_names([d.id for d in docs])
        return [Module(names[d.id], [d], out / "modules" / names[d.id]) for d in docs]
    return [Module("corpus", docs, out / "adapter")]


def distill_module(state: KnowledgeRun, module: Module, n: int, total: int) -> None:
    """Train (or, on resume, load) one module, evaluate and save it, then take the adapter off for the next."""
    prepare_pairs(state, module)
    student, result = train_module(state, module, n, total)
    report = {"name": module.name, "path": str(module.target), "pairs": len(module.pairs)}
    if state.accelerator.is_main_process:
        report.update(evaluate_module(state, module, student))
        save_module(state, module, student, result, report)
    state.module_reports.append(report)
    state.accelerator.wait_for_everyone()
    state.model = student.unload()


def prepare_pairs(state: KnowledgeRun, module: Module) -> None:
    cfg = state.cfg
    pairs = group_pairs(cfg, state.objective_name, state.tokenizer, module.group, state.doc_ids, state.rows,
                        state.by_key, state.window)
    module.pairs = with_anchors(pairs, state.anchors, cfg.anchor_fraction, state.tokenizer, f"{cfg.seed}:{module.name}")
    if not module.pairs:
        raise CtxDistillError(f"No training data for {module.name}: " + (
            "the synthetic data is empty (raise questions_per_chunk or check question_prompt)."
            if state.uses_synthetic else "its documents are too short (one token)."))
    module.fingerprint = fingerprint(training_fingerprint_config(cfg), module.name,
                                     [p.teacher_ids for p in module.pairs], [p.student_ids for p in module.pairs])


def train_module(state: KnowledgeRun, module: Module, n: int, total: int) -> tuple[Any, TrainResult | None]:
    """(the student, its training result); None for a module finished before a resume, which is loaded instead."""
    cfg, accelerator, manifest = state.cfg, state.accelerator, module.target / "module.json"
    finished = json.loads(manifest.read_text()) if manifest.is_file() else {}
    if finished.get("fingerprint") == module.fingerprint:
        accelerator.print(f"Module {module.name}: already trained, loaded from {module.target}.")
        run_log(accelerator).advance(finished.get("metrics", {}).get("train_steps", 0))  # the next module logs after
        return load_adapter(state.model, str(module.target)), None
    student = make_student(state.model, cfg)
    teacher = Teacher(student) if state.objective.needs_teacher else None
    loss_module = DistillLoss(student, teacher, state.objective, cfg.chunk_size)
    deadline = module_deadline(cfg, state.t_start, state.eval_seconds, total - n)
    if total > 1:
        accelerator.print(f"Module {n + 1}/{total}: {module.name}, {len(module.pairs)} pairs.")
    result = train(accelerator, loss_module, module.pairs, lambda b: collate_pairs(b, state.tokenizer.pad_token_id),
                   train_settings(cfg, deadline), state.out / "checkpoint" / f"{module.name}.pt", resume=state.resume,
                   fingerprint=module.fingerprint)
    state.train_seconds += result.seconds
    return student, result


def module_deadline(cfg: KnowledgeConfig, t_start: float, eval_seconds: float, modules_left: int) -> float | None:
    """The modules still to train share the time left equally; evaluating does not count against the budget."""
    deadline_at = budget_deadline(cfg, t_start)
    return share_budget(deadline_at + eval_seconds if deadline_at else None, [1.0] * modules_left)


def own_questions(items: list[tuple[str | None, dict]], qs: QuestionSet | None, doc: str | None) -> list[int]:
    """The questions a module answers: all of them for the corpus module (doc None); for a document's module,
    those that name its document, or that name none and whose best retrieved chunk is from it."""
    return [i for i, (doc_id, _) in enumerate(items) if doc is None or doc_id == doc
            or (doc_id is None and qs.retrieved_docs[i] == doc)]


def evaluate_module(state: KnowledgeRun, module: Module, student) -> dict:
    """The module on its own questions, closed-book and with retrieval, and its retention (main process)."""
    student.eval()
    t_eval = time.time()
    mine = own_questions(state.items, state.qs, module.group[0].id if state.per_document else None)
    got = module_rows(student, state.tokenizer, state.qs, state.cfg.eval_max_new_tokens, mine) \
        if state.qs and mine else {}
    for key, answers in got.items():
        for i, a in zip(mine, answers):
            state.module_answers[key][i] = a
    kept = state.probe.measure(student)
    state.eval_seconds += time.time() - t_eval
    state.measured.append(kept)
    return {"knowledge": score([state.module_answers["module"][i] for i in mine], [state.items[i][1] for i in mine]),
            "questions": len(mine), "retention": kept["accuracy"], "retention_n": kept["n"],
            "kl_to_base": round(kept["kl_to_initial"], 5), "retention_answers": kept["answers"]}


def save_module(state: KnowledgeRun, module: Module, student, result: TrainResult | None, report: dict) -> None:
    """A plain PEFT adapter with its module.json; a module loaded on resume keeps its files and brings its metrics."""
    if result is None:
        report.update(json.loads((module.target / "module.json").read_text()).get("metrics", {}))
        return
    report.update({"train_steps": result.steps_done, "total_steps": result.total_steps,
                   "planned_steps": result.planned_steps, "stopped_by_budget": result.stopped_by_budget, "train_seconds": round(result.seconds, 1),
                   "final_loss": result.final_loss})
    cfg = state.cfg
    save_adapter(student, module.target)
    write_module_manifest(module.target, {
        "name": module.name, "recipe": "knowledge", "objective": state.objective_name,
        "data": cfg.knowledge_data if state.objective_name == "dcd" else state.objective_name,
        "base_model": cfg.model, "base_model_path": state.base_path,
        "documents": [{"id": d.id, "sha256": sha256_text(d.text),
                       "chunks": sum(c.doc_id == d.id for c in state.chunks)} for d in module.group],
        "config": cfg.to_dict(), "fingerprint": module.fingerprint,
        "metrics": {k: v for k, v in report.items() if k not in ("name", "path", "retention_answers")}})


def write_artifacts(state: KnowledgeRun) -> RunResult | None:
    """manifest.json and report.md by the main process; the other processes get None."""
    result = write_report(state) if state.accelerator.is_main_process else None
    state.accelerator.wait_for_everyone()
    end_trackers(state.accelerator)
    return result


def write_report(state: KnowledgeRun) -> RunResult:
    cfg, out, reports = state.cfg, state.out, state.module_reports
    result = None
    if state.qs:
        answers = {**state.reference, **{k: [a or "" for a in v] for k, v in state.module_answers.items()}}
        result = knowledge_result(state.qs, answers, retention_rows(state.probe, state.measured))
        log_evaluation(state.accelerator, result)
    elapsed = time.time() - state.t_start
    metrics = {"generation_seconds": round(state.generation_seconds, 1),
               "train_seconds": round(state.train_seconds, 1), "eval_seconds": round(state.eval_seconds, 1),
               "total_seconds": round(elapsed, 1), "train_steps": sum(r.get("train_steps", 0) for r in reports),
               "synthetic_rows": len(state.rows), "chunks": len(state.chunks), "modules": reports}
    if result:
        metrics["knowledge"] = {k: v for k, v in result.items() if k != "questions"}
    folders = module_names([d.id for d in state.inputs.docs]) if state.per_document else {}
    write_manifest(out, {"recipe": "knowledge", "objective": state.objective_name, "base_model": cfg.model,
                         "base_model_path": state.base_path, "per_document": state.per_document,
                         "documents": [{"id": d.id, "sha256": sha256_text(d.text)} for d in state.inputs.docs],
                         **({"modules": {i: f"modules/{n}" for i, n in folders.items()}} if folders else {}),
                         "config": cfg.to_dict(), "metrics": metrics})
    title, lines = TITLES[state.objective_name], report_lines(state, metrics["train_steps"], elapsed)
    if result:
        write_knowledge_report(out, title, lines, result)
    else:
        atomic_write_text(out / "report.md", "\n".join([f"# {title}", "", *lines, "", NO_QUESTIONS, ""]))
    return RunResult(out, ["modules" if state.per_document else "adapter", "manifest.json", "report.md"], metrics,
                     knowledge_table(result) if result else "", NO_QUESTIONS)


def report_lines(state: KnowledgeRun, total_steps: int, elapsed: float) -> list[str]:
    cfg, reports = state.cfg, state.module_reports
    kinds = {k: sum(r["kind"] == k for r in state.rows) for k in ("summary", "qa")}
    per_module = ["- per module (its own questions; retention on the general set): " + "; ".join(
        f"{r['name']} {r['knowledge']}/{r['questions']}, retention {r['retention']}/{r['retention_n']}, "
        f"KL {r['kl_to_base']:.3f}" for r in reports)] if len(reports) > 1 else []
    return [f"- base model: `{cfg.model}`; objective: {state.objective_name}"
            + (f" ({cfg.knowledge_data} data)" if state.objective_name == "dcd" else ""),
            f"- documents: {len(state.inputs.docs)} in {len(state.chunks)} chunks of ≤{cfg.chunk_tokens} tokens; "
            "modules: " + ", ".join(f"`{r['path']}`" for r in reports),
            (f"- synthetic data: {kinds['summary']} summaries and {kinds['qa']} question–answer pairs"
             if state.uses_synthetic else "- data: the document text"),
            f"- training: {total_steps} steps" + planned_note(
                {"planned_steps": sum(r.get("planned_steps", 0) for r in reports),
                 "total_steps": sum(r.get("total_steps", 0) for r in reports),
                 "stopped_by_budget": any(r.get("stopped_by_budget") for r in reports)}),
            *per_module,
            (f"- time: generation {state.generation_seconds:.0f}s, training {state.train_seconds:.0f}s, "
             f"evaluation {state.eval_seconds:.0f}s, total {elapsed:.0f}s")]


def group_pairs(cfg: KnowledgeConfig, objective_name: str, tokenizer, group: list[Document],
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


RECIPES = [Recipe("knowledge", "knowledge modules from documents by deep context distillation "
                  "(--objective ntp-doc|ntp-synth: baselines)", KnowledgeConfig,
                  ("docs", "qa", "retention", "per_document"), run)]
