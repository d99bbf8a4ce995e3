"""Knowledge modules on disk: a PEFT adapter folder plus `module.json` (documents, sha256 of their text, base model,
recipe, metrics). List and show them, load several at once (their deltas add up), and combine several into one
plain PEFT adapter (a weighted sum of the LoRA deltas at a fixed rank, or their concatenation, which is exact)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ctxdistill import CtxDistillError
from ctxdistill.core.files import atomic_write_dir, atomic_write_json
from ctxdistill.core.models import adapter_loading, check_adapter, peft_quietly
from ctxdistill.recipes.artifacts import versions

MANIFEST = "module.json"
HOW = {"sum": "svd", "cat": "cat"}  # our names → PEFT add_weighted_adapter combination types
# What save_pretrained and write_module_manifest put in an adapter folder: combine may replace only such a folder.
WRITTEN_FILES = {"adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md", MANIFEST}


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
    check_adapter(p)
    return {"path": str(p), **read_module_manifest(p)}


def read_module_manifest(p: Path) -> dict:
    """module.json, checked for what the table and combine read from it."""
    f = p / MANIFEST
    if not f.is_file():
        return {}
    fix = "Fix it, or move it out of the folder (the adapter loads without it)."
    try:
        manifest = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CtxDistillError(f"{f} is not valid JSON ({e}). {fix}") from e
    if not isinstance(manifest, dict):
        raise CtxDistillError(f"{f} must hold a JSON object, got {type(manifest).__name__}. {fix}")
    docs = manifest.get("documents", [])
    if not isinstance(docs, list) or not all(isinstance(d, dict) and "id" in d for d in docs):
        raise CtxDistillError(f'{f}: "documents" must be a list of objects with an "id". {fix}')
    if not isinstance(manifest.get("metrics", {}), dict):
        raise CtxDistillError(f'{f}: "metrics" must be an object. {fix}')
    return manifest


def find_modules(root) -> tuple[list[dict], list[str]]:
    """Every module under `root` (the folder itself, or any folder below it), sorted by path; and what is wrong
    with each one that cannot be read, so that one broken module does not hide the others."""
    r = Path(root)
    if not r.exists():
        raise CtxDistillError(f"{r} does not exist. Pass a folder of modules (e.g. the --out of a knowledge run).")
    found = [r] if is_adapter(r) else []
    found += sorted(p.parent for p in r.rglob("adapter_config.json") if p.parent != r)
    modules, problems = [], []
    for p in found:
        try:
            modules.append(read_module(p))
        except CtxDistillError as e:
            problems.append(str(e))
    return modules, problems


def modules_table(modules: list[dict]) -> str:
    lines = ["| module | documents | recipe / objective | base model | closed-book | retention |",
             "|---|---|---|---|---|---|"]
    for m in modules:
        docs = [str(d["id"]) for d in m.get("documents", [])]
        shown = ", ".join(docs[:4]) + (f" (+{len(docs) - 4})" if len(docs) > 4 else "")
        metrics = m.get("metrics", {})
        closed = f"{metrics['knowledge']}/{metrics.get('questions', '?')}" if "knowledge" in metrics else "–"
        kept = f"{metrics['retention']}/{metrics.get('retention_n', '?')}" if "retention" in metrics else "–"
        recipe = f"{m.get('recipe', '?')} / {m.get('objective', '?')}" if m.get("recipe") else "(plain adapter)"
        lines.append(f"| {m['path']} | {shown or '–'} | {recipe} | {m.get('base_model', '?')} | {closed} | {kept} |")
    return "\n".join(lines)


def base_of(adapter_paths: list[str], model: str | None) -> str:
    """The base model: --model, else the adapters' base_model_name_or_path (which must agree)."""
    if model:
        return model
    bases = {}
    for p in adapter_paths:
        base = check_adapter(p).get("base_model_name_or_path")
        if not isinstance(base, str) or not base:
            raise CtxDistillError(f"{Path(p) / 'adapter_config.json'} does not name its base model "
                                  f"(base_model_name_or_path is {json.dumps(base)}). Pass --model with the model "
                                  "the adapter was trained on.")
        bases.setdefault(base, p)
    if len(bases) != 1:
        raise CtxDistillError(f"The adapters were trained on different base models ({', '.join(map(str, bases))}); "
                              "modules can only be used together on the base they were trained on.")
    return bases.popitem()[0]


