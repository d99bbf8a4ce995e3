"""Offline context distillation (Snell, Klein, Zhong 2022, "Learning by Distilling Context").

1. sources: each --context file (split into parts if it does not fit the window) and/or a pool of --examples;
   or --data rows, each with a teacher-only context of its own (data/per_row.py; teacher view = the row's, student
   view = its bare prompt; an optional shared --context goes into every teacher view);
2. queries: from the source's own prompts, --prompts, or synthesized by the model shown the context;
3. the teacher (the model *with* the context; for LoRA the same weights, adapter off; or --teacher) samples
   completions, optionally reasoning on a scratch-pad before an answer delimiter;
4. pairs: teacher view = render(context, query) [+ scratch-pad] + y, student view = render(query) + y; in ensemble
   mode (and for the parts of a split context) the teacher views under every context are averaged;
5. the student (the model *without* the context, + LoRA) learns y, one source after another (sequential) or all
   at once (ensemble): soft targets (forward KL) by default, or any objective of ctxdistill.core.objectives;
6. adapter, manifest and a before/after report.
"""

from __future__ import annotations

import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ctxdistill import CtxDistillError
from ctxdistill.config import OfflineConfig
from ctxdistill.core.files import atomic_write_json, load_json
from ctxdistill.core.forward import MIN_SHARED_PREFIX, encode_prefix, shared_prefix_len
from ctxdistill.core.generation import (MergedCopy, TorchBackend, chosen_engine, make_backend, resolve_backend,
                                        stop_token_ids)
from ctxdistill.core.losses import DistillLoss, collate_pairs, context_evidence
from ctxdistill.core.models import enable_gradient_checkpointing, load_adapter
from ctxdistill.core.pairs import Context, Pair, assistant_header, build_pair, render_prompt
from ctxdistill.core.teacher import (CONTEXT_CACHE_TOKENS, TEACHER_ADAPTER, Teacher, adapter_on, add_teacher_adapter,
                                     drop_teacher_adapter, load_teacher_model)
from ctxdistill.core.tracking import end_trackers, log_evaluation
from ctxdistill.core.topk_cache import TopKCache, build_topk_cache
from ctxdistill.core.training import total_steps_for, train
from ctxdistill.data.anchors import make_anchors, with_anchors
from ctxdistill.data.inputs import read_context, read_prompts, read_qa, read_qa_items, read_retention
from ctxdistill.data.per_row import PerRowExample, Templates, read_per_row
from ctxdistill.data.queries import OTHER_ORIGINS, query_origins
from ctxdistill.data.sources import Source, context_source, examples_source
from ctxdistill.eval.evaluation import evaluate, results_table
from ctxdistill.eval.reports import planned_note, query_report, write_report
from ctxdistill.recipes.artifacts import save_trained, sha256_text, write_manifest
from ctxdistill.recipes.base import Recipe, RunResult
from ctxdistill.recipes.common import (GENERATION_SHARE, budget_deadline, check_data_inputs, check_per_row_inputs,
                                       fingerprint, generation_deadline, main_process_writes, make_student,
                                       model_window, open_run, per_row_views, plan_context_queries, share_budget,
                                       train_settings, training_fingerprint_config)

DATA_KEYS = ("model", "teacher", "context_kind", "mode", "num_examples", "example_sets", "scratchpad",
             "answer_delimiter", "scratchpad_instruction", "num_queries", "everyday_fraction", "synthesized_fraction",
             "probes_per_statement", "query_temperature", "samples_per_query", "samples_per_other_query",
             "sample_temperature", "max_new_tokens",
             "amplify", "seed")  # what the cached queries and samples were made with


def make_teacher(cfg: OfflineConfig, objective, student, other, pairs, pad_id: int, out: Path, accelerator,
                 tag: str = ""):
    """The live teacher (context prefix encoded once), or its top-k cache on disk, or None for pure SFT."""
    if not objective.needs_teacher:
        return None
    # The cache is written before any update, so the student's own weights are the initial ones: no copy needed.
    live = Teacher(student, frozen_copy=cfg.finetune == "full" and not cfg.teacher_cache and other is None,
                   other=other, context_cache_tokens=CONTEXT_CACHE_TOKENS if cfg.prefix_cache else 0,
                   adapter=TEACHER_ADAPTER if cfg.teacher_adapter else None)
    if cfg.prefix_cache and not any(p.more_teachers for p in pairs):  # an ensemble caches per context instead
        live.encode_shared_prefix([p.teacher_ids for p in pairs], [p.teacher_prompt_len for p in pairs])
    if not cfg.teacher_cache:
        return live
    if any(p.more_teachers for p in pairs):
        raise CtxDistillError("teacher_cache stores one teacher view per sample; an ensemble of contexts (mode="
                              "ensemble, a split context or example_sets > 1) needs the live teacher.")
    path = out / "data" / f"teacher_topk{tag}"
    digest = fingerprint(cfg.model, cfg.teacher, cfg.top_k, cfg.temperature, [p.teacher_ids for p in pairs])
    if accelerator.is_main_process:
        fresh = (path / "meta.json").exists() and TopKCache(path).fingerprint == digest
        if not fresh:
            build_topk_cache(path, live, pairs, cfg.top_k, cfg.temperature, pad_id, cfg.micro_batch_size,
                             cfg.chunk_size, digest)
    accelerator.wait_for_everyone()
    return TopKCache(path)


