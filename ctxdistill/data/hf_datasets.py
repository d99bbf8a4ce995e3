"""🤗 datasets as inputs: prompts, examples, documents, QA and tasks from a parquet/arrow/csv/tsv file, a folder of
such files (or one written by `save_to_disk`), or a dataset id found offline in the local Hugging Face cache; and
the column mapping that turns any table of rows (a dataset's, or a .json/.jsonl file's that is not in ctxdistill's
own shape) into the rows the readers in inputs.py and documents.py expect.

`datasets` is an optional extra: it is imported only when such an input is given. Nothing is downloaded: the load
runs with HF_DATASETS_OFFLINE=1, and local files are prepared in a temporary cache that is removed afterwards, so
reading an input leaves nothing behind in the user's cache.
"""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ctxdistill import CtxDistillError

# Data files that only a dataset reader can read, with the `datasets` builder (and its options) for each.
DATA_SUFFIXES = {".parquet": ("parquet", {}), ".arrow": ("arrow", {}), ".csv": ("csv", {}),
                 ".tsv": ("csv", {"sep": "\t"})}
FOLDER_SUFFIXES = (*DATA_SUFFIXES, ".json", ".jsonl")  # a folder of these files is a dataset
# A missing path with one of these suffixes is a mistyped file, never a dataset id.
FILE_SUFFIXES = {*FOLDER_SUFFIXES, ".txt", ".md", ".yaml", ".yml"}
DATASET_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
OFFLINE_ENV = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
INSTALL = "pip install 'ctxdistill[datasets]'"


@dataclass(frozen=True)
class Role:
    """A field an input needs: the flag that names its column, the column names tried (in order) when the flag is
    not given, and which turn of a chat-style column ([{"role", "content"}, ...]) holds it."""

    flag: str
    names: tuple[str, ...]
    turn: str  # "user" or "assistant"
    what: str  # for errors: "the prompt"


ROLES = {
    "prompt": Role("--prompt-column", ("prompt", "question", "instruction", "query", "input", "text", "messages",
                                       "conversations"), "user", "the prompt"),
    "text": Role("--text-column", ("text", "content", "document", "body", "passage", "context"), "user",
                 "the document's text"),
    "id": Role("--id-column", ("id", "doc_id", "document_id"), "user", "the document's id"),
    "question": Role("--question-column", ("question", "q", "query", "prompt", "instruction", "input", "messages",
                                           "conversations"), "user", "the question"),
    "answer": Role("--answer-column", ("answer", "answers", "a", "output", "response", "completion", "target",
                                       "label", "messages", "conversations"), "assistant", "the answer"),
    "input": Role("--input-column", ("input", "instruction", "prompt", "question", "query", "messages",
                                     "conversations"), "user", "the example's input"),
    "output": Role("--output-column", ("output", "response", "completion", "answer", "target", "messages",
                                       "conversations"), "assistant", "the example's output"),
}
COLUMN_KEYS = (*ROLES, "split")  # what a `columns` mapping may hold
CHAT_ROLES = {"user": ("user", "human"), "assistant": ("assistant", "gpt", "model", "bot")}


@dataclass
class Table:
    """Rows read from one input, with its column names and how errors name it."""

    rows: list[dict]
    columns: list[str]
    where: str  # e.g. "--prompts data.parquet (split train)"
    own_shape: str = ""  # for a .json/.jsonl file: ctxdistill's own shape, named when a column is missing


# ---------------------------------------------------------------- what is a dataset


def is_dataset(path) -> bool:
    """True when `path` can only be read as a dataset: a parquet/arrow/csv/tsv file, a folder (save_to_disk, or of
    data files), or, not being on disk, a dataset id (`name`, `owner/name`, optionally `:split`)."""
    p = Path(path)
    if p.is_dir():
        return True
    if p.exists():
        return p.suffix.lower() in DATA_SUFFIXES
    location, split = split_source(str(path))
    if split is not None and Path(location).exists():
        return is_dataset(location)
    return looks_like_id(location)


def looks_like_id(text: str) -> bool:
    return bool(DATASET_ID.fullmatch(text)) and Path(text).suffix.lower() not in FILE_SUFFIXES


def is_dataset_folder(p: Path) -> bool:
    """A folder written by save_to_disk, or one holding data files (split names taken from the file names)."""
    return saved_to_disk(p) or any(f.suffix.lower() in FOLDER_SUFFIXES for f in p.rglob("*") if f.is_file())


