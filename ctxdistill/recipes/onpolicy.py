"""On-Policy Context Distillation (OPCD): the student learns from its own samples.

1. queries: --prompts, the context file's own "prompts", or synthesized by the model shown the context;
2. every step, the student (current weights, no context) samples completions for a batch of queries;
   with probability offline_fraction a step uses teacher samples instead (the model with the context);
3. the teacher — the base with the adapter off (default), another model (--teacher), or the live student
   (teacher: live) — reads the context + query and scores the very same completion ids;
4. the student minimizes the per-token reverse KL(student ‖ teacher) on its own top-k (default 256, renormalized),
   or any other objective of ctxdistill.core.objectives (forward KL, JSD) for ablations;
5. adapter, manifest and a report: the eval questions without context (base / teacher / student), and forgetting:
   retention accuracy and KL(base ‖ student) on the base's own answers to unrelated questions.
"""

from __future__ import annotations

import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from ctxdistill import CtxDistillError
from ctxdistill.config import OnpolicyConfig
from ctxdistill.core.ema import EmaAdapter
from ctxdistill.core.files import atomic_write_json, load_json
from ctxdistill.core.generation import MergedCopy, generate, make_backend, resolve_backend
from ctxdistill.core.losses import DistillLoss, PairBatch, collate_pairs
from ctxdistill.core.objectives import Objective
from ctxdistill.core.pairs import Context, assistant_header, build_pair, render_prompt
from ctxdistill.core.teacher import (TEACHER_ADAPTER, Teacher, adapter_on, add_teacher_adapter, drop_teacher_adapter,
                                     load_teacher_model)
from ctxdistill.core.tracking import end_trackers, log_evaluation
from ctxdistill.core.training import TrainResult, train
from ctxdistill.data.anchors import anchor_draws, anchor_prompts
from ctxdistill.data.inputs import read_context, read_prompts, read_qa, read_qa_items, read_retention
from ctxdistill.data.per_row import PerRowExample, Templates, read_per_row
from ctxdistill.data.queries import OTHER_ORIGINS, query_origins
from ctxdistill.eval.evaluation import evaluate, results_table
from ctxdistill.eval.reports import planned_note, query_report, write_report
from ctxdistill.recipes.artifacts import save_trained, sha256_text, write_manifest
from ctxdistill.recipes.base import Recipe, RunResult
from ctxdistill.recipes.common import (budget_deadline, check_data_inputs, check_per_row_inputs, fingerprint,
                                       main_process_writes, make_student, model_window, open_run, per_row_views,
                                       plan_context_queries, train_settings, training_fingerprint_config)

ARTIFACTS = ["adapter", "manifest.json", "report.md"]
DEFAULT_ANCHOR_FRACTION = 0.1  # anchor_fraction unset, with a context: measured on held-out personas (docs/onpolicy.md)
QUERY_KEYS = ("model", "teacher", "num_queries", "everyday_fraction", "synthesized_fraction", "probes_per_statement",
              "query_temperature", "seed")  # what synthesized queries came from
NO_TABLE = "(no eval questions: pass --eval FILE or put an \"eval\" list in the context)"


@dataclass
class Inputs:
    context: Context | None  # the shared --context; None only with --data (each row has its own)
    prompts: list[str] | None  # --prompts, else the context file's own; None: synthesize them
    eval_qa: list[dict] | None
    retention: list[dict]
    rows: list[PerRowExample] | None = None  # --data: a prompt and a teacher-only context per row
    data_path: str | None = None


@dataclass
class Models:
    accelerator: object
    model: object  # the student's base model
    tokenizer: object
    base_path: str
    other: object | None  # another model as the teacher (--teacher)
    live: bool  # the current student is its own teacher
    window: int
    backend: object = None  # llama.cpp (llamacpp_sampler): samples the queries, the student, the teacher; evaluates


