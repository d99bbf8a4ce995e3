"""Contexts → rendered teacher and student views that end in the same completion ids.

The one invariant of the project lives here: the completion `y` is tokenized once and appended to both the
teacher prompt render(c, x) and the student prompt render(x); every `Pair` checks that both views end in the same
ids, and `completion_logit_positions` is the one place that knows which position predicts `y[0]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, Union

import torch

from ctxdistill import CtxDistillError

CONTEXT_KINDS = ("system", "prefix", "document")
Messages = list[dict]
Query = Union[str, Messages]


@dataclass(frozen=True)
class Context:
    """Text to internalize and how it is shown to the teacher."""

    text: str
    kind: str = "system"

    def __post_init__(self):
        if self.kind not in CONTEXT_KINDS:
            raise CtxDistillError(f"Unknown context kind '{self.kind}'. Use one of: {', '.join(CONTEXT_KINDS)}.")
        if not self.text.strip():
            raise CtxDistillError("The context is empty. Put the text to internalize in the --context file.")


def as_messages(query: Query) -> Messages:
    """A query is a user string or a chat (list of {"role", "content"}) whose last turn is the user's."""
    if isinstance(query, str):
        return [{"role": "user", "content": query}]
    messages = [dict(m) for m in query]
    if not messages or messages[-1].get("role") != "user":
        raise CtxDistillError("A multi-turn query must be a list of messages ending with a 'user' turn.")
    return messages


def with_context(query: Query, context: Context | None) -> Messages:
    """The teacher's messages: the query with the context placed as its kind says."""
    messages = as_messages(query)
    if context is None:
        return messages
    if context.kind == "system":
        if messages[0]["role"] == "system":  # keep the user's own system message, after the context
            messages[0] = {"role": "system", "content": context.text + "\n\n" + messages[0]["content"]}
        else:
            messages.insert(0, {"role": "system", "content": context.text})
        return messages
    last = messages[-1]
    if context.kind == "prefix":
        content = context.text + "\n\n" + last["content"]
    else:  # document
        content = "Here is a document:\n\n" + context.text + "\n\n" + last["content"]
    messages[-1] = {"role": "user", "content": content}
    return messages


