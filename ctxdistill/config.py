"""Run configuration: plain data, from defaults ← YAML (--config) ← --set key=value, validated with clear errors."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from ctxdistill import CtxDistillError


@dataclass
class DistillConfig:
    # model and teacher
    model: str = "default"
    dtype: str = "auto"  # auto: bf16 where the hardware has it, else fp32
    device: str = ""  # "" picks cuda when present, else cpu
    context_kind: str = "system"  # system | prefix | document
    # what is trained
    finetune: str = "lora"  # lora | full
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: typing.Union[str, list] = "all-linear"
    # objective
    objective: str = "forward_kl"  # forward_kl (soft targets) | sft (hard labels)
    temperature: float = 1.0
    top_k: int = 0  # 0: full vocabulary; k: the teacher's top-k, renormalized
    chunk_size: int = 256  # completion rows projected to the vocabulary at once
    # optimization
    lr: float = 0.0  # 0: 2e-3 for LoRA, 1e-5 for full fine-tuning
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    schedule: str = "cosine"
    grad_clip: float = 1.0
    epochs: float = 5.0
    max_steps: int = 0
    batch_size: int = 8
    micro_batch_size: int = 8
    seed: int = 0
    checkpoint_every: int = 25
    max_minutes: float = 0.0  # 0: no budget
    # data: queries and teacher samples
    num_queries: int = 64  # synthesized when no --prompts
    query_temperature: float = 1.0
    samples_per_query: int = 8
    sample_temperature: float = 0.8
    max_new_tokens: int = 96
    gen_batch_size: int = 64
    # evaluation written to the report
    eval_max_new_tokens: int = 48

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr > 0 else (2e-3 if self.finetune == "lora" else 1e-5)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "DistillConfig":
        choices = {"finetune": ("lora", "full"), "objective": ("forward_kl", "sft"),
                   "context_kind": ("system", "prefix", "document"), "schedule": ("cosine", "linear", "constant")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise CtxDistillError(f"{key}={getattr(self, key)!r} is not valid; use one of {', '.join(allowed)}.")
        positive = ["lora_r", "batch_size", "micro_batch_size", "samples_per_query", "max_new_tokens",
                    "gen_batch_size", "chunk_size", "temperature", "eval_max_new_tokens"]
        for key in positive:
            if getattr(self, key) <= 0:
                raise CtxDistillError(f"{key} must be > 0, got {getattr(self, key)}.")
        for key in ["epochs", "max_minutes", "lr", "weight_decay", "top_k", "max_steps", "warmup_ratio"]:
            if getattr(self, key) < 0:
                raise CtxDistillError(f"{key} must be >= 0, got {getattr(self, key)}.")
        if self.batch_size >= self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise CtxDistillError(f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size "
                                  f"({self.micro_batch_size}). Change --set batch_size=... or micro_batch_size=....")
        if not self.model.strip():
            raise CtxDistillError("model is empty. Pass --model with a Hugging Face id, a path, or 'default'.")
        from ctxdistill.models import DTYPES

        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise CtxDistillError(f"dtype={self.dtype!r} is not valid; use auto or one of {', '.join(DTYPES)}.")
        return self


ALIASES = {"learning_rate": "lr", "lr_rate": "lr", "rank": "lora_r", "r": "lora_r", "alpha": "lora_alpha",
           "num_epochs": "epochs", "steps": "max_steps", "k": "top_k"}


def _coerce(key: str, value, typ):
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        if isinstance(value, (str, list)):
            return value
        raise CtxDistillError(f"{key} must be a string or a list, got {value!r}.")
    if typ in (int, float) and isinstance(value, str):
        try:  # YAML reads 1e-3 (no dot) as a string
            value = typ(value)
        except ValueError:
            pass
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif typ is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif typ is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise CtxDistillError(f"{key} must be of type {typ.__name__}, got {value!r}.")


def apply_overrides(cfg, values: dict, source: str):
    hints = typing.get_type_hints(type(cfg))
    names = [f.name for f in dataclasses.fields(cfg)]
    for key, value in values.items():
        if key not in names:
            close = ([ALIASES[key]] if key in ALIASES else []) + difflib.get_close_matches(key, names, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else f" Valid keys: {', '.join(names)}."
            raise CtxDistillError(f"Unknown config key '{key}' in {source}.{hint}")
        setattr(cfg, key, _coerce(key, value, hints[key]))
    return cfg


def parse_set(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise CtxDistillError(f"--set expects key=value, got '{item}'.")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise CtxDistillError(f"--set {item}: cannot parse the value ({e}).") from e
    return out


def load_config(config_file: str | None = None, sets: list[str] | None = None, **cli_values) -> DistillConfig:
    cfg = DistillConfig()
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise CtxDistillError(f"Config file not found: {path}. Check the path given to --config.")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise CtxDistillError(f"{path} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise CtxDistillError(f"{path} must be a YAML mapping of key: value (see configs/offline.yaml).")
        apply_overrides(cfg, data, str(path))
    apply_overrides(cfg, {k: v for k, v in cli_values.items() if v is not None}, "the command line")
    apply_overrides(cfg, parse_set(sets), "--set")
    return cfg.validate()