@dataclass
class Queries:
    texts: list[str]
    teacher_prompts: dict[str, list[int]]  # context + query
    student_prompts: dict[str, list[int]]  # the query alone
    origins: dict[str, int] | None = None  # queries per origin (prompts, probes, everyday, synthesized, anchor)
    anchors: frozenset[str] = frozenset()  # retention anchors: held to the base without the context


@dataclass
class Setup:
    student: object
    sampler: MergedCopy | None  # a LoRA student samples through a merged copy
    teacher: Teacher
    objective: Objective
    loss: DistillLoss
    ema: EmaAdapter | None = None  # teacher_kind=ema: the averaged adapter next to the student's
    backend: object = None  # generation_backend=llamacpp: llama.cpp samples (docs/generation.md); None: torch
    initial: object = None  # --init-adapter: a merged copy of the model before this run, for the report


@dataclass
class Samples:
    completions: list[list[int]]
    from_teacher: bool
    seed: int


@dataclass
class SampleStats:
    student_samples: int = 0
    teacher_samples: int = 0
    generation_seconds: float = 0.0


def read_inputs(cfg: OnpolicyConfig, context: list[str] | None, prompts: str | None, eval_qa: str | None,
                retention: str | None, columns=None, data: str | None = None) -> Inputs:
    if data:
        return read_per_row_inputs(cfg, context, prompts, eval_qa, retention, columns, data)
    if len(context or []) != 1:
        raise CtxDistillError("The onpolicy recipe takes exactly one --context FILE.")
    data = read_context(context[0])
    given = read_prompts(prompts, columns) if prompts else None
    kept = read_retention(retention, columns)
    qa = read_qa(eval_qa, "--eval", columns) if eval_qa else \
        (read_qa_items(data["eval"], f"{context[0]}: 'eval'") if data.get("eval") else None)
    return Inputs(Context(data["context"], cfg.context_kind), given or data.get("prompts") or data.get("train_prompts"),
                  qa, kept)


def read_per_row_inputs(cfg: OnpolicyConfig, context: list[str] | None, prompts: str | None, eval_qa: str | None,
                        retention: str | None, columns, data: str) -> Inputs:
    """--data rows, each with its teacher-only context; an optional shared --context is added to every teacher
    view (as context_kind says)."""
    check_per_row_inputs("onpolicy", list(context or []), prompts, eval_qa)
    shared = read_context(context[0]) if context else None
    rows = read_per_row(data, Templates.of(cfg), columns)
    qa = read_qa(eval_qa, "--eval", columns) if eval_qa else None
    return Inputs(Context(shared["context"], cfg.context_kind) if shared else None, None, qa,
                  read_retention(retention, columns), rows, str(data))


def context_digests(inputs: Inputs) -> list[str]:
    """What the teacher's views were made from: the shared context, and the per-row data."""
    digests = [sha256_text(inputs.context.text)] if inputs.context else []
    if inputs.rows:
        digests.append(fingerprint([(r.student, r.teacher) for r in inputs.rows]))
    return digests


def open_models(cfg: OnpolicyConfig, out: Path, resume: bool) -> Models:
    # OnpolicyConfig has checked that a live teacher comes with LoRA
    live = cfg.teacher == "live" or cfg.teacher_kind == "live"
    accelerator, model, tokenizer, base_path = open_run(cfg, out, resume)
    other = load_teacher_model(cfg.teacher, tokenizer, cfg.dtype, accelerator.device, model) \
        if cfg.teacher and not live else None
    models = Models(accelerator, model, tokenizer, base_path, other, live, model_window(model, cfg))
    models.backend = llamacpp_sampler(cfg, models)
    return models


def per_row_queries(cfg: OnpolicyConfig, inputs: Inputs, models: Models) -> Queries:
    """--data: one example per row, keyed by its row number (two rows may share a prompt, not a context)."""
    keys = [f"row {n}" for n in range(1, len(inputs.rows) + 1)]
    views = per_row_views(models.tokenizer, inputs.rows, inputs.context, cfg.max_new_tokens, models.window,
                          inputs.data_path)
    queries = Queries(keys, {k: teacher for k, (teacher, _) in zip(keys, views)},
                      {k: student for k, (_, student) in zip(keys, views)}, {"data": len(keys)})
    # TRL's SDFT has no anchors: with rows they are off unless asked for (anchor_fraction set)
    return add_anchor_queries(queries, cfg, cfg.anchor_fraction or 0.0, models.tokenizer, inputs.context)


