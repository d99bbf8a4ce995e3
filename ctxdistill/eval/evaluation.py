"""Before/after evaluation: base without context, teacher with context, student without context; retention.

The greedy answers are decoded by a generation backend (core/generation.py) when one is given: the llama.cpp
backend holds the base weights and, handed over with `use_lora`, the student's one LoRA adapter, so it answers as
the base (adapter off, with or without the context) and as a LoRA student. Rows it cannot hold (another teacher
model, an initial model, a fully fine-tuned or multi-adapter student) are answered by the torch loop, with a printed
notice; the result says which backend answered each row (`eval_backend`). Everything scored (KL) stays on torch.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ctxdistill import CtxDistillError
from ctxdistill.core.forward import final_hidden, output_head
from ctxdistill.core.generation import TorchBackend
from ctxdistill.core.losses import collate_pairs
from ctxdistill.core.objectives import forward_kl
from ctxdistill.core.pairs import assistant_header, build_pair, render_prompt


def contains_any(answer: str, accepted: list[str]) -> bool:
    text = answer.lower()
    return any(a.lower() in text for a in accepted)


def _adapter(model, enabled: bool):
    if not enabled and hasattr(model, "disable_adapter"):
        return model.disable_adapter()
    return nullcontext()


def _per_question(contexts, n: int) -> list:
    return list(contexts) if isinstance(contexts, (list, tuple)) else [contexts] * n


def one_lora_adapter(model) -> bool:
    """Whether `model` is a PEFT model answering with exactly one LoRA adapter: what an engine's `use_lora` holds."""
    config = getattr(model, "peft_config", None)
    if not config:
        return False
    active = getattr(model, "active_adapters", None)
    active = active() if callable(active) else active  # transformers' own PEFT integration has it as a method
    if not active or len(active) != 1 or active[0] not in config:
        return False
    return getattr(config[active[0]], "peft_type", None) == "LORA"  # PeftType is a str enum


def greedy_ids(model, tokenizer, prompts: list[list[int]], adapter: bool, max_new_tokens: int, backend=None,
               batch_size: int = 64):
    """Greedy completions of `model`, its adapter on or off. `backend`: None or a TorchBackend, the torch loop over
    `model`; an engine (llama.cpp) answers as the base (adapter off) or with `model`'s LoRA handed over, so the
    caller passes one only for a model of the engine's base, and with the adapter on only if one_lora_adapter."""
    settings = dict(max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size, desc="answering",
                    show_progress=False)
    if backend is None or backend.name == "torch":
        backend = backend or TorchBackend(model, tokenizer)
        with _adapter(model, adapter):
            return backend.generate(prompts, model=model, **settings)
    own_adapter = adapter and getattr(model, "peft_config", None)  # a plain model "with its adapter" is the base
    if own_adapter and not one_lora_adapter(model):
        raise CtxDistillError(f"The {backend.name} backend holds one LoRA adapter on the base; this model has other "
                              "adapters active. Answer it with the torch loop (backend=None).")
    backend.use_lora(model if own_adapter else None)
    return backend.generate(prompts, **settings)


def answer_ids(model, tokenizer, questions, context, adapter: bool, max_new_tokens: int, backend=None):
    """Greedy answers; `context` is one Context (or None) for all questions, or a list with one per question."""
    prompts = [render_prompt(tokenizer, q, c) for q, c in zip(questions, _per_question(context, len(questions)))]
    return greedy_ids(model, tokenizer, prompts, adapter, max_new_tokens, backend)


def answers(model, tokenizer, questions, context=None, adapter=True, max_new_tokens=48, backend=None) -> list[str]:
    ids = answer_ids(model, tokenizer, questions, context, adapter, max_new_tokens, backend)
    return [tokenizer.decode(c, skip_special_tokens=True).strip() for c in ids]


def row_backends(model, backend, teacher_model=None, initial_model=None) -> dict:
    """Who answers each row of `evaluate`: `backend` where it can hold the row's weights, else None (the torch loop).
    An engine holds the base and one LoRA adapter of `model`; a row it cannot hold is named in one printed line."""
    rows = {"base": backend, "teacher": backend if teacher_model is None else None,
            **({"initial": None} if initial_model is not None else {}),
            "student": backend if backend is None or backend.name == "torch" or one_lora_adapter(model) else None}
    if backend is not None and backend.name != "torch":
        why = {"teacher": "a teacher model of its own", "initial": "the model before this run",
               "student": "not one LoRA adapter on the base"}
        torch_rows = [f"{row} ({why[row]})" for row, chosen in rows.items() if chosen is None]
        if torch_rows:
            print(f"Evaluation: {backend.name} answers as the base and one LoRA student; "
                  f"{', '.join(torch_rows)} answered by the torch loop.", flush=True)
    return rows


