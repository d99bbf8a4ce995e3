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