def saved_to_disk(p: Path) -> bool:
    return (p / "dataset_dict.json").is_file() or ((p / "state.json").is_file()
                                                   and (p / "dataset_info.json").is_file())


def split_source(spec: str) -> tuple[str, str | None]:
    """`SOURCE:SPLIT` -> (SOURCE, SPLIT); a path that exists as given is never split."""
    head, colon, tail = spec.rpartition(":")
    if Path(spec).exists() or not colon or not head or not tail:
        return spec, None
    return head, tail


def foreign_rows(rows, own_keys: tuple[str, ...]) -> bool:
    """True when parsed .json/.jsonl rows are a table in another shape: objects none of which has any of the
    project's own keys (a file that uses them is read, and checked, as ctxdistill's own format)."""
    return (isinstance(rows, list) and bool(rows) and all(isinstance(r, dict) for r in rows)
            and not any(k in r for r in rows for k in own_keys))


# ---------------------------------------------------------------- loading


def check_columns(columns: Mapping | None) -> dict:
    """The column mapping ({"prompt": "instruction", ..., "split": "test"}), its keys checked; None values dropped."""
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(COLUMN_KEYS))
    if unknown:
        raise CtxDistillError(f"Unknown column mapping key(s) {', '.join(map(repr, unknown))}; the keys are "
                              f"{', '.join(COLUMN_KEYS)}.")
    bad = [k for k, v in columns.items() if v is not None and not (isinstance(v, str) and v)]
    if bad:
        raise CtxDistillError(f"The column mapping's {', '.join(bad)} must be column names (non-empty strings).")
    return {k: v for k, v in columns.items() if v is not None}


def rows_table(rows: list[dict], path, flag: str, own_shape: str) -> Table:
    """A table of .json/.jsonl rows: its columns are every key, in the order they first appear."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return Table(rows, columns, f"{flag} {path}", own_shape)


def load_table(source, flag: str, columns: Mapping | None = None) -> Table:
    """The rows of one split of a dataset file, folder or cached id (split: `SOURCE:SPLIT`, else columns["split"],
    else the only one)."""
    split = check_columns(columns).get("split")
    location, named = split_source(str(source))
    datasets = import_datasets(f"{flag} {source}", Path(location).exists())
    with offline_and_quiet(datasets), tempfile.TemporaryDirectory(prefix="ctxdistill-datasets-") as cache:
        splits = load_splits(datasets, location, cache, f"{flag} {source}")
        name = choose_split(splits, named, split, f"{flag} {location}", location)
        chosen = splits[name]
        where = f"{flag} {location}" + (f" (split {name})" if len(splits) > 1 or named or split else "")
        if not len(chosen):
            raise CtxDistillError(f"{where} has no rows. Pass a dataset (or split) that holds some.")
        return Table(chosen.to_list(), list(chosen.column_names), where)


def import_datasets(where: str, on_disk: bool = True):
    try:
        import datasets
    except ImportError as e:
        taken = "" if on_disk else " (there is no such file or folder here, so it is taken for a dataset id)"
        raise CtxDistillError(f"{where} is read as a 🤗 dataset (a parquet/arrow/csv/tsv file, a dataset folder or "
                              f"a dataset id in the local Hugging Face cache){taken}, and the datasets library is not "
                              f"installed. Install it with: {INSTALL}") from e
    return datasets


@contextmanager
def offline_and_quiet(datasets):
    """HF_DATASETS_OFFLINE=1 and no progress bars while loading, then everything as it was. `datasets` reads its
    offline flag from the environment when it is imported, so its config (and the hub client's) is set too."""
    import huggingface_hub.constants as hub

    env = {k: os.environ.get(k) for k in OFFLINE_ENV}
    flags = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE)
    bars_off, verbosity = datasets.utils.are_progress_bars_disabled(), datasets.logging.get_verbosity()
    os.environ.update({k: "1" for k in OFFLINE_ENV})
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = hub.HF_HUB_OFFLINE = True
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        yield
    finally:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE = flags
        datasets.logging.set_verbosity(verbosity)
        if not bars_off:
            datasets.enable_progress_bars()


