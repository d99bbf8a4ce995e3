"""Distillation via Split Contexts (DiSC): learn a stream of documents with no generation at all.

1. each document is tokenized once and split at sentence boundaries (several random ones plus the start of the
   last sentence, by default; or the middle one, evenly spaced ones, or random tokens);
2. for each split, the teacher — the frozen initial model (adapter off, or a frozen copy for full fine-tuning) —
   reads prefix + suffix as raw text, and the student reads the suffix alone;
3. the student matches the teacher on the suffix tokens both views predict (the first suffix token is the
   student's only prompt, so it is never scored): forward KL at T=2, times T²;
4. a document's splits accumulate into one optimizer step; the stream loop (ctxdistill.recipes.doc_stream) evaluates
   after each batch of documents.
"""

from __future__ import annotations

import random
from functools import partial

from ctxdistill.config import DiscConfig
from ctxdistill.core.pairs import Pair
from ctxdistill.data.splits import TokenizedDoc, split_pair, split_points
from ctxdistill.recipes.base import Recipe, RunResult
from ctxdistill.recipes.doc_stream import DOC_INPUTS, DocMethod, run_stream


def split_pairs(cfg: DiscConfig, doc: TokenizedDoc, rng: random.Random, window: int) -> list[Pair]:
    """One step's pairs: a (prefix + suffix, suffix) pair for each split point drawn for this epoch."""
    points = split_points(doc, cfg.split_strategy, cfg.splits_per_doc, rng)
    return [split_pair(doc.ids, at, window, cfg.max_suffix_tokens) for at in points]


def method(cfg: DiscConfig) -> DocMethod:
    return DocMethod("disc", "DiSC: distillation via split contexts", partial(split_pairs, cfg), cfg.build_objective())


def run(cfg: DiscConfig, out: str, resume: bool = False, *, docs: str | None = None, qa: str | None = None,
        retention: str | None = None, stream: bool = False, columns: dict | None = None) -> RunResult | None:
    return run_stream(cfg, method(cfg), out, resume, docs=docs, qa=qa, retention=retention, stream=stream,
                      columns=columns)


RECIPES = [Recipe("disc", "DiSC: learn documents by distilling split contexts, no generation", DiscConfig,
                  DOC_INPUTS, run)]
