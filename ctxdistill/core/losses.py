"""The micro-batch loss: collate pairs, run the teacher and the student, apply the objective on completion rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ctxdistill import CtxDistillError
from ctxdistill.core.forward import decoder_states, num_layers, output_head
from ctxdistill.core.objectives import (
    Objective,
    TeacherLogits,
    TeacherMixture,
    head_loss,
    hidden_state_term,
    posterior_view_weights,
    token_logprobs,
)
from ctxdistill.core.pairs import Pair, completion_rows, pad_right
from ctxdistill.core.teacher import Teacher
from ctxdistill.core.topk_cache import TopKCache


@dataclass
class PairBatch:
    student_ids: torch.Tensor
    student_mask: torch.Tensor
    student_rows: tuple[torch.Tensor, torch.Tensor]
    teacher_ids: torch.Tensor
    teacher_mask: torch.Tensor
    teacher_rows: tuple[torch.Tensor, torch.Tensor]
    labels: torch.Tensor  # the completion ids of the rows, row-aligned
    pairs: list[Pair] | None = None  # kept for teachers that look rows up (the top-k cache)
    # ensemble (pairs with several teacher views): rows × views, each row's prior weight of each view (sums to 1)
    view_weights: torch.Tensor | None = None
    # retention anchors: True for the rows of anchor pairs (Pair.anchor); None when the batch has none
    anchor_rows: torch.Tensor | None = None

    def to(self, device) -> "PairBatch":
        def move(x):
            if isinstance(x, tuple):
                return tuple(move(t) for t in x)
            return x.to(device) if isinstance(x, torch.Tensor) else x

        return PairBatch(**{k: move(v) for k, v in self.__dict__.items()})


def collate_pairs(pairs: list[Pair], pad_id: int, skip_first: int = 0) -> PairBatch:
    s_ids, s_mask = pad_right([p.student_ids for p in pairs], pad_id)
    # Pairs that share a teacher sequence (DiSC's splits of one document) share one teacher row.
    unique: dict[tuple, int] = {}
    t_index = [unique.setdefault(tuple(p.teacher_ids), len(unique)) for p in pairs]
    t_ids, t_mask = pad_right([list(ids) for ids in unique], pad_id)
    n = [p.completion_len for p in pairs]
    labels = torch.tensor([t for p in pairs for t in p.completion[skip_first:]], dtype=torch.long)
    # An ensemble: the teacher views themselves are run from `pairs` (Teacher.view_rows, grouped by context); a pair
    # with fewer views than the widest is padded with its first view at weight 0.
    n_views = max(len(p.teacher_views) for p in pairs)
    weights = None
    if n_views > 1:
        per_pair = torch.tensor([[1.0 / len(p.teacher_views) if v < len(p.teacher_views) else 0.0
                                  for v in range(n_views)] for p in pairs])
        weights = per_pair.repeat_interleave(torch.tensor([max(0, c - skip_first) for c in n]), 0)
    anchor_rows = None
    if any(p.anchor for p in pairs):
        anchor_rows = torch.tensor([p.anchor for p in pairs]).repeat_interleave(
            torch.tensor([max(0, c - skip_first) for c in n]), 0)
    return PairBatch(s_ids, s_mask, completion_rows([p.student_prompt_len for p in pairs], n, skip_first),
                     t_ids, t_mask, _teacher_rows(pairs, t_index, n, skip_first), labels, list(pairs), weights,
                     anchor_rows)


def _teacher_rows(pairs: list[Pair], t_index: list[int], n: list[int], skip_first: int):
    """Completion rows of each pair inside its (possibly shared) teacher sequence."""
    batch, pos = completion_rows([p.teacher_prompt_len for p in pairs], n, skip_first)
    return torch.tensor(t_index, dtype=torch.long)[batch], pos


def _pick_layers(layers: list[torch.Tensor], chosen: tuple[int, ...]) -> list[torch.Tensor]:
    return layers if not chosen else [layers[i] for i in chosen]


class DistillLoss(torch.nn.Module):
    """forward(batch) → (summed loss over the loss rows, input tokens processed). Holds the trainable student.

    `teacher` is a Teacher (live forward, optionally with an encoded prefix), a TopKCache, or None (SFT only)."""

    def __init__(self, student, teacher: Teacher | TopKCache | None, objective: Objective | None = None,
                 chunk_size: int = 256, skip_first: int = 0, ensemble_weighting: str = "posterior",
                 amplify: float = 0.0):
        super().__init__()
        objective = objective or Objective()
        if amplify and not isinstance(teacher, Teacher):
            raise CtxDistillError("Context-amplified targets (amplify > 0) need a live teacher, not a top-k cache.")
        if objective.needs_teacher and teacher is None:
            raise CtxDistillError(f"The objective {dict(objective.terms)} needs a teacher.")
        if isinstance(teacher, TopKCache):
            if objective.hidden_weight > 0:
                raise CtxDistillError("The hidden-state term needs a live teacher, not a top-k cache.")
            if abs(teacher.temperature - objective.temperature) > 1e-9:
                raise CtxDistillError(f"The teacher cache was written at temperature {teacher.temperature}, the "
                                      f"objective uses {objective.temperature}. Rebuild the cache.")
        if objective.hidden_weight > 0:
            n = num_layers(student)
            bad = [i for i in objective.hidden_layers if not -n <= i < n]
            if bad:
                raise CtxDistillError(f"hidden_layers {bad} are out of range for a model with {n} layers.")
            t_size = output_head(teacher.model).weight.shape[1]
            if t_size != output_head(student).weight.shape[1]:
                raise CtxDistillError("The hidden-state term compares hidden states, so teacher and student need the "
                                      f"same hidden size ({t_size} vs {output_head(student).weight.shape[1]}).")
        if skip_first < 0:
            raise CtxDistillError(f"skip_first must be >= 0, got {skip_first}.")
        self.student, self.teacher, self.objective = student, teacher, objective
        if ensemble_weighting not in ("posterior", "uniform"):
            raise CtxDistillError(f"ensemble_weighting must be posterior or uniform, got {ensemble_weighting!r}.")
        self.chunk_size, self.skip_first, self.ensemble_weighting = chunk_size, skip_first, ensemble_weighting
        self.amplify = amplify  # α of context-amplified targets (objectives.amplified_logprobs); 0: the teacher as is
        # For logging (core.training, when a tracker is on): a dict that forward adds each term's weighted sum to,
        # as it computes them; None (the default) records nothing.
        self.term_sums: dict[str, torch.Tensor] | None = None

    @property
    def term_names(self) -> list[str]:
        """The loss's terms, as forward records them in `term_sums`: the objective's, and "hidden" (DCD)."""
        return list(self.objective.terms) + (["hidden"] if self.objective.hidden_weight > 0 else [])

    def forward(self, batch: PairBatch):
        device = next(self.student.parameters()).device
        batch = batch.to(device)
        obj = self.objective
        with_layers = obj.hidden_weight > 0
        if batch.anchor_rows is not None and (with_layers or batch.view_weights is not None
                                              or not isinstance(self.teacher, Teacher)):
            raise CtxDistillError("Retention anchors need a live teacher with one view per pair, and no hidden-state "
                                  "term (the base's rows stand in for the teacher's final rows only).")
        s_final, s_layers = decoder_states(self.student, batch.student_ids, batch.student_mask, with_layers)
        s_rows = s_final[batch.student_rows]
        teacher_rows, t_layers = None, None
        if isinstance(self.teacher, TopKCache):
            teacher_rows = self.teacher.rows(batch.pairs, self.skip_first)
            teacher_rows.ids, teacher_rows.logp = teacher_rows.ids.to(device), teacher_rows.logp.to(device)
        elif self.teacher is not None and batch.view_weights is not None:  # an ensemble: mix the views
            if self.amplify:
                raise CtxDistillError("Context-amplified targets are not defined for an ensemble of teacher views.")
            if with_layers:
                raise CtxDistillError("The hidden-state term is not defined for an ensemble of teacher views.")
            views = self.teacher.view_rows(batch.pairs, self.skip_first)
            weights = batch.view_weights
            if self.ensemble_weighting == "posterior":  # each view weighed by how well it explains q and y_<t
                if views.query is not None:
                    weights = self._query_evidence(views, weights, batch.student_rows[0], len(batch.pairs))
                logp = torch.stack([token_logprobs(h, self.teacher.head, batch.labels, self.chunk_size)
                                    for h in views.completion], 1)
                weights = posterior_view_weights(weights, logp, batch.student_rows[0])
            teacher_rows = TeacherMixture(views.completion, self.teacher.head, weights)
        elif self.teacher is not None:
            t_final, t_layers, offset = self.teacher.states(batch.teacher_ids, batch.teacher_mask, with_layers)
            t_idx = (batch.teacher_rows[0], batch.teacher_rows[1] - offset)
            anchors = batch.anchor_rows
            plain = self.teacher.plain_states(batch.student_ids, batch.student_mask)[batch.student_rows] \
                if self.amplify or anchors is not None else None
            t_rows = t_final[t_idx]
            if anchors is not None:  # anchor rows: the base without the context (amplifying it changes nothing)
                t_rows = torch.where(anchors[:, None], plain.to(t_rows.dtype), t_rows)
            teacher_rows = TeacherLogits(t_rows, self.teacher.head, plain if self.amplify else None, self.amplify)
        loss = head_loss(s_rows, output_head(self.student), teacher_rows if obj.needs_teacher_logits else None,
                         batch.labels, obj, self.chunk_size, parts=self.term_sums) if obj.terms else s_rows.sum() * 0.0
        if with_layers:
            s_sel = [h[batch.student_rows] for h in _pick_layers(s_layers, obj.hidden_layers)]
            t_sel = [h[t_idx] for h in _pick_layers(t_layers, obj.hidden_layers)]
            hidden = obj.hidden_weight * hidden_state_term(s_sel, t_sel)
            loss = loss + hidden
            if self.term_sums is not None:
                self.term_sums["hidden"] = self.term_sums.get("hidden", 0.0) + hidden.detach()
        return loss, batch.student_mask.sum()

    def _query_evidence(self, views, prior: torch.Tensor, row_pair: torch.Tensor, n_pairs: int) -> torch.Tensor:
        """The views' prior at each row (of pair `row_pair`) times p(query | view), renormalized: p(view | query)."""
        logp = torch.stack([token_logprobs(h, self.teacher.head, views.query_labels, self.chunk_size)
                            for h in views.query], 1)
        per_pair = torch.zeros(n_pairs, logp.shape[1], device=logp.device)
        per_pair.index_add_(0, views.query_pair, logp)
        return torch.softmax(prior.clamp_min(1e-30).log() + per_pair[row_pair], dim=1) * (prior > 0)


@torch.no_grad()
def context_evidence(model, pairs: list[Pair], pad_id: int, batch_size: int = 8) -> list[float]:
    """How much the context explains each pair's completion: the mean over its tokens of
    log p(y_t | c, x, y_<t) − log p(y_t | x, y_<t), both under `model` (the teacher's weights)."""
    head, scores = output_head(model), []
    device = next(model.parameters()).device
    for start in range(0, len(pairs), batch_size):
        batch = collate_pairs(pairs[start:start + batch_size], pad_id).to(device)
        t_final = decoder_states(model, batch.teacher_ids, batch.teacher_mask)[0][batch.teacher_rows]
        s_final = decoder_states(model, batch.student_ids, batch.student_mask)[0][batch.student_rows]
        gain = token_logprobs(t_final, head, batch.labels) - token_logprobs(s_final, head, batch.labels)
        n_pairs = len(batch.pairs)
        total = torch.zeros(n_pairs, device=device).index_add_(0, batch.student_rows[0], gain)
        count = torch.zeros(n_pairs, device=device).index_add_(0, batch.student_rows[0], torch.ones_like(gain))
        scores += (total / count.clamp_min(1)).tolist()
    return scores