def load_splits(datasets, location: str, cache: str, where: str) -> dict:
    """{split name: Dataset} of a data file, a folder or a cached dataset id (local files are prepared in `cache`,
    a temporary folder)."""
    p = Path(location)
    try:
        if p.is_file():
            builder, options = DATA_SUFFIXES[p.suffix.lower()]
            return dict(datasets.load_dataset(builder, data_files=str(p), cache_dir=cache, **options))
        if p.is_dir():
            return load_folder(datasets, p, cache, where)
        return load_cached_id(datasets, location, cache, where)
    except CtxDistillError:
        raise
    except Exception as e:  # pyarrow, pandas and datasets each raise their own kinds for a file they cannot read
        raise CtxDistillError(f"{where} could not be read as a dataset: {type(e).__name__}: {e}") from e


def load_folder(datasets, p: Path, cache: str, where: str) -> dict:
    if saved_to_disk(p):
        loaded = datasets.load_from_disk(str(p))
        return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {str(loaded.split or "train"): loaded}
    if not is_dataset_folder(p):
        raise CtxDistillError(f"{where} is a folder without data files ({', '.join(FOLDER_SUFFIXES)}) that was not "
                              "written by Dataset.save_to_disk. Pass a data file, or a folder of them.")
    return dict(datasets.load_dataset(str(p), cache_dir=cache))


def load_cached_id(datasets, dataset_id: str, cache: str, where: str) -> dict:
    """A dataset id from the local cache only: as `load_dataset` prepared it (HF_DATASETS_CACHE), else its files as
    the hub client downloaded them (HF_HUB_CACHE)."""
    try:
        return dict(datasets.load_dataset(dataset_id))
    except Exception as e:  # offline and not prepared: ConnectionError, or a ValueError for an ambiguous config
        prepared_error = e
    from huggingface_hub import snapshot_download

    try:
        files = snapshot_download(dataset_id, repo_type="dataset", local_files_only=True)
    except Exception:  # not in the hub cache either (LocalEntryNotFoundError, or an invalid repo id)
        raise CtxDistillError(
            f"{where}: no such file or folder, and no dataset {dataset_id!r} in the local Hugging Face cache "
            f"({datasets.config.HF_DATASETS_CACHE}). ctxdistill never downloads: load it once while online "
            f"(python -c \"import datasets; datasets.load_dataset('{dataset_id}')\"), or point HF_HOME or "
            f"HF_DATASETS_CACHE at the cache that holds it; or check the path. ({prepared_error})") from None
    return dict(datasets.load_dataset(files, cache_dir=cache))


def choose_split(splits: dict, named: str | None, split: str | None, where: str, source: str) -> str:
    """`SOURCE:SPLIT` must exist; --split is taken where the dataset has it, and a dataset of one split needs none
    (so --split can pick the split of one input among several single-file ones)."""
    names = ", ".join(splits)
    if named is not None and named not in splits:
        raise CtxDistillError(f"{where} has no split {named!r}; its splits: {names}.")
    if named is not None or split in splits:
        return named or split
    if len(splits) == 1:
        return next(iter(splits))
    if split:
        raise CtxDistillError(f"{where} has no split {split!r} (--split); its splits: {names}. Choose one with "
                              f"{source}:NAME.")
    raise CtxDistillError(f"{where} has several splits ({names}): choose one with --split NAME or {source}:NAME.")


# ---------------------------------------------------------------- column mapping


def column_for(table: Table, role: str, columns: Mapping | None, required: bool = True) -> str | None:
    """The column that holds `role`: the one named in `columns`, else the first of the role's usual names (exact,
    then in any case); a missing one is an error naming the columns there and the flag to pass."""
    spec, given = ROLES[role], check_columns(columns).get(role)
    if given is not None:
        if given not in table.columns:
            raise CtxDistillError(f"{table.where} has no column {given!r} (given to {spec.flag}); its columns: "
                                  f"{', '.join(table.columns) or '(none)'}. Pass {spec.flag} with one of them.")
        return given
    lower = {c.lower(): c for c in reversed(table.columns)}
    found = next((c for c in spec.names if c in table.columns), None) or \
        next((lower[c] for c in spec.names if c in lower), None)
    if found is None and required:
        shape = f" is not in ctxdistill's own shape ({table.own_shape}) and, read as a table," if table.own_shape \
            else ""
        raise CtxDistillError(f"{table.where}{shape} has no column for {spec.what} (looked for "
                              f"{', '.join(spec.names)}); its columns: {', '.join(table.columns) or '(none)'}. "
                              f"Pass {spec.flag} NAME with the column that holds it.")
    return found


