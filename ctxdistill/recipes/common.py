"""What every recipe does around its method: the accelerator, the output folder, data made once by the main process."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator

from ctxdistill import CtxDistillError
from ctxdistill.core.files import read_jsonl, write_jsonl
from ctxdistill.core.models import bf16_supported, default_device, load_model
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