def split_scratchpad(tokenizer, ids: list[int], delimiter: str, stops: set[int]) -> tuple[list[int], list[int]] | None:
    """(thought ids up to and including the delimiter, answer ids) of a scratch-pad sample; None without delimiter."""
    text = tokenizer.decode([t for t in ids if t not in stops], skip_special_tokens=False)
    cut = text.find(delimiter)
    if cut < 0:
        return None
    thought = tokenizer(text[: cut + len(delimiter)], add_special_tokens=False)["input_ids"]
    answer_text = text[cut + len(delimiter):]
    if not answer_text.strip():
        return None
    answer = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    if ids and ids[-1] in stops:
        answer = answer + [ids[-1]]  # the student still learns to end its turn
    return thought, answer


def teacher_query(query: str, cfg: OfflineConfig) -> str:
    return f"{query}\n\n{cfg.scratchpad_instruction}" if cfg.scratchpad else query


def load_sources(cfg: OfflineConfig, contexts: dict, examples, tokenizer, window: int | None) -> list:
    reserve = cfg.max_new_tokens + 128  # room for a query and its completion after the context
    sources = [context_source(Path(f).name, data, cfg.context_kind, tokenizer, window, reserve)
               for f, data in contexts.items()]
    if examples is not None:
        sources.append(examples)
    return sources


@dataclass
class OfflineInputs:
    """Every user input, read and checked before anything is loaded or written."""

    contexts: dict[str, dict]
    examples: Source | None
    examples_file: str | None
    prompts: list[str] | None
    retention: list[dict]
    rows: list[PerRowExample] | None = None  # --data: a prompt and a teacher-only context per row
    data_path: str | None = None

    def context_digests(self, sources: list[Source]) -> list[str]:
        """What the teacher's views were made from: each source, and the --data rows (a run without them keeps the
        digests it had before --data existed, so its data and checkpoints are still reused)."""
        digests = [sha256_text(s.text) for s in sources]
        if self.rows:
            digests.append(fingerprint([(r.student, r.teacher) for r in self.rows]))
        return digests


@dataclass
class OfflineRun:
    """The state the steps share: the run's model and folder, its sources, the student and who teaches it."""

    cfg: OfflineConfig
    out: Path
    resume: bool
    t_start: float
    accelerator: Any
    model: Any
    tokenizer: Any
    base_path: str
    window: int
    sources: list[Source]
    amplify: float = 0.0  # α of amplified samples and targets, as resolved for this run (see resolve_amplify)
    other: Any = None  # another model as the teacher (--teacher), or None: the model itself, adapter off
    student: Any = None  # set at set-up only for --init-adapter; LoRA is added after sampling
    initial: Any = None  # the --init-adapter's own behaviour, for the report
    init_adapter: str | None = None
    views: list[tuple[list[int], list[int]]] | None = None  # --data: (teacher, student) prompt ids of each row
    backend: Any = None  # who samples as the teacher (queries, samples, anchors): made on first use, closed at the end

    @property
    def sampler(self):
        return self.other if self.other is not None else self.model

    def sampler_weights(self):
        """The teacher's weights while sampling: the teacher's adapter on (teacher_adapter), else an --init-adapter
        switched off."""
        if self.cfg.teacher_adapter:
            return adapter_on(self.student)
        return self.student.disable_adapter() if self.init_adapter and self.other is None else nullcontext()


def read_inputs(cfg: OfflineConfig, context, prompts, examples, retention, columns=None, data=None,
                eval_qa=None) -> OfflineInputs:
    context_files = [context] if isinstance(context, (str, Path)) else list(context or [])
    if data:
        return read_per_row_inputs(cfg, context_files, prompts, examples, retention, columns, data, eval_qa)
    contexts = {f: read_context(f) for f in context_files}
    example_source = examples_source(examples, cfg.num_examples, cfg.context_kind, columns) if examples else None
    if not contexts and example_source is None:
        raise CtxDistillError("Nothing to distill: give --context FILE (one or more) and/or --examples FILE.")
    return OfflineInputs(contexts, example_source, examples, read_prompts(prompts, columns) if prompts else None,
                         read_retention(retention, columns))


