"""Before/after evaluation: base without context, teacher with context, student without context; retention."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ctxdistill.generation import generate
from ctxdistill.losses import collate_pairs
from ctxdistill.objectives import forward_kl
from ctxdistill.pairs import Context, assistant_header, build_pair, render_prompt
from ctxdistill.teacher import final_hidden, output_head


def contains_any(answer: str, accepted: list[str]) -> bool:
    text = answer.lower()
    return any(a.lower() in text for a in accepted)


def _adapter(model, enabled: bool):
    if not enabled and hasattr(model, "disable_adapter"):
        return model.disable_adapter()
    return nullcontext()


def answer_ids(model, tokenizer, questions, context: Context | None, adapter: bool, max_new_tokens: int):
    prompts = [render_prompt(tokenizer, q, context) for q in questions]
    with _adapter(model, adapter):
        return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0,
                        desc="answering", show_progress=False)


def answers(model, tokenizer, questions, context=None, adapter=True, max_new_tokens=48) -> list[str]:
    ids = answer_ids(model, tokenizer, questions, context, adapter, max_new_tokens)
    return [tokenizer.decode(c, skip_special_tokens=True).strip() for c in ids]


@torch.no_grad()
def mean_kl_to_teacher(model, tokenizer, context: Context, questions, completions,
                       batch_size: int = 16) -> dict[str, float]:
    """Mean per-token KL(teacher with context ‖ model without it) on the given completion ids, for the base
    (adapter off) and the student (adapter on); the teacher pass is shared by both."""
    header = assistant_header(tokenizer)
    pairs = [build_pair(render_prompt(tokenizer, q, context), render_prompt(tokenizer, q), y, header)
             for q, y in zip(questions, completions) if y]
    device = next(model.parameters()).device
    head = output_head(model)
    totals, tokens = {"base": 0.0, "student": 0.0}, 0
    for start in range(0, len(pairs), batch_size):
        batch = collate_pairs(pairs[start:start + batch_size], tokenizer.pad_token_id).to(device)
        with _adapter(model, False):
            t_h = final_hidden(model, batch.teacher_ids, batch.teacher_mask)[batch.teacher_rows]
        for name, adapter in (("base", False), ("student", True)):
            with _adapter(model, adapter):
                s_h = final_hidden(model, batch.student_ids, batch.student_mask)[batch.student_rows]
            totals[name] += float(forward_kl(s_h, head, t_h, head))
        tokens += len(batch.labels)
    return {name: total / max(tokens, 1) for name, total in totals.items()}


def evaluate(model, tokenizer, context: Context, qa: list[dict], retention: list[dict] | None = None,
             max_new_tokens: int = 48) -> dict:
    """`model` is a PEFT model: the base and teacher views switch its adapter off."""
    questions = [x["q"] for x in qa]
    teacher_ids = answer_ids(model, tokenizer, questions, context, False, max_new_tokens)
    rows = {
        "base": answers(model, tokenizer, questions, None, False, max_new_tokens),
        "teacher": [tokenizer.decode(c, skip_special_tokens=True).strip() for c in teacher_ids],
        "student": answers(model, tokenizer, questions, None, True, max_new_tokens),
    }
    result = {"n": len(qa), "questions": questions, "answers": rows}
    result["accuracy"] = {k: sum(contains_any(a, x["a"]) for a, x in zip(v, qa)) for k, v in rows.items()}
    result["kl_to_teacher"] = {"teacher": 0.0, **mean_kl_to_teacher(model, tokenizer, context, questions,
                                                                       teacher_ids)}
    if retention:
        rq = [x["q"] for x in retention]
        ret = {"base": answers(model, tokenizer, rq, None, False, max_new_tokens),
               "student": answers(model, tokenizer, rq, None, True, max_new_tokens)}
        result["retention"] = {
            "n": len(retention), "questions": rq, "answers": ret,
            "accuracy": {k: sum(contains_any(a, x["a"]) for a, x in zip(v, retention)) for k, v in ret.items()},
        }
    return result


def results_table(result: dict) -> str:
    n, acc, kl = result["n"], result["accuracy"], result["kl_to_teacher"]
    lines = ["| model | context shown | accuracy | KL(teacher ‖ model) per token |", "|---|---|---|---|",
             f"| base | no | {acc['base']}/{n} | {kl['base']:.3f} |",
             f"| teacher (base + context) | yes | {acc['teacher']}/{n} | 0 |",
             f"| student (distilled) | no | {acc['student']}/{n} | {kl['student']:.3f} |"]
    if "retention" in result:
        r = result["retention"]
        lines += ["", "| retention (general questions, no context) | accuracy |", "|---|---|",
                  f"| base | {r['accuracy']['base']}/{r['n']} |", f"| student | {r['accuracy']['student']}/{r['n']} |"]
    return "\n".join(lines)


def answers_table(result: dict) -> str:
    clean = lambda s: s.replace("|", "\\|").replace("\n", " ")[:160]  # noqa: E731
    lines = ["| question | base | teacher | student |", "|---|---|---|---|"]
    for i, q in enumerate(result["questions"]):
        a = result["answers"]
        lines.append(f"| {clean(q)} | {clean(a['base'][i])} | {clean(a['teacher'][i])} | {clean(a['student'][i])} |")
    return "\n".join(lines)