def add_anchor_queries(queries: Queries, cfg: OnpolicyConfig, fraction: float, tokenizer, context) -> Queries:
    """Retention anchors: general requests on which the student is held to the base without the context, so that
    what the context changes does not leak into everything (a persona's voice into factual answers). An anchor's
    teacher view still reads the shared context first, so an encoded context prefix stays valid for every view."""
    anchors = [a for a in anchor_prompts(cfg) if a not in queries.teacher_prompts] if fraction > 0 else []
    if not anchors:
        return queries
    queries.texts += anchor_draws(anchors, round(fraction * len(queries.texts)), f"{cfg.seed}:anchors")
    queries.teacher_prompts.update({a: render_prompt(tokenizer, a, context) for a in anchors})
    queries.student_prompts.update({a: render_prompt(tokenizer, a) for a in anchors})
    queries.anchors = frozenset(anchors)
    queries.origins = {**(queries.origins or {}), "anchor": len(anchors)}
    return queries


def make_queries(cfg: OnpolicyConfig, inputs: Inputs, models: Models, out: Path) -> Queries:
    """The training queries (made once, kept in OUT/data for --resume) and both views of each."""
    if inputs.rows:
        return per_row_queries(cfg, inputs, models)
    def synthesize():
        if inputs.prompts:
            return [{"prompt": q, "origin": "prompts"} for q in inputs.prompts]
        model = models.other if models.other is not None else models.model
        if models.other is not None and models.backend is not None:
            models.accelerator.print("generation_backend=llamacpp: the --teacher model writes the queries on the "
                                     "torch loop.")
        plan = plan_context_queries(cfg, model, models.tokenizer, inputs.context.text, "the context", cfg.seed,
                                    backend=models.backend if models.other is None else None)
        atomic_write_json(out / "data" / "query_gate.json", [{"source": "context", **plan.gate, "raw": plan.raw}])
        return plan.queries

    rows = main_process_writes(models.accelerator, out / "data" / "queries.jsonl", synthesize)
    # Probes carry the context's content, everyday and model-written queries spread its influence: a probe is drawn
    # probe_repeats times as often (offline gets the same balance from samples_per_query / samples_per_other_query).
    texts = [row["prompt"] for row in rows for _ in range(1 if row.get("origin") in OTHER_ORIGINS
                                                            else cfg.probe_repeats)]
    tokenizer = models.tokenizer
    queries = Queries(texts, {q: render_prompt(tokenizer, q, inputs.context) for q in set(texts)},
                      {q: render_prompt(tokenizer, q) for q in set(texts)}, query_origins(rows))
    unset = DEFAULT_ANCHOR_FRACTION if cfg.hidden_weight == 0 else 0.0  # anchors have no hidden-state rows
    fraction = unset if cfg.anchor_fraction is None else cfg.anchor_fraction
    queries = add_anchor_queries(queries, cfg, fraction, tokenizer, inputs.context)
    longest = max(len(p) for p in queries.teacher_prompts.values()) + cfg.max_new_tokens
    if longest > models.window:
        raise CtxDistillError(f"Context + query + completion is {longest} tokens, longer than the model window "
                              f"({models.window}). Shorten the context or lower max_new_tokens.")
    return queries


