"""Split contexts for DiSC: sentence boundaries found offline, and (prefix, suffix) token splits of a document.

The splitter is rule-based (no model, no download): a sentence ends at . ! ? (or …), optionally followed by closing
quotes or brackets, then whitespace, then something that can start a sentence; a blank line always ends one. A
period after a known abbreviation, an initial ("J. R. Tolkien") or inside a number ("3.5") does not.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ctxdistill import CtxDistillError
from ctxdistill.core.pairs import Pair

ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ft", "vs", "no", "nos", "fig", "figs", "eq", "eqs",
    "vol", "ch", "sec", "approx", "dept", "est", "inc", "ltd", "co", "corp", "gen", "col", "lt", "sgt", "capt",
    "rev", "hon", "gov", "sen", "rep", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov",
    "dec", "e.g", "i.e", "cf", "al", "p", "pp", "u.s", "u.k", "a.m", "p.m", "ca",
}
_END = re.compile(r"(?:[.!?]+|…)[\"'”’)\]]*(?=\s)")
_STARTS_SENTENCE = re.compile(r"\s+[\"'“‘(\[]*[A-Z0-9À-ÖØ-Þ]")
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)\.$")
_PARAGRAPH = re.compile(r"\n\s*\n")


def _is_abbreviation(text: str, end: int) -> bool:
    """Whether the period ending at `end` closes an abbreviation or an initial rather than a sentence."""
    match = _WORD_BEFORE.search(text[max(0, end - 12):end])
    if not match:
        return False
    word = match.group(1)
    if len(word) == 1 and word.isupper():  # an initial: "J. R. R. Tolkien"
        return True
    return word.lower().rstrip(".") in ABBREVIATIONS


def split_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of `text`, in order, without surrounding whitespace."""
    cuts = set()
    for m in _END.finditer(text):
        end = m.end()
        if not _STARTS_SENTENCE.match(text, end):
            continue
        single_period = m.group().rstrip("\"'”’)]") == "."
        if single_period and _is_abbreviation(text, m.start() + 1):
            continue
        cuts.add(end)
    cuts.update(m.start() for m in _PARAGRAPH.finditer(text))
    spans, start = [], 0
    for cut in sorted(cuts) + [len(text)]:
        piece = text[start:cut]
        if piece.strip():
            left = start + len(piece) - len(piece.lstrip())
            spans.append((left, start + len(piece.rstrip())))
        start = cut
    return spans


STRATEGIES = ("random", "middle", "uniform", "token")


@dataclass
class TokenizedDoc:
    id: str
    ids: list[int]
    boundaries: list[int]  # token index where each sentence after the first starts


def tokenize_document(tokenizer, doc_id: str, text: str) -> TokenizedDoc:
    """Token ids of the whole text (tokenized once, so a split never changes them) and sentence starts in tokens."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    boundaries = []
    for start, _ in split_sentences(text)[1:]:
        # The first token that reaches into the sentence: BPE often glues the space before it to its first word.
        index = next((i for i, (_, end) in enumerate(offsets) if end > start), len(ids))
        if 0 < index < len(ids) and (not boundaries or index > boundaries[-1]):
            boundaries.append(index)
    return TokenizedDoc(doc_id, ids, boundaries)


def split_points(doc: TokenizedDoc, strategy: str, n: int, rng: random.Random) -> list[int]:
    """Token indices where the suffix starts. Each suffix needs at least 2 tokens (the first is never scored)."""
    usable = [b for b in doc.boundaries if len(doc.ids) - b >= 2]
    if strategy == "token":
        positions = list(range(1, len(doc.ids) - 1))
        return sorted(rng.sample(positions, min(n, len(positions))))
    if not usable:
        return []
    if strategy == "random":  # several random boundaries, always including the start of the last sentence
        last, rest = usable[-1], usable[:-1]
        return sorted(rng.sample(rest, min(n - 1, len(rest))) + [last])
    if strategy == "middle":
        middle = len(doc.ids) / 2
        return [min(usable, key=lambda b: abs(b - middle))]
    if strategy == "uniform":  # n boundaries spread evenly over the document's sentence boundaries
        k = min(n, len(usable))
        return sorted({usable[round(i * (len(usable) - 1) / max(1, k - 1))] for i in range(k)}) if k > 1 \
            else [usable[len(usable) // 2]]
    raise CtxDistillError(f"Unknown split_strategy '{strategy}'. Use one of: {', '.join(STRATEGIES)}.")


def split_pair(ids: list[int], at: int, window: int, max_suffix: int = 0) -> Pair:
    """Teacher = prefix + suffix, student = suffix alone, as raw text. The suffix's first token is the student's
    whole prompt, so the first scored token is the second one (the first has nothing to be predicted from) and
    every scored token is predicted by both views. A prefix too long for the window loses its oldest tokens."""
    cap = max_suffix or window // 2
    suffix = ids[at:at + cap]
    start = max(0, at - (window - len(suffix)))
    prefix = ids[start:at]
    return Pair(prefix + suffix, suffix, len(prefix) + 1, 1)


def whole_text_pairs(ids: list[int], window: int) -> list[Pair]:
    """Next-token prediction on the text itself, in windows: teacher and student see the same ids."""
    step = max(1, window - 1)  # windows overlap by one token, so every token but the first is predicted
    return [Pair(ids[s:s + window], ids[s:s + window], 1, 1) for s in range(0, max(1, len(ids) - 1), step)
            if len(ids[s:s + window]) >= 2]
