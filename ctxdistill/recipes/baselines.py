"""The fine-tuning baselines of DiSC, on the same documents and the same stream loop: next-token prediction on
the document text (in windows of the model's length), one optimizer step per document per epoch.

- finetune: full fine-tuning;
- finetune-kl: full fine-tuning + kl_weight · KL(initial ‖ model) on the same tokens (the frozen initial model
  reads the same text), which holds the model near where it started;
- lora-finetune: a LoRA adapter instead of the full weights.

Their configs have no `objective` key: each baseline's loss is fixed by its name (see `objective`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial

from ctxdistill.config import FinetuneConfig, FinetuneKLConfig, LoraFinetuneConfig
from ctxdistill.core.objectives import Objective
from ctxdistill.core.pairs import Pair
from ctxdistill.data.splits import TokenizedDoc, whole_text_pairs
from ctxdistill.recipes.base import Recipe, RunResult
from ctxdistill.recipes.doc_stream import DOC_INPUTS, DocMethod, run_stream


@dataclass(frozen=True)
class Baseline:
    title: str  # of the report
    summary: str  # of `ctxdistill distill --help`
    config: type[FinetuneConfig]


BASELINES = {
    "finetune": Baseline("Baseline: full fine-tuning on the documents",
                         "DiSC baseline: next-token prediction on the documents, full weights", FinetuneConfig),
    "finetune-kl": Baseline("Baseline: full fine-tuning + KL to the initial model",
                            "DiSC baseline: next-token prediction + KL to the initial model, full weights",
                            FinetuneKLConfig),
    "lora-finetune": Baseline("Baseline: LoRA fine-tuning on the documents",
                              "DiSC baseline: next-token prediction on the documents, a LoRA adapter",
                              LoraFinetuneConfig),
}


def objective(name: str, cfg: FinetuneConfig) -> Objective:
    """Next-token prediction; finetune-kl adds kl_weight · KL(initial ‖ model) at `temperature`."""
    if name == "finetune-kl":
        return Objective({"sft": 1.0, "forward_kl": cfg.kl_weight}, temperature=cfg.temperature)
    return Objective({"sft": 1.0})


def document_windows(doc: TokenizedDoc, rng: random.Random, window: int) -> list[Pair]:
    """The whole document in windows of the model's length: nothing random, nothing too short to use."""
    return whole_text_pairs(doc.ids, window)


def method(name: str, cfg: FinetuneConfig) -> DocMethod:
    return DocMethod(name, BASELINES[name].title, document_windows, objective(name, cfg))


def run(name: str, cfg: FinetuneConfig, out: str, resume: bool = False, *, docs: str | None = None,
        qa: str | None = None, retention: str | None = None, stream: bool = False,
        columns: dict | None = None) -> RunResult | None:
    return run_stream(cfg, method(name, cfg), out, resume, docs=docs, qa=qa, retention=retention, stream=stream,
                      columns=columns)


RECIPES = [Recipe(name, b.summary, b.config, DOC_INPUTS, partial(run, name)) for name, b in BASELINES.items()]
