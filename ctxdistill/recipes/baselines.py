"""The fine-tuning baselines of DiSC, on the same documents and the same stream loop: next-token prediction on
the document text (in windows of the model's length), one optimizer step per document per epoch.

- finetune: full fine-tuning;
- finetune-kl: full fine-tuning + kl_weight · KL(initial ‖ model) on the same tokens (the frozen initial model
  reads the same text), which holds the model near where it started;
- lora-finetune: a LoRA adapter instead of the full weights.
"""

from __future__ import annotations

from ctxdistill.config import DistillConfig
from ctxdistill.core.objectives import Objective
from ctxdistill.data.splits import whole_text_pairs
from ctxdistill.recipes.doc_stream import DocMethod, run_stream

_COMMON = {"batch_size": 1, "micro_batch_size": 1, "epochs": 20.0, "warmup_ratio": 0.05, "objective": "sft"}
DEFAULTS = {
    "finetune": {**_COMMON, "finetune": "full", "lr": 1e-5},
    "finetune-kl": {**_COMMON, "finetune": "full", "lr": 1e-5, "kl_weight": 1.0},
    "lora-finetune": {**_COMMON, "finetune": "lora", "lr": 1e-3},
}
TITLES = {"finetune": "Baseline: full fine-tuning on the documents",
          "finetune-kl": "Baseline: full fine-tuning + KL to the initial model",
          "lora-finetune": "Baseline: LoRA fine-tuning on the documents"}


def method(name: str, cfg: DistillConfig) -> DocMethod:
    terms = {"sft": 1.0, "forward_kl": cfg.kl_weight} if name == "finetune-kl" else {"sft": 1.0}
    objective = Objective(terms, temperature=cfg.temperature)
    return DocMethod(name, TITLES[name], lambda doc, rng, window: whole_text_pairs(doc.ids, window), objective)


def run(name: str, cfg: DistillConfig, docs_file: str, out_dir: str, resume: bool = False,
        qa_file: str | None = None, retention_file: str | None = None, stream: bool = False) -> dict:
    return run_stream(cfg, method(name, cfg), docs_file, out_dir, resume, qa_file, retention_file, stream)