def read_per_row_inputs(cfg: OfflineConfig, context_files: list, prompts, examples, retention, columns, data,
                        eval_qa) -> OfflineInputs:
    """--data rows, each with its teacher-only context; an optional shared --context goes into every teacher view.
    What samples or averages teacher views under contexts of its own is refused: it has no per-row meaning."""
    check_per_row_inputs("offline", context_files, prompts, eval_qa)
    if examples:
        raise CtxDistillError("--examples shows the teacher few-shot examples drawn for each query; --data rows carry "
                              "their teacher's context already. Put the examples in the rows' contexts, or drop "
                              "--data.")
    if cfg.mode == "ensemble":
        raise CtxDistillError("mode=ensemble averages the teacher under every --context; with --data each row has its "
                              "own context. Set mode=sequential (the default), or drop --data.")
    if cfg.scratchpad:
        raise CtxDistillError("scratchpad appends its instruction to a text query; --data rows give the teacher's "
                              "whole view. Write the instruction into the rows (teacher_template), or set "
                              "scratchpad=false.")
    contexts = {f: read_context(f) for f in context_files}
    return OfflineInputs(contexts, None, None, None, read_retention(retention, columns),
                         read_per_row(data, Templates.of(cfg), columns), str(data))


def set_up(cfg: OfflineConfig, inputs: OfflineInputs, out: Path, resume: bool, init_adapter: str | None):
    t_start = time.time()
    accelerator, model, tokenizer, base_path = open_run(cfg, out, resume)
    window = model_window(model, cfg)
    sources = load_sources(cfg, inputs.contexts, inputs.examples, tokenizer, window)
    other = load_teacher_model(cfg.teacher, tokenizer, cfg.dtype, accelerator.device, model) if cfg.teacher else None
    run = OfflineRun(cfg, out, resume, t_start, accelerator, model, tokenizer, base_path, window, sources,
                     resolve_amplify(cfg, sources), other, init_adapter=init_adapter)
    if inputs.rows:  # each row's views, checked against the window before anything is sampled
        shared = Context(next(iter(inputs.contexts.values()))["context"], cfg.context_kind) if inputs.contexts \
            else None
        run.views = per_row_views(tokenizer, inputs.rows, shared, cfg.max_new_tokens, window, inputs.data_path)
    if init_adapter:
        if cfg.finetune != "lora":
            raise CtxDistillError("--init-adapter continues a LoRA adapter; it needs finetune=lora.")
        run.student = load_adapter(model, init_adapter, trainable=True)
        # The old behaviour, for the report. It is not the teacher: measured, a model holding "Your name is Zorblax"
        # keeps answering Zorblax with "Your name is Quibble." in context, so the base (adapter off) teaches.
        run.initial = MergedCopy(run.student).model
    if cfg.teacher_adapter:  # the student's adapter exists from the start: the teacher's sits next to it
        run.student = add_teacher_adapter(run.student or make_student(model, cfg), cfg.teacher_adapter)
    return run


def resolve_amplify(cfg: OfflineConfig, sources: list[Source]) -> float:
    """α for this run: as set, or auto (unset): 1 where each sample has one live teacher view, else 0. A context
    split into parts gives each sample one view per part, which amplification does not define."""
    one_view = cfg.one_teacher_view and all(len(s.parts) == 1 for s in sources if s.examples is None)
    if cfg.amplify is None:
        return 1.0 if one_view else 0.0
    if cfg.amplify and not one_view:
        raise CtxDistillError("amplify sharpens one teacher view, but a context here is longer than the window and "
                              "was split into parts (one view each). Leave amplify unset (auto) or set it to 0.")
    return cfg.amplify


def make_queries(run: OfflineRun, given: list[str] | None,
                 data_rows: list[PerRowExample] | None = None) -> list[dict]:
    """Each source's own prompts, else the given ones, else a gated query plan for the source (data/queries.py);
    what the gate did is kept in OUT/data/query_gate.json for the report. With --data, the rows (by index)."""
    if data_rows:
        return [{"source": 0, "row": n, "prompt": r.student, "teacher": r.teacher, "origin": "data"}
                for n, r in enumerate(data_rows)]
    rows, gates = [], []
    for i, source in enumerate(run.sources):
        prompts = source.prompts or given
        if prompts:
            rows += [{"source": i, "prompt": q, "origin": "prompts"} for q in prompts]
            continue
        plan = plan_context_queries(run.cfg, run.sampler, run.tokenizer, source.text, source.name,
                                    run.cfg.seed + i, backend=sampling_backend(run))
        rows += [{"source": i, **q} for q in plan.queries]
        gates.append({"source": source.name, **plan.gate, "raw": plan.raw})
    if gates:
        atomic_write_json(run.out / "data" / "query_gate.json", gates)
    return rows


