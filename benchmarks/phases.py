"""What the paper-reproduction benchmarks share (snell_addition.py, continual_skills.py): each phase a
`ctxdistill distill` run kept in its own folder under --out (read back when finished, resumed when interrupted), the
wall time of each phase in OUT/timings.json, and the base model loaded once with every adapter next to the others.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def write_lines(path: Path, lines: list[str]) -> None:
    """`lines` as a text file, rewritten only when its content changes (a phase's cached inputs stay untouched)."""
    from ctxdistill.core.files import atomic_write_text

    text = "".join(line + "\n" for line in lines)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)


def load_timings(out: Path) -> dict:
    path = out / "timings.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def save_timings(out: Path, timings: dict) -> None:
    from ctxdistill.core.files import atomic_write_json

    atomic_write_json(out / "timings.json", timings)


def run_phase(name: str, out: Path, recipe: str, timings: dict, **keys) -> dict:
    """One `ctxdistill distill` run, kept in OUT/<name>: read back when finished, resumed when interrupted.
    Returns its manifest; its wall time goes to timings[name]."""
    from ctxdistill.api import distill

    folder = out / name
    manifest = folder / "manifest.json"
    if not manifest.exists():
        t0 = time.time()
        print(f"[{name}] {recipe} ...", flush=True)
        distill(recipe, out=folder, resume=folder.exists() and any(folder.iterdir()), **keys)
        timings[name] = round(time.time() - t0, 1)
        save_timings(out, timings)
    return json.loads(manifest.read_text(encoding="utf-8"))


def load_with_adapters(model_name: str, adapters: dict[str, Path], dtype: str = "auto"):
    """(PEFT model, tokenizer, names): the base model once, each adapter loaded next to the others under its own
    name (switched with set_adapter, never copied); names maps the caller's name to PEFT's (the first is
    "default")."""
    from ctxdistill.core.models import load_adapter, load_model, peft_quietly

    model, tokenizer, _ = load_model(model_name, dtype)
    first, *rest = adapters.items()
    model = load_adapter(model, str(first[1]))
    with peft_quietly():
        for name, path in rest:
            model.load_adapter(str(path), adapter_name=name)
    return model, tokenizer, {first[0]: "default", **{name: name for name, _ in rest}}
