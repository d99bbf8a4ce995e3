"""Offline context distillation (Snell, Klein, Zhong 2022, "Learning by Distilling Context").

1. sources: each --context file (split into parts if it does not fit the window) and/or a pool of --examples;
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

import hashlib
import json
import random
import time
from contextlib import nullcontext
from pathlib import Path

from ctxdistill import CtxDistillError
from ctxdistill.config import DistillConfig
from ctxdistill.core.files import atomic_write_json
from ctxdistill.core.forward import encode_prefix, shared_prefix_len
from ctxdistill.core.generation import MergedCopy, generate, stop_token_ids
from ctxdistill.core.losses import DistillLoss, collate_pairs
from ctxdistill.core.models import add_lora, enable_gradient_checkpointing, load_adapter
from ctxdistill.core.pairs import Context, assistant_header, build_pair, render_prompt
from ctxdistill.core.teacher import Teacher, load_teacher_model
from ctxdistill.core.topk_cache import TopKCache, build_topk_cache
from ctxdistill.core.training import total_steps_for, train
from ctxdistill.data.anchors import make_anchors, with_anchors
from ctxdistill.data.inputs import BUNDLED_RETENTION, read_context, read_prompts, read_qa, read_qa_items
from ctxdistill.data.queries import synthesize_queries
from ctxdistill.data.sources import context_source, examples_source
from ctxdistill.eval.evaluation import evaluate, results_table
from ctxdistill.eval.reports import write_report
from ctxdistill.recipes.artifacts import save_trained, sha256_text, write_manifest
from ctxdistill.recipes.common import main_process_writes, open_run, train_settings, training_fingerprint_config

DATA_KEYS = ("model", "teacher", "context_kind", "mode", "num_examples", "example_sets", "scratchpad",
             "answer_delimiter", "scratchpad_instruction", "num_queries", "query_temperature", "samples_per_query",
             "sample_temperature",
             "max_new_tokens", "seed")


def check_data_fingerprint(out: Path, fingerprint: dict) -> None:
    """Cached data is reused on --resume only if it was made from the same inputs."""
    path = out / "data" / "inputs.json"
    if path.exists():
        if json.loads(path.read_text()) != fingerprint:
            raise CtxDistillError(f"{out} holds data made from other inputs (context, prompts or generation "
                                  "settings changed). Resume with the same inputs, or choose a new --out.")
    else:
        atomic_write_json(path, fingerprint)


def make_teacher(cfg: DistillConfig, objective, student, other, pairs, pad_id: int, out: Path, accelerator,
                 tag: str = ""):
    """The live teacher (context prefix encoded once), or its top-k cache on disk, or None for pure SFT."""
    if not objective.needs_teacher:
        return None
    # The cache is written before any update, so the student's own weights are the initial ones: no copy needed.
    live = Teacher(student, frozen_copy=cfg.finetune == "full" and not cfg.teacher_cache and other is None,
                   other=other, context_cache_tokens=16384 if cfg.prefix_cache else 0)
    if cfg.prefix_cache and not any(p.more_teachers for p in pairs):  # an ensemble caches per context instead
        live.encode_shared_prefix([p.teacher_ids for p in pairs], [p.teacher_prompt_len for p in pairs])
    if not cfg.teacher_cache:
        return live
    if any(p.more_teachers for p in pairs):
        raise CtxDistillError("teacher_cache stores one teacher view per sample; an ensemble of contexts (mode="
                              "ensemble, a split context or example_sets > 1) needs the live teacher.")
    path = out / "data" / f"teacher_topk{tag}"
    fingerprint = hashlib.sha256(json.dumps([cfg.model, cfg.teacher, cfg.top_k, cfg.temperature,
                                             [p.teacher_ids for p in pairs]]).encode()).hexdigest()
    if accelerator.is_main_process:
        fresh = (path / "meta.json").exists() and TopKCache(path).fingerprint == fingerprint
        if not fresh:
            build_topk_cache(path, live, pairs, cfg.top_k, cfg.temperature, pad_id, cfg.micro_batch_size,
                             cfg.chunk_size, fingerprint)
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


def teacher_query(query: str, cfg: DistillConfig) -> str:
    return f"{query}\n\n{cfg.scratchpad_instruction}" if cfg.scratchpad else query


def load_sources(cfg: DistillConfig, contexts: dict, examples, tokenizer, window: int | None) -> list:
    reserve = cfg.max_new_tokens + 128  # room for a query and its completion after the context
    sources = [context_source(Path(f).name, data, cfg.context_kind, tokenizer, window, reserve)
               for f, data in contexts.items()]
    if examples is not None:
        sources.append(examples)
    return sources


def run(cfg: DistillConfig, context_file, prompts_file: str | None, out_dir: str, resume: bool = False,
        eval_file: str | None = None, retention_file: str | None = None, examples_file: str | None = None,
        init_adapter: str | None = None) -> dict:
    t_start = time.time()
    context_files = [context_file] if isinstance(context_file, (str, Path)) else list(context_file or [])
    # Read and check every input before anything is written or loaded.
    contexts = {f: read_context(f) for f in context_files}
    examples = examples_source(examples_file, cfg.num_examples, cfg.context_kind) if examples_file else None
    if not contexts and examples is None:
        raise CtxDistillError("Nothing to distill: give --context FILE (one or more) and/or --examples FILE.")
    if cfg.teacher == "live":
        raise CtxDistillError("teacher=live (the current student as its own teacher) is for the onpolicy recipe; "
                              "offline samples are written before training, by a fixed teacher.")
    given_prompts = read_prompts(prompts_file) if prompts_file else None
    retention = read_qa(retention_file or BUNDLED_RETENTION, "--retention")
    out = Path(out_dir)

    accelerator, model, tokenizer, base_path = open_run(cfg, out, resume)
    header = assistant_header(tokenizer)
    window = getattr(model.config, "max_position_embeddings", None)
    sources = load_sources(cfg, contexts, examples, tokenizer, window)
    objective = cfg.build_objective()

    # The student, and who teaches: another model, or the model itself without any adapter.
    initial = None
    if init_adapter:
        if cfg.finetune != "lora":
            raise CtxDistillError("--init-adapter continues a LoRA adapter; it needs finetune=lora.")
        student = load_adapter(model, init_adapter, trainable=True)
        # The old behaviour, for the report. It is not the teacher: measured, a model holding "Your name is Zorblax"
        # keeps answering Zorblax with "Your name is Quibble." in context, so the base (adapter off) teaches.
        initial = MergedCopy(student).model
    elif cfg.finetune == "lora":
        student = None  # LoRA is added after sampling, so the sampler is the plain model
    else:
        student = model.requires_grad_(True)
    other = load_teacher_model(cfg.teacher, tokenizer, cfg.dtype, accelerator.device) if cfg.teacher else None
    sampler = other if other is not None else model

    def sampler_weights():
        """The teacher's weights while sampling: an --init-adapter is switched off."""
        return student.disable_adapter() if init_adapter and other is None else nullcontext()

    qa, qa_contexts = gather_eval(sources, eval_file)
    if accelerator.is_main_process:
        check_data_fingerprint(out, {"context_sha256": [sha256_text(s.text) for s in sources],
                                     "prompts": given_prompts, "examples": examples_file, "init_adapter": init_adapter,
                                     **({"anchor_prompts": cfg.anchor_prompts} if cfg.anchor_prompts else {}),
                                     **{k: getattr(cfg, k) for k in DATA_KEYS}})

    # 1. Queries, per source.
    t0 = time.time()

    def make_queries():
        rows = []
        for i, source in enumerate(sources):
            prompts = source.prompts or given_prompts
            if not prompts:
                prompts = synthesize_queries(sampler, tokenizer, source.text, cfg.num_queries,
                                             temperature=cfg.query_temperature, batch_size=cfg.gen_batch_size,
                                             seed=cfg.seed + i)
                if not prompts:
                    raise CtxDistillError(f"Query synthesis produced no usable queries for {source.name}. Pass "
                                          "--prompts, or put a 'prompts' list in the context file.")
            rows += [{"source": i, "prompt": q} for q in prompts]
        return rows

    with sampler_weights():
        queries = main_process_writes(accelerator, out / "data" / "queries.jsonl", make_queries)

    # 2. Teacher samples: the sampling context is each query's first view; the rows keep every view's context text.
    def make_samples():
        rng = random.Random(cfg.seed)
        jobs = []
        for n, row in enumerate(queries):
            for k in range(cfg.samples_per_query):
                own = sources[row["source"]].views(rng, cfg.example_sets, n * cfg.samples_per_query + k)
                if cfg.mode == "ensemble":
                    others = [c for j, s in enumerate(sources) if j != row["source"]
                              for c in s.views(rng, cfg.example_sets, n)]
                    own = own + others
                jobs.append((row, own))
        prompts = [render_prompt(tokenizer, teacher_query(row["prompt"], cfg), views[0]) for row, views in jobs]
        shared = shared_prefix_len(prompts, [len(p) for p in prompts]) if cfg.prefix_cache else 0
        prefix = encode_prefix(sampler, prompts[0][:shared]) if shared >= 16 else None  # the context, encoded once
        outs = generate(sampler, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens,
                        temperature=cfg.sample_temperature, batch_size=cfg.gen_batch_size, seed=cfg.seed,
                        desc="teacher sampling", prefix=prefix)
        return [{"source": row["source"], "query": row["prompt"], "contexts": [c.text for c in views],
                 "completion_ids": y, "text": tokenizer.decode(y, skip_special_tokens=True)}
                for (row, views), y in zip(jobs, outs) if y]

    with sampler_weights():
        samples = main_process_writes(accelerator, out / "data" / "samples.jsonl", make_samples)
        # Anchors: general prompts with the teacher's own answers, no context; the student keeps to them there.
        anchors = main_process_writes(accelerator, out / "data" / "anchors.jsonl",
                                      lambda: make_anchors(cfg, sampler, tokenizer)) if cfg.anchor_fraction > 0 else []
    generation_seconds = time.time() - t0

    # 3. Pairs: the same completion ids after both prompts (after the teacher's scratch-pad, if any).
    stops = set(stop_token_ids(sampler, tokenizer))
    pairs, sources_of, dropped = [], [], 0
    for s in samples:
        thought, answer = [], s["completion_ids"]
        if cfg.scratchpad:
            split = split_scratchpad(tokenizer, s["completion_ids"], cfg.answer_delimiter, stops)
            if split is None:
                dropped += 1
                continue
            thought, answer = split
        query = teacher_query(s["query"], cfg)
        t_prompts = [render_prompt(tokenizer, query, Context(text, cfg.context_kind)) for text in s["contexts"]]
        pairs.append(build_pair(t_prompts[0], render_prompt(tokenizer, s["query"]), answer, header, window,
                                thought=thought, more_teacher_prompts=t_prompts[1:],
                                query=tokenizer(query, add_special_tokens=False)["input_ids"]))
        sources_of.append(s["source"])
    if dropped:
        accelerator.print(f"{dropped} of {len(samples)} scratch-pad samples had no '{cfg.answer_delimiter}' and "
                          "were dropped.")
    if not pairs:
        raise CtxDistillError("The teacher produced no usable completions; check the context and the prompts"
                              + (" (no sample contained the answer delimiter)." if cfg.scratchpad else "."))

    # 4. Student and training: one stage per source (sequential) or one stage over all of them (ensemble).
    if student is None:
        student = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(student)
    if cfg.mode == "ensemble" or len(sources) == 1:
        stages = [list(range(len(pairs)))]
    else:
        stages = [[i for i, src in enumerate(sources_of) if src == j] for j in range(len(sources))]
        stages = [st for st in stages if st]
        # Rehearsal: each later stage also replays samples of the earlier ones, so they are not overwritten.
        own = [list(st) for st in stages]
        for n in range(1, len(stages)):
            earlier = [i for st in own[:n] for i in st]
            k = min(len(earlier), round(cfg.replay * len(own[n])))
            stages[n] = own[n] + random.Random(cfg.seed + n).sample(earlier, k)
    budget_free = training_fingerprint_config(cfg)
    results = []
    anchor_pairs = 0
    for n, stage in enumerate(stages):
        stage_pairs = with_anchors([pairs[i] for i in stage], anchors, cfg.anchor_fraction, tokenizer, f"{cfg.seed}:{n}")
        anchor_pairs += len(stage_pairs) - len(stage)
        deadline = None
        if cfg.max_minutes:  # the time left is shared by the stages still to run, in proportion to their steps
            planned = [total_steps_for(len(st), train_settings(cfg)) for st in stages[n:]]
            deadline = time.time() + (t_start + cfg.max_minutes * 60 - time.time()) * planned[0] / sum(planned)
        tag = f"_stage{n}" if len(stages) > 1 else ""
        teacher = make_teacher(cfg, objective, student, other, stage_pairs, tokenizer.pad_token_id, out,
                               accelerator, tag)
        loss_module = DistillLoss(student, teacher, objective, cfg.chunk_size, cfg.skip_first,
                                  cfg.ensemble_weighting)
        settings = train_settings(cfg, deadline)
        fingerprint = hashlib.sha256(json.dumps([budget_free, n, [samples[i] for i in stage] if not cfg.scratchpad
                                                 else stage, init_adapter]).encode()).hexdigest()
        if len(stages) > 1:
            accelerator.print(f"Stage {n + 1}/{len(stages)}: {sources[sources_of[stage[0]]].name}, "
                              f"{len(stage_pairs)} samples (replayed from earlier stages: "
                              f"{sum(sources_of[i] != sources_of[stage[0]] for i in stage)}).")
        results.append(train(accelerator, loss_module, stage_pairs,
                             lambda b: collate_pairs(b, tokenizer.pad_token_id, cfg.skip_first), settings,
                             out / "checkpoint" / f"state{tag}.pt", resume=resume, fingerprint=fingerprint))

    # 5. Artifacts (main process only).
    summary = None
    if accelerator.is_main_process:
        student.eval()
        save_trained(student, tokenizer, out, cfg.finetune)
        t_eval = time.time()
        evaluation = evaluate(student, tokenizer, qa_contexts, qa, retention, cfg.eval_max_new_tokens,
                              teacher_model=other, initial_model=initial) \
            if qa and cfg.finetune == "lora" else None
        history = [loss for r in results for loss in r.loss_history]
        steps_done, total_steps = sum(r.steps_done for r in results), sum(r.total_steps for r in results)
        train_seconds = sum(r.seconds for r in results)
        tokens_per_second = sum(r.tokens_per_second * r.seconds for r in results) / max(train_seconds, 1e-9)
        stopped = any(r.stopped_by_budget for r in results)
        counts = {"sources": [{"name": s.name, "parts": len(s.parts), "examples": len(s.examples or [])}
                              for s in sources],
                  "mode": cfg.mode, "queries": len(queries), "queries_synthesized": not given_prompts,
                  "samples": len(samples), "pairs": len(pairs), "anchor_pairs": anchor_pairs,
                  "scratchpad_dropped": dropped,
                  "completion_tokens": sum(p.completion_len for p in pairs)}
        metrics = {"train_steps": steps_done, "total_steps": total_steps, "stopped_by_budget": stopped,
                   "final_loss": history[-1] if history else float("nan"), "train_seconds": round(train_seconds, 1),
                   "train_tokens_per_second": round(tokens_per_second, 1),
                   "generation_seconds": round(generation_seconds, 1), "eval_seconds": round(time.time() - t_eval, 1),
                   "total_seconds": round(time.time() - t_start, 1), "loss_history": history,
                   "stage_steps": [r.steps_done for r in results]}
        if evaluation:
            metrics["evaluation"] = evaluation
        write_manifest(out, {"recipe": "offline", "base_model": cfg.model, "base_model_path": base_path,
                             "init_adapter": init_adapter, "context_sha256": [sha256_text(s.text) for s in sources],
                             "context_kind": cfg.context_kind, "config": cfg.to_dict(), "data": counts,
                             "metrics": metrics})
        names = ", ".join(f"{s.name}" + (f" ({len(s.parts)} parts)" if len(s.parts) > 1 else "") for s in sources)
        lines = [f"- base model: `{cfg.model}`" + (f"; initial adapter: `{init_adapter}`" if init_adapter else "")
                 + (f"; teacher: `{cfg.teacher}`" if cfg.teacher else ""),
                 f"- contexts ({cfg.context_kind}, mode {cfg.mode}): {names}",
                 f"- data: {counts['queries']} queries, {counts['pairs']} teacher samples, "
                 f"{counts['completion_tokens']} completion tokens"
                 + (f", {anchor_pairs} anchor pairs" if anchor_pairs else "")
                 + (f"; {dropped} scratch-pad samples without '{cfg.answer_delimiter}' dropped" if cfg.scratchpad
                    else ""),
                 f"- training: {steps_done}/{total_steps} steps in {len(results)} stage(s), final loss "
                 f"{metrics['final_loss']:.4f}, {tokens_per_second:.0f} tokens/s"
                 + (" (stopped by the time budget)" if stopped else ""),
                 f"- time: generation {generation_seconds:.0f}s, training {train_seconds:.0f}s, "
                 f"total {time.time() - t_start:.0f}s"]
        write_report(out, "offline context distillation", lines, evaluation, history)
        summary = {"evaluation": evaluation, "metrics": metrics,
                   "table": results_table(evaluation) if evaluation else ""}
    accelerator.wait_for_everyone()
    return summary or {}


def gather_eval(sources, eval_file: str | None):
    """Eval questions with the context the teacher row is shown: each source's own 'eval' list with its context;
    questions from --eval with every context joined (or the single one)."""
    if eval_file:
        qa = read_qa(eval_file, "--eval")
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
