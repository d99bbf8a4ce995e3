"""Training queries from a bare context: probes of each statement, everyday requests, and model-written queries,
every one through the quality gate (query_gate.py).

A small model asked to "write a question a user might ask" writes role-play, fragments and other languages (the
default 135M model did, most of the time), so nothing it writes is used unchecked. The plan, for `n` queries:
1. probes: the context split into its statements; for each, questions the model writes about that one sentence
   (gated), topped up with deterministic templates, so every statement is exercised;
2. everyday requests (bundled, written for this project) at `everyday_fraction`: the teacher answers ordinary
   requests with the context in place, so its influence is learned everywhere, not only on questions about it
   (Askell et al. 2021 distil a system prompt this way);
3. the rest: queries the model writes shown the context and a few accepted ones (gated).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ctxdistill.core.generation import generate
from ctxdistill.core.pairs import render_prompt
from ctxdistill.data.query_gate import QueryGate, clean_query, context_probes, context_statements, language_profile

EVERYDAY_REQUESTS = Path(__file__).resolve().parent / "everyday_requests.json"

PROBE_TEMPLATE = ("Here is a sentence:\n\n{statement}\n\nWrite one question that a user could ask and that this "
                  "sentence answers. Reply with the question only.")
SYNTH_TEMPLATE = (
    "Here is some information an assistant has been given:\n\n{context}\n\n"
    "Here are examples of questions a user might ask that assistant:\n{examples}\n\n"
    "Write one new, different question a user might ask. Reply with the question only.")
SEED_QUERIES = ["Can you tell me about yourself?", "What should I know before we start?",
                "What is something you know that I might not?"]
RAW_EXAMPLES = 20  # model-written queries shown in the report with the gate's verdict

ORIGINS = ("probe (model)", "probe (template)", "everyday", "synthesized")
OTHER_ORIGINS = ("everyday", "synthesized")  # queries not about one statement of the context


def everyday_requests() -> list[str]:
    return json.loads(EVERYDAY_REQUESTS.read_text(encoding="utf-8"))["requests"]


@dataclass
class QueryPlan:
    """The accepted queries, each with its origin, and what the gate did."""

    queries: list[dict] = field(default_factory=list)  # {"prompt", "origin"}
    raw: list[dict] = field(default_factory=list)  # model-written, before the gate: {"text", "verdict"}
    gate: dict = field(default_factory=dict)


class _Writer:
    """Model-written candidates through the gate, keeping a sample of the raw outputs for the report."""

    def __init__(self, model, tokenizer, gate: QueryGate, plan: QueryPlan, temperature: float, batch_size: int,
                 backend=None):
        self.model, self.tokenizer, self.gate, self.plan = model, tokenizer, gate, plan
        self.temperature, self.batch_size, self.backend = temperature, batch_size, backend

    def write(self, instructions: list[str], seed: int, desc: str) -> list[str | None]:
        """One candidate per instruction: the accepted query, or None."""
        prompts = [render_prompt(self.tokenizer, text) for text in instructions]
        settings = dict(max_new_tokens=40, temperature=self.temperature, batch_size=self.batch_size, seed=seed,
                        desc=desc)
        outs = self.backend.generate(prompts, **settings) if self.backend is not None else \
            generate(self.model, self.tokenizer, prompts, **settings)
        kept = []
        for ids in outs:
            text = clean_query(self.tokenizer.decode(ids, skip_special_tokens=True))
            verdict = self.gate.verdict(text)
            accepted = verdict is None
            if len(self.plan.raw) < RAW_EXAMPLES:
                self.plan.raw.append({"text": text, "verdict": verdict or "kept"})
            kept.append(text if accepted else None)
        return kept


def probe_queries(writer: _Writer, context_text: str, budget: int, per_statement: int, seed: int) -> list[dict]:
    """Up to `per_statement` probes of each of the context's statements, taken round-robin over the statements so a
    budget smaller than the total still covers every statement. Templates first: they see the whole context
    (`context_probes`: "Mira lives in X" after "The assistant is called Mira" is asked as "Where do you live?"),
    and measured on the default 135M model, its own probe questions were off-topic 6 times in 7 even after the
    gate; the model writes only the probes the templates leave missing."""
    statements = context_statements(context_text)
    if not statements or budget <= 0 or per_statement <= 0:
        return []
    per = [[] for _ in statements]
    for i, templates in enumerate(context_probes(context_text)):
        for q in templates:
            if len(per[i]) < per_statement and writer.gate.offer(q):
                per[i].append({"prompt": q, "origin": "probe (template)"})
    # The slots left empty, in the order the round-robin fills them, only as many as the budget can still use.
    missing = [i for rnd in range(per_statement) for i, rows in enumerate(per) if rnd >= len(rows)]
    missing = missing[:max(0, budget - sum(len(rows) for rows in per))]
    if missing:
        written = writer.write([PROBE_TEMPLATE.format(statement=statements[i]) for i in missing], seed,
                               "writing probe questions")
        for i, q in zip(missing, written):
            if q:
                per[i].append({"prompt": q, "origin": "probe (model)"})
    chosen = [row for rnd in range(per_statement) for rows in per if rnd < len(rows) for row in [rows[rnd]]]
    return chosen[:budget]


def everyday_queries(gate: QueryGate, context_text: str, n: int, seed: int) -> list[dict]:
    """`n` bundled requests, for an English (or undetermined Latin-script) context: the pool is English."""
    if language_profile(context_text) not in ("latin:en", "latin"):
        return []
    pool = everyday_requests()
    picked = random.Random(seed).sample(pool, min(n, len(pool)))
    return [{"prompt": q, "origin": "everyday"} for q in picked if gate.offer(q)]


def synthesized_queries(writer: _Writer, context_text: str, n: int, shots: list[str], seed: int,
                        max_rounds: int = 4) -> list[dict]:
    rng, found = random.Random(seed), []
    pool = list(shots or SEED_QUERIES)
    for round_ in range(max_rounds):
        need = n - len(found)
        if need <= 0:
            break
        instructions = [SYNTH_TEMPLATE.format(context=context_text, examples="\n".join(
            f"- {q}" for q in rng.sample(pool, k=min(3, len(pool))))) for _ in range(max(need * 2, 8))]
        for q in writer.write(instructions, seed + round_, f"synthesizing queries (round {round_ + 1})"):
            if q and len(found) < n:
                found.append({"prompt": q, "origin": "synthesized"})
    return found


def plan_queries(model, tokenizer, context_text: str, n: int, *, everyday_fraction: float = 0.5,
                 synthesized_fraction: float = 0.1, probes_per_statement: int = 3, temperature: float = 1.0,
                 batch_size: int = 64, seed: int = 0, backend=None) -> QueryPlan:
    """`n` gated queries for a context given without prompts (see the module note): probes first, the synthesized
    share, then everyday requests fill up to `n` (with everyday_fraction=0, or for a context not in English, more
    synthesized queries);
    fewer than `n` only if the model cannot write enough that pass the gate. `backend`: a generation backend that
    samples as `model` (core.generation.make_backend); None: the torch loop."""
    plan, gate = QueryPlan(), QueryGate(context_text)
    writer = _Writer(model, tokenizer, gate, plan, temperature, batch_size, backend)
    n_everyday, n_synth = round(everyday_fraction * n), round(synthesized_fraction * n)
    plan.queries += probe_queries(writer, context_text, max(0, n - n_everyday - n_synth), probes_per_statement, seed)
    shots = [q["prompt"] for q in plan.queries][:8]
    plan.queries += synthesized_queries(writer, context_text, min(n_synth, n - len(plan.queries)), shots, seed + 1)
    if everyday_fraction > 0:
        plan.queries += everyday_queries(gate, context_text, n - len(plan.queries), seed)
    if len(plan.queries) < n:  # everyday requests off, or none for this language: the model writes the rest
        plan.queries += synthesized_queries(writer, context_text, n - len(plan.queries), shots, seed + 2)
    plan.gate = {**gate.summary(), "used": len(plan.queries)}  # passed the gate, and used (within the budgets)
    return plan


def query_origins(rows: list[dict]) -> dict[str, int]:
    """How many training queries came from each origin (given prompts, probes, everyday requests, synthesized)."""
    return dict(Counter(row.get("origin", "prompts") for row in rows))