def set_up(cfg: OnpolicyConfig, models: Models, queries: Queries, init_adapter: str | None = None,
           evaluated: bool = False) -> Setup:
    """Student, sampler and teacher. The context is encoded once for every teacher forward and teacher sample.
    With --init-adapter the student keeps training that adapter; a base teacher is still the base (adapter off),
    while a live or EMA teacher starts from the adapter, so it holds what the adapter learnt before. `evaluated`:
    the run ends with the report's evaluation, which shows the model before this run (a merged copy, kept only
    then)."""
    student = make_student(models.model, cfg, init_adapter)
    initial = MergedCopy(student).model if init_adapter and evaluated else None
    backend = models.backend
    # The merged copy samples the LoRA student on the torch loop; with llama.cpp only a live teacher still needs it.
    sampler = MergedCopy(student) if cfg.finetune == "lora" and (backend is None or models.live) \
        else None
    if cfg.teacher_adapter:  # after the sampler's copy: it samples as the student only
        add_teacher_adapter(student, cfg.teacher_adapter)
    ema = EmaAdapter(student, cfg.ema_decay) if cfg.teacher_kind == "ema" else None  # after the sampler's copy too
    teacher = Teacher(student, frozen_copy=cfg.finetune == "full" and models.other is None, other=models.other,
                      live=models.live, adapter=TEACHER_ADAPTER if cfg.teacher_adapter else None, ema=ema)
    # A live or EMA teacher's weights change every step: a cache of its context would go stale.
    if cfg.prefix_cache and not models.live and ema is None:
        views = list(queries.teacher_prompts.values())
        teacher.encode_shared_prefix(views, [len(v) for v in views])
    objective = cfg.build_objective()
    return Setup(student, sampler, teacher, objective,
                 DistillLoss(student, teacher, objective, cfg.chunk_size, cfg.skip_first, amplify=cfg.amplify), ema,
                 backend=backend, initial=initial)


def llamacpp_sampler(cfg: OnpolicyConfig, models: Models):
    """generation_backend=llamacpp: the llama.cpp backend that samples the LoRA student (its adapter is handed over
    before each step's sampling) and the base teacher; None: the torch loop samples everything."""
    chosen = resolve_backend(cfg.generation_backend, cfg.model, models.accelerator.device)
    if chosen != "llamacpp" or (cfg.generation_backend == "auto" and cfg.finetune != "lora"):
        return None
    if cfg.finetune != "lora":
        raise CtxDistillError("generation_backend=llamacpp follows a LoRA student (its adapter goes to llama.cpp "
                              "after each update); with finetune=full set generation_backend=torch.")
    if (cfg.generate_from_teacher or cfg.offline_fraction > 0) and (
            cfg.teacher_kind != "base" or cfg.teacher_adapter or models.other is not None):
        models.accelerator.print("generation_backend=llamacpp: this teacher's samples (a live/EMA teacher, a "
                                 "teacher adapter or --teacher model) are drawn by the torch loop.")
    models.accelerator.print(f"Sampling with llama.cpp ({cfg.llamacpp_outtype} GGUF of the base; "
                             f"generation_backend={cfg.generation_backend}).")
    return make_backend("llamacpp", models.model, models.tokenizer, base=cfg.model, outtype=cfg.llamacpp_outtype)


