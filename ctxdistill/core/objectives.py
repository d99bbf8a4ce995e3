"""Divergences over aligned completion rows, computed from final hidden states chunk by chunk.

Callers pass the final hidden states of the completion rows only (N × H, N = completion tokens in the batch),
never full logits. Each chunk of rows is projected to the vocabulary, reduced in fp32, and its gradient with
respect to the hidden states (and the head, when it is trained) is computed right there; only those N × H (and
V × H) gradients are kept for the backward pass. Memory therefore holds one chunk × vocab at a time instead of
N × vocab for two models, and nothing is recomputed.

An `Objective` is plain data: weighted terms (forward/reverse KL, generalized JSD, a sampled-token estimator, SFT)
sharing one temperature and one support (full vocabulary, or a top-k chosen from the teacher, the student or their
union, with the remaining mass renormalized away or kept as one tail outcome). Every function returns the *sum* over
rows; the training loop divides by the token count of the whole step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ctxdistill import CtxDistillError

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")  # full-distribution divergences, T²-scalable
TERMS = DIVERGENCES + ("sampled_kl", "sft")
SUPPORTS = ("teacher", "student", "union")
TAILS = ("renorm", "bucket")


@dataclass(frozen=True)
class Objective:
    """What the student minimizes on each completion row: Σ weight · term (+ the hidden-state term, see losses)."""

    terms: dict[str, float] = field(default_factory=lambda: {"forward_kl": 1.0})
    temperature: float = 1.0
    t2_scaling: bool = False  # multiply the divergence terms by T² (Hinton et al.), keeping gradient scale across T
    jsd_beta: float = 0.5  # GKD: 0 = forward KL(teacher‖student), 1 = reverse KL(student‖teacher)
    top_k: int = 0  # 0: the full vocabulary
    support: str = "teacher"  # whose top-k: teacher | student | union
    tail: str = "renorm"  # renorm: renormalize on the support; bucket: the rest of the mass is one extra outcome
    hidden_weight: float = 0.0  # Deep Context Distillation's hidden-state term (computed in losses.py)
    hidden_layers: tuple[int, ...] = ()  # () = every decoder layer's output

    def __post_init__(self):
        if not self.terms and self.hidden_weight <= 0:
            raise CtxDistillError("The objective has no terms; give at least one of " + ", ".join(TERMS) + ".")
        for name, weight in self.terms.items():
            if name not in TERMS:
                raise CtxDistillError(f"Unknown objective term '{name}'. Use: {', '.join(TERMS)}.")
            if not math.isfinite(weight) or weight < 0:
                raise CtxDistillError(f"The weight of '{name}' must be a finite number >= 0, got {weight}.")
        if not self.temperature > 0:
            raise CtxDistillError(f"temperature must be > 0, got {self.temperature}.")
        if not 0.0 <= self.jsd_beta <= 1.0:
            raise CtxDistillError(f"jsd_beta must be in [0, 1], got {self.jsd_beta}.")
        if self.top_k < 0:
            raise CtxDistillError(f"top_k must be >= 0 (0 = full vocabulary), got {self.top_k}.")
        if self.support not in SUPPORTS:
            raise CtxDistillError(f"top_k_support={self.support!r} is not valid; use one of {', '.join(SUPPORTS)}.")
        if self.tail not in TAILS:
            raise CtxDistillError(f"top_k_tail={self.tail!r} is not valid; use one of {', '.join(TAILS)}.")
        if self.hidden_weight < 0:
            raise CtxDistillError(f"hidden_weight must be >= 0, got {self.hidden_weight}.")

    @property
    def needs_teacher(self) -> bool:
        return any(name != "sft" for name in self.terms) or self.hidden_weight > 0

    @property
    def needs_teacher_logits(self) -> bool:
        return any(name != "sft" for name in self.terms)


@dataclass
class TeacherLogits:
    """Teacher rows as final hidden states: logits are made per chunk with `head`, never for all rows at once.

    With `plain` (the same model's rows without the context) and `alpha` > 0 the target is context-amplified
    (see `amplified_logprobs`)."""

    hidden: torch.Tensor  # N × H
    head: torch.nn.Module
    plain: torch.Tensor | None = None  # N × H, the rows of the view without the context
    alpha: float = 0.0

    def chunk(self, start: int, end: int):
        plain = None if self.plain is None else self.plain[start:end]
        return TeacherLogits(self.hidden[start:end], self.head, plain, self.alpha)


PLAUSIBLE = 0.1  # amplified: only tokens with p(·|c, x) >= PLAUSIBLE · its max are sharpened


def amplified_logprobs(with_context: torch.Tensor, without: torch.Tensor, alpha: float) -> torch.Tensor:
    """Context-aware decoding (Shi et al. 2023): log q ∝ (1+α)·log p(·|c, x) − α·log p(·|x), normalized.

    The teacher's distribution sharpened toward what the context changes: a small teacher that follows its context
    4 times in 10 puts more mass on the context's answer. Only plausible tokens (p(·|c, x) within PLAUSIBLE of the
    likeliest, Li et al. 2023) are amplified; the rest move with the least-boosted plausible token, else a token
    both views find nearly impossible could win by the ratio of two tiny numbers."""
    log_c, log_plain = with_context.log_softmax(-1), without.log_softmax(-1)
    plausible = log_c >= log_c.max(-1, keepdim=True).values + math.log(PLAUSIBLE)
    boost = alpha * (log_c - log_plain)
    # The rest move with the least-boosted plausible token: they never gain on the plausible set.
    floor = boost.masked_fill(~plausible, float("inf")).min(-1, keepdim=True).values
    return (log_c + torch.where(plausible, boost, floor)).log_softmax(-1)


@dataclass
class TeacherMixture:
    """Several teacher views of the same rows (other contexts): the target is the average of their distributions."""

    hiddens: list[torch.Tensor]  # M × (N × H)
    head: torch.nn.Module
    weights: torch.Tensor | None = None  # N × M mixture weights per row (rows sum to 1); None = uniform

    def chunk(self, start: int, end: int):
        w = None if self.weights is None else self.weights[start:end]
        return TeacherMixture([h[start:end] for h in self.hiddens], self.head, w)


@dataclass
class TeacherTopK:
    """Teacher rows from a top-k cache: ids and log-probs (at the objective's temperature) of its k likeliest tokens."""

    ids: torch.Tensor  # N × k, long
    logp: torch.Tensor  # N × k, float32, sorted descending

    def chunk(self, start: int, end: int):
        return TeacherTopK(self.ids[start:end], self.logp[start:end])


@torch.no_grad()
def token_logprobs(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor,
                   chunk_size: int = 256) -> torch.Tensor:
    """log p(label) at each row (T=1, fp32), projected chunk by chunk: N."""
    out = [project(hidden[s:s + chunk_size], head, torch.float32).log_softmax(-1)
           .gather(1, labels[s:s + chunk_size, None]).squeeze(1) for s in range(0, hidden.shape[0], chunk_size)]
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def posterior_view_weights(prior: torch.Tensor, token_logp: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
    """Weights of M teacher views at each row: p(view | the completion so far) ∝ prior · Π_{s<t} p_view(y_s).

    prior, token_logp: N × M; sequence: N, which sequence each row belongs to (rows of a sequence contiguous, in
    order). A completion written under one context soon weighs that context's view most: the mixture is the
    ensemble's own next-token distribution given the prefix, not an average that forgets what was already said."""
    _, counts = torch.unique_consecutive(sequence, return_counts=True)
    starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    before = torch.cumsum(token_logp, 0) - token_logp  # Σ over earlier rows, all sequences
    within = before - before[starts]  # ... of this sequence only
    return torch.softmax(prior.clamp_min(1e-30).log() + within, dim=1) * (prior > 0)


# ---- divergences between aligned log-prob vectors (last dim = outcomes; `valid` masks outcomes out) ----

def _kl(p_log: torch.Tensor, q_log: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """KL(p‖q) per row. Invalid outcomes carry no mass in either distribution."""
    terms = p_log.exp() * (p_log - q_log)
    return (terms if valid is None else terms * valid).sum(-1)


def _jsd(t_log, s_log, beta: float, valid) -> torch.Tensor:
    """Generalized JSD of GKD: β·KL(T‖M) + (1−β)·KL(S‖M), M = β·T + (1−β)·S; β=0 is KL(T‖S), β=1 is KL(S‖T)."""
    if beta == 0.0:
        return _kl(t_log, s_log, valid)
    if beta == 1.0:
        return _kl(s_log, t_log, valid)
    m_log = torch.logaddexp(t_log + math.log(beta), s_log + math.log(1.0 - beta))
    return beta * _kl(t_log, m_log, valid) + (1.0 - beta) * _kl(s_log, m_log, valid)


def _divergence(name: str, t_log, s_log, beta: float, valid):
    if name == "forward_kl":
        return _kl(t_log, s_log, valid)
    if name == "reverse_kl":
        return _kl(s_log, t_log, valid)
    return _jsd(t_log, s_log, beta, valid)


# ---- supports ----

def _tail_log(z_scaled: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """log of the probability mass outside the support, exactly (masking, not 1 − Σp, so it cannot cancel)."""
    outside = z_scaled.scatter(-1, idx, float("-inf"))
    return torch.logsumexp(outside, -1, keepdim=True) - torch.logsumexp(z_scaled, -1, keepdim=True)


def _on_support(t_full, s_full, idx, valid, tail: str, t_z=None, s_z=None):
    """Restrict both log-prob vectors to the support `idx` (renormalized, or with one tail outcome appended)."""
    t_sup, s_sup = t_full.gather(-1, idx), s_full.gather(-1, idx)
    if valid is not None:
        # Duplicate ids of a union support: give them no mass so each token counts once.
        t_sup = t_sup.masked_fill(~valid.bool(), float("-inf"))
        s_sup = s_sup.masked_fill(~valid.bool(), float("-inf"))
    if tail == "renorm":
        t_log, s_log = torch.log_softmax(t_sup, -1), torch.log_softmax(s_sup, -1)
        out_valid = valid
    else:
        t_log = torch.cat([t_sup, _tail_log(t_z, idx)], -1)
        s_log = torch.cat([s_sup, _tail_log(s_z, idx)], -1)
        # The tail is an outcome only when the support leaves some of the vocabulary out.
        n_support = valid.sum(-1, keepdim=True) if valid is not None else \
            torch.full((idx.shape[0], 1), idx.shape[-1], device=idx.device)
        tail_valid = (n_support < s_z.shape[-1]).to(s_log.dtype)
        base_valid = torch.ones_like(s_sup) if valid is None else valid.to(s_log.dtype)
        out_valid = torch.cat([base_valid, tail_valid], -1)
    if out_valid is not None:
        # Masked outcomes are −inf in both vectors; zero them so 0·(−inf − −inf) never makes a NaN.
        keep = out_valid.bool()
        t_log, s_log = t_log.masked_fill(~keep, 0.0), s_log.masked_fill(~keep, 0.0)
    return t_log, s_log, out_valid


def _support_ids(obj: Objective, t_z, s_z) -> tuple[torch.Tensor, torch.Tensor | None]:
    k = min(obj.top_k, s_z.shape[-1])
    if obj.support == "teacher":
        return t_z.topk(k, -1).indices, None
    if obj.support == "student":
        return s_z.detach().topk(k, -1).indices, None
    ids = torch.cat([t_z.topk(k, -1).indices, s_z.detach().topk(k, -1).indices], -1).sort(-1).values
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[:, 1:] = ids[:, 1:] != ids[:, :-1]
    return ids, valid


def _cached_support(obj: Objective, teacher: TeacherTopK, s_full, s_z):
    """Support = the cached teacher top-k; the cache holds log-probs under the full tempered softmax."""
    k = teacher.ids.shape[-1] if not obj.top_k else min(obj.top_k, teacher.ids.shape[-1])
    idx, t_sup = teacher.ids[:, :k], teacher.logp[:, :k].float()
    s_sup = s_full.gather(-1, idx)
    if obj.tail == "renorm":
        return torch.log_softmax(t_sup, -1), torch.log_softmax(s_sup, -1), None
    t_tail = torch.log((1.0 - t_sup.exp().sum(-1, keepdim=True)).clamp_min(0.0))
    s_tail = _tail_log(s_z, idx)
    valid = torch.cat([torch.ones_like(t_sup), (t_tail > float("-inf")).to(t_sup.dtype)], -1)
    t_log = torch.cat([t_sup, t_tail], -1).masked_fill(valid == 0, 0.0)
    s_log = torch.cat([s_sup, s_tail], -1).masked_fill(valid == 0, 0.0)
    return t_log, s_log, valid


# ---- one chunk: logits in, weighted per-row terms summed out ----

def chunk_loss(obj: Objective, s_logits: torch.Tensor, teacher, labels: torch.Tensor | None,
               row_weight: torch.Tensor | None = None, compute_dtype: torch.dtype | None = None,
               parts: dict | None = None) -> torch.Tensor:
    """Σ over the chunk's rows of Σ_terms weight·term. `s_logits` are fp32 (or fp64) student logits, c × V.
    `parts`, if given, gets each term's weighted sum added under its name (for logging; no extra forward)."""
    T = obj.temperature
    s_z = s_logits / T
    s_full = torch.log_softmax(s_z, -1)
    t_z = t_full = None
    if isinstance(teacher, TeacherLogits):
        with torch.no_grad():
            t_z = project(teacher.hidden, teacher.head, s_logits.dtype, compute_dtype)
            if teacher.plain is not None and teacher.alpha > 0:
                t_z = amplified_logprobs(t_z, project(teacher.plain, teacher.head, s_logits.dtype, compute_dtype),
                                         teacher.alpha)
            t_z = t_z / T
            t_full = torch.log_softmax(t_z, -1)
    elif isinstance(teacher, TeacherMixture):
        with torch.no_grad():  # log of the mean probability; as normalized log-probs it also serves as the "logits"
            views = torch.stack([torch.log_softmax(project(h, teacher.head, s_logits.dtype, compute_dtype) / T, -1)
                                 for h in teacher.hiddens])
            if teacher.weights is None:
                t_full = torch.logsumexp(views, 0) - math.log(len(teacher.hiddens))
            else:
                log_w = teacher.weights.to(views.dtype).t().log()[:, :, None]  # M × c × 1; weight 0 → -inf
                t_full = torch.logsumexp(views + log_w, 0)
            t_z = t_full
    per_row = torch.zeros(s_logits.shape[0], dtype=s_logits.dtype, device=s_logits.device)
    divergences = [n for n in obj.terms if n in DIVERGENCES]
    if divergences:
        if isinstance(teacher, TeacherTopK):
            t_log, s_log, valid = _cached_support(obj, teacher, s_full, s_z)
        elif obj.top_k:
            idx, dup_valid = _support_ids(obj, t_z, s_z)
            t_log, s_log, valid = _on_support(t_full, s_full, idx, dup_valid, obj.tail, t_z, s_z)
        else:
            t_log, s_log, valid = t_full, s_full, None
        scale = T * T if obj.t2_scaling else 1.0
        for name in divergences:
            term = obj.terms[name] * scale * _divergence(name, t_log, s_log, obj.jsd_beta, valid)
            per_row = per_row + _record(parts, name, term, row_weight)
    if "sampled_kl" in obj.terms:
        if t_full is None:
            raise CtxDistillError("sampled_kl needs live teacher logits; it cannot read a top-k teacher cache.")
        s_y = s_full.gather(-1, labels[:, None])[:, 0]
        ratio = (s_y - t_full.gather(-1, labels[:, None])[:, 0]).detach()
        # Value: the log-ratio on the sampled token (a one-sample reverse-KL estimate).
        # Gradient: ratio · ∇log p_s(y), the score-function gradient of E_{y~student}[log p_s/p_t].
        sampled = obj.terms["sampled_kl"] * (ratio + ratio * (s_y - s_y.detach()))
        per_row = per_row + _record(parts, "sampled_kl", sampled, row_weight)
    if "sft" in obj.terms:  # hard labels at T = 1; at T = 1 the log-softmax above is already the one needed
        nll = -s_full.gather(-1, labels[:, None])[:, 0] if T == 1.0 else \
            F.cross_entropy(s_logits, labels, reduction="none")
        per_row = per_row + _record(parts, "sft", obj.terms["sft"] * nll, row_weight)
    return (per_row if row_weight is None else per_row * row_weight).sum()


def _record(parts: dict | None, name: str, term: torch.Tensor, row_weight: torch.Tensor | None) -> torch.Tensor:
    """Add a term's weighted sum over the chunk to `parts` (when given); returns the term unchanged."""
    if parts is not None:
        done = (term if row_weight is None else term * row_weight).detach().sum()
        parts[name] = parts[name] + done if name in parts else done
    return term


def _compute_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return dtype


def project(h: torch.Tensor, head: torch.nn.Module, out_dtype: torch.dtype,
            compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Logits of some rows in the compute dtype (bf16 under autocast), returned in `out_dtype` (fp32 or fp64)."""
    cd = compute_dtype or _compute_dtype(h.device, h.dtype)
    bias = getattr(head, "bias", None)
    with torch.autocast(h.device.type, enabled=False):
        z = F.linear(h.to(cd), head.weight.to(cd), None if bias is None else bias.to(cd))
    return z.to(torch.promote_types(out_dtype, torch.float32))


class _FusedHeadLoss(torch.autograd.Function):
    """Σ_chunks chunk_loss(head(h_chunk)), with d/dh (and d/dW, d/db) computed chunk by chunk in the forward."""

    @staticmethod
    def forward(ctx, h, weight, bias, obj, teacher, labels, row_weight, chunk_size, parts):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        cd = _compute_dtype(h.device, h.dtype)
        out_dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
        with torch.autocast(h.device.type, enabled=False):
            w_c = weight.detach().to(cd)
            b_c = None if bias is None else bias.detach().to(cd)
            grad_h = torch.zeros_like(h) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=out_dtype, device=h.device) if need_w else None
            grad_b = torch.zeros(bias.shape, dtype=out_dtype, device=h.device) if need_b else None
            total = torch.zeros((), dtype=out_dtype, device=h.device)
            for start in range(0, h.shape[0], chunk_size):
                end = min(start + chunk_size, h.shape[0])
                h_c = h[start:end].detach().to(cd)
                z = F.linear(h_c, w_c, b_c).to(out_dtype)
                t_c = teacher.chunk(start, end) if teacher is not None else None
                y_c = labels[start:end] if labels is not None else None
                r_c = row_weight[start:end] if row_weight is not None else None
                if need_h or need_w or need_b:
                    z.requires_grad_(True)
                    with torch.enable_grad():
                        part = chunk_loss(obj, z, t_c, y_c, r_c, cd, parts)
                    (g,) = torch.autograd.grad(part, z)
                    if need_h:
                        grad_h[start:end] = (g.to(cd) @ w_c).to(h.dtype)
                    if need_w:
                        grad_w += (g.t().to(cd) @ h_c).to(out_dtype)
                    if need_b:
                        grad_b += g.sum(0)
                else:
                    part = chunk_loss(obj, z, t_c, y_c, r_c, cd, parts)
                total += part.detach()
        ctx.save_for_backward(*(g for g in (grad_h, grad_w, grad_b) if g is not None))
        ctx.has = (need_h, need_w, need_b)
        ctx.dtypes = (h.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        saved = iter(ctx.saved_tensors)
        grads = [(next(saved) * grad_out).to(dtype) if needed else None
                 for needed, dtype in zip(ctx.has, ctx.dtypes)]
        return (*grads, None, None, None, None, None, None)


def head_loss(student_h: torch.Tensor, student_head: torch.nn.Module, teacher, labels: torch.Tensor | None,
              obj: Objective, chunk_size: int = 256, row_weight: torch.Tensor | None = None,
              parts: dict | None = None) -> torch.Tensor:
    """Σ over rows of the objective's logit terms. `teacher` is TeacherLogits, TeacherTopK or None (SFT only).
    `parts`, if given, gets each term's weighted sum (see chunk_loss)."""
    n = student_h.shape[0]
    if obj.needs_teacher_logits and teacher is None:
        raise CtxDistillError("This objective compares with a teacher, but none was given.")
    if isinstance(teacher, TeacherMixture):
        if any(h.shape[0] != n for h in teacher.hiddens):
            raise CtxDistillError("Teacher views and student rows are misaligned.")
    if isinstance(teacher, TeacherLogits):
        if teacher.hidden.shape[0] != n:
            raise CtxDistillError(f"Teacher and student rows are misaligned: {teacher.hidden.shape[0]} teacher rows "
                                  f"vs {n} student rows.")
        if teacher.head.weight.shape[0] != student_head.weight.shape[0]:
            raise CtxDistillError(f"Teacher and student vocabularies differ in size ({teacher.head.weight.shape[0]} "
                                  f"vs {student_head.weight.shape[0]}); they need the same tokenizer.")
    if isinstance(teacher, TeacherTopK):
        if teacher.ids.shape[0] != n:
            raise CtxDistillError(f"The top-k cache has {teacher.ids.shape[0]} rows for {n} completion rows.")
        if obj.support != "teacher":
            raise CtxDistillError("A top-k teacher cache only knows the teacher's support; set top_k_support=teacher.")
    if ("sampled_kl" in obj.terms or "sft" in obj.terms) and (labels is None or labels.shape[0] != n):
        raise CtxDistillError("sampled_kl and sft need the completion ids of every row.")
    if chunk_size <= 0:
        raise CtxDistillError(f"chunk_size must be > 0, got {chunk_size}.")
    if n == 0:
        return student_h.sum() * 0.0
    if obj.top_k > student_head.weight.shape[0]:
        raise CtxDistillError(f"top_k ({obj.top_k}) is larger than the vocabulary ({student_head.weight.shape[0]}).")
    bias = getattr(student_head, "bias", None)
    return _FusedHeadLoss.apply(student_h, student_head.weight, bias, obj, teacher, labels, row_weight,
                                int(chunk_size), parts)


def hidden_state_term(student_layers: list[torch.Tensor], teacher_layers: list[torch.Tensor]) -> torch.Tensor:
    """Deep Context Distillation's hidden-state matching, as a sum over rows.

    Per layer: Σ_rows mean_d |h_s − h_t| / mean |h_t| (the mean over this batch's rows and dims), averaged over
    layers. Divided by the row count it is the per-layer mean|h_s − h_t| / mean|h_t| averaged over layers."""
    if len(student_layers) != len(teacher_layers) or not student_layers:
        raise CtxDistillError("The hidden-state term needs the same, non-empty list of layers for both models.")
    total = None
    for s, t in zip(student_layers, teacher_layers):
        s32, t32 = s.float(), t.detach().float()
        scale = t32.abs().mean().clamp_min(1e-6)
        part = (s32 - t32).abs().mean(-1).sum() / scale
        total = part if total is None else total + part
    return total / len(student_layers)


# ---- a simple entry point, for callers that need just this term (evaluation) ----

def forward_kl(student_h, student_head, teacher_h, teacher_head, temperature: float = 1.0, top_k: int = 0,
               chunk_size: int = 256) -> torch.Tensor:
    """Σ over rows of KL(teacher ‖ student) at `temperature`, on the full vocabulary or the teacher's top-k."""
    obj = Objective({"forward_kl": 1.0}, temperature=temperature, top_k=top_k)
    return head_loss(student_h, student_head, TeacherLogits(teacher_h, teacher_head), None, obj, chunk_size)
