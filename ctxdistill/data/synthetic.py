"""Synthetic data about a chunk: the model, with the chunk in context, writes summaries and questions, then answers
its own questions with the chunk still in context (Deep Context Distillation's data).

Each chunk's prompts share the chunk's KV cache (encoded once); samples are deduplicated; the rows of a chunk are
cached on disk under a hash of everything that made them, so a re-run (or a baseline on the same documents) with
the same inputs does not generate again."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ctxdistill.core.files import atomic_write_json
from ctxdistill.core.forward import MIN_SHARED_PREFIX, encode_prefix, shared_prefix_len
from ctxdistill.core.generation import generate
from ctxdistill.core.pairs import Context, render_prompt
from ctxdistill.data.chunks import Chunk


@dataclass(frozen=True)
class SynthSettings:
    summary_prompts: tuple[str, ...]
    summaries_per_prompt: int
    question_prompt: str
    questions_per_chunk: int
    answers_per_question: int
    temperature: float
    max_new_tokens: int  # summaries; questions and answers get half
    seed: int
    batch_size: int = 64


def clean_question(text: str) -> str:
    """The question of a sample such as "Question: Who ...?\\n\\nAnswer: ...", or "" if there is none."""
    text = re.split(r"\n\s*(?:answer|a)\s*[:)]|\banswer\s*:", text.strip(), maxsplit=1, flags=re.I)[0]
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = re.sub(r"^\s*(?:[-*•]|\d+[.)]|question\s*\d*\s*:|q\s*:)\s*", "", line, flags=re.I).strip().strip('"“”')
    if "?" in line:
        line = line[: line.index("?") + 1]
    return line if 8 <= len(line) <= 200 and line.endswith("?") else ""


_POINTS_AWAY = re.compile(r"\b(?:document|passage|text above|the above|this text)\b", re.I)
_WORD = re.compile(r"[\w-]+")


_FUNCTION_WORDS = set("""the a an and but or if in on at to of for from by with as is are was were be it its this that
these those there here each every some all any no not one two what who when where which why how he she they we you
i his her their our your my also then than so such after before while during since until about over under""".split())


def names_in(text: str) -> set[str]:
    """Lower-cased words the text only ever writes capitalized (less function words): its names."""
    words = _WORD.findall(text)
    lower = {w for w in words if w.islower()}
    return {w.lower() for w in words if w[0].isupper() and len(w) > 2 and w.lower() not in lower
            and w.lower() not in _FUNCTION_WORDS}


def about_the_chunk(question: str, chunk_text: str) -> bool:
    """A question the student can learn from without the chunk: it does not point at "the document", and it names
    something the chunk names, so "What is the village's capital?" — which would teach the module to answer *any*
    question about capitals with this chunk — is dropped. A chunk without names keeps every question."""
    if _POINTS_AWAY.search(question):
        return False
    names = names_in(chunk_text)
    return not names or bool(names & {w.lower() for w in _WORD.findall(question)})


def _norm(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


VERSION = 2  # bump when the way rows are made changes, so old cached rows are not reused


def _cache_key(model_id: str, chunk: Chunk, settings: SynthSettings) -> str:
    blob = json.dumps([VERSION, model_id, chunk.text, asdict(settings)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _sample(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, temperature: float, seed: int,
            batch_size: int, backend=None) -> list[list[int]]:
    if backend is not None:  # generation_backend=llamacpp (core.llamacpp): it shares the chunk's prefix itself
        return backend.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                                batch_size=batch_size, seed=seed, show_progress=False)
    shared = shared_prefix_len(prompts, [len(p) for p in prompts])
    prefix = encode_prefix(model, prompts[0][:shared]) if shared >= MIN_SHARED_PREFIX else None  # the chunk, encoded once
    return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                    batch_size=batch_size, seed=seed, show_progress=False, prefix=prefix)


def synthesize_chunk(model, tokenizer, chunk: Chunk, s: SynthSettings, backend=None) -> list[dict]:
    """Rows {"chunk", "kind": summary|qa, "prompt" (the student's user turn), "completion_ids", "text"}."""
    ctx = Context(chunk.text, "document")
    rows, seen = [], set()

    def keep(kind: str, prompt: str, ids: list[int]):
        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
        key = (prompt, _norm(text))
        if text and key not in seen:
            seen.add(key)
            rows.append({"chunk": chunk.key, "kind": kind, "prompt": prompt, "completion_ids": ids, "text": text})

    jobs = [p for p in s.summary_prompts for _ in range(s.summaries_per_prompt)]
    if jobs:
        outs = _sample(model, tokenizer, [render_prompt(tokenizer, p, ctx) for p in jobs], s.max_new_tokens,
                       s.temperature, s.seed, s.batch_size, backend)
        for p, ids in zip(jobs, outs):
            keep("summary", p, ids)
    if s.questions_per_chunk and s.answers_per_question:
        asked = [render_prompt(tokenizer, s.question_prompt, ctx)] * s.questions_per_chunk
        questions = {}
        for ids in _sample(model, tokenizer, asked, max(16, s.max_new_tokens // 2), s.temperature, s.seed + 1,
                           s.batch_size, backend):
            q = clean_question(tokenizer.decode(ids, skip_special_tokens=True))
            if q and about_the_chunk(q, chunk.text):
                questions.setdefault(_norm(q), q)
        jobs = [q for q in questions.values() for _ in range(s.answers_per_question)]
        if jobs:
            # The answer is the teacher's own, with the chunk in context: sampled when several are asked for.
            temperature = s.temperature if s.answers_per_question > 1 else 0.0
            outs = _sample(model, tokenizer, [render_prompt(tokenizer, q, ctx) for q in jobs],
                           max(16, s.max_new_tokens // 2), temperature, s.seed + 2, s.batch_size, backend)
            for q, ids in zip(jobs, outs):
                keep("qa", q, ids)
    return rows


def synthesize(model, tokenizer, chunks: list[Chunk], settings: SynthSettings, cache: Path, model_id: str,
               backend=None) -> list[dict]:
    """All chunks' rows, from the cache where it has them; progress over chunks with rate and ETA. `backend`: a
    generation backend to sample with instead of the torch loop (core.generation.make_backend)."""
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for chunk in tqdm(chunks, desc="synthesizing summaries and QA", unit="chunk", dynamic_ncols=True):
        path = cache / f"{_cache_key(model_id, chunk, settings)}.json"
        if path.exists():
            rows += json.loads(path.read_text(encoding="utf-8"))
            continue
        made = synthesize_chunk(model, tokenizer, chunk, settings, backend)
        atomic_write_json(path, made)
        rows += made
    return rows