class SampleCollate:
    """The train loop's collate: samples a batch's completions now, from the current weights, and pairs each with
    its teacher view. Sampling here rather than before training is what makes the recipe on-policy."""

    def __init__(self, cfg: OnpolicyConfig, models: Models, queries: Queries, setup: Setup):
        self.cfg, self.models, self.queries, self.setup = cfg, models, queries, setup
        self.header = assistant_header(models.tokenizer)
        self.stats = SampleStats()

    def __call__(self, batch_queries: list[str]) -> PairBatch:
        samples = self.sample(batch_queries)
        t_prompts, s_prompts = self.queries.teacher_prompts, self.queries.student_prompts
        kept = [(q, y) for q, y in zip(batch_queries, samples.completions) if y]
        pairs = [build_pair(t_prompts[q], s_prompts[q], y, self.header, self.models.window) for q, y in kept]
        for (q, _), pair in zip(kept, pairs):
            pair.anchor = q in self.queries.anchors
        if not pairs:
            raise CtxDistillError("Every sample of a batch came back empty; check the model and max_new_tokens.")
        return collate_pairs(pairs, self.models.tokenizer.pad_token_id, self.cfg.skip_first)

    def sample(self, batch_queries: list[str]) -> Samples:
        """The batch's completions, from the student, or on an offline step from the model with the context."""
        t0, stats = time.time(), self.stats
        # Seeded by the count of samples so far: a step's source and samples do not depend on the training RNG.
        step_rng = random.Random(f"{self.cfg.seed}:{stats.student_samples + stats.teacher_samples}")
        from_teacher = self.cfg.generate_from_teacher or (
            self.cfg.offline_fraction > 0 and step_rng.random() < self.cfg.offline_fraction)
        seed = step_rng.randrange(2**31)
        ys = self._from_teacher(batch_queries, seed) if from_teacher else self._from_student(batch_queries, seed)
        if from_teacher:
            stats.teacher_samples += len(batch_queries)
        else:
            stats.student_samples += len(batch_queries)
        stats.generation_seconds += time.time() - t0
        return Samples(ys, from_teacher, seed)

    def _settings(self, seed: int) -> dict:
        cfg = self.cfg
        return dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.sample_temperature,
                    batch_size=cfg.gen_batch_size, show_progress=False, seed=seed)

    def _generate(self, model, prompts: list[list[int]], seed: int, prefix=None) -> list[list[int]]:
        return generate(model, self.models.tokenizer, prompts, prefix=prefix, **self._settings(seed))

    def _from_teacher(self, batch_queries: list[str], seed: int) -> list[list[int]]:
        if self.cfg.teacher_kind != "base":  # the student's own adapter (live) or its average (ema) is the teacher
            return self._from_own_teacher([self.queries.teacher_prompts[q] for q in batch_queries], seed)
        other, student = self.models.other, self.setup.student
        if self.setup.backend is not None and other is None and not self.cfg.teacher_adapter:
            self.setup.backend.use_lora(None)  # the base weights with the context
            return self.setup.backend.generate([self.queries.teacher_prompts[q] for q in batch_queries],
                                               **self._settings(seed))
        # The base model carries the student's LoRA layers in place: switch them off to sample as the teacher.
        with adapter_on(student) if self.cfg.teacher_adapter else \
                student.disable_adapter() if self.cfg.finetune == "lora" and other is None else nullcontext():
            return self._generate(other if other is not None else self.models.model,
                                  [self.queries.teacher_prompts[q] for q in batch_queries], seed,
                                  prefix=self.setup.teacher.prefix)

    def _from_own_teacher(self, prompts: list[list[int]], seed: int) -> list[list[int]]:
        """Samples of the teacher view from the live student (through the merged copy) or the EMA adapter (on the
        student's own PEFT model: no second copy of the weights)."""
        sampler, teacher = self.setup.sampler, self.setup.teacher
        if teacher.ema is None and sampler is not None:
            return self._generate(sampler.sync(), prompts, seed)
        with teacher.ema.active() if teacher.ema is not None else nullcontext():
            was_training = self.setup.student.training
            self.setup.student.eval()
            try:
                return self._generate(self.setup.student, prompts, seed)
            finally:
                self.setup.student.train(was_training)

    def _from_student(self, batch_queries: list[str], seed: int) -> list[list[int]]:
        if self.setup.backend is not None:  # llama.cpp, with the student's LoRA as it is after the last update
            self.setup.backend.use_lora(self.setup.student)
            return self.setup.backend.generate([self.queries.student_prompts[q] for q in batch_queries],
                                               **self._settings(seed))
        sampler = self.setup.sampler
        if sampler is not None:
            sampler.sync()
        return self._generate(sampler.model if sampler is not None else self.setup.student,
                              [self.queries.student_prompts[q] for q in batch_queries], seed)


