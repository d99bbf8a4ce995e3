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

import hashlib
import json
import random
import time
from contextlib import nullcontext
from pathlib import Path

from ctxdistill import CtxDistillError
from ctxdistill.config import DistillConfig
from ctxdistill.core.forward import shared_prefix_len
from ctxdistill.core.generation import MergedCopy, generate
from ctxdistill.core.losses import DistillLoss, collate_pairs
from ctxdistill.core.models import add_lora, enable_gradient_checkpointing
from ctxdistill.core.pairs import Context, assistant_header, build_pair, render_prompt
from ctxdistill.core.teacher import Teacher, load_teacher_model
from ctxdistill.core.training import train
from ctxdistill.data.inputs import BUNDLED_RETENTION, read_context, read_prompts, read_qa, read_qa_items
from ctxdistill.data.queries import synthesize_queries
from ctxdistill.eval.evaluation import evaluate, results_table
from ctxdistill.eval.reports import write_report
from ctxdistill.recipes.artifacts import save_trained, sha256_text, write_manifest
from ctxdistill.recipes.common import main_process_writes, open_run, train_settings, training_fingerprint_config

# Steps rather than epochs: every step draws fresh samples, so a short query list can be revisited many times.
DEFAULTS = {"objective": "reverse_kl", "top_k": 256, "top_k_support": "student", "top_k_tail": "renorm",
            "sample_temperature": 1.0, "max_new_tokens": 64, "batch_size": 16, "micro_batch_size": 16,
            "max_steps": 110, "lr": 2e-3, "warmup_ratio": 0.05}