def samples_for(row: dict, cfg: OfflineConfig) -> int:
    """Given prompts and the probes of the context's statements carry its content: samples_per_query each. The
    everyday and model-written queries spread its influence to other requests: samples_per_other_query each."""
    return cfg.samples_per_other_query if row.get("origin") in OTHER_ORIGINS else cfg.samples_per_query


def sample_round(row: dict, k: int, cfg: OfflineConfig) -> int:
    """The round of a query's k-th sample: round 0 samples every query once, the next rounds the probes (and given
    prompts), the last ones the other queries' further samples, so a budget that stops early keeps the probes'."""
    if k == 0 or row.get("origin") not in OTHER_ORIGINS:
        return k
    return max(cfg.samples_per_query, 1) + k - 1


def sample_jobs(run: OfflineRun, queries: list[dict]) -> list[list[tuple[dict, list]]]:
    """(query row, its teacher views) per sample, in rounds (see sample_round); empty rounds are dropped."""
    cfg, rng = run.cfg, random.Random(run.cfg.seed)
    rounds = [[] for _ in range(cfg.samples_per_query + cfg.samples_per_other_query)]
    index = 0  # each sample's own view index (a split context's parts take turns leading)
    for n, row in enumerate(queries):
        for k in range(samples_for(row, cfg)):
            # a --data row's teacher view is its own (run.views); the shared --context is rendered into it
            views = [] if "row" in row else run.sources[row["source"]].views(rng, cfg.example_sets, index)
            index += 1
            if cfg.mode == "ensemble":
                views = views + [c for j, s in enumerate(run.sources) if j != row["source"]
                                 for c in s.views(rng, cfg.example_sets, n)]
            rounds[sample_round(row, k, cfg)].append((row, views))
    return [jobs for jobs in rounds if jobs]


def make_samples(run: OfflineRun, queries: list[dict]) -> list[dict]:
    """Teacher samples, one round (a sample of every query) at a time: under a time budget, rounds stop when the next
    one would pass the generation's share of it, so every query keeps the same number of samples and training keeps
    its time. The first round has nothing before it to stop at, so under a budget it is sampled one generation batch
    (gen_batch_size queries) at a time and stops likewise, with the queries sampled so far: many prompts must not take the whole budget before any training. The
    sampling context is each query's first view; a row keeps every view's context text."""
    cfg, samples = run.cfg, []
    deadline = generation_deadline(cfg, run.t_start)
    rounds = sample_jobs(run, queries)
    backend = sampling_backend(run)
    t0, done = time.time(), 0

    def would_pass(n: int) -> bool:  # at the rate so far
        return bool(done and deadline and time.time() + (time.time() - t0) / done * n > deadline)

    for k, jobs in enumerate(rounds):
        if k and would_pass(len(jobs)):
            run.accelerator.print(f"Time budget: {k} of {len(rounds)} rounds of samples (generation may use "
                                  f"{GENERATION_SHARE:.0%} of the budget).")
            break
        step = cfg.gen_batch_size if k == 0 and deadline else len(jobs)
        chunks = [jobs[i:i + step] for i in range(0, len(jobs), step)]
        desc = f"teacher sampling ({k + 1}/{len(rounds)})"
        with tqdm(total=len(jobs), desc=desc, unit="seq", disable=len(chunks) == 1, dynamic_ncols=True) as bar:
            for c, chunk in enumerate(chunks):
                if c and would_pass(len(chunk)):
                    run.accelerator.print(f"Time budget: {bar.n} of {len(jobs)} queries sampled (generation may "
                                          f"use {GENERATION_SHARE:.0%} of the budget); the rest are left out.")
                    return samples
                # one seed per round; a later chunk continues the random stream of the one before
                samples += sample_chunk(run, backend, chunk, cfg.seed + k if c == 0 else None, desc,
                                        show_progress=len(chunks) == 1)
                done += len(chunk)
                bar.update(len(chunk))
    return samples


def sample_chunk(run: OfflineRun, backend, jobs: list, seed: int | None, desc: str,
                 show_progress: bool) -> list[dict]:
    """The teacher's completions for some jobs of a round, as rows of samples.jsonl (empty completions dropped)."""
    cfg = run.cfg
    prompts = [teacher_prompt(run, row, views) for row, views in jobs]
    shared = shared_prefix_len(prompts, [len(p) for p in prompts]) if cfg.prefix_cache else 0
    # llama.cpp finds and shares the prefix itself; the torch loop is handed it encoded
    prefix = encode_prefix(run.sampler, prompts[0][:shared]) \
        if shared >= MIN_SHARED_PREFIX and backend.name == "torch" else None
    plain = [plain_prompt(run, row) for row, _ in jobs] if run.amplify else None
    outs = backend.generate(prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.sample_temperature,
                            batch_size=cfg.gen_batch_size, seed=seed, desc=desc, show_progress=show_progress,
                            prefix=prefix, contrast=plain, alpha=run.amplify)
    return [{"source": row["source"], "query": row["prompt"], "contexts": [c.text for c in views],
             **({"row": row["row"], "teacher_query": row["teacher"]} if "row" in row else {}),
             "completion_ids": y, "text": run.tokenizer.decode(y, skip_special_tokens=True)}
            for (row, views), y in zip(jobs, outs) if y]


