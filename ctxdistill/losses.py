"""The micro-batch loss: collate pairs, run the teacher and the student, apply the objective on completion rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ctxdistill import CtxDistillError
from ctxdistill.objectives import OBJECTIVES, forward_kl, sft
from ctxdistill.pairs import Pair, completion_logit_positions
from ctxdistill.teacher import Teacher, final_hidden, output_head


def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def completion_rows(prompt_lens: list[int], completion_lens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch index, position) of every completion-predicting row of a right-padded batch, in completion order."""
    b_idx, pos = [], []
    for b, (p, n) in enumerate(zip(prompt_lens, completion_lens)):
        positions = completion_logit_positions(p, n)
        b_idx.extend([b] * n)
        pos.extend(positions)
    return torch.tensor(b_idx, dtype=torch.long), torch.tensor(pos, dtype=torch.long)


@dataclass
class PairBatch:
    student_ids: torch.Tensor
    student_mask: torch.Tensor
    student_rows: tuple[torch.Tensor, torch.Tensor]
    teacher_ids: torch.Tensor
    teacher_mask: torch.Tensor
    teacher_rows: tuple[torch.Tensor, torch.Tensor]
    labels: torch.Tensor  # the completion ids, row-aligned

    def to(self, device) -> "PairBatch":
        mv = lambda x: tuple(t.to(device) for t in x) if isinstance(x, tuple) else x.to(device)  # noqa: E731
        return PairBatch(**{k: mv(v) for k, v in self.__dict__.items()})


def collate_pairs(pairs: list[Pair], pad_id: int) -> PairBatch:
    s_ids, s_mask = pad_right([p.student_ids for p in pairs], pad_id)
    t_ids, t_mask = pad_right([p.teacher_ids for p in pairs], pad_id)
    n = [p.completion_len for p in pairs]
    labels = torch.tensor([t for p in pairs for t in p.completion], dtype=torch.long)
    return PairBatch(s_ids, s_mask, completion_rows([p.student_prompt_len for p in pairs], n),
                     t_ids, t_mask, completion_rows([p.teacher_prompt_len for p in pairs], n), labels)


class DistillLoss(torch.nn.Module):
    """forward(batch) → (summed loss over completion tokens, input tokens processed). Holds the trainable student."""

    def __init__(self, student, teacher: Teacher | None, objective: str = "forward_kl", temperature: float = 1.0,
                 top_k: int = 0, chunk_size: int = 256):
        super().__init__()
        if objective not in OBJECTIVES:
            raise CtxDistillError(f"Unknown objective '{objective}'. Use one of: {', '.join(OBJECTIVES)}.")
        if objective != "sft" and teacher is None:
            raise CtxDistillError(f"Objective '{objective}' needs a teacher.")
        self.student = student
        self.teacher = teacher
        self.objective, self.temperature, self.top_k, self.chunk_size = objective, temperature, top_k, chunk_size

    def forward(self, batch: PairBatch):
        device = next(self.student.parameters()).device
        batch = batch.to(device)
        s_hidden = final_hidden(self.student, batch.student_ids, batch.student_mask)[batch.student_rows]
        if self.objective == "sft":
            loss = sft(s_hidden, output_head(self.student), batch.labels, self.chunk_size)
            return loss, batch.student_mask.sum()
        t_hidden = self.teacher.hidden(batch.teacher_ids, batch.teacher_mask)[batch.teacher_rows]
        loss = forward_kl(s_hidden, output_head(self.student), t_hidden, self.teacher.head,
                          self.temperature, self.top_k, self.chunk_size)
        return loss, batch.student_mask.sum()
