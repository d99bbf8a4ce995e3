"""Readers for users' input files (contexts, prompts, examples, QA), with errors that say what to fix."""

from __future__ import annotations

from pathlib import Path

from ctxdistill import CtxDistillError
from ctxdistill.core.files import load_json, read_jsonl, read_text
from ctxdistill.data import hf_datasets

# ctxdistill's own shapes, named when a .json/.jsonl file in another shape lacks a column it needs
EXAMPLES_SHAPE = '{"input": ..., "output": ...} per line'
PROMPTS_SHAPE = '{"prompt": ...} per line, or a list of strings'
QA_SHAPE = '{"q": question, "a": [accepted answers]}'


def _require_file(path, what: str, flag: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise CtxDistillError(f"{what} file not found: {p}. Check the path given to {flag}.")
    if p.is_dir():
        raise CtxDistillError(f"{flag} {p} is a directory; pass a file.")
    return p


def read_examples(path, columns=None) -> list[dict]:
    """Few-shot examples: a .jsonl of {"input", "output"} strings, or a dataset (see hf_datasets; `columns` maps
    its columns: {"input": ..., "output": ..., "split": ...})."""
    if hf_datasets.is_dataset(path):
        return hf_datasets.examples_of(hf_datasets.load_table(path, "--examples", columns), columns)
    p = _require_file(path, "Examples", "--examples")
    rows = read_jsonl(p, "--examples")
    if hf_datasets.foreign_rows(rows, ("input", "output")):
        return hf_datasets.examples_of(hf_datasets.rows_table(rows, p, "--examples", EXAMPLES_SHAPE), columns)
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


def read_prompts(path, columns=None) -> list[str]:
    """A .jsonl of {"prompt": ...}, a .txt with one prompt per line, or a .json list (or object with "prompts");
    or a dataset, or .json/.jsonl rows in another shape (see hf_datasets; `columns` maps their columns)."""
    if hf_datasets.is_dataset(path):
        return _kept_prompts(hf_datasets.prompts_of(hf_datasets.load_table(path, "--prompts", columns), columns), path)
    p = _require_file(path, "Prompts", "--prompts")
    if p.suffix in (".jsonl", ".json"):
        data = read_jsonl(p, "--prompts") if p.suffix == ".jsonl" else load_json(p, "--prompts")
        if hf_datasets.foreign_rows(data, ("prompt",)) or (p.suffix == ".json" and _records(data)):
            table = hf_datasets.rows_table(data, p, "--prompts", PROMPTS_SHAPE)
            return _kept_prompts(hf_datasets.prompts_of(table, columns), p)
    if p.suffix == ".jsonl":
        rows = data
        bad = [i + 1 for i, r in enumerate(rows) if not (isinstance(r, dict) and isinstance(r.get("prompt"), str))]
        if bad:
            raise CtxDistillError(f'{p}: line(s) {bad[:5]} lack a string "prompt" field. Each line must look like '
                                  '{"prompt": "..."}.')
        prompts = [r["prompt"] for r in rows]
    elif p.suffix == ".json":
        if isinstance(data, dict):
            data = data.get("prompts", data.get("train_prompts"))
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise CtxDistillError(f'{p} must hold a list of strings, or an object with a "prompts" list.')
        prompts = data
    else:
        prompts = read_text(p, "--prompts").splitlines()
    return _kept_prompts(prompts, p)


def _records(data) -> bool:
    """A non-empty JSON list of objects: a table's rows (ctxdistill's own .json prompts are strings)."""
    return isinstance(data, list) and bool(data) and all(isinstance(x, dict) for x in data)


def _kept_prompts(prompts: list[str], where) -> list[str]:
    prompts = [x.strip() for x in prompts if x.strip()]
    if not prompts:
        raise CtxDistillError(f"{where} holds no prompts. Add some, or drop --prompts to synthesize them.")
    return prompts


def read_qa(path, flag: str = "--qa", columns=None) -> list[dict]:
    """A JSON list of {"q", "a": [accepted answers]}, or an object holding one under "eval"/"qa" or per "docs"; or a
    dataset, or .json/.jsonl rows in another shape (see hf_datasets; `columns` maps their columns)."""
    if hf_datasets.is_dataset(path):
        return read_qa_items(hf_datasets.qa_of(hf_datasets.load_table(path, flag, columns), columns), f"{flag} {path}")
    p = _require_file(path, "QA", flag)
    data = read_jsonl(p, flag) if p.suffix == ".jsonl" else load_json(p, flag)
    if hf_datasets.foreign_rows(data, ("q", "a")):
        return read_qa_items(hf_datasets.qa_of(hf_datasets.rows_table(data, p, flag, QA_SHAPE), columns), str(p))
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


def read_retention(path: str | None, columns=None) -> list[dict]:
    return read_qa(path, "--retention", columns) if path else read_qa(BUNDLED_RETENTION, "--retention")