def teacher_prompt(run: OfflineRun, row: dict, views: list[Context]) -> list[int]:
    """The prompt the teacher samples from: a --data row's own teacher view, else the query under its first view."""
    if "row" in row:
        return run.views[row["row"]][0]
    return render_prompt(run.tokenizer, teacher_query(row["prompt"], run.cfg), views[0])


def plain_prompt(run: OfflineRun, row: dict) -> list[int]:
    """The same request without the context (the contrast of amplified samples): a --data row's student view."""
    if "row" in row:
        return run.views[row["row"]][1]
    return render_prompt(run.tokenizer, teacher_query(row["prompt"], run.cfg))


def teacher_backend(run: OfflineRun):
    """Who draws the teacher samples: llama.cpp (generation_backend=llamacpp) when the teacher is the base model,
    with a teacher adapter handed over as its LoRA (an --init-adapter is off while the teacher samples: the base);
    the torch loop for a --teacher model of its own, and by default."""
    if resolve_backend(run.cfg.generation_backend, run.cfg.model, run.accelerator.device) == "llamacpp":
        if run.other is None:
            backend = make_backend("llamacpp", run.model, run.tokenizer, base=run.cfg.model,
                                   outtype=run.cfg.llamacpp_outtype)
            if run.cfg.teacher_adapter:
                with adapter_on(run.student):  # the engine gets the teacher's adapter, not the student's
                    backend.use_lora(run.student)
            run.accelerator.print(f"Teacher samples by llama.cpp ({run.cfg.llamacpp_outtype} GGUF of the base"
                                  + (" + the teacher adapter" if run.cfg.teacher_adapter else "")
                                  + f"; generation_backend={run.cfg.generation_backend}).")
            return backend
        run.accelerator.print("generation_backend=llamacpp: a --teacher model of its own samples through the "
                              "torch loop.")
    return TorchBackend(run.sampler, run.tokenizer)


def sampling_backend(run: OfflineRun):
    """The teacher's backend (teacher_backend), made once: query synthesis, samples and anchors share one engine."""
    if run.backend is None:
        run.backend = teacher_backend(run)
    return run.backend


def eval_backend(run: OfflineRun):
    """Who answers the evaluation: the run's llama.cpp engine, or one made now where generation_backend resolves to
    llama.cpp but the teacher sampled on the torch loop (the base's GGUF is cached: no second conversion); None:
    the torch loop. The evaluation itself keeps rows llama.cpp cannot hold on torch (eval.evaluation)."""
    if run.backend is None or run.backend.name == "torch":
        run.backend = chosen_engine(run.cfg.generation_backend, run.model, run.tokenizer, base=run.cfg.model,
                                    device=run.accelerator.device, outtype=run.cfg.llamacpp_outtype)
        if run.backend is not None:
            run.accelerator.print(f"Evaluation answers by llama.cpp ({run.cfg.llamacpp_outtype} GGUF of the base; "
                                  f"generation_backend={run.cfg.generation_backend}).")
    return run.backend


def make_pairs(run: OfflineRun, samples: list[dict]) -> tuple[list[Pair], list[int], int]:
    """(pairs, the source of each, scratch-pad samples dropped): the same completion ids after both prompts."""
    cfg, tokenizer = run.cfg, run.tokenizer
    header, stops = assistant_header(tokenizer), set(stop_token_ids(run.sampler, tokenizer))
    pairs, sources_of, dropped = [], [], 0
    for s in samples:
        thought, answer = [], s["completion_ids"]
        if cfg.scratchpad:
            split = split_scratchpad(tokenizer, s["completion_ids"], cfg.answer_delimiter, stops)
            if split is None:
                dropped += 1
                continue
            thought, answer = split
        if "row" in s:  # --data: the row's two views (no scratch-pad: refused with --data)
            pairs.append(build_pair(*run.views[s["row"]], answer, header, run.window))
            sources_of.append(s["source"])
            continue
        query = teacher_query(s["query"], cfg)
        t_prompts = [render_prompt(tokenizer, query, Context(text, cfg.context_kind)) for text in s["contexts"]]
        pairs.append(build_pair(t_prompts[0], render_prompt(tokenizer, s["query"]), answer, header, run.window,
                                thought=thought, more_teacher_prompts=t_prompts[1:],
                                query=tokenizer(query, add_special_tokens=False)["input_ids"]))
        sources_of.append(s["source"])
    if dropped:
        run.accelerator.print(f"{dropped} of {len(samples)} scratch-pad samples had no '{cfg.answer_delimiter}' "
                              "and were dropped.")
    if not pairs:
        raise CtxDistillError("The teacher produced no usable completions; check the context and the prompts"
                              + (" (no sample contained the answer delimiter)." if cfg.scratchpad else "."))
    return pairs, sources_of, dropped


