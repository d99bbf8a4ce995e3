"""Offline context distillation (Snell, Klein, Zhong 2022, "Learning by Distilling Context").

1. queries: from --prompts, or synthesized by the model shown the context;
2. the teacher (the model *with* the context; for LoRA the same weights, adapter off) samples completions;
3. pairs: teacher view = render(context, query) + y, student view = render(query) + y;
4. the student (the model *without* the context, + LoRA) learns y: soft targets (forward KL to the teacher's
   distribution on every completion token) by default, or hard SFT on the sampled ids;
5. adapter, manifest and a before/after report.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from ctxdistill import CtxDistillError
from ctxdistill.artifacts import save_adapter, sha256_text, write_manifest, write_report
from ctxdistill.config import DistillConfig
from ctxdistill.evaluation import evaluate, results_table
from ctxdistill.generation import generate
from ctxdistill.io import atomic_write_json, read_context, read_jsonl, read_prompts, read_qa, write_jsonl
from ctxdistill.losses import DistillLoss, collate_pairs
from ctxdistill.models import add_lora, bf16_supported, default_device, enable_gradient_checkpointing, load_model
from ctxdistill.pairs import Context, assistant_header, build_pair, render_prompt
from ctxdistill.queries import synthesize_queries
from ctxdistill.teacher import Teacher, encode_prefix, load_teacher_model, shared_prefix_len
from ctxdistill.topk_cache import TopKCache, build_topk_cache
from ctxdistill.training import TrainSettings, train

BUNDLED_RETENTION = Path(__file__).resolve().parent.parent / "data" / "retention.json"


def prepare_out_dir(out: Path, resume: bool) -> None:
    if out.exists() and any(out.iterdir()) and not resume:
        raise CtxDistillError(f"{out} already holds a run. Pass --resume to continue it, or choose a new --out "
                              "(nothing was overwritten).")
    out.mkdir(parents=True, exist_ok=True)


DATA_KEYS = ("model", "teacher", "context_kind", "num_queries", "query_temperature", "samples_per_query",
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


def main_process_writes(accelerator, path: Path, make_rows) -> list:
    """Rows cached at `path`: made once by the main process (or read back on resume), then read by all."""
    if accelerator.is_main_process and not path.exists():
        write_jsonl(path, make_rows())
    accelerator.wait_for_everyone()
    return read_jsonl(path, str(path))


def make_teacher(cfg: DistillConfig, objective, student, other, pairs, pad_id: int, out: Path, accelerator):
    """The live teacher (context prefix encoded once), or its top-k cache on disk, or None for pure SFT."""
    if not objective.needs_teacher:
        return None
    # The cache is written before any update, so the student's own weights are the initial ones: no copy needed.
    live = Teacher(student, frozen_copy=cfg.finetune == "full" and not cfg.teacher_cache, other=other)
    if cfg.prefix_cache:
        live.encode_shared_prefix([p.teacher_ids for p in pairs], [p.teacher_prompt_len for p in pairs])
    if not cfg.teacher_cache:
        return live
    path = out / "data" / "teacher_topk"
    fingerprint = hashlib.sha256(json.dumps([cfg.model, cfg.teacher, cfg.top_k, cfg.temperature,
                                             [p.teacher_ids for p in pairs]]).encode()).hexdigest()
    if accelerator.is_main_process:
        fresh = (path / "meta.json").exists() and TopKCache(path).fingerprint == fingerprint
        if not fresh:
            build_topk_cache(path, live, pairs, cfg.top_k, cfg.temperature, pad_id, cfg.micro_batch_size,
                             cfg.chunk_size, fingerprint)
    accelerator.wait_for_everyone()
    return TopKCache(path)


def run(cfg: DistillConfig, context_file: str, prompts_file: str | None, out_dir: str, resume: bool = False,
        eval_file: str | None = None, retention_file: str | None = None) -> dict:
    t_start = time.time()
    deadline = t_start + cfg.max_minutes * 60 if cfg.max_minutes else None
    context_data = read_context(context_file)
    context = Context(context_data["context"], cfg.context_kind)
    given_prompts = read_prompts(prompts_file) if prompts_file else None
    qa = read_qa(eval_file, "--eval") if eval_file else (read_qa(context_file, "--context") if "eval" in context_data
                                                         else None)
    retention = read_qa(retention_file or BUNDLED_RETENTION, "--retention")
    out = Path(out_dir)

    device = torch.device(cfg.device) if cfg.device else default_device()
    mixed = "bf16" if cfg.dtype in ("auto", "bf16", "bfloat16") and bf16_supported(device) else "no"
    accelerator = Accelerator(mixed_precision=mixed, cpu=device.type == "cpu")
    if accelerator.is_main_process:
        prepare_out_dir(out, resume)
    accelerator.wait_for_everyone()

    # Full fine-tuning keeps fp32 master weights (bf16 comes from autocast); LoRA freezes the base, so bf16 is sound.
    weights_dtype = "float32" if cfg.finetune == "full" and mixed == "bf16" else cfg.dtype
    model, tokenizer, base_path = load_model(cfg.model, weights_dtype, accelerator.device)
    # Another teacher (same tokenizer, e.g. bigger) writes the samples and scores them; else the model itself does.
    other = load_teacher_model(cfg.teacher, tokenizer, cfg.dtype, accelerator.device) if cfg.teacher else None
    sampler = other if other is not None else model
    objective = cfg.build_objective()
    header = assistant_header(tokenizer)
    window = getattr(model.config, "max_position_embeddings", None)
    if window and len(render_prompt(tokenizer, "x", context)) + cfg.max_new_tokens > window:
        raise CtxDistillError(f"The context does not fit the model window ({window} tokens) with max_new_tokens="
                              f"{cfg.max_new_tokens}. Shorten the context or lower max_new_tokens.")
    if accelerator.is_main_process:
        check_data_fingerprint(out, {"context_sha256": sha256_text(context.text), "prompts": given_prompts,
                                     **{k: getattr(cfg, k) for k in DATA_KEYS}})

    # 1. Queries.
    t0 = time.time()

    def make_queries():
        if given_prompts:
            return [{"prompt": p} for p in given_prompts]
        found = synthesize_queries(model, tokenizer, context.text, cfg.num_queries, temperature=cfg.query_temperature,
                                   batch_size=cfg.gen_batch_size, seed=cfg.seed)
        if not found:
            raise CtxDistillError("Query synthesis produced no usable queries. Pass --prompts with example queries.")
        return [{"prompt": q} for q in found]

    queries = [r["prompt"] for r in main_process_writes(accelerator, out / "data" / "queries.jsonl", make_queries)]

    # 2. Teacher samples: the model with the context, before any adapter exists.
    def make_samples():
        prompts = [render_prompt(tokenizer, q, context) for q in queries for _ in range(cfg.samples_per_query)]
        shared = shared_prefix_len(prompts, [len(p) for p in prompts]) if cfg.prefix_cache else 0
        prefix = encode_prefix(sampler, prompts[0][:shared]) if shared >= 16 else None  # the context, encoded once
        outs = generate(sampler, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens,
                        temperature=cfg.sample_temperature, batch_size=cfg.gen_batch_size, seed=cfg.seed,
                        desc="teacher sampling", prefix=prefix)
        qs = [q for q in queries for _ in range(cfg.samples_per_query)]
        return [{"query": q, "completion_ids": y, "text": tokenizer.decode(y, skip_special_tokens=True)}
                for q, y in zip(qs, outs) if y]

    samples = main_process_writes(accelerator, out / "data" / "samples.jsonl", make_samples)
    generation_seconds = time.time() - t0

    # 3. Pairs: the same completion ids after both prompts.
    pairs = [build_pair(render_prompt(tokenizer, s["query"], context), render_prompt(tokenizer, s["query"]),
                        s["completion_ids"], header, window) for s in samples]
    if not pairs:
        raise CtxDistillError("The teacher produced no usable completions; check the context and the prompts.")

    # 4. Student and training.
    if cfg.finetune == "lora":
        student = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    else:
        student = model.requires_grad_(True)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(student)
    teacher = make_teacher(cfg, objective, student, other, pairs, tokenizer.pad_token_id, out, accelerator)
    loss_module = DistillLoss(student, teacher, objective, cfg.chunk_size, cfg.skip_first)
    settings = TrainSettings(lr=cfg.learning_rate, weight_decay=cfg.weight_decay, warmup_ratio=cfg.warmup_ratio,
                             schedule=cfg.schedule, grad_clip=cfg.grad_clip, epochs=cfg.epochs,
                             max_steps=cfg.max_steps, batch_size=cfg.batch_size,
                             micro_batch_size=cfg.micro_batch_size, seed=cfg.seed,
                             checkpoint_every=cfg.checkpoint_every, deadline=deadline)
    budget_free = {k: v for k, v in cfg.to_dict().items() if k not in ("max_minutes", "checkpoint_every")}
    fingerprint = hashlib.sha256(json.dumps([budget_free, samples], sort_keys=True).encode()).hexdigest()
    result = train(accelerator, loss_module, pairs, lambda b: collate_pairs(b, tokenizer.pad_token_id, cfg.skip_first),
                   settings,
                   out / "checkpoint" / "state.pt", resume=resume, fingerprint=fingerprint)

    # 5. Artifacts (main process only).
    summary = None
    if accelerator.is_main_process:
        student.eval()
        if cfg.finetune == "lora":
            save_adapter(student, out / "adapter")
        else:
            save_adapter(student, out / "model")
            tokenizer.save_pretrained(out / "model")
        t_eval = time.time()
        evaluation = evaluate(student, tokenizer, context, qa, retention, cfg.eval_max_new_tokens) \
            if qa and cfg.finetune == "lora" else None
        counts = {"queries": len(queries), "queries_synthesized": not given_prompts, "samples": len(samples),
                  "pairs": len(pairs), "completion_tokens": sum(p.completion_len for p in pairs)}
        metrics = {"train_steps": result.steps_done, "total_steps": result.total_steps,
                   "stopped_by_budget": result.stopped_by_budget, "final_loss": result.final_loss,
                   "train_seconds": round(result.seconds, 1), "train_tokens_per_second": round(result.tokens_per_second, 1),
                   "generation_seconds": round(generation_seconds, 1), "eval_seconds": round(time.time() - t_eval, 1),
                   "total_seconds": round(time.time() - t_start, 1), "loss_history": result.loss_history}
        if evaluation:
            metrics["evaluation"] = evaluation
        write_manifest(out, {"recipe": "offline", "base_model": cfg.model, "base_model_path": base_path,
                             "context_sha256": sha256_text(context.text), "context_kind": context.kind,
                             "config": cfg.to_dict(), "data": counts, "metrics": metrics})
        lines = [f"- base model: `{cfg.model}`; context: {len(context.text)} characters ({context.kind})",
                 f"- data: {counts['queries']} queries, {counts['pairs']} teacher samples, "
                 f"{counts['completion_tokens']} completion tokens",
                 f"- training: {result.steps_done}/{result.total_steps} steps, final loss {result.final_loss:.4f}, "
                 f"{result.tokens_per_second:.0f} tokens/s" + (" (stopped by the time budget)" if result.stopped_by_budget else ""),
                 f"- time: generation {generation_seconds:.0f}s, training {result.seconds:.0f}s, "
                 f"total {time.time() - t_start:.0f}s"]
        write_report(out, "offline context distillation", lines, evaluation, result.loss_history)
        summary = {"evaluation": evaluation, "metrics": metrics, "table": results_table(evaluation) if evaluation else ""}
    accelerator.wait_for_everyone()
    return summary or {}
