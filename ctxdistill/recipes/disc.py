"""Distillation via Split Contexts (DiSC): learn a stream of documents with no generation at all.

1. each document is tokenized once and split at sentence boundaries (several random ones plus the start of the
   last sentence, by default; or the middle one, evenly spaced ones, or random tokens);
2. for each split, the teacher — the frozen initial model (adapter off, or a frozen copy for full fine-tuning) —
   reads prefix + suffix as raw text, and the student reads the suffix alone;
3. the student matches the teacher on the suffix tokens both views predict (the first suffix token is the
   student's only prompt, so it is never scored): forward KL at T=2, times T²;
4. a document's splits accumulate into one optimizer step; the stream loop (ctxdistill.recipes.doc_stream) evaluates after
   each batch of documents.
"""

from __future__ import annotations

from ctxdistill.config import DistillConfig
from ctxdistill.data.splits import split_pair, split_points
from ctxdistill.recipes.doc_stream import DocMethod, run_stream

DEFAULTS = {"finetune": "lora", "objective": "forward_kl", "temperature": 2.0, "t2_scaling": True,
            "batch_size": 1, "micro_batch_size": 1, "epochs": 20.0, "lr": 1e-3, "warmup_ratio": 0.05}


def method(cfg: DistillConfig) -> DocMethod:
    def pairs_for(doc, rng, window):
        points = split_points(doc, cfg.split_strategy, cfg.splits_per_doc, rng)
        return [split_pair(doc.ids, at, window, cfg.max_suffix_tokens) for at in points]

    return DocMethod("disc", "DiSC: distillation via split contexts", pairs_for, cfg.build_objective())


def run(cfg: DistillConfig, docs_file: str, out_dir: str, resume: bool = False, qa_file: str | None = None,
        retention_file: str | None = None, stream: bool = False) -> dict:
    return run_stream(cfg, method(cfg), docs_file, out_dir, resume, qa_file, retention_file, stream)