def drop_unexplained(run: OfflineRun, pairs: list[Pair], sources_of: list[int], samples: list[dict]):
    """Keep the teacher samples the context explains best (evidence_filter: the share dropped), by the mean
    per-token log p(y|c,x) − log p(y|x) under the teacher. (pairs, sources_of, samples, what was dropped)."""
    share = run.cfg.evidence_filter
    if not share:
        return pairs, sources_of, samples, {}
    def score():
        was_training = run.sampler.training
        run.sampler.eval()
        with run.sampler_weights():
            found = context_evidence(run.sampler, pairs, run.tokenizer.pad_token_id, run.cfg.micro_batch_size)
        run.sampler.train(was_training)
        return [{"evidence": x} for x in found]

    # Scored once by the main process and kept: every process and every resume keeps the same samples.
    scores = [row["evidence"] for row in main_process_writes(run.accelerator, run.out / "data" / "evidence.jsonl",
                                                             score)]
    order = sorted(range(len(pairs)), key=lambda i: scores[i], reverse=True)
    keep = sorted(order[:max(1, len(pairs) - round(share * len(pairs)))])
    dropped = sorted(set(range(len(pairs))) - set(keep))
    stats = {"dropped": len(dropped), "mean_evidence_kept": round(sum(scores[i] for i in keep) / len(keep), 4),
             "mean_evidence_dropped": round(sum(scores[i] for i in dropped) / max(1, len(dropped)), 4)}
    aligned = samples if not run.cfg.scratchpad else None  # without a scratch-pad, pair i is sample i
    return ([pairs[i] for i in keep], [sources_of[i] for i in keep],
            [aligned[i] for i in keep] if aligned is not None else samples, stats)


def plan_stages(cfg: OfflineConfig, n_sources: int, sources_of: list[int]) -> list[list[int]]:
    """Pair indices per training stage: one stage (ensemble, or a single source), else one per source, each later
    stage also replaying `replay` x its size of earlier stages' pairs, so they are not overwritten."""
    if cfg.mode == "ensemble" or n_sources <= 1:  # 0: --data rows without a shared --context
        return [list(range(len(sources_of)))]
    own = [[i for i, src in enumerate(sources_of) if src == j] for j in range(n_sources)]
    own = [stage for stage in own if stage]
    stages = [list(own[0])]
    for n in range(1, len(own)):
        earlier = [i for stage in own[:n] for i in stage]
        k = min(len(earlier), round(cfg.replay * len(own[n])))
        stages.append(own[n] + random.Random(cfg.seed + n).sample(earlier, k))
    return stages


def train_stages(run: OfflineRun, pairs: list[Pair], samples: list[dict], sources_of: list[int],
                 stages: list[list[int]], anchors: list[dict]) -> tuple[list, int]:
    """Train the student stage by stage; the time left is shared by the stages still to run, in proportion to
    their steps. Returns the loop's results and the number of anchor pairs trained on."""
    cfg, tokenizer = run.cfg, run.tokenizer
    if run.student is None:
        run.student = make_student(run.model, cfg)
    elif cfg.gradient_checkpointing:
        enable_gradient_checkpointing(run.student)
    objective, budget_free = cfg.build_objective(), training_fingerprint_config(cfg)
    results, anchor_pairs = [], 0
    for n, stage in enumerate(stages):
        stage_pairs = with_anchors([pairs[i] for i in stage], anchors, cfg.anchor_fraction, tokenizer,
                                   f"{cfg.seed}:{n}")
        anchor_pairs += len(stage_pairs) - len(stage)
        planned = [total_steps_for(len(st), train_settings(cfg)) for st in stages[n:]]
        deadline = share_budget(budget_deadline(cfg, run.t_start), planned)
        tag = f"_stage{n}" if len(stages) > 1 else ""
        teacher = make_teacher(cfg, objective, run.student, run.other, stage_pairs, tokenizer.pad_token_id, run.out,
                               run.accelerator, tag)
        loss_module = DistillLoss(run.student, teacher, objective, cfg.chunk_size, cfg.skip_first,
                                  cfg.ensemble_weighting, amplify=run.amplify if teacher is not None else 0.0)
        data_id = [samples[i] for i in stage] if not cfg.scratchpad else stage
        if len(stages) > 1:
            run.accelerator.print(f"Stage {n + 1}/{len(stages)}: {run.sources[sources_of[stage[0]]].name}, "
                                  f"{len(stage_pairs)} samples (replayed from earlier stages: "
                                  f"{sum(sources_of[i] != sources_of[stage[0]] for i in stage)}).")
        results.append(train(run.accelerator, loss_module, stage_pairs,
                             lambda b: collate_pairs(b, tokenizer.pad_token_id, cfg.skip_first),
                             train_settings(cfg, deadline), run.out / "checkpoint" / f"state{tag}.pt",
                             resume=run.resume, fingerprint=fingerprint(budget_free, n, data_id, run.init_adapter)))
    return results, anchor_pairs


