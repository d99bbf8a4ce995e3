"""A run's report.md and report.png: the summary, the before/after table, every answer, the loss curve."""

from __future__ import annotations

import os
from pathlib import Path

from ctxdistill.core.files import atomic_write_text
from ctxdistill.eval.evaluation import answers_table, results_table


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
