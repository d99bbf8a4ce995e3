"""Anchors: general prompts on which the student keeps to the base model's own answers.

Before training, the base (no adapter, no context) answers each prompt greedily once. An anchor pair shows that
prompt and answer to the teacher and the student alike, so the loss there asks the adapter to change nothing. Mixed
into the training pairs (`anchor_fraction` × their number), anchors keep what is distilled from leaking into
unrelated answers (measured in the knowledge and offline recipes; see the README).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ctxdistill.core.generation import TorchBackend
from ctxdistill.core.pairs import Pair, render_prompt
from ctxdistill.data.inputs import read_prompts

ANCHOR_PROMPTS = Path(__file__).resolve().parent / "anchor_prompts.json"


def anchor_prompts(cfg) -> list[str]:
    """The `anchor_prompts` file's prompts, or the bundled general set."""
    return read_prompts(cfg.anchor_prompts) if cfg.anchor_prompts else \
        json.loads(ANCHOR_PROMPTS.read_text(encoding="utf-8"))["prompts"]


def anchor_draws(prompts: list[str], count: int, seed) -> list[str]:
    """`count` anchor prompts: every prompt once per round, each round in a seeded order."""
    rng, draws = random.Random(seed), []
    while prompts and len(draws) < count:
        draws += rng.sample(prompts, len(prompts))
    return draws[:count]


def make_anchors(cfg, model, tokenizer, backend=None) -> list[dict]:
    """The model's greedy answers to the anchor prompts (`anchor_prompts` file, or the bundled general set).
    `backend`: a generation backend that samples as `model` (core.generation.make_backend); None: the torch loop."""
    prompts = anchor_prompts(cfg)
    model.eval()
    backend = backend or TorchBackend(model, tokenizer)
    outs = backend.generate([render_prompt(tokenizer, p) for p in prompts],
                            max_new_tokens=max(16, cfg.max_new_tokens // 2), temperature=0.0,
                            batch_size=cfg.gen_batch_size, desc="base answers to the anchor prompts")
    return [{"prompt": p, "completion_ids": y} for p, y in zip(prompts, outs) if y]


def anchor_pair(tokenizer, anchor: dict) -> Pair:
    """Teacher and student read the same general prompt, no context: the teacher's weights (base) teach."""
    ids = render_prompt(tokenizer, anchor["prompt"])
    return Pair(ids + anchor["completion_ids"], ids + anchor["completion_ids"], len(ids), len(ids))


def with_anchors(pairs: list, anchors: list[dict], fraction: float, tokenizer, seed) -> list:
    """`pairs` plus round(fraction × len(pairs)) anchor pairs drawn (with replacement) from `anchors`."""
    if not anchors or not pairs or fraction <= 0:
        return list(pairs)
    k = round(fraction * len(pairs))
    return list(pairs) + [anchor_pair(tokenizer, a) for a in random.Random(seed).choices(anchors, k=k)]
