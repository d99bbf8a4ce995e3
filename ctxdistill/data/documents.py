"""Documents in: a .jsonl/.json of {"id", "text", optional "qa"}, a folder of .txt/.md files, or one text file; or a
dataset (see hf_datasets)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ctxdistill import CtxDistillError
from ctxdistill.core.files import load_json, read_jsonl, read_text
from ctxdistill.data import hf_datasets
from ctxdistill.data.inputs import read_qa, read_qa_items

TEXT_SUFFIXES = (".txt", ".md")
DOCS_SHAPE = '{"id": ..., "text": ...} per document'


@dataclass
class Document:
    id: str
    text: str
    qa: list[dict] = field(default_factory=list)  # questions about this document, {"q", "a": [accepted]}


def _from_rows(rows, where: str) -> list[Document]:
    docs = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise CtxDistillError(f"{where}, document {n}: each document must be an object with a string 'text' "
                                  '(and an optional "id" and "qa").')
        if not row["text"].strip():
            raise CtxDistillError(f"{where}, document {n} has an empty 'text'. Remove it or fill it in.")
        qa = row.get("qa") or []
        if qa:
            read_qa_items(qa, f"{where}, document {n} 'qa'")
        docs.append(Document(str(row.get("id", f"doc{n}")), row["text"], list(qa)))
    return docs


def read_documents(path, columns=None) -> list[Document]:
    """Documents in the order given (a folder: sorted by file name). Ids must be unique. A dataset, or .json/.jsonl
    rows in another shape, are mapped by `columns` ({"text": ..., "id": ..., "split": ...})."""
    p = Path(path)
    if _is_dataset(p):
        docs = _from_rows(hf_datasets.documents_of(hf_datasets.load_table(path, "--docs", columns), columns),
                          f"--docs {path}")
    elif not p.exists():
        raise CtxDistillError(f"Documents not found: {p}. Check the path given to --docs.")
    elif p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in TEXT_SUFFIXES and f.is_file())
        if not files:
            raise CtxDistillError(f"{p} holds no .txt or .md files (nor dataset files). Put one document per file "
                                  "in it.")
        docs = [Document(f.stem, read_text(f, "--docs")) for f in files]
        empty = [d.id for d in docs if not d.text.strip()]
        if empty:
            raise CtxDistillError(f"Empty document file(s) in {p}: {', '.join(empty[:5])}. Remove or fill them.")
    elif p.suffix == ".jsonl":
        docs = _from_rows(_own_or_mapped(read_jsonl(p, "--docs"), p, columns), str(p))
    elif p.suffix == ".json":
        data = _own_or_mapped(load_json(p, "--docs"), p, columns)
        if isinstance(data, dict):
            data = data.get("docs", data.get("documents"))
        if not isinstance(data, list):
            raise CtxDistillError(f'{p} must hold a list of documents {{"id", "text"}}, or an object with such a '
                                  'list under "docs".')
        docs = _from_rows(data, str(p))
    elif p.suffix in TEXT_SUFFIXES:
        text = read_text(p, "--docs")
        if not text.strip():
            raise CtxDistillError(f"{p} is empty. Put the document's text in it.")
        docs = [Document(p.stem, text)]
    else:
        raise CtxDistillError(f"--docs {p}: use a .jsonl or .json of {{\"id\", \"text\"}}, a .txt/.md file, a "
                              "folder of .txt/.md files, or a dataset (.parquet, .arrow, .csv, .tsv, a dataset folder "
                              "or id).")
    if not docs:
        raise CtxDistillError(f"{p} holds no documents.")
    seen, dupes = set(), set()
    for d in docs:
        (dupes if d.id in seen else seen).add(d.id)
    if dupes:
        raise CtxDistillError(f"Document ids must be unique; repeated in {p}: {', '.join(sorted(dupes)[:5])}.")
    return docs


def _is_dataset(p: Path) -> bool:
    """A folder of .txt/.md files is ctxdistill's own; another folder is a dataset only if it holds one."""
    if p.is_dir():
        return not any(f.suffix in TEXT_SUFFIXES and f.is_file() for f in p.iterdir()) \
            and hf_datasets.is_dataset_folder(p)
    return hf_datasets.is_dataset(p)


def _own_or_mapped(data, p: Path, columns):
    """Rows of ctxdistill's own shape as they are; rows of another (no "text" key) through the column mapping."""
    if hf_datasets.foreign_rows(data, ("text",)):
        return hf_datasets.documents_of(hf_datasets.rows_table(data, p, "--docs", DOCS_SHAPE), columns)
    return data


def gather_qa(docs, qa_file: str | None, columns=None) -> dict[str, list[dict]]:
    """Questions per document id: each document's own "qa", plus --qa items (with a "doc" id, else "*": asked once
    every document has been seen)."""
    by_doc = {d.id: list(d.qa) for d in docs}
    if qa_file:
        for item in read_qa(qa_file, "--qa", columns):
            key = item.get("doc", "*")
            if key != "*" and key not in by_doc:
                raise CtxDistillError(f"--qa: question {item['q']!r} names document {key!r}, which is not in --docs.")
            by_doc.setdefault(key, []).append(item)
    return by_doc