def train_student(cfg: OnpolicyConfig, inputs: Inputs, models: Models, queries: Queries, setup: Setup,
                  collate: SampleCollate, out: Path, resume: bool, t_start: float,
                  init_adapter: str | None = None) -> TrainResult:
    """One pass over the queries per epoch, fresh samples every step. An EMA teacher follows the loop: updated after
    every optimizer step, saved in its checkpoints."""
    # A shared context alone keeps the digest runs made before --data existed, so their checkpoints still resume.
    made_from = context_digests(inputs) if inputs.rows else sha256_text(inputs.context.text)
    # An --init-adapter is part of what a checkpoint continues from; without one the key is as before it existed.
    key = fingerprint(training_fingerprint_config(cfg), queries.texts, made_from,
                      *([init_adapter] if init_adapter else []))
    return train(models.accelerator, setup.loss, queries.texts, collate,
                 train_settings(cfg, budget_deadline(cfg, t_start)), out / "checkpoint" / "state.pt",
                 resume=resume, fingerprint=key, follower=setup.ema)


def run_metrics(result: TrainResult, stats: SampleStats, t_eval: float, t_start: float) -> dict:
    return {"train_steps": result.steps_done, "total_steps": result.total_steps,
            "planned_steps": result.planned_steps, "stopped_by_budget": result.stopped_by_budget,
            "final_loss": result.final_loss,
            "train_seconds": round(result.seconds - stats.generation_seconds, 1),
            "generation_seconds": round(stats.generation_seconds, 1),
            "student_samples": stats.student_samples, "teacher_samples": stats.teacher_samples,
            "eval_seconds": round(time.time() - t_eval, 1), "total_seconds": round(time.time() - t_start, 1),
            "loss_history": result.loss_history}


def report_lines(cfg: OnpolicyConfig, objective: Objective, result: TrainResult, stats: SampleStats,
                 n_queries: int, t_start: float, init_adapter: str | None = None) -> list[str]:
    teacher_name = "live student" if cfg.teacher == "live" or cfg.teacher_kind == "live" else \
        f"EMA of the student (decay {cfg.ema_decay})" if cfg.teacher_kind == "ema" else (
        cfg.teacher or (f"base model + adapter {cfg.teacher_adapter}" if cfg.teacher_adapter
                        else "base model, adapter off"))
    return [f"- base model: `{cfg.model}`" + (f"; initial adapter: `{init_adapter}`" if init_adapter else "") +
            f"; teacher: {teacher_name}, with the context as {cfg.context_kind}",
            f"- objective: {dict(objective.terms)}, top-k {objective.top_k or 'full vocabulary'} "
            f"({objective.support}, {objective.tail}); offline_fraction {cfg.offline_fraction}",
            f"- training: {result.steps_done}/{result.total_steps} steps" + planned_note(
                {"planned_steps": result.planned_steps, "total_steps": result.total_steps,
                 "stopped_by_budget": result.stopped_by_budget}) + f" on {n_queries} queries, "
            f"{stats.student_samples} student samples + {stats.teacher_samples} teacher samples, "
            f"final loss {result.final_loss:.4f}",
            f"- time: sampling {stats.generation_seconds:.0f}s, the rest of training "
            f"{result.seconds - stats.generation_seconds:.0f}s, total {time.time() - t_start:.0f}s"]


def will_evaluate(cfg: OnpolicyConfig, inputs: Inputs) -> bool:
    """The report's evaluation compares the adapter on and off on the eval questions: LoRA, with a context."""
    return bool(inputs.eval_qa and inputs.context and cfg.finetune == "lora")


