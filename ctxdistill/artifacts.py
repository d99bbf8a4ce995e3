"""What a run leaves behind: OUT/adapter (plain PEFT), OUT/manifest.json, OUT/report.md (+ report.png)."""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

from ctxdistill import __version__
from ctxdistill.evaluation import answers_table, results_table
from ctxdistill.io import atomic_write_dir, atomic_write_json, atomic_write_text


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


def plot_run(out: Path, loss_history: list[float], evaluation: dict | None) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if evaluation else 1, figsize=(10 if evaluation else 5, 3.5), squeeze=False)
    ax = axes[0][0]
    ax.plot(range(1, len(loss_history) + 1), loss_history)
    ax.set_xlabel("optimizer step"), ax.set_ylabel("loss"), ax.set_title("training loss")
    if evaluation:
        ax = axes[0][1]
        names = list(evaluation["accuracy"])
        colors = {"base": "#999", "teacher": "#4a7", "initial": "#b6b", "student": "#37c"}
        ax.bar(names, [evaluation["accuracy"][k] / evaluation["n"] for k in names],
               color=[colors.get(k, "#777") for k in names])
        if "retention" in evaluation:
            r = evaluation["retention"]
            ax.bar(["retention\nbase", "retention\nstudent"], [r["accuracy"]["base"] / r["n"],
                                                                r["accuracy"]["student"] / r["n"]], color="#c84")
        ax.set_ylim(0, 1), ax.set_ylabel("accuracy"), ax.set_title("eval questions")
    fig.tight_layout()
    path = out / "report.png"
    tmp = out / ".report.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path.name


def write_report(out: Path, title: str, summary_lines: list[str], evaluation: dict | None,
                 loss_history: list[float]) -> str:
    parts = [f"# {title}", "", *summary_lines, ""]
    if evaluation:
        parts += ["## Before / after", "", results_table(evaluation), "", "## Answers", "", answers_table(evaluation), ""]
    image = plot_run(out, loss_history, evaluation) if loss_history else None
    if image:
        parts += [f"![loss and accuracy]({image})", ""]
    text = "\n".join(parts)
    atomic_write_text(out / "report.md", text)
    return text
