"""Readers for users' input files (contexts, prompts, examples, QA), with errors that say what to fix."""

from __future__ import annotations

from pathlib import Path

from ctxdistill import CtxDistillError
from ctxdistill.core.files import load_json, read_jsonl, read_text


def _require_file(path, what: str, flag: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise CtxDistillError(f"{what} file not found: {p}. Check the path given to {flag}.")
    if p.is_dir():
        raise CtxDistillError(f"{flag} {p} is a directory; pass a file.")
    return p


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
        out = {"context": read_text(p, "--context")}
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
        prompts = read_text(p, "--prompts").splitlines()
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


BUNDLED_RETENTION = Path(__file__).resolve().parent / "retention.json"


def read_retention(path: str | None) -> list[dict]:
    return read_qa(path or BUNDLED_RETENTION, "--retention")
