"""--data: training rows that each carry the student's prompt and a context only the teacher sees (SDFT, OPSD).

TRL's columns are read as they are:
- `prompt` (text, or chat messages ending with a user turn) + `privileged_context` (text): the teacher's last user
  turn is `teacher_template` filled with both (TRL SDFT's `teacher_prompt_template`, same default);
- `prompt` + `privileged_messages` (chat messages, TRL's privileged GKD): messages that end with a user turn are the
  teacher's whole prompt, in place of the student's; otherwise they go in front of the prompt's messages;
- `prompt` + `demonstration`, `prompt` + `solution`: filled into `demonstration_template` / `solution_template`.
Instead of `prompt`, a `messages` chat is read up to its last user turn (the assistant's reply is dropped: the
student writes its own). A row must hold exactly one of the teacher-only columns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ctxdistill import CtxDistillError
from ctxdistill.core.files import load_json, read_jsonl
from ctxdistill.core.pairs import Query
from ctxdistill.data import hf_datasets

TEACHER_COLUMNS = ("privileged_context", "privileged_messages", "demonstration", "solution")
SHAPE = ('{"prompt": ..., "privileged_context": ...} per line (or "privileged_messages", "demonstration", '
         '"solution" in place of "privileged_context")')


@dataclass(frozen=True)
class PerRowExample:
    """One training row: what the student sees, and what the teacher sees in its place."""

    student: Query  # a user string, or chat messages ending with a user turn
    teacher: Query


@dataclass(frozen=True)
class Templates:
    teacher: str = "{prompt}\n\n{privileged_context}"
    demonstration: str = "{prompt}\n\n{demonstration}"
    solution: str = "{prompt}\n\n{solution}"

    @classmethod
    def of(cls, cfg) -> "Templates":
        return cls(cfg.teacher_template, cfg.demonstration_template, cfg.solution_template)


def fill(template: str, values: dict[str, str]) -> str:
    """The template with each {name} of `values` replaced in one pass (braces in the values stay as they are)."""
    return re.sub(r"\{(" + "|".join(map(re.escape, values)) + r")\}", lambda m: values[m.group(1)], template)


def read_per_row(path, templates: Templates, columns=None) -> list[PerRowExample]:
    """The rows of a .jsonl/.json file or of a 🤗 dataset (see hf_datasets; `columns` may name its split)."""
    if hf_datasets.is_dataset(path):
        table = hf_datasets.load_table(path, "--data", {"split": columns["split"]} if columns and
                                       columns.get("split") else None)
        rows, where = table.rows, table.where
    else:
        p = Path(path)
        if not p.exists():
            raise CtxDistillError(f"Data file not found: {p}. Check the path given to --data.")
        if p.is_dir():
            raise CtxDistillError(f"--data {p} is a directory; pass a .jsonl file or a dataset folder of data files.")
        rows = read_jsonl(p, "--data") if p.suffix != ".json" else load_json(p, "--data")
        where = f"--data {p}"
    if not isinstance(rows, list) or not rows:
        raise CtxDistillError(f"{where} holds no rows. Write one JSON object per line: {SHAPE}.")
    return [example_of(row, templates, f"{where}, row {n}") for n, row in enumerate(rows, 1)]


def example_of(row, templates: Templates, where: str) -> PerRowExample:
    if not isinstance(row, dict):
        raise CtxDistillError(f"{where}: each row must be a JSON object like {SHAPE}.")
    prompt = _prompt(row, where)
    given = [c for c in TEACHER_COLUMNS if row.get(c) not in (None, "", [])]
    if len(given) != 1:
        found = ", ".join(given) if given else "none"
        raise CtxDistillError(f"{where}: a row needs exactly one teacher-only column of {', '.join(TEACHER_COLUMNS)} "
                              f"(found: {found}; the row's columns: {', '.join(row) or 'none'}).")
    column = given[0]
    if column == "privileged_messages":
        return PerRowExample(prompt, _with_messages(prompt, row[column], where))
    text = row[column]
    if not isinstance(text, str):
        raise CtxDistillError(f"{where}: {column!r} must be text, got {type(text).__name__}.")
    template = {"privileged_context": templates.teacher, "demonstration": templates.demonstration,
                "solution": templates.solution}[column]
    return PerRowExample(prompt, _with_last_user_turn(prompt, template, {column: text}))


def _prompt(row: dict, where: str) -> Query:
    if "prompt" in row:
        prompt = row["prompt"]
        if isinstance(prompt, str) and prompt.strip():
            return prompt.strip()
        if hf_datasets.is_chat(prompt):
            return _chat(prompt, where, "prompt")
        raise CtxDistillError(f"{where}: 'prompt' must be non-empty text or a list of chat messages "
                              '[{"role": ..., "content": ...}] ending with a user turn.')
    if hf_datasets.is_chat(row.get("messages")):
        messages = _chat(row["messages"], where, "messages", to_last_user=True)
        return messages
    raise CtxDistillError(f"{where}: no 'prompt' column (nor a 'messages' chat). Write rows like {SHAPE}.")


def _chat(messages: list, where: str, column: str, to_last_user: bool = False) -> list[dict]:
    turns = [{"role": str(m.get("role", "")), "content": m.get("content")} for m in messages]
    bad = [i for i, m in enumerate(turns) if not isinstance(m["content"], str) or not m["role"]]
    if bad:
        raise CtxDistillError(f"{where}: {column!r} message {bad[0]} needs a 'role' and a text 'content'.")
    users = [i for i, m in enumerate(turns) if m["role"] == "user"]
    if to_last_user and users:
        turns = turns[:users[-1] + 1]
    if not turns or turns[-1]["role"] != "user":
        raise CtxDistillError(f"{where}: {column!r} must end with a 'user' turn: the student answers it.")
    return turns


def _with_last_user_turn(prompt: Query, template: str, values: dict[str, str]) -> Query:
    """The prompt with its last user turn rewritten by `template` (the teacher's view of that turn)."""
    if isinstance(prompt, str):
        return fill(template, {"prompt": prompt, **values})
    messages = [dict(m) for m in prompt]
    messages[-1]["content"] = fill(template, {"prompt": messages[-1]["content"], **values})
    return messages


def _with_messages(prompt: Query, privileged, where: str) -> list[dict]:
    """TRL's privileged_messages: the teacher's whole prompt when they end with a user turn, else put in front."""
    if not hf_datasets.is_chat(privileged):
        raise CtxDistillError(f"{where}: 'privileged_messages' must be a list of chat messages "
                              '[{"role": ..., "content": ...}].')
    extra = [{"role": str(m.get("role", "")), "content": m.get("content")} for m in privileged]
    if any(not isinstance(m["content"], str) or not m["role"] for m in extra):
        raise CtxDistillError(f"{where}: every 'privileged_messages' turn needs a 'role' and a text 'content'.")
    if extra[-1]["role"] == "user":
        return extra
    prompt_messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return extra + prompt_messages
