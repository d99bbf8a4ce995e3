"""Documents → chunks of at most `chunk_tokens` tokens that overlap by `overlap` tokens.

A chunk's text is cut from the original string at token boundaries (offset mapping), so it reads as the document
does; a document shorter than a chunk is one chunk."""

from __future__ import annotations

from dataclasses import dataclass

from ctxdistill import CtxDistillError


@dataclass(frozen=True)
class Chunk:
    doc_id: str
    index: int  # position of the chunk within its document
    text: str

    @property
    def key(self) -> str:
        return f"{self.doc_id}#{self.index}"


def chunk_spans(n_tokens: int, chunk_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) token spans covering 0..n_tokens; consecutive spans share `overlap` tokens."""
    if chunk_tokens <= 0:
        raise CtxDistillError(f"chunk_tokens must be > 0, got {chunk_tokens}.")
    if not 0 <= overlap < chunk_tokens:
        raise CtxDistillError(f"chunk_overlap must be >= 0 and smaller than chunk_tokens ({chunk_tokens}), "
                              f"got {overlap}.")
    if n_tokens <= chunk_tokens:
        return [(0, n_tokens)]
    spans, start, step = [], 0, chunk_tokens - overlap
    while True:
        end = min(start + chunk_tokens, n_tokens)
        spans.append((start, end))
        if end == n_tokens:
            return spans
        start += step


def chunk_document(tokenizer, doc_id: str, text: str, chunk_tokens: int, overlap: int) -> list[Chunk]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    chunks = []
    for i, (start, end) in enumerate(chunk_spans(len(offsets), chunk_tokens, overlap)):
        piece = text[offsets[start][0]: offsets[end - 1][1]] if offsets else text
        chunks.append(Chunk(doc_id, i, piece.strip()))
    return [c for c in chunks if c.text]