def cells(table: Table, role: str, columns: Mapping | None, required: bool = True):
    """(row number, value) of `role`'s column in every row, as text ([accepted answers] for "answer"); nothing when
    an optional column is absent."""
    column = column_for(table, role, columns, required)
    if column is None:
        return
    for n, row in enumerate(table.rows, 1):
        where = f"{table.where}, row {n}, column {column!r}"
        value = row.get(column)
        yield n, answers_of(value, where) if role == "answer" else text_of(value, ROLES[role], where)


def text_of(value, role: Role, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and role is ROLES["id"]:
        return str(value)
    if is_chat(value):
        return chat_turn(value, role.turn, where)
    raise CtxDistillError(f"{where}: {describe(value)} is not text. Pass {role.flag} with the column that holds "
                          f"{role.what}.")


def answers_of(value, where: str) -> list[str]:
    """Accepted answers: a string or number, a list of them, SQuAD's {"text": [...]}, TriviaQA's {"aliases": [...]},
    or a chat (its last assistant turn)."""
    if isinstance(value, dict):
        value = next((value[k] for k in ("text", "aliases", "value") if k in value), value)
    if is_chat(value):
        value = chat_turn(value, "assistant", where)
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in items):
        raise CtxDistillError(f"{where}: {describe(value)} is not an answer (a string, a number, or a non-empty list "
                              "of them). Pass --answer-column with the column that holds the answers.")
    return [str(x) for x in items]


def is_chat(value) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and ("role" in m or "from" in m) for m in value)


def chat_turn(messages: list[dict], turn: str, where: str) -> str:
    """The last user (or assistant) message of a chat, in OpenAI ({"role", "content"}) or ShareGPT ({"from",
    "value"}) form."""
    for m in reversed(messages):
        if m.get("role", m.get("from")) in CHAT_ROLES[turn]:
            content = m.get("content", m.get("value"))
            if isinstance(content, str):
                return content
            raise CtxDistillError(f"{where}: the last {turn} message's content is {describe(content)}, not text.")
    raise CtxDistillError(f"{where}: the chat has no {turn} message (roles {', '.join(CHAT_ROLES[turn])}).")


def describe(value) -> str:
    return "an empty value" if value is None else f"{type(value).__name__} {str(value)[:60]!r}"


# ---------------------------------------------------------------- the rows each input needs


def prompts_of(table: Table, columns: Mapping | None) -> list[str]:
    return [text for _, text in cells(table, "prompt", columns)]


def examples_of(table: Table, columns: Mapping | None) -> list[dict]:
    return [{"input": i, "output": o} for (_, i), (_, o) in zip(cells(table, "input", columns),
                                                                cells(table, "output", columns))]


def qa_of(table: Table, columns: Mapping | None) -> list[dict]:
    """{"q", "a": [accepted]}; a "doc" column (a document id, for a doc recipe's --qa) is kept."""
    items = [{"q": q, "a": a} for (_, q), (_, a) in zip(cells(table, "question", columns),
                                                        cells(table, "answer", columns))]
    if "doc" in table.columns:
        for item, row in zip(items, table.rows):
            if row.get("doc") is not None:
                item["doc"] = str(row["doc"])
    return items


def documents_of(table: Table, columns: Mapping | None) -> list[dict]:
    """{"text", "id" (when there is an id column), "qa" (when there is a "qa" column)} per row."""
    rows = [{"text": text} for _, text in cells(table, "text", columns)]
    for n, doc_id in cells(table, "id", columns, required=False):  # without one, ids are doc1, doc2, ...
        rows[n - 1]["id"] = doc_id
    if "qa" in table.columns:
        for row, source in zip(rows, table.rows):
            row["qa"] = source.get("qa") or []
    return rows


def tasks_of(table: Table, columns: Mapping | None) -> list[dict]:
    """{"prompt", "answer"}: a task has one answer, which its checker tests."""
    tasks = []
    for (n, prompt), (_, answers) in zip(cells(table, "prompt", columns), cells(table, "answer", columns)):
        if len(answers) != 1:
            raise CtxDistillError(f"{table.where}, row {n}: a task has one answer, this row has {len(answers)}. "
                                  "Pass --answer-column with a column of single answers.")
        tasks.append({"prompt": prompt, "answer": answers[0]})
    return tasks
