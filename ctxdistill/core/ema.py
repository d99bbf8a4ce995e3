"""An EMA teacher for a LoRA student: a second adapter ("ema") on the same base holding the moving average of the
student's adapter ("default"), updated after every optimizer step (training.train calls `update()` and keeps
`state_dict()` in its checkpoints). No second copy of the model: only the adapter's
low-rank matrices are doubled.

The adapter is switched on for the teacher's forward by pointing the LoRA layers' active adapter at it directly:
PEFT's `set_adapter` also flips `requires_grad`, which would stop the student's own adapter from training.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ctxdistill import CtxDistillError

EMA_ADAPTER = "ema"  # distinct from "default" (the student) and "teacher" (--teacher-adapter)
STUDENT_ADAPTER = "default"


def _tuner_layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


class EmaAdapter:
    """θ_ema ← decay · θ_ema + (1 − decay) · θ_student, starting from the student's initial adapter."""

    def __init__(self, student, decay: float):
        if not hasattr(student, "peft_config") or STUDENT_ADAPTER not in student.peft_config:
            raise CtxDistillError("teacher_kind=ema keeps a second LoRA adapter: it needs finetune=lora.")
        if not 0.0 <= decay < 1.0:
            raise CtxDistillError(f"ema_decay must be in [0, 1), got {decay}.")
        self.student, self.decay, self.updates = student, decay, 0
        student.add_adapter(EMA_ADAPTER, student.peft_config[STUDENT_ADAPTER])
        self.pairs = self._pairs()
        with torch.no_grad():
            for own, ema in self.pairs:
                own.requires_grad_(True)  # adding an adapter may re-mark the trainable ones; the student's stays so
                ema.requires_grad_(False)
                ema.copy_(own)

    def _pairs(self) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
        """(student parameter, its EMA twin), matched by name."""
        named = dict(self.student.named_parameters())
        marker = f".{STUDENT_ADAPTER}."
        pairs = [(p, named[n.replace(marker, f".{EMA_ADAPTER}.")]) for n, p in named.items() if marker in n]
        if not pairs:
            raise CtxDistillError("Internal error: the student's LoRA adapter has no parameters to average.")
        return pairs

    @torch.no_grad()
    def update(self) -> None:
        for own, ema in self.pairs:
            ema.lerp_(own.detach().to(ema.dtype), 1.0 - self.decay)
        self.updates += 1

    @contextmanager
    def active(self):
        """The EMA adapter in place of the student's in every LoRA layer, for a forward or a sample."""
        layers = _tuner_layers(self.student)
        before = [layer._active_adapter for layer in layers]
        try:
            for layer in layers:
                layer._active_adapter = EMA_ADAPTER
            yield
        finally:
            for layer, name in zip(layers, before):
                layer._active_adapter = name

    def state_dict(self) -> dict:
        """What a checkpoint keeps (training.train saves it with the loop's own state, at the same step)."""
        return {"decay": self.decay, "updates": self.updates,
                "weights": [ema.detach().cpu().clone() for _, ema in self.pairs]}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        weights = state.get("weights", [])
        if len(weights) != len(self.pairs) or any(w.shape != ema.shape for w, (_, ema) in zip(weights, self.pairs)):
            raise CtxDistillError("The checkpoint's EMA teacher has another adapter shape than this run's. Resume "
                                  "with the same settings, or start again in a new --out folder.")
        for w, (_, ema) in zip(weights, self.pairs):
            ema.copy_(w)
        self.updates = state["updates"]

    def remove(self) -> None:
        """Drop the EMA adapter (before the student's adapter is saved: it alone is the result)."""
        self.student.delete_adapter(EMA_ADAPTER)

