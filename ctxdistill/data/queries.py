"""Query synthesis: the model, shown the context and a few example queries, writes new ones (sampled, deduped)."""

from __future__ import annotations

import random
import re

from ctxdistill.core.generation import generate
from ctxdistill.core.pairs import render_prompt

SEED_QUERIES = [
    "Can you tell me about yourself?",
    "What should I know before we start?",
    "Summarize the most important points for me.",
    "How would you answer a question from a new user?",
    "What is something you know that I might not?",
]

SYNTH_TEMPLATE = (
    "Here is some information an assistant has been given:\n\n{context}\n\n"
    "Here are examples of questions a user might ask that assistant:\n{examples}\n\n"
    "Write one new, different question a user might ask. Reply with the question only."
)


def clean_query(text: str) -> str:
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"^\s*(?:[-*•]|\d+[.)]|question:|q:)\s*", "", line, flags=re.I)
    return line.strip().strip('"“”').strip()


def synthesize_queries(model, tokenizer, context_text: str, n: int, examples: list[str] | None = None,
                       temperature: float = 1.0, batch_size: int = 64, seed: int = 0, max_rounds: int = 6) -> list[str]:
    rng = random.Random(seed)
    pool = list(examples or SEED_QUERIES)
    found: dict[str, str] = {}
    seen = {q.lower() for q in pool}
    for round_ in range(max_rounds):
        need = n - len(found)
        if need <= 0:
            break
        prompts = []
        for _ in range(max(need * 2, 8)):  # oversample: duplicates and junk are dropped
            shots = rng.sample(pool + list(found.values()), k=min(3, len(pool) + len(found)))
            text = SYNTH_TEMPLATE.format(context=context_text, examples="\n".join(f"- {q}" for q in shots))
            prompts.append(render_prompt(tokenizer, text))
        outs = generate(model, tokenizer, prompts, max_new_tokens=48, temperature=temperature,
                        batch_size=batch_size, seed=seed + round_, desc=f"synthesizing queries (round {round_ + 1})")
        for ids in outs:
            q = clean_query(tokenizer.decode(ids, skip_special_tokens=True))
            key = re.sub(r"\W+", " ", q.lower()).strip()
            if 8 <= len(q) <= 200 and key and key not in seen:
                seen.add(key)
                found[key] = q
    return list(found.values())[:n]
