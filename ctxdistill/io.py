"""Atomic file writes and the readers for users' input files, with errors that say what to fix."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from ctxdistill import CtxDistillError


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_dir(target: Path, fill, prefix: str = ".tmp-") -> Path:
    """`fill(tmp)` writes a folder's content into a temporary folder (and may return a subfolder of it to install);
    it then replaces `target` by renames, so a killed run never leaves half a model or adapter."""
    import shutil
    import tempfile

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix))
    try:
        made = fill(tmp) or tmp
        os.chmod(made, 0o755)
        old = target.with_name(target.name + ".old")
        if target.exists():
            os.replace(target, old)
        os.replace(made, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_torch_save(obj, path: Path) -> None:
    _atomic(path, lambda f: torch.save(obj, f))


def write_jsonl(path: Path, rows) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _require_file(path, what: str, flag: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise CtxDistillError(f"{what} file not found: {p}. Check the path given to {flag}.")
    if p.is_dir():
        raise CtxDistillError(f"{flag} {p} is a directory; pass a file.")
    return p


def load_json(p: Path, flag: str):
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CtxDistillError(f"{p} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}). "
                              f"Fix the file given to {flag}.") from e


def read_jsonl(p: Path, flag: str) -> list:
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise CtxDistillError(f"{p} line {n} is not valid JSON ({e.msg}). Each line of a .jsonl given to "
                                      f"{flag} must be one JSON object.") from e
    return rows


def read_examples(path) -> list[dict]:
    """Few-shot examples: a .jsonl of {"input", "output"} strings."""
    p = _require_file(path, "Examples", "--examples")
    rows = read_jsonl(p, "--examples")
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("input"), str) or not isinstance(row.get("output"), str):
            raise CtxDistillError(f"{p}, example {n}: each line must be an object with string 'input' and 'output'.")
    if not rows:
        raise CtxDistillError(f"{p} has no examples; write one JSON object per line: "
                              '{"input": ..., "output": ...}.')
    return rows


def read_context(path) -> dict:
    """A .txt/.md file (the whole text is the context) or a .json with a "context" field (and optional "eval")."""
    p = _require_file(path, "Context", "--context")
    if p.suffix == ".json":
        data = load_json(p, "--context")
        if not isinstance(data, dict) or not isinstance(data.get("context"), str):
            raise CtxDistillError(f"{p} must be a JSON object with a string field \"context\" "
                                  '(e.g. {"context": "Your name is ..."}), or a plain .txt file.')
        out = dict(data)
    else:
        out = {"context": p.read_text(encoding="utf-8")}
    if not out["context"].strip():
        raise CtxDistillError(f"The context in {p} is empty. Put the text to internalize in it.")
    return out


def read_prompts(path) -> list[str]:
    """A .jsonl of {"prompt": ...}, a .txt with one prompt per line, or a .json list (or object with "prompts")."""
    p = _require_file(path, "Prompts", "--prompts")
    if p.suffix == ".jsonl":
        rows = read_jsonl(p, "--prompts")
        bad = [i + 1 for i, r in enumerate(rows) if not (isinstance(r, dict) and isinstance(r.get("prompt"), str))]
        if bad:
            raise CtxDistillError(f'{p}: line(s) {bad[:5]} lack a string "prompt" field. Each line must look like '
                                  '{"prompt": "..."}.')
        prompts = [r["prompt"] for r in rows]
    elif p.suffix == ".json":
        data = load_json(p, "--prompts")
        if isinstance(data, dict):
            data = data.get("prompts", data.get("train_prompts"))
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise CtxDistillError(f'{p} must hold a list of strings, or an object with a "prompts" list.')
        prompts = data
    else:
        prompts = p.read_text(encoding="utf-8").splitlines()
    prompts = [x.strip() for x in prompts if x.strip()]
    if not prompts:
        raise CtxDistillError(f"{p} holds no prompts. Add some, or drop --prompts to synthesize them.")
    return prompts


def read_qa(path, flag: str = "--qa") -> list[dict]:
    """A JSON list of {"q", "a": [accepted answers]}, or an object holding one under "eval"/"qa" or per "docs"."""
    p = _require_file(path, "QA", flag)
    data = load_json(p, flag)
    if isinstance(data, dict):
        if "docs" in data and isinstance(data["docs"], list):
            data = [qa for d in data["docs"] if isinstance(d, dict) for qa in (d.get("qa") or [])]
        else:
            data = data.get("eval", data.get("qa"))
    return read_qa_items(data, str(p))


def read_qa_items(data, where: str = "the eval list") -> list[dict]:
    ok = isinstance(data, list) and data and all(
        isinstance(x, dict) and isinstance(x.get("q"), str) and isinstance(x.get("a"), list) and x["a"]
        and all(isinstance(a, str) for a in x["a"]) for x in data)
    if not ok:
        raise CtxDistillError(f'{where} must be a non-empty JSON list of {{"q": question, "a": [accepted answers]}} '
                              '(or an object with such a list under "eval" or "qa").')
    return data