def write_artifacts(cfg: OnpolicyConfig, inputs: Inputs, models: Models, queries: Queries, setup: Setup,
                    result: TrainResult, stats: SampleStats, out: Path, t_start: float,
                    init_adapter: str | None = None) -> RunResult:
    """Adapter, the evaluation (LoRA only: it compares the adapter on and off), manifest and report."""
    student = setup.student
    student.eval()
    teacher_model = models.other
    if cfg.teacher_adapter:  # the report's teacher row needs the teacher's adapter, the saved folder must not hold it
        if inputs.eval_qa:
            with adapter_on(student):
                teacher_model = MergedCopy(student).model
        drop_teacher_adapter(student)
    if setup.ema is not None:  # the adapter folder holds the student only; the EMA stays in OUT/checkpoint
        setup.ema.remove()
    save_trained(student, models.tokenizer, out, cfg.finetune)
    t_eval = time.time()
    evaluation = evaluate(student, models.tokenizer, inputs.context, inputs.eval_qa, inputs.retention,
                          cfg.eval_max_new_tokens, teacher_model=teacher_model, initial_model=setup.initial,
                          backend=setup.backend) if will_evaluate(cfg, inputs) else None
    log_evaluation(models.accelerator, evaluation)
    metrics = run_metrics(result, stats, t_eval, t_start)
    gate_file = out / "data" / "query_gate.json"
    gates = load_json(gate_file, str(gate_file)) if gate_file.exists() else []
    if evaluation:
        metrics["evaluation"] = evaluation
    write_manifest(out, {"recipe": "onpolicy", "base_model": cfg.model, "base_model_path": models.base_path,
                         "init_adapter": init_adapter,
                         "context_sha256": context_digests(inputs), "context_kind": cfg.context_kind,
                         "config": cfg.to_dict(), "data": {"queries": len(set(queries.texts)),
                                                           "query_origins": queries.origins, "query_gate": gates},
                         "metrics": metrics})
    write_report(out, "on-policy context distillation",
                 report_lines(cfg, setup.objective, result, stats, len(set(queries.texts)), t_start, init_adapter),
                 evaluation,
                 result.loss_history, extra=query_report(queries.origins, gates))
    return RunResult(out, ARTIFACTS, metrics, results_table(evaluation) if evaluation else "", NO_TABLE)


def run(cfg: OnpolicyConfig, out: str, resume: bool = False, *, context: list[str] | None = None,
        prompts: str | None = None, eval_qa: str | None = None, retention: str | None = None,
        columns: dict | None = None, data: str | None = None, init_adapter: str | None = None) -> RunResult | None:
    """Returns the result on the main process, None on the others. `columns`: the dataset columns of inputs given
    as datasets, and their split (see data/hf_datasets.py). `data`: rows with a teacher-only context each
    (data/per_row.py), in place of --prompts; --context is then optional. `init_adapter`: a LoRA adapter to keep
    training (e.g. learning a second skill after a first)."""
    t_start, out_dir = time.time(), Path(out)
    if init_adapter and cfg.finetune != "lora":  # before anything is loaded
        raise CtxDistillError("--init-adapter continues a LoRA adapter; it needs finetune=lora.")
    inputs = read_inputs(cfg, context, prompts, eval_qa, retention, columns, data)
    models = open_models(cfg, out_dir, resume)
    if models.accelerator.is_main_process:  # before OUT/data/queries.jsonl is reused
        check_data_inputs(out_dir, {"context_sha256": context_digests(inputs), "prompts": inputs.prompts,
                                    **({} if inputs.prompts or inputs.rows else
                                       {k: getattr(cfg, k) for k in QUERY_KEYS})})
    queries = make_queries(cfg, inputs, models, out_dir)
    setup = set_up(cfg, models, queries, init_adapter, evaluated=will_evaluate(cfg, inputs))
    collate = SampleCollate(cfg, models, queries, setup)
    result = train_student(cfg, inputs, models, queries, setup, collate, out_dir, resume, t_start, init_adapter)
    done = write_artifacts(cfg, inputs, models, queries, setup, result, collate.stats, out_dir, t_start,
                           init_adapter) \
        if models.accelerator.is_main_process else None
    models.accelerator.wait_for_everyone()
    end_trackers(models.accelerator)
    return done


RECIPES = [Recipe("onpolicy", "on-policy context distillation: the student learns from its own samples (OPCD)",
                  OnpolicyConfig, ("context", "prompts", "eval_qa", "retention", "data", "init_adapter"), run)]
