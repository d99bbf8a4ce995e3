"""What a run leaves behind: OUT/adapter (plain PEFT), OUT/manifest.json, OUT/report.md (+ report.png)."""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

from ctxdistill import __version__
from ctxdistill.core.files import atomic_write_dir, atomic_write_json


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def versions() -> dict:
    import accelerate
    import peft
    import torch
    import transformers

    return {"ctxdistill": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__, "python": platform.python_version()}


def save_adapter(peft_model, target: Path) -> None:
    """save_pretrained into a temporary folder, then swap it in, so a killed run never leaves half an adapter."""
    atomic_write_dir(target, peft_model.save_pretrained, ".adapter-")


def save_trained(student, tokenizer, out: Path, finetune: str) -> Path:
    """OUT/adapter (plain PEFT) for LoRA, OUT/model (plain transformers, with its tokenizer) for full fine-tuning."""
    if finetune == "lora":
        save_adapter(student, out / "adapter")
        return out / "adapter"
    save_adapter(student, out / "model")
    tokenizer.save_pretrained(out / "model")
    return out / "model"


def write_manifest(out: Path, manifest: dict) -> None:
    atomic_write_json(out / "manifest.json", {**manifest, "versions": versions()})