def backend_names(rows: dict) -> dict[str, str]:
    """Each row's backend by name, for the result (numbers of different backends are not strictly comparable)."""
    return {row: chosen.name if chosen is not None else "torch" for row, chosen in rows.items()}


@torch.no_grad()
def mean_kl_to_teacher(model, tokenizer, context, questions, completions, batch_size: int = 16,
                       teacher_model=None, initial_model=None) -> dict[str, float]:
    """Mean per-token KL(teacher with context ‖ model without it) on the given completion ids, for the base
    (adapter off), the student (adapter on) and, if given, the initial model; one shared teacher pass.
    The teacher is `teacher_model` if given, else `model` with its adapter off."""
    header = assistant_header(tokenizer)
    pairs = [build_pair(render_prompt(tokenizer, q, c), render_prompt(tokenizer, q), y, header)
             for q, c, y in zip(questions, _per_question(context, len(questions)), completions) if y]
    device = next(model.parameters()).device
    scored = {"base": (model, False), "student": (model, True)}
    if initial_model is not None:
        scored["initial"] = (initial_model, True)
    totals, tokens = {name: 0.0 for name in scored}, 0
    for start in range(0, len(pairs), batch_size):
        batch = collate_pairs(pairs[start:start + batch_size], tokenizer.pad_token_id).to(device)
        t_model = teacher_model if teacher_model is not None else model
        with _adapter(t_model, teacher_model is not None):
            t_h = final_hidden(t_model, batch.teacher_ids, batch.teacher_mask)[batch.teacher_rows]
        for name, (m, adapter) in scored.items():
            with _adapter(m, adapter):
                s_h = final_hidden(m, batch.student_ids, batch.student_mask)[batch.student_rows]
            totals[name] += float(forward_kl(s_h, output_head(m), t_h, output_head(t_model)))
        tokens += len(batch.labels)
    return {name: total / max(tokens, 1) for name, total in totals.items()}


def evaluate(model, tokenizer, context, qa: list[dict], retention: list[dict] | None = None,
             max_new_tokens: int = 48, teacher_model=None, initial_model=None, backend=None) -> dict:
    """`model` is a PEFT model: the base view switches its adapter off; so does the teacher view unless
    `teacher_model` (a plain model, e.g. another teacher) is given. `context`: one Context or one per question.
    `initial_model`: the model before this run (e.g. an --init-adapter), shown as its own row. `backend`: who
    decodes the answers (None: the torch loop; an engine built on `model`'s base: see row_backends)."""
    questions = [x["q"] for x in qa]
    by = row_backends(model, backend, teacher_model, initial_model)
    t_model = teacher_model if teacher_model is not None else model
    teacher_ids = answer_ids(t_model, tokenizer, questions, context, teacher_model is not None, max_new_tokens,
                             by["teacher"])
    rows = {"base": answers(model, tokenizer, questions, None, False, max_new_tokens, by["base"]),
            "teacher": [tokenizer.decode(c, skip_special_tokens=True).strip() for c in teacher_ids]}
    if initial_model is not None:
        rows["initial"] = answers(initial_model, tokenizer, questions, None, True, max_new_tokens)
    rows["student"] = answers(model, tokenizer, questions, None, True, max_new_tokens, by["student"])
    result = {"n": len(qa), "questions": questions, "answers": rows,
              "teacher_label": "base + context" if teacher_model is None else "teacher model + context",
              "eval_backend": backend_names(by)}
    result["accuracy"] = {k: sum(contains_any(a, x["a"]) for a, x in zip(v, qa)) for k, v in rows.items()}
    result["kl_to_teacher"] = {"teacher": 0.0, **mean_kl_to_teacher(model, tokenizer, context, questions, teacher_ids,
                                                                       teacher_model=teacher_model,
                                                                       initial_model=initial_model)}
    if retention:
        # the base: the adapter switched off
        probe = DriftProbe(model, tokenizer, retention, max_new_tokens, backend=by["base"])
        ret, drift = {"base": probe.initial_answers}, {"base": 0.0}
        if initial_model is not None:
            kept = probe.measure(initial_model)
            ret["initial"], drift["initial"] = kept["answers"], kept["kl_to_initial"]
        kept = probe.measure(model, by["student"])
        ret["student"], drift["student"] = kept["answers"], kept["kl_to_initial"]
        result["retention"] = {"n": len(retention), "questions": [x["q"] for x in retention], "answers": ret,
                               "accuracy": {k: score(v, retention) for k, v in ret.items()},
                               "kl_to_base": drift}
    return result