def run(cfg: OfflineConfig, out: str, resume: bool = False, *, context=(), prompts: str | None = None,
        examples: str | None = None, init_adapter: str | None = None, eval_qa: str | None = None,
        retention: str | None = None, columns: dict | None = None, data: str | None = None) -> RunResult | None:
    """`columns`: the dataset columns of inputs given as datasets, and their split (see data/hf_datasets.py).
    `data`: rows with a teacher-only context each (data/per_row.py), in place of --prompts/--examples."""
    inputs = read_inputs(cfg, context, prompts, examples, retention, columns, data, eval_qa)
    r = set_up(cfg, inputs, Path(out), resume, init_adapter)
    qa, qa_contexts = gather_eval(r.sources, eval_qa, columns)
    made = r.out / "data"  # what the run makes once and reuses on --resume
    if r.accelerator.is_main_process:
        check_data_inputs(r.out, {"context_sha256": inputs.context_digests(r.sources),
                                  "prompts": inputs.prompts, "examples": inputs.examples_file,
                                  "init_adapter": init_adapter,
                                  **({"anchor_prompts": cfg.anchor_prompts} if cfg.anchor_prompts else {}),
                                  **({"teacher_adapter": cfg.teacher_adapter} if cfg.teacher_adapter else {}),
                                  **{k: getattr(cfg, k) for k in DATA_KEYS}})
    t0 = time.time()
    with r.sampler_weights():
        queries = main_process_writes(r.accelerator, made / "queries.jsonl",
                                      lambda: make_queries(r, inputs.prompts, inputs.rows))
        samples = main_process_writes(r.accelerator, made / "samples.jsonl", lambda: make_samples(r, queries))
        # Anchors: general prompts with the teacher's own answers, no context; the student keeps to them there.
        anchors = main_process_writes(r.accelerator, made / "anchors.jsonl", lambda: make_anchors(
            cfg, r.sampler, r.tokenizer, sampling_backend(r))) if cfg.anchor_fraction > 0 else []
    generation_seconds = time.time() - t0
    if r.backend is not None and r.backend.name == "llamacpp":
        r.backend.close_context()  # its KV cache, not needed while training; the engine stays for the evaluation
    pairs, sources_of, dropped = make_pairs(r, samples)
    pairs, sources_of, kept, evidence = drop_unexplained(r, pairs, sources_of, samples)
    stages = plan_stages(cfg, len(r.sources), sources_of)
    results, anchor_pairs = train_stages(r, pairs, kept, sources_of, stages, anchors)
    counts = {"sources": [{"name": s.name, "parts": len(s.parts), "examples": len(s.examples or [])}
                          for s in r.sources],
              "mode": cfg.mode, **({"data_rows": len(inputs.rows)} if inputs.rows else {}),
              "queries": len(queries), "query_origins": query_origins(queries),
              "query_gate": load_json(made / "query_gate.json", "query_gate.json")
              if (made / "query_gate.json").exists() else [],
              "samples": len(samples), "pairs": len(pairs), "anchor_pairs": anchor_pairs,
              "scratchpad_dropped": dropped, "evidence_filter": evidence, "amplify": r.amplify,
              "completion_tokens": sum(p.completion_len for p in pairs)}
    result = write_artifacts(r, results, counts, qa, qa_contexts, inputs, generation_seconds) \
        if r.accelerator.is_main_process else None
    if r.backend is not None:
        r.backend.close()
    r.accelerator.wait_for_everyone()
    end_trackers(r.accelerator)
    return result


