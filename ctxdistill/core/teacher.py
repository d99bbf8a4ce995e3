"""Teacher sources and the hidden-state access both views share.

A teacher scores the teacher views with frozen weights and hands back hidden states of the completion rows only:
- the student's own base weights with the LoRA adapter switched off (no copy of the weights; the default),
- a frozen copy taken before full fine-tuning starts,
- another model with the same tokenizer (for instance a bigger one),
- or a top-k cache on disk, see `topk_cache.py`.
A context every teacher view starts with is encoded once (`encode_prefix`) and its KV cache is reused by every
teacher forward: the teacher then only runs the query and the completion. An ensemble's views differ in their
context, so `view_rows` groups them by context and keeps each context's KV cache across batches.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter, OrderedDict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from ctxdistill import CtxDistillError
from ctxdistill.core.forward import (
    MIN_SHARED_PREFIX,
    PrefixKV,
    base_model,
    decoder_states,
    encode_prefix,
    output_head,
    shared_prefix_len,
)
from ctxdistill.core.pairs import pad_right

# Tokens of context KV cache an ensemble teacher keeps across batches (least recently used dropped first).
CONTEXT_CACHE_TOKENS = 16384


def vocabulary_rows(model) -> tuple[int, int]:
    """(input-embedding rows, lm_head rows): a padded embedding has more rows than its tokenizer has tokens."""
    return model.get_input_embeddings().weight.shape[0], output_head(model).weight.shape[0]


def fit_vocabulary(model, name: str, tokens: int, student=None) -> None:
    """Line the teacher's vocabulary rows up with the student's before anything is sampled or scored.

    Rows past the tokenizer's length are padding no token id reaches: cutting the teacher's surplus to the student's
    size only drops probability mass on ids neither model can be shown nor asked to write, which also keeps the
    teacher from sampling them. A teacher with fewer rows than the student cannot score its ids: refused."""
    rows_in, rows_out = vocabulary_rows(model)
    target = vocabulary_rows(student)[1] if student is not None else tokens
    student_rows = f"the student {target} lm_head rows, " if student is not None else ""
    sizes = (f"the teacher {name} has {rows_in} input-embedding and {rows_out} lm_head rows, {student_rows}the shared "
             f"tokenizer {tokens} tokens")
    if min(rows_in, rows_out) < tokens:
        raise CtxDistillError(f"The teacher's vocabulary is smaller than its tokenizer: {sizes}. Use a teacher whose "
                              "embedding has a row for every token (the same model family as the student).")
    if student is None or rows_in == rows_out == target:
        return
    if min(rows_in, rows_out) < target:
        raise CtxDistillError(f"Teacher and student vocabularies differ in size: {sizes}. The tokenizers are the "
                              "same, so the difference is a padded embedding matrix, and a teacher with fewer rows "
                              f"than the student cannot score the student's padding. Use a teacher padded to at "
                              f"least {target} rows (or the student's own base, --teacher \"\").")
    warnings.warn(f"The teacher's embedding is padded past the tokenizer: {sizes}. It is cut to the student's {target} "
                  "rows (no token id reaches the rows cut off).", stacklevel=3)
    model.resize_token_embeddings(target)


def load_teacher_model(name: str, student_tokenizer, dtype: str, device, student=None):
    """Another model as the teacher (e.g. a bigger one); its tokenizer must equal the student's exactly, and its
    vocabulary rows are lined up with the `student` model's (see fit_vocabulary; without it, only checked against
    the tokenizer)."""
    from ctxdistill.core.models import load_model
    from ctxdistill.core.pairs import check_tokenizers_match

    model, tokenizer, _ = load_model(name, dtype, device)
    check_tokenizers_match(tokenizer, student_tokenizer)
    fit_vocabulary(model, name, len(student_tokenizer), student)
    return model.eval().requires_grad_(False)


TEACHER_ADAPTER = "teacher"  # the name of the teacher's adapter next to the student's ("default") on one PEFT model


def add_teacher_adapter(student, path: str):
    """Load the adapter at `path` onto the student's PEFT model as a second, frozen adapter named "teacher": the
    teacher is then the same base weights with that adapter on (no copy). The student's adapter stays active."""
    from ctxdistill.core.models import adapter_loading, check_adapter, peft_quietly

    check_adapter(path)
    with peft_quietly(), adapter_loading(path, student):
        student.load_adapter(path, adapter_name=TEACHER_ADAPTER, is_trainable=False)
    student.set_adapter(student.active_adapter)  # the student's adapter stays the active, trainable one
    return student


