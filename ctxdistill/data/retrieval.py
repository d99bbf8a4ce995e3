"""BM25 over chunks (rank-bm25): the best chunks for a question, to put in context next to a module.

BM25+ rather than Okapi: Okapi's idf is zero or negative for a word in half the chunks or more, so on a small
corpus (two documents) every score is 0 and retrieval is a coin toss."""

from __future__ import annotations

import re

from rank_bm25 import BM25Plus

from ctxdistill import CtxDistillError
from ctxdistill.data.chunks import Chunk

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class ChunkIndex:
    def __init__(self, chunks: list[Chunk]):
        if not chunks:
            raise CtxDistillError("Retrieval needs at least one chunk to search.")
        self.chunks = list(chunks)
        self.bm25 = BM25Plus([words(c.text) or ["_"] for c in self.chunks])

    def search(self, question: str, k: int = 1) -> list[Chunk]:
        """The k best chunks for the question, best first (ties keep document order)."""
        scores = self.bm25.get_scores(words(question) or ["_"])
        order = sorted(range(len(self.chunks)), key=lambda i: (-scores[i], i))
        return [self.chunks[i] for i in order[:max(1, k)]]