def write_artifacts(r: OfflineRun, results: list, counts: dict, qa, qa_contexts, inputs: OfflineInputs,
                    generation_seconds: float) -> RunResult:
    """The adapter, the before/after evaluation, manifest.json and report.md (main process)."""
    cfg = r.cfg
    r.student.eval()
    teacher_model = r.other
    if cfg.teacher_adapter:  # the report's teacher row needs the teacher's adapter, the saved folder must not hold it
        if qa:
            with adapter_on(r.student):
                teacher_model = MergedCopy(r.student).model
        drop_teacher_adapter(r.student)
    saved = save_trained(r.student, r.tokenizer, r.out, cfg.finetune)
    t_eval = time.time()
    evaluation = evaluate(r.student, r.tokenizer, qa_contexts, qa, inputs.retention, cfg.eval_max_new_tokens,
                          teacher_model=teacher_model, initial_model=r.initial, backend=eval_backend(r)) \
        if qa and cfg.finetune == "lora" else None
    log_evaluation(r.accelerator, evaluation)
    metrics = {**stage_metrics(results), "generation_seconds": round(generation_seconds, 1),
               "eval_seconds": round(time.time() - t_eval, 1), "total_seconds": round(time.time() - r.t_start, 1)}
    if evaluation:
        metrics["evaluation"] = evaluation
    write_manifest(r.out, {"recipe": "offline", "base_model": cfg.model, "base_model_path": r.base_path,
                           "init_adapter": r.init_adapter, "context_sha256": inputs.context_digests(r.sources),
                           "context_kind": cfg.context_kind, "config": cfg.to_dict(), "data": counts,
                           "metrics": metrics})
    write_report(r.out, "offline context distillation", report_lines(r, counts, metrics, len(results)), evaluation,
                 metrics["loss_history"], extra=query_report(counts["query_origins"], counts["query_gate"]))
    return RunResult(r.out, [saved.name, "manifest.json", "report.md"], metrics,
                     results_table(evaluation) if evaluation else "", NO_TABLE)


def stage_metrics(results: list) -> dict:
    """The training loop's results of every stage, summed."""
    history = [loss for r in results for loss in r.loss_history]
    seconds = sum(r.seconds for r in results)
    return {"train_steps": sum(r.steps_done for r in results), "total_steps": sum(r.total_steps for r in results),
            "planned_steps": sum(r.planned_steps for r in results),
            "stopped_by_budget": any(r.stopped_by_budget for r in results),
            "final_loss": history[-1] if history else float("nan"), "train_seconds": round(seconds, 1),
            "train_tokens_per_second": round(sum(r.tokens_per_second * r.seconds for r in results)
                                             / max(seconds, 1e-9), 1),
            "loss_history": history, "stage_steps": [r.steps_done for r in results]}


def report_lines(r: OfflineRun, counts: dict, metrics: dict, n_stages: int) -> list[str]:
    cfg = r.cfg
    names = ", ".join(s.name + (f" ({len(s.parts)} parts)" if len(s.parts) > 1 else "") for s in r.sources)
    return [f"- base model: `{cfg.model}`" + (f"; initial adapter: `{r.init_adapter}`" if r.init_adapter else "")
            + (f"; teacher: `{cfg.teacher}`" if cfg.teacher else "")
            + (f"; teacher: the base + adapter `{cfg.teacher_adapter}`" if cfg.teacher_adapter else ""),
            f"- contexts ({cfg.context_kind}, mode {cfg.mode}): {names or 'none shared'}"
            + (f"; {counts['data_rows']} --data rows, each with its own teacher-only context"
               if counts.get("data_rows") else ""),
            f"- data: {counts['queries']} queries, {counts['pairs']} teacher samples, "
            f"{counts['completion_tokens']} completion tokens"
            + (f", {counts['anchor_pairs']} anchor pairs" if counts["anchor_pairs"] else "")
            + (f"; {counts['scratchpad_dropped']} scratch-pad samples without '{cfg.answer_delimiter}' dropped"
               if cfg.scratchpad else ""),
            f"- training: {metrics['train_steps']}/{metrics['total_steps']} steps in {n_stages} stage(s)"
            + planned_note(metrics) + f", final loss {metrics['final_loss']:.4f}, "
            f"{metrics['train_tokens_per_second']:.0f} tokens/s",
            f"- time: generation {metrics['generation_seconds']:.0f}s, training {metrics['train_seconds']:.0f}s, "
            f"total {metrics['total_seconds']:.0f}s"]


def gather_eval(sources, eval_file: str | None, columns=None):
    """Eval questions with the context the teacher row is shown: each source's own 'eval' list with its context;
    questions from --eval with every context joined (or the single one)."""
    if eval_file:
        qa = read_qa(eval_file, "--eval", columns)
        joined = Context("\n\n".join(s.eval_context().text for s in sources), sources[0].kind) \
            if len(sources) > 1 else sources[0].eval_context()
        return qa, [joined] * len(qa)
    qa, contexts = [], []
    for s in sources:
        for item in s.qa or []:
            qa.append(item)
            contexts.append(s.eval_context())
    if qa:
        read_qa_items(qa)
    return (qa or None), contexts


NO_TABLE = "(no eval questions: pass --eval FILE or put an \"eval\" list in the context JSON)"
RECIPES = [Recipe("offline", "offline context distillation: the student learns the teacher's samples (Snell et al.)",
                  OfflineConfig, ("context", "examples", "prompts", "init_adapter", "eval_qa", "retention", "data"),
                  run)]
