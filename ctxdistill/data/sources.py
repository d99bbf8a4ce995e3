"""What the teacher is shown: context sources for the offline recipe.

A source is one `--context` file (split into parts when it does not fit the model window) or a pool of few-shot
examples (`--examples`), from which each query draws its own subset. A source gives, per query, the contexts the
teacher sees: the one it samples under first, then the others whose distributions are averaged with it.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ctxdistill import CtxDistillError
from ctxdistill.core.pairs import Context, render_prompt
from ctxdistill.data.inputs import read_examples


@dataclass
class Source:
    name: str
    parts: list[Context] = field(default_factory=list)  # a context, or the parts of one too long for the window
    prompts: list[str] | None = None  # this source's own training queries ("prompts"/"train_prompts" in its file)
    qa: list[dict] | None = None  # this source's own eval questions ("eval" in its file)
    examples: list[dict] | None = None  # a few-shot pool: {"input", "output"}
    num_examples: int = 0
    kind: str = "prefix"

    @property
    def text(self) -> str:
        """The whole context, for query synthesis and the report."""
        if self.examples is not None:
            return render_examples(self.examples[: self.num_examples])
        return "\n\n".join(p.text for p in self.parts)

    def views(self, rng: random.Random, example_sets: int, index: int) -> list[Context]:
        """The teacher's contexts for one query: the sampling one first."""
        if self.examples is None:
            first = index % len(self.parts)  # queries spread over the parts of a split context
            return self.parts[first:] + self.parts[:first]
        k = min(self.num_examples, len(self.examples))
        return [Context(render_examples(rng.sample(self.examples, k)), self.kind) for _ in range(example_sets)]

    def eval_context(self) -> Context:
        return self.parts[0] if self.examples is None else Context(self.text, self.kind)


def render_examples(examples: list[dict]) -> str:
    shots = "\n\n".join(f"Input: {e['input']}\nOutput: {e['output']}" for e in examples)
    return "Here are examples of the task, each an input and its output:\n\n" + shots


def split_to_fit(text: str, tokenizer, budget: int) -> list[str]:
    """Cut `text` into consecutive parts of at most `budget` tokens, at paragraph, line or sentence ends if possible."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= budget:
        return [text]
    parts, start = [], 0
    while start < len(ids):
        end = min(start + budget, len(ids))
        piece = tokenizer.decode(ids[start:end])
        if end < len(ids):
            for mark in ("\n\n", "\n", ". "):
                cut = piece.rfind(mark)
                if cut > len(piece) // 2:
                    piece = piece[: cut + len(mark)]
                    break
            end = start + len(tokenizer(piece, add_special_tokens=False)["input_ids"])
            end = max(end, start + 1)
        parts.append(piece.strip())
        start = end
    return [p for p in parts if p]


def context_source(name: str, data: dict, kind: str, tokenizer, window: int | None, reserve: int) -> Source:
    """A --context file as a source; split into parts (with a warning) when it does not fit the window."""
    text = data["context"]
    prompts = data.get("prompts", data.get("train_prompts"))
    if prompts is not None and not (isinstance(prompts, list) and all(isinstance(q, str) for q in prompts)):
        raise CtxDistillError(f"{name}: 'prompts' must be a list of strings.")
    source = Source(name, [Context(text, kind)], prompts=prompts, qa=data.get("eval"), kind=kind)
    if window:
        overhead = len(render_prompt(tokenizer, "x", Context(".", kind)))
        budget = window - overhead - reserve
        if budget < 32:
            raise CtxDistillError(f"The model window ({window} tokens) leaves no room for a context after the query "
                                  f"and completion ({reserve} tokens). Lower max_new_tokens.")
        if len(render_prompt(tokenizer, "x", Context(text, kind))) + reserve > window:
            pieces = split_to_fit(text, tokenizer, budget)
            warnings.warn(f"{name}: the context does not fit the model window ({window} tokens) with room for "
                          f"queries and completions, so it was split into {len(pieces)} parts that are internalized "
                          "together (their teacher distributions are averaged).", stacklevel=2)
            source.parts = [Context(p, kind) for p in pieces]
    return source


def examples_source(path, num_examples: int, kind: str, columns=None) -> Source:
    examples = read_examples(path, columns)
    return Source(Path(path).name, [], examples=examples, num_examples=num_examples, kind=kind)