def render_prompt(tokenizer, query: Query, context: Context | None = None) -> list[int]:
    """Token ids of the chat-formatted prompt, ending with the assistant header that precedes the completion."""
    if not getattr(tokenizer, "chat_template", None):
        raise CtxDistillError("The tokenizer has no chat template; ctxdistill renders contexts with it. Use an "
                              "instruct/chat model or set tokenizer.chat_template.")
    text = tokenizer.apply_chat_template(with_context(query, context), tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def assistant_header(tokenizer) -> list[int]:
    """Ids the template adds for `add_generation_prompt`: every prompt must end with exactly these."""
    messages = [{"role": "user", "content": "ping"}]
    with_gen = render_prompt(tokenizer, messages)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    without = tokenizer(text, add_special_tokens=False)["input_ids"]
    if with_gen[: len(without)] != without or len(with_gen) == len(without):
        raise CtxDistillError("Could not find the assistant header in the chat template's generation prompt.")
    return with_gen[len(without):]


def check_tokenizers_match(teacher_tok, student_tok) -> None:
    """Teacher and student must share vocabulary, special tokens and chat template, else the KL is biased."""
    problems = []
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        problems.append("vocabularies differ")
    if teacher_tok.all_special_tokens != student_tok.all_special_tokens:
        problems.append(f"special tokens differ ({teacher_tok.all_special_tokens} vs {student_tok.all_special_tokens})")
    if getattr(teacher_tok, "chat_template", None) != getattr(student_tok, "chat_template", None):
        problems.append("chat templates differ")
    if problems:
        raise CtxDistillError("Teacher and student tokenizers do not match: " + "; ".join(problems) +
                              ". Use a teacher from the same model family (same tokenizer and chat template).")


def completion_logit_positions(prompt_len: int, completion_len: int) -> range:
    """Positions whose logits predict y[0], ..., y[n-1]: the last prompt position predicts y[0]."""
    if prompt_len < 1:
        raise ValueError("a prompt needs at least one token to predict the completion from")
    return range(prompt_len - 1, prompt_len - 1 + completion_len)


@dataclass
class Pair:
    """One (teacher view, student view) with the completion at the end of both.

    `more_teachers` are further teacher views (ids, prompt length) of the same completion under other contexts:
    the teacher distribution is then a mixture of all views (an ensemble, see DistillLoss). `query_span` = (back, length): the
    query's tokens sit `back` tokens before the end of every teacher prompt; p(query | view) weighs the views.
    An `anchor` pair is held to the base model on the student's own view (no context), whatever its teacher view:
    a retention anchor (DistillLoss swaps in the base's rows for its targets)."""

    teacher_ids: list[int]
    student_ids: list[int]
    teacher_prompt_len: int
    student_prompt_len: int
    more_teachers: list[tuple[list[int], int]] = field(default_factory=list)
    query_span: tuple[int, int] | None = None
    anchor: bool = False

    def __post_init__(self):
        completion = self.student_ids[self.student_prompt_len:]
        for ids, n in [(self.teacher_ids, self.teacher_prompt_len), *self.more_teachers]:
            if ids[n:] != completion:
                raise CtxDistillError("Internal error: teacher and student completions differ (invariant broken).")
        if self.completion_len < 1:
            raise CtxDistillError("A pair needs a non-empty completion.")

    @property
    def teacher_views(self) -> list[tuple[list[int], int]]:
        return [(self.teacher_ids, self.teacher_prompt_len), *self.more_teachers]

    @property
    def completion(self) -> list[int]:
        return self.student_ids[self.student_prompt_len:]

    @property
    def completion_len(self) -> int:
        return len(self.student_ids) - self.student_prompt_len


def build_pair(teacher_prompt: Sequence[int], student_prompt: Sequence[int], completion: Sequence[int],
               header: Sequence[int] | None = None, max_len: int | None = None, thought: Sequence[int] = (),
               more_teacher_prompts: Sequence[Sequence[int]] = (), query: Sequence[int] = ()) -> Pair:
    """Append the same completion ids to both prompts; check both prompts end in the assistant header.

    `thought`: the teacher's scratch-pad (its reasoning up to the answer delimiter), seen by the teacher only, between
    its prompt and the completion. `more_teacher_prompts`: the same query under other contexts (an ensemble).
    `query`: the query's own token ids; with several views they are located in the prompts (`Pair.query_span`)."""
    teacher_prompts = [list(teacher_prompt), *[list(p) for p in more_teacher_prompts]]
    if header is not None:
        n = len(header)
        if any(p[-n:] != list(header) for p in teacher_prompts) or list(student_prompt[-n:]) != list(header):
            raise CtxDistillError("Teacher and student prompts do not end in the same assistant header: they were "
                                  "rendered with different chat templates. Render both with one tokenizer.")
    completion, thought = list(completion), list(thought)
    views = [(p + thought + completion, len(p) + len(thought)) for p in teacher_prompts]
    span = query_span(teacher_prompts, list(query)) if query and len(teacher_prompts) > 1 else None
    if span is not None:
        span = (span[0] + len(thought), span[1])  # counted back from the end of prompt + scratch-pad
    pair = Pair(views[0][0], list(student_prompt) + completion, views[0][1], len(student_prompt), views[1:], span)
    longest = max(len(ids) for ids, _ in views)
    if max_len is not None and longest > max_len:
        raise CtxDistillError(f"Context + query + completion is {longest} tokens, longer than the model window "
                              f"({max_len}). Shorten the context or lower max_new_tokens.")
    return pair


def query_span(prompts: list[list[int]], query: list[int]) -> tuple[int, int] | None:
    """(tokens back from the prompt end, length) of the last occurrence of `query` in the first prompt, if every
    prompt holds it at the same distance from its end (the part after the contexts); else None."""
    first, n = prompts[0], len(query)
    for start in range(len(first) - n, 0, -1):
        if first[start:start + n] == query:
            back = len(first) - start
            same = all(len(p) - back > 0 and p[len(p) - back:len(p) - back + n] == query for p in prompts[1:])
            return (back, n) if same else None
    return None


def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def completion_rows(prompt_lens: list[int], completion_lens: list[int],
                    skip_first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch index, position) of every completion-predicting row of a right-padded batch, in completion order,
    leaving out the rows that predict the first `skip_first` completion tokens of each sequence."""
    b_idx, pos = [], []
    for b, (p, n) in enumerate(zip(prompt_lens, completion_lens)):
        positions = completion_logit_positions(p, n)[skip_first:]
        b_idx.extend([b] * len(positions))
        pos.extend(positions)
    return torch.tensor(b_idx, dtype=torch.long), torch.tensor(pos, dtype=torch.long)
