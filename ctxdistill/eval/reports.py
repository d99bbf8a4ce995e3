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


def planned_note(metrics: dict) -> str:
    """Planned vs done: a schedule fitted to the time budget, or (the exception) cut by it."""
    planned, total = metrics.get("planned_steps", 0), metrics["total_steps"]
    note = f" (planned {planned}, schedule fitted to the time budget)" if planned > total else ""
    if metrics.get("stopped_by_budget"):
        note += " (stopped by the time budget before the schedule ended)"
    return note


def query_report(origins: dict[str, int], gates: list[dict]) -> list[str]:
    """The training queries by origin, and for each gated plan what the gate rejected, with the model's raw
    queries and the verdict on each."""
    total = max(1, sum(origins.values()))
    lines = ["## Queries", "", "| origin | queries | share |", "|---|---|---|"]
    lines += [f"| {name} | {n} | {n / total:.0%} |" for name, n in origins.items() if n]
    for gate in gates:
        rejected = ", ".join(f"{reason} {n}" for reason, n in gate.get("rejected", {}).items()) or "none"
        lines += ["", f"Quality gate ({gate.get('source', '')}): {gate.get('accepted', 0)} of {gate.get('offered', 0)} "
                      f"candidates passed, {gate.get('used', gate.get('accepted', 0))} used; rejected: {rejected}.",
                  "", "| model-written query | verdict |", "|---|---|"]
        lines += [f"| {row['text'][:120].replace('|', '/') or '(empty)'} | {row['verdict']} |"
                  for row in gate.get("raw", [])]
    return lines + [""]


def write_report(out: Path, title: str, summary_lines: list[str], evaluation: dict | None,
                 loss_history: list[float], extra: list[str] | None = None) -> str:
    parts = [f"# {title}", "", *summary_lines, ""]
    if evaluation:
        parts += ["## Before / after", "", results_table(evaluation), "", "## Answers", "", answers_table(evaluation), ""]
    parts += extra or []
    image = plot_run(out, loss_history, evaluation) if loss_history else None
    if image:
        parts += [f"![loss and accuracy]({image})", ""]
    text = "\n".join(parts)
    atomic_write_text(out / "report.md", text)
    return text
