"""Atomic file writes and the readers for users' input files, with errors that say what to fix."""

from __future__ import annotations

import codecs
import json
import os
import tempfile
from pathlib import Path

import torch

from ctxdistill import CtxDistillError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets what a plain open() would give
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
        if target.exists():  # moved into a folder of our own first: a user's `NAME.old` is never in the way
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix + "old-"))
            os.replace(target, old / target.name)
            os.replace(made, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(made, target)
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


def read_text(path, flag: str) -> str:
    """A user's text file, decoded as UTF-8 (a leading byte-order mark is dropped); a binary file or another
    encoding is refused with the file, the byte offset and the line, not a UnicodeDecodeError."""
    p = Path(path)
    data = p.read_bytes()
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    given = f" (given to {flag})" if flag.startswith("-") else ""
    try:
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start
        line = data[:at].count(b"\n") + 1
        raise CtxDistillError(f"{p}{given} is not UTF-8 text: byte 0x{data[at]:02X} at offset {at} (line {line}) "
                              "is not valid UTF-8, and input files are read as UTF-8. Save it as UTF-8 text (or "
                              "check that it is the right file).") from None
    nul = text.find("\0")
    if nul >= 0:  # valid UTF-8 can still be binary; no text input holds a NUL character
        at = skip + len(text[:nul].encode("utf-8"))
        raise CtxDistillError(f"{p}{given} looks like a binary file: a NUL byte at offset {at} (line "
                              f"{text.count(chr(10), 0, nul) + 1}). Pass a UTF-8 text file.")
    return text


def load_json(p: Path, flag: str):
    try:
        return json.loads(read_text(p, flag))
    except json.JSONDecodeError as e:
        raise CtxDistillError(f"{p} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}). "
                              f"Fix the file given to {flag}.") from e


def read_jsonl(p: Path, flag: str) -> list:
    rows = []
    for n, line in enumerate(read_text(p, flag).splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise CtxDistillError(f"{p} line {n} is not valid JSON ({e.msg}). Each line of a .jsonl given to "
                                      f"{flag} must be one JSON object.") from e
    return rows