@contextmanager
def adapter_on(peft_model, name: str = TEACHER_ADAPTER):
    """The adapter `name` in the forward instead of the student's, frozen; the student's is active (and trainable
    as before) again afterwards. PEFT switches adapters by re-marking which weights train, so the switch back
    restores them."""
    active = peft_model.active_adapter
    trainable = any(p.requires_grad for n, p in peft_model.named_parameters() if f".{active}." in n)
    peft_model.set_adapter(name, inference_mode=True)
    try:
        yield peft_model
    finally:
        peft_model.set_adapter(active, inference_mode=not trainable)


def drop_teacher_adapter(peft_model) -> None:
    """Remove the teacher's adapter (before saving: the student's adapter folder holds the student only)."""
    if TEACHER_ADAPTER in peft_model.peft_config:
        active = peft_model.active_adapter
        peft_model.delete_adapter(TEACHER_ADAPTER)
        peft_model.set_adapter(active)


class Teacher:
    """Scores views with frozen weights: the adapter-disabled student, its "teacher" adapter (`adapter`), a frozen
    copy, or another model."""

    def __init__(self, student, frozen_copy: bool = False, other=None, live: bool = False,
                 context_cache_tokens: int = CONTEXT_CACHE_TOKENS, adapter: str | None = None, ema=None):
        self.student = student
        self.ema = ema  # an EmaAdapter (core/ema.py): the student's base with the averaged adapter in its place
        self.live = live  # the student's current weights, adapter on (no gradient flows through the teacher)
        self.adapter = adapter  # the name of the teacher's own adapter on the student's base, or None
        self.copy = None
        if other is not None:
            self.copy = base_model(other).eval().requires_grad_(False)
        elif frozen_copy:
            self.copy = copy.deepcopy(base_model(student)).eval()
            self.copy.requires_grad_(False)
        self.prefix: PrefixKV | None = None
        # Ensemble views: each context's KV cache, least recently used dropped beyond `context_cache_tokens` (0: off).
        self.contexts: OrderedDict[tuple, PrefixKV] = OrderedDict()
        self.context_cache_tokens = context_cache_tokens

    @property
    def model(self):
        return self.copy if self.copy is not None else self.student

    @contextmanager
    def _weights(self):
        """The teacher's weights in eval mode: no dropout, and no gradient checkpointing (which drops KV caches)."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            if self.ema is not None:
                view = self.ema.active()
            elif self.adapter and self.copy is None:
                view = adapter_on(self.student, self.adapter)
            elif self.copy is None and not self.live and hasattr(self.student, "disable_adapter"):
                view = self.student.disable_adapter()
            else:
                view = nullcontext()
            with view:
                yield
        finally:
            model.train(was_training)

    def encode_shared_prefix(self, sequences: list[list[int]], prompt_lens: list[int]) -> PrefixKV | None:
        """Encode the longest prefix all teacher views share (the context), if it is worth it."""
        n = shared_prefix_len(sequences, prompt_lens)
        return self.encode_prefix(sequences[0][:n]) if n >= MIN_SHARED_PREFIX else None

    def encode_prefix(self, ids: list[int]) -> PrefixKV | None:
        """Encode the shared prefix once; later `states` calls on views that start with it skip it."""
        with self._weights():
            self.prefix = encode_prefix(self.model, ids) if ids else None
        return self.prefix

    @torch.no_grad()
    def states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, all_layers: bool = False):
        """Teacher hidden states for full views; with an encoded prefix, the columns it covers are not recomputed.

        Returns (final B × L' × H, layers or None, offset): row positions of the full view are at `pos - offset`."""
        prefix = self.prefix
        with self._weights():
            if prefix is None and all_layers:
                final, layers = decoder_states(self.model, input_ids, attention_mask, all_layers)
                return final, layers, 0
            if prefix is None:  # no shared context to reuse (say, one per row): groups of similar length instead
                return states_by_length(self.model, input_ids, attention_mask), None, 0
            p = len(prefix)
            expected = torch.tensor(prefix.ids, device=input_ids.device)
            if input_ids.shape[1] <= p or not bool((input_ids[:, :p] == expected).all()):
                raise CtxDistillError("Internal error: a teacher view does not start with the encoded prefix.")
            if all_layers:
                final, layers = decoder_states(self.model, input_ids[:, p:], attention_mask[:, p:], True, prefix)
                return final, layers, p
            # rows of one shared context differ little in length; per-row contexts after a shared header a lot
            return states_by_length(self.model, input_ids[:, p:], attention_mask[:, p:], prefix), None, p

    @torch.no_grad()
    def plain_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The teacher's final hidden states on a view without the context (the student's view): the contrast of
        context-amplified targets."""
        with self._weights():
            return decoder_states(self.model, input_ids, attention_mask)[0]

    @property
    def head(self) -> torch.nn.Module:
        return output_head(self.model)

    def _context_kv(self, ids: tuple) -> PrefixKV:
        """The KV cache of one context part, encoded on first use and kept (least recently used out first)."""
        if ids in self.contexts:
            self.contexts.move_to_end(ids)
            return self.contexts[ids]
        kv = encode_prefix(self.model, list(ids))
        self.contexts[ids] = kv
        while sum(len(k) for k in self.contexts) > self.context_cache_tokens and len(self.contexts) > 1:
            self.contexts.popitem(last=False)
        return kv

    @torch.no_grad()
    def view_rows(self, pairs, skip_first: int = 0) -> "ViewRows":
        """An ensemble's views, grouped by context so each context is encoded once and its KV reused.

        A context is worth its own KV cache if several views in the batch use it, or it is cached already; views with
        a context of their own (say, a random subset of examples) run in full, one padded batch per view index. A pair
        with fewer views than the widest repeats its first view's rows, not its forward (the collate gives them
        weight 0)."""
        views = {}  # (view, pair) -> (ids, prompt length, context key: the ids before the row predicting the query)
        for b, pair in enumerate(pairs):
            for v, (ids, n) in enumerate(pair.teacher_views):
                cache = pair.query_span and not self.live and self.context_cache_tokens > 0
                split = n - pair.query_span[0] - 1 if cache else 0
                views[(v, b)] = (ids, n, tuple(ids[:split]) if split >= MIN_SHARED_PREFIX else ())
        uses = Counter(key for _, _, key in views.values())
        groups: dict[tuple, list] = {}
        for (v, b), (_, _, key) in views.items():
            shared = bool(key) and (uses[key] > 1 or key in self.contexts)
            groups.setdefault((key, -1) if shared else ((), v), []).append((v, b))
        states = {}  # (view, pair) -> (final hidden states of what follows the context, context length)
        device = next(self.model.parameters()).device
        with self._weights():
            for (key, _), members in groups.items():
                ids, mask = (t.to(device) for t in pad_right([views[m][0][len(key):] for m in members], 0))
                final, _ = decoder_states(self.model, ids, mask, prefix=self._context_kv(key) if key else None)
                states.update({m: (final[row], len(key)) for row, m in enumerate(members)})
        n_views = max(len(p.teacher_views) for p in pairs)
        completion, query = [[] for _ in range(n_views)], [[] for _ in range(n_views)]
        for b, pair in enumerate(pairs):
            for v in range(n_views):
                own = (v, b) if v < len(pair.teacher_views) else (0, b)
                (final, offset), n = states[own], views[own][1]
                completion[v].append(final[n - 1 + skip_first - offset:n - 1 + pair.completion_len - offset])
                if pair.query_span:
                    back, length = pair.query_span
                    query[v].append(final[n - back - 1 - offset:n - back - 1 + length - offset])
        located = [(b, p) for b, p in enumerate(pairs) if p.query_span]
        labels = [p.teacher_ids[p.teacher_prompt_len - p.query_span[0]:][:p.query_span[1]] for _, p in located]
        return ViewRows([torch.cat(rows) for rows in completion],
                        [torch.cat(rows) for rows in query] if located else None,
                        torch.tensor([t for ids in labels for t in ids], dtype=torch.long, device=device),
                        torch.tensor([b for (b, _), ids in zip(located, labels) for _ in ids], dtype=torch.long,
                                     device=device))


# A row joins the current length group while its length is at least this share of the group's longest row.
LENGTH_GROUP_SHARE = 0.75


def length_groups(lengths: list[int], share: float = LENGTH_GROUP_SHARE) -> list[list[int]]:
    """Row indices grouped by length, longest first: each group is padded only to its own longest row."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and lengths[i] >= share * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def states_by_length(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     prefix: PrefixKV | None = None) -> torch.Tensor:
    """Final hidden states of right-padded rows, computed in groups of similar length (after `prefix`, if given).

    With a context of its own per row, the rows' lengths differ by their contexts: one padded forward would run every
    row to the longest one. The output keeps the batch's shape; the positions past a group's width are zeros, never
    read (the loss picks completion rows only)."""
    lengths = attention_mask.sum(1).tolist()
    groups = length_groups(lengths)
    if len(groups) == 1:
        return decoder_states(model, input_ids, attention_mask, prefix=prefix)[0]
    out = None
    for rows in groups:
        width = lengths[rows[0]]
        index = torch.tensor(rows, device=input_ids.device)
        final = decoder_states(model, input_ids[index, :width], attention_mask[index, :width], prefix=prefix)[0]
        if out is None:
            out = final.new_zeros(input_ids.shape[0], input_ids.shape[1], final.shape[-1])
        out[index, :width] = final
    return out


@dataclass
class ViewRows:
    """Teacher hidden states of an ensemble's rows, per view (N × H each, in batch row order), and of the rows that
    predict each located query token (Q × H each, or None when no pair located its query), with those tokens and
    the pair each belongs to."""

    completion: list[torch.Tensor]
    query: list[torch.Tensor] | None
    query_labels: torch.Tensor
    query_pair: torch.Tensor