def results_table(result: dict) -> str:
    n, acc, kl = result["n"], result["accuracy"], result["kl_to_teacher"]
    lines = ["| model | context shown | accuracy | KL(teacher ‖ model) per token |", "|---|---|---|---|",
             f"| base | no | {acc['base']}/{n} | {kl['base']:.3f} |",
             f"| teacher ({result.get('teacher_label', 'base + context')}) | yes | {acc['teacher']}/{n} | 0 |"]
    if "initial" in acc:
        lines.append(f"| initial (before this run) | no | {acc['initial']}/{n} | {kl['initial']:.3f} |")
    lines.append(f"| student (distilled) | no | {acc['student']}/{n} | {kl['student']:.3f} |")
    if "retention" in result:
        r = result["retention"]
        lines += ["", "| retention (general questions, no context) | accuracy | KL(base ‖ model) per token, on the "
                  "base's answers |", "|---|---|---|"]
        lines += [f"| {name} | {r['accuracy'][name]}/{r['n']} | "
                  + (f"{r['kl_to_base'][name]:.4f}" if name in r.get("kl_to_base", {}) else "-") + " |"
                  for name in r["accuracy"]]
    return "\n".join(lines)


def answers_table(result: dict, labels: dict[str, str] | None = None) -> str:
    """Every question with every row's answer; `labels` names the columns (default: the row keys)."""
    clean = lambda s: s.replace("|", "\\|").replace("\n", " ")[:160]  # noqa: E731
    names, labels = list(result["answers"]), labels or {}
    lines = ["| question | " + " | ".join(labels.get(k, k) for k in names) + " |", "|---" * (len(names) + 1) + "|"]
    for i, q in enumerate(result["questions"]):
        lines.append(f"| {clean(q)} | " + " | ".join(clean(result["answers"][k][i]) for k in names) + " |")
    return "\n".join(lines)


class DriftProbe:
    """Forgetting as numbers: accuracy on general questions, and the mean per-token KL(initial ‖ model) on the
    initial model's own greedy answers to them. The initial model's states at those rows and a copy of its output
    head are kept, so later models (fully fine-tuned ones too) are compared without keeping a second model."""

    def __init__(self, model, tokenizer, qa: list[dict], max_new_tokens: int = 48, batch_size: int = 16,
                 backend=None):
        """`backend`: who decodes the initial model's answers (`model` with its adapter off; see greedy_ids)."""
        import copy

        self.tokenizer, self.qa, self.max_new_tokens, self.batch_size = tokenizer, qa, max_new_tokens, batch_size
        questions = [x["q"] for x in qa]
        ids = answer_ids(model, tokenizer, questions, None, False, max_new_tokens, backend)
        self.initial_answers = [tokenizer.decode(c, skip_special_tokens=True).strip() for c in ids]
        header = assistant_header(tokenizer)
        self.pairs = [build_pair(render_prompt(tokenizer, q), render_prompt(tokenizer, q), y, header)
                      for q, y in zip(questions, ids) if y]
        with _adapter(model, False):
            self.states = [h.detach() for h in self._rows(model)]
            self.head = copy.deepcopy(output_head(model)).requires_grad_(False)

    @torch.no_grad()
    def _rows(self, model):
        device = next(model.parameters()).device
        for start in range(0, len(self.pairs), self.batch_size):
            batch = collate_pairs(self.pairs[start:start + self.batch_size], self.tokenizer.pad_token_id).to(device)
            yield final_hidden(model, batch.student_ids, batch.student_mask)[batch.student_rows]

    @torch.no_grad()
    def kl(self, model) -> float:
        total = sum(float(forward_kl(h, output_head(model), t, self.head)) for h, t in zip(self._rows(model),
                                                                                         self.states))
        return total / max(1, sum(p.completion_len for p in self.pairs))

    def measure(self, model, backend=None) -> dict:
        """{"accuracy", "n", "kl_to_initial", "answers"} of `model` (adapter on) on the probe questions; `backend`
        decodes the answers (see greedy_ids), the KL is the torch model's."""
        got = answers(model, self.tokenizer, [x["q"] for x in self.qa], None, True, self.max_new_tokens, backend)
        return {"accuracy": score(got, self.qa), "n": len(self.qa), "kl_to_initial": self.kl(model), "answers": got}


def score(got: list[str], qa: list[dict]) -> int:
    return sum(contains_any(a, x["a"]) for a, x in zip(got, qa))
