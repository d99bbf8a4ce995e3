"""The recipe interface: what a method declares so that the command line and the Python API can run it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class RunResult:
    """What a finished run hands back: where its artifacts are, its metrics, and the table to print."""

    out: Path
    artifacts: list[str]  # folder/file names under `out`, e.g. ["adapter", "manifest.json", "report.md"]
    metrics: dict = field(default_factory=dict)
    table: str = ""  # the before/after table; empty when there were no questions
    no_table: str = "(no eval questions)"  # what to print instead, saying how to get a table


@dataclass(frozen=True)
class Recipe:
    """A method: its name, its config class, the inputs it takes (the `distill` flags that apply to it, as `run`'s
    keyword names) and `run(cfg, out, resume=False, **inputs) -> RunResult`. A recipe whose inputs may be 🤗 datasets
    also takes `columns` (their column mapping and split; see data/hf_datasets.py), passed only when one is given."""

    name: str
    summary: str
    config: type
    inputs: tuple[str, ...]
    run: Callable[..., RunResult]
