"""What every recipe does around its method: the accelerator, the output folder, data made once by the main process."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from ctxdistill import CtxDistillError
from ctxdistill.core.files import atomic_write_json, read_jsonl, write_jsonl
from ctxdistill.core.models import add_lora, bf16_supported, default_device, enable_gradient_checkpointing, load_model
from ctxdistill.core.training import TrainSettings


def make_accelerator(cfg) -> Accelerator:
    """bf16 autocast where the hardware has it (dtype=auto), on the configured or the best device."""
    device = torch.device(cfg.device) if cfg.device else default_device()
    mixed = "bf16" if cfg.dtype in ("auto", "bf16", "bfloat16") and bf16_supported(device) else "no"
    return Accelerator(mixed_precision=mixed, cpu=device.type == "cpu")


def open_run(cfg, out: Path, resume: bool):
    """(accelerator, model, tokenizer, resolved model path) of a training run whose output folder is checked first.

    Full fine-tuning keeps fp32 master weights (bf16 comes from autocast); LoRA freezes the base, so bf16 is sound."""
    accelerator = make_accelerator(cfg)
    prepare_out_dir(accelerator, out, resume)
    dtype = "float32" if cfg.finetune == "full" and accelerator.mixed_precision == "bf16" else cfg.dtype
    model, tokenizer, path = load_model(cfg.model, dtype, accelerator.device)
    return accelerator, model, tokenizer, path


def prepare_out_dir(accelerator: Accelerator, out: Path, resume: bool) -> None:
    if accelerator.is_main_process:
        if out.exists() and any(out.iterdir()) and not resume:
            raise CtxDistillError(f"{out} already holds a run. Pass --resume to continue it, or choose a new --out "
                                  "(nothing was overwritten).")
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()


def main_process_writes(accelerator: Accelerator, path: Path, make_rows) -> list:
    """Rows cached at `path`: made once by the main process (or read back on resume), then read by all."""
    if accelerator.is_main_process and not path.exists():
        write_jsonl(path, make_rows())
    accelerator.wait_for_everyone()
    return read_jsonl(path, str(path))


def train_settings(cfg, deadline: float | None = None, **overrides) -> TrainSettings:
    """The loop's settings from a run config; a recipe overrides what it counts differently (e.g. epochs)."""
    values = {"lr": cfg.learning_rate, "weight_decay": cfg.weight_decay, "warmup_ratio": cfg.warmup_ratio,
              "schedule": cfg.schedule, "grad_clip": cfg.grad_clip, "epochs": cfg.epochs, "max_steps": cfg.max_steps,
              "batch_size": cfg.batch_size, "micro_batch_size": cfg.micro_batch_size, "seed": cfg.seed,
              "checkpoint_every": cfg.checkpoint_every, "deadline": deadline}
    return TrainSettings(**{**values, **overrides})


def training_fingerprint_config(cfg) -> dict:
    """The settings a checkpoint must agree on: those that shape training, leaving out the budget and the keys at
    their defaults (so a key added by a later version does not orphan existing checkpoints)."""
    defaults = type(cfg)().to_dict()
    return {k: v for k, v in cfg.to_dict().items() if k not in ("max_minutes", "checkpoint_every") and v != defaults[k]}


DEFAULT_WINDOW = 2048  # for a model config that does not say its context length


def model_window(model, cfg) -> int:
    """The longest sequence a run may build: the model's context length, capped by max_seq_len where set."""
    window = getattr(model.config, "max_position_embeddings", None) or DEFAULT_WINDOW
    cap = getattr(cfg, "max_seq_len", 0)
    return min(window, cap) if cap else window


def fingerprint(*parts) -> str:
    """A digest of JSON-able parts: what a checkpoint or cached data must have been made from to be reused."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def share_budget(deadline_at: float | None, planned: list[float]) -> float | None:
    """The deadline of the next stage when the time left is shared by the stages still to run (`planned`, the
    next one first) in proportion to their planned work."""
    if deadline_at is None:
        return None
    return time.time() + (deadline_at - time.time()) * planned[0] / sum(planned)


def make_student(model, cfg):
    """The trainable student: a fresh LoRA adapter on the model, or the model itself for full fine-tuning.

    The adapter's initial weights come from `cfg.seed`, not from whatever the run drew before (measured: a knowledge
    module started differently when its synthetic data came from the cache instead of being sampled)."""
    torch.manual_seed(cfg.seed)
    student = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets) \
        if cfg.finetune == "lora" else model.requires_grad_(True)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(student)
    return student


def budget_deadline(cfg, t_start: float) -> float | None:
    return t_start + cfg.max_minutes * 60 if cfg.max_minutes else None


def check_data_inputs(out: Path, inputs: dict) -> None:
    """Data cached in OUT/data is reused on --resume only if it was made from the same inputs (the first run
    records them in OUT/data/inputs.json)."""
    path = out / "data" / "inputs.json"
    if path.exists():
        if json.loads(path.read_text()) != json.loads(json.dumps(inputs)):
            raise CtxDistillError(f"{out} holds data made from other inputs (context, prompts or generation "
                                  "settings changed). Resume with the same inputs, or choose a new --out.")
    else:
        atomic_write_json(path, inputs)