def run(cfg: DistillConfig, context_file: str, prompts_file: str | None, out_dir: str, resume: bool = False,
        eval_file: str | None = None, retention_file: str | None = None) -> dict:
    t_start = time.time()
    data = read_context(context_file)
    given = read_prompts(prompts_file) if prompts_file else None
    own = data.get("prompts") or data.get("train_prompts")
    retention = read_qa(retention_file or BUNDLED_RETENTION, "--retention")
    qa = read_qa(eval_file, "--eval") if eval_file else \
        (read_qa_items(data["eval"], f"{context_file}: 'eval'") if data.get("eval") else None)
    context = Context(data["context"], cfg.context_kind)
    out = Path(out_dir)

    accelerator, model, tokenizer, base_path = open_run(cfg, out, resume)
    header = assistant_header(tokenizer)
    window = getattr(model.config, "max_position_embeddings", None)
    live = cfg.teacher == "live"
    other = load_teacher_model(cfg.teacher, tokenizer, cfg.dtype, accelerator.device) \
        if cfg.teacher and not live else None
    if live and cfg.finetune != "lora":
        raise CtxDistillError("teacher=live reads the context with the student's current weights; it needs "
                              "finetune=lora (a full fine-tune would score with the weights it is updating).")

    # 1. Queries.
    def make_queries():
        prompts = given or own
        if not prompts:
            prompts = synthesize_queries(other if other is not None else model, tokenizer, context.text,
                                         cfg.num_queries, temperature=cfg.query_temperature,
                                         batch_size=cfg.gen_batch_size, seed=cfg.seed)
            if not prompts:
                raise CtxDistillError("Query synthesis produced no usable queries. Pass --prompts, or put a "
                                      "'prompts' list in the context file.")
        return [{"prompt": q} for q in prompts]

    queries = [row["prompt"] for row in main_process_writes(accelerator, out / "data" / "queries.jsonl",
                                                            make_queries)]
    t_prompts = {q: render_prompt(tokenizer, q, context) for q in queries}
    s_prompts = {q: render_prompt(tokenizer, q) for q in queries}
    longest = max(len(p) for p in t_prompts.values()) + cfg.max_new_tokens
    if window and longest > window:
        raise CtxDistillError(f"Context + query + completion is {longest} tokens, longer than the model window "
                              f"({window}). Shorten the context or lower max_new_tokens.")

    # 2. Student, sampler, teacher. The context is encoded once for every teacher forward and teacher sample.
    student = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets) \
        if cfg.finetune == "lora" else model.requires_grad_(True)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(student)
    sampler = MergedCopy(student) if cfg.finetune == "lora" else None
    teacher = Teacher(student, frozen_copy=cfg.finetune == "full" and other is None, other=other, live=live)
    shared = shared_prefix_len(list(t_prompts.values()), [len(p) for p in t_prompts.values()])
    if cfg.prefix_cache and shared >= 16 and not live:
        teacher.encode_prefix(next(iter(t_prompts.values()))[:shared])
    teacher_sampler = other if other is not None else model
    objective = cfg.build_objective()
    loss_module = DistillLoss(student, teacher, objective, cfg.chunk_size, cfg.skip_first)
    stats = {"student_samples": 0, "teacher_samples": 0, "generation_seconds": 0.0}

    def collate(batch_queries: list[str]):
        """Sample the batch's completions now, from the current weights, and pair them with the teacher view."""
        t0 = time.time()
        step_rng = random.Random(f"{cfg.seed}:{stats['student_samples'] + stats['teacher_samples']}")
        from_teacher = cfg.offline_fraction > 0 and step_rng.random() < cfg.offline_fraction
        if from_teacher:  # an offline step: the model with the context writes the completions
            with student.disable_adapter() if cfg.finetune == "lora" and other is None else nullcontext():
                ys = generate(teacher_sampler, tokenizer, [t_prompts[q] for q in batch_queries],
                              max_new_tokens=cfg.max_new_tokens, temperature=cfg.sample_temperature,
                              batch_size=cfg.gen_batch_size, show_progress=False, prefix=teacher.prefix,
                              seed=step_rng.randrange(2**31))
        else:
            if sampler is not None:
                sampler.sync()
            ys = generate(sampler.model if sampler is not None else student, tokenizer,
                          [s_prompts[q] for q in batch_queries], max_new_tokens=cfg.max_new_tokens,
                          temperature=cfg.sample_temperature, batch_size=cfg.gen_batch_size, show_progress=False,
                          seed=step_rng.randrange(2**31))
        stats["teacher_samples" if from_teacher else "student_samples"] += len(batch_queries)
        stats["generation_seconds"] += time.time() - t0
        pairs = [build_pair(t_prompts[q], s_prompts[q], y, header, window) for q, y in zip(batch_queries, ys) if y]
        if not pairs:
            raise CtxDistillError("Every sample of a batch came back empty; check the model and max_new_tokens.")
        return collate_pairs(pairs, tokenizer.pad_token_id, cfg.skip_first)

    # 3. Train: one pass over the queries per epoch, fresh samples every step.
    settings = train_settings(cfg, t_start + cfg.max_minutes * 60 if cfg.max_minutes else None)
    fingerprint = hashlib.sha256(json.dumps([training_fingerprint_config(cfg), queries, sha256_text(context.text)])
                                 .encode()).hexdigest()
    result = train(accelerator, loss_module, queries, collate, settings, out / "checkpoint" / "state.pt",
                   resume=resume, fingerprint=fingerprint)

    # 4. Artifacts and report (main process).
    summary = {}
    if accelerator.is_main_process:
        student.eval()
        save_trained(student, tokenizer, out, cfg.finetune)
        t_eval = time.time()
        evaluation = evaluate(student, tokenizer, context, qa, retention, cfg.eval_max_new_tokens,
                              teacher_model=other) if qa and cfg.finetune == "lora" else None
        metrics = {"train_steps": result.steps_done, "total_steps": result.total_steps,
                   "stopped_by_budget": result.stopped_by_budget, "final_loss": result.final_loss,
                   "train_seconds": round(result.seconds - stats["generation_seconds"], 1),
                   "generation_seconds": round(stats["generation_seconds"], 1),
                   "student_samples": stats["student_samples"], "teacher_samples": stats["teacher_samples"],
                   "eval_seconds": round(time.time() - t_eval, 1), "total_seconds": round(time.time() - t_start, 1),
                   "loss_history": result.loss_history}
        if evaluation:
            metrics["evaluation"] = evaluation
        write_manifest(out, {"recipe": "onpolicy", "base_model": cfg.model, "base_model_path": base_path,
                             "context_sha256": [sha256_text(context.text)], "context_kind": cfg.context_kind,
                             "config": cfg.to_dict(), "data": {"queries": len(queries)}, "metrics": metrics})
        teacher_name = "live student" if live else (cfg.teacher or "base model, adapter off")
        lines = [f"- base model: `{cfg.model}`; teacher: {teacher_name}, with the context as {cfg.context_kind}",
                 f"- objective: {dict(objective.terms)}, top-k {objective.top_k or 'full vocabulary'} "
                 f"({objective.support}, {objective.tail}); offline_fraction {cfg.offline_fraction}",
                 f"- training: {result.steps_done}/{result.total_steps} steps on {len(queries)} queries, "
                 f"{stats['student_samples']} student samples + {stats['teacher_samples']} teacher samples, "
                 f"final loss {result.final_loss:.4f}" + (" (stopped by the time budget)"
                                                          if result.stopped_by_budget else ""),
                 f"- time: sampling {stats['generation_seconds']:.0f}s, the rest of training "
                 f"{result.seconds - stats['generation_seconds']:.0f}s, total {time.time() - t_start:.0f}s"]
        write_report(out, "on-policy context distillation", lines, evaluation, result.loss_history)
        summary = {"evaluation": evaluation, "metrics": metrics,
                   "table": results_table(evaluation) if evaluation else ""}
    accelerator.wait_for_everyone()
    return summary

