"""Teacher sources and the hidden-state access both views share.

The teacher is either the student's own base weights with the LoRA adapter switched off (no copy of the weights)
or a frozen copy taken before full fine-tuning starts. Both give final hidden states; the objective projects only
the completion rows to logits.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch


def base_model(model):
    """The transformers model under a PEFT wrapper (LoRA layers stay injected), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def final_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final (post-norm) hidden states, B × L × H, without computing any logits."""
    decoder = base_model(model).get_decoder()
    return decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def output_head(model) -> torch.nn.Module:
    return base_model(model).get_output_embeddings()


class Teacher:
    """Scores views with frozen weights: the adapter-disabled student, or a frozen copy of the initial model."""

    def __init__(self, student, frozen_copy: bool):
        self.student = student
        self.copy = None
        if frozen_copy:
            self.copy = copy.deepcopy(base_model(student)).eval()
            self.copy.requires_grad_(False)

    @property
    def model(self):
        return self.copy if self.copy is not None else self.student

    def _weights(self):
        if self.copy is None and hasattr(self.student, "disable_adapter"):
            return self.student.disable_adapter()
        return nullcontext()

    @torch.no_grad()
    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with self._weights():
            return final_hidden(self.model, input_ids, attention_mask)

    @property
    def head(self) -> torch.nn.Module:
        return output_head(self.model)