def load_adapters(model, adapter_paths: list[str]):
    """A PeftModel with every adapter loaded and all of them active, so their deltas add up in the forward."""
    from peft import PeftModel

    for p in adapter_paths:
        read_module(p)  # a clear error for a folder that is not an adapter, or a damaged one
    with peft_quietly(), adapter_loading(adapter_paths[0], model):
        peft_model = PeftModel.from_pretrained(model, adapter_paths[0], adapter_name="m0")
    for i, p in enumerate(adapter_paths[1:], 1):
        with adapter_loading(p, model):
            peft_model.load_adapter(p, adapter_name=f"m{i}")
    if len(adapter_paths) > 1:
        peft_model.base_model.set_adapter([f"m{i}" for i in range(len(adapter_paths))])
    peft_model.eval()
    return peft_model


def check_combine_out(out: Path, adapter_paths: list[str], overwrite: bool) -> None:
    """combine replaces --out as a whole, so it may only replace an adapter folder ctxdistill wrote (adapter files
    and a module.json, nothing else), and only when asked to."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if any(out.resolve() == Path(p).resolve() for p in adapter_paths):
        raise CtxDistillError(f"--out {out} is one of the modules being combined; write the result to another "
                              "folder.")
    if not out.is_dir():
        raise CtxDistillError(f"--out {out} is a file; it is left as it is. Pass a new or empty folder.")
    others = sorted(f.name for f in out.iterdir() if f.name not in WRITTEN_FILES)
    written = is_adapter(out) and (out / MANIFEST).is_file() and not others
    if written:
        try:
            written = "recipe" in read_module_manifest(out)
        except CtxDistillError:
            written = False
    if not written:
        what = f"holds {', '.join(others[:5])}" if others else "is not a module folder ctxdistill wrote"
        raise CtxDistillError(f"--out {out} already exists and {what}; nothing in it is touched. Pass a new or "
                              "empty folder.")
    if not overwrite:
        raise CtxDistillError(f"--out {out} already holds a module; it is left as it is. Pass --overwrite to "
                              "replace it, or a new folder.")


def combine(adapter_paths: list[str], out, weights: list[float] | None = None, how: str = "cat",
            rank: int | None = None, model: str | None = None, overwrite: bool = False) -> Path:
    """One PEFT adapter from several: `cat` stacks them (rank = Σ ranks, exactly Σ wᵢ·ΔWᵢ); `sum` is the weighted
    sum of the deltas brought back to `rank` (default: the largest input rank) by SVD."""
    from ctxdistill.core.models import load_model

    if how not in HOW:
        raise CtxDistillError(f"--how must be one of {', '.join(HOW)}, got {how!r}.")
    if len(adapter_paths) < 2:
        raise CtxDistillError("combine needs at least two modules.")
    if rank is not None and rank <= 0:
        raise CtxDistillError(f"--rank must be a whole number > 0, got {rank}.")
    weights = list(weights) if weights else [1.0] * len(adapter_paths)
    if len(weights) != len(adapter_paths):
        raise CtxDistillError(f"{len(weights)} weights for {len(adapter_paths)} modules: give one weight per module.")
    if not all(math.isfinite(w) for w in weights):
        raise CtxDistillError(f"--weights must be finite numbers, got {', '.join(map(str, weights))}.")
    manifests = [read_module(p) for p in adapter_paths]
    check_combine_out(Path(out), adapter_paths, overwrite)
    base = base_of(adapter_paths, model)
    base_model, _, _ = load_model(base, "float32", "cpu")  # weight arithmetic: no bf16 rounding of the factors
    peft_model = load_adapters(base_model, adapter_paths)
    names = [f"m{i}" for i in range(len(adapter_paths))]
    try:
        peft_model.add_weighted_adapter(names, weights, "combined", combination_type=HOW[how], svd_rank=rank)
    except (ValueError, RuntimeError) as e:
        raise CtxDistillError(f"PEFT could not combine these modules ({e}). They must target the same layers.") from e
    peft_model.set_adapter("combined")  # deleting the active adapter would make PEFT warn that it switched
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

    return atomic_write_dir(Path(out), fill, ".combine-")
