"""Knowledge modules on disk: a PEFT adapter folder plus `module.json` (documents, sha256 of their text, base model,
recipe, metrics). List and show them, load several at once (their deltas add up), and combine several into one
plain PEFT adapter (a weighted sum of the LoRA deltas at a fixed rank, or their concatenation, which is exact)."""

from __future__ import annotations

import json
from pathlib import Path

from ctxdistill import CtxDistillError
from ctxdistill.core.files import atomic_write_dir, atomic_write_json
from ctxdistill.core.models import peft_quietly
from ctxdistill.recipes.artifacts import versions

MANIFEST = "module.json"
HOW = {"sum": "svd", "cat": "cat"}  # our names → PEFT add_weighted_adapter combination types


def is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def write_module_manifest(adapter_dir: Path, manifest: dict) -> None:
    atomic_write_json(adapter_dir / MANIFEST, {**manifest, "versions": versions()})


def read_module(path) -> dict:
    """The manifest of a module folder ({} for a plain adapter without one), with its path."""
    p = Path(path)
    if not is_adapter(p):
        raise CtxDistillError(f"{p} is not a module (not a PEFT adapter directory: no adapter_config.json). Pass "
                              "OUT/adapter of a distill run, or OUT/modules/NAME of a knowledge run.")
    manifest = json.loads((p / MANIFEST).read_text(encoding="utf-8")) if (p / MANIFEST).is_file() else {}
    return {"path": str(p), **manifest}


def find_modules(root) -> list[dict]:
    """Every module under `root` (the folder itself, or any folder below it), sorted by path."""
    r = Path(root)
    if not r.exists():
        raise CtxDistillError(f"{r} does not exist. Pass a folder of modules (e.g. the --out of a knowledge run).")
    found = [r] if is_adapter(r) else []
    found += sorted(p.parent for p in r.rglob("adapter_config.json") if p.parent != r)
    return [read_module(p) for p in found]


def modules_table(modules: list[dict]) -> str:
    lines = ["| module | documents | recipe / objective | base model | closed-book | retention |",
             "|---|---|---|---|---|---|"]
    for m in modules:
        docs = [d["id"] for d in m.get("documents", [])]
        shown = ", ".join(docs[:4]) + (f" (+{len(docs) - 4})" if len(docs) > 4 else "")
        metrics = m.get("metrics", {})
        closed = f"{metrics['knowledge']}/{metrics['questions']}" if "knowledge" in metrics else "–"
        kept = f"{metrics['retention']}/{metrics['retention_n']}" if "retention" in metrics else "–"
        recipe = f"{m.get('recipe', '?')} / {m.get('objective', '?')}" if m.get("recipe") else "(plain adapter)"
        lines.append(f"| {m['path']} | {shown or '–'} | {recipe} | {m.get('base_model', '?')} | {closed} | {kept} |")
    return "\n".join(lines)


def base_of(adapter_paths: list[str], model: str | None) -> str:
    """The base model: --model, else the adapters' base_model_name_or_path (which must agree)."""
    from peft import PeftConfig

    if model:
        return model
    bases = {PeftConfig.from_pretrained(p).base_model_name_or_path for p in adapter_paths}
    if len(bases) != 1:
        raise CtxDistillError(f"The adapters were trained on different base models ({', '.join(map(str, bases))}); "
                              "modules can only be used together on the base they were trained on.")
    return bases.pop()


def load_adapters(model, adapter_paths: list[str]):
    """A PeftModel with every adapter loaded and all of them active, so their deltas add up in the forward."""
    from peft import PeftModel

    for p in adapter_paths:
        read_module(p)  # a clear error for a folder that is not an adapter
    with peft_quietly():
        peft_model = PeftModel.from_pretrained(model, adapter_paths[0], adapter_name="m0")
    for i, p in enumerate(adapter_paths[1:], 1):
        peft_model.load_adapter(p, adapter_name=f"m{i}")
    if len(adapter_paths) > 1:
        peft_model.base_model.set_adapter([f"m{i}" for i in range(len(adapter_paths))])
    peft_model.eval()
    return peft_model


def combine(adapter_paths: list[str], out, weights: list[float] | None = None, how: str = "cat",
            rank: int | None = None, model: str | None = None) -> Path:
    """One PEFT adapter from several: `cat` stacks them (rank = Σ ranks, exactly Σ wᵢ·ΔWᵢ); `sum` is the weighted
    sum of the deltas brought back to `rank` (default: the largest input rank) by SVD."""
    from ctxdistill.core.models import load_model

    if how not in HOW:
        raise CtxDistillError(f"--how must be one of {', '.join(HOW)}, got {how!r}.")
    if len(adapter_paths) < 2:
        raise CtxDistillError("combine needs at least two modules.")
    weights = list(weights) if weights else [1.0] * len(adapter_paths)
    if len(weights) != len(adapter_paths):
        raise CtxDistillError(f"{len(weights)} weights for {len(adapter_paths)} modules: give one weight per module.")
    manifests = [read_module(p) for p in adapter_paths]
    base = base_of(adapter_paths, model)
    base_model, _, _ = load_model(base, "float32", "cpu")  # weight arithmetic: no bf16 rounding of the factors
    peft_model = load_adapters(base_model, adapter_paths)
    names = [f"m{i}" for i in range(len(adapter_paths))]
    try:
        peft_model.add_weighted_adapter(names, weights, "combined", combination_type=HOW[how], svd_rank=rank)
    except (ValueError, RuntimeError) as e:
        raise CtxDistillError(f"PEFT could not combine these modules ({e}). They must target the same layers.") from e
    for name in names:
        peft_model.delete_adapter(name)
    documents = [d for m in manifests for d in m.get("documents", [])]

    def fill(tmp: Path) -> Path:
        peft_model.save_pretrained(tmp, selected_adapters=["combined"])
        saved = tmp / "combined" if (tmp / "combined").is_dir() else tmp  # PEFT nests non-default adapters
        write_module_manifest(saved, {"recipe": "combine", "objective": how, "base_model": base,
                                      "documents": documents, "weights": weights,
                                      "sources": [m["path"] for m in manifests]})
        return saved

    target = atomic_write_dir(Path(out), fill, ".combine-")
    return target
