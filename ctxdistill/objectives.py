"""Divergences over aligned completion rows, computed from final hidden states chunk by chunk.

Callers pass the final hidden states of the completion rows only (N × H, N = completion tokens in the batch),
never full logits. Each chunk projects to the vocabulary, reduces in fp32 and is recomputed in the backward pass
(activation checkpointing), so memory holds one chunk × vocab at a time instead of N × vocab for two models.
Every function returns the *sum* over rows; the training loop divides by the token count of the whole step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ctxdistill import CtxDistillError

OBJECTIVES = ("forward_kl", "sft")


def _head_params(head: torch.nn.Module):
    return head.weight, getattr(head, "bias", None)


def _logits32(h, w, b):
    """Project to the vocabulary (in the compute dtype) and reduce in at least fp32."""
    logits = F.linear(h, w, b)
    return logits if logits.dtype == torch.float64 else logits.float()


def _forward_kl_chunk(s_h, t_h, s_w, s_b, t_w, t_b, temperature: float, top_k: int):
    s_logp = torch.log_softmax(_logits32(s_h, s_w, s_b) / temperature, dim=-1)
    with torch.no_grad():
        t_logits = _logits32(t_h, t_w, t_b) / temperature
        if top_k:
            # Teacher top-k support, teacher renormalized over it: soft targets on the k likeliest tokens.
            t_vals, t_idx = t_logits.topk(top_k, dim=-1)
            t_logp = torch.log_softmax(t_vals, dim=-1)
        else:
            t_logp = torch.log_softmax(t_logits, dim=-1)
    s_on_support = s_logp.gather(-1, t_idx) if top_k else s_logp
    return (t_logp.exp() * (t_logp - s_on_support)).sum()


def _sft_chunk(s_h, labels, s_w, s_b):
    return F.cross_entropy(_logits32(s_h, s_w, s_b), labels, reduction="sum")


def _run_chunks(fn, n_rows: int, chunk_size: int, row_args, const_args):
    total = None
    for start in range(0, n_rows, chunk_size):
        chunk = [a[start:start + chunk_size] for a in row_args]
        args = (*chunk, *const_args)
        needs_grad = torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        part = checkpoint(fn, *args, use_reentrant=False) if needs_grad else fn(*args)
        total = part if total is None else total + part
    return total


def forward_kl(student_h: torch.Tensor, student_head: torch.nn.Module, teacher_h: torch.Tensor,
               teacher_head: torch.nn.Module, temperature: float = 1.0, top_k: int = 0,
               chunk_size: int = 256) -> torch.Tensor:
    """Sum over rows of KL(teacher ‖ student) at `temperature`, on the full vocabulary or the teacher's top-k."""
    if student_h.shape != teacher_h.shape:
        raise CtxDistillError(f"Teacher and student rows are misaligned: {tuple(teacher_h.shape)} vs "
                              f"{tuple(student_h.shape)}.")
    if temperature <= 0:
        raise CtxDistillError(f"temperature must be > 0, got {temperature}.")
    s_w, s_b = _head_params(student_head)
    t_w, t_b = _head_params(teacher_head)
    if top_k < 0 or top_k > s_w.shape[0]:
        raise CtxDistillError(f"top_k must be in [0, vocab size {s_w.shape[0]}] (0 = full vocabulary), got {top_k}.")
    return _run_chunks(lambda s, t, *c: _forward_kl_chunk(s, t, *c), student_h.shape[0], chunk_size,
                       (student_h, teacher_h), (s_w, s_b, t_w, t_b, float(temperature), int(top_k)))


def sft(student_h: torch.Tensor, student_head: torch.nn.Module, labels: torch.Tensor,
        chunk_size: int = 256) -> torch.Tensor:
    """Sum over rows of the cross-entropy of the completion ids (hard labels)."""
    s_w, s_b = _head_params(student_head)
    return _run_chunks(_sft_chunk, student_h.shape[0], chunk_size, (student_h, labels), (s_w, s_b))
