"""Supervised fine-tuning: the model learns given answers, on the same loop, budget, report and resume as every recipe.

1. --data: a .jsonl of {"input", "output"} (a user turn and its answer) or of Hugging Face chats
   {"messages": [{"role", "content"}, ...]}, where every assistant turn is an answer to learn;
2. each answer becomes one pair: the chat up to that turn (rendered with the chat template, ending in the assistant
   header) and the answer's tokens with the template's end of turn. Only the answer tokens carry the loss;
3. LoRA (default) or full fine-tuning, next-token loss (the `sft` objective, no teacher);
4. --eval (the same shape): exact match of the greedy answer to the last assistant turn, before and after;
5. adapter (or model), manifest and report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ctxdistill import CtxDistillError
from ctxdistill.config import SftConfig
from ctxdistill.core.files import read_jsonl
from ctxdistill.core.generation import chosen_engine, resolve_backend
from ctxdistill.core.losses import DistillLoss, collate_pairs
from ctxdistill.core.models import enable_gradient_checkpointing, load_adapter
from ctxdistill.core.objectives import Objective
from ctxdistill.core.pairs import Pair, assistant_header, build_pair, render_prompt
from ctxdistill.core.tracking import end_trackers
from ctxdistill.core.training import train
from ctxdistill.eval.evaluation import greedy_ids
from ctxdistill.eval.reports import planned_note, write_report
from ctxdistill.recipes.artifacts import save_trained, write_manifest
from ctxdistill.recipes.base import Recipe, RunResult
from ctxdistill.recipes.common import (budget_deadline, check_data_inputs, fingerprint, main_process_writes,
                                       make_student, model_window, open_run, train_settings,
                                       training_fingerprint_config)

SHAPE = '{"input": ..., "output": ...} or {"messages": [{"role": ..., "content": ...}, ...]} per line'
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Example:
    """One chat and the answer to learn after it: `prompt` is a list of messages ending with the user's turn."""

    prompt: list[dict]
    answer: str


def _messages(row, where: str) -> list[dict]:
    """A row as chat messages, checked: roles known, contents strings, at least one assistant turn after a user."""
    if isinstance(row, dict) and "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise CtxDistillError(f"{where}: \"messages\" must be a non-empty list of {{\"role\", \"content\"}}.")
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise CtxDistillError(f"{where}: each message needs \"role\" (one of {', '.join(ROLES)}) and a string "
                                      f"\"content\", got {str(m)[:100]}.")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if isinstance(row, dict) and isinstance(row.get("input"), str) and isinstance(row.get("output"), str):
        return [{"role": "user", "content": row["input"]}, {"role": "assistant", "content": row["output"]}]
    raise CtxDistillError(f"{where}: expected {SHAPE}; got {str(row)[:100]}.")


def examples_of(row, where: str) -> list[Example]:
    """One example per assistant turn of a row, each after the whole chat before it."""
    messages = _messages(row, where)
    found = [Example(messages[:i], m["content"]) for i, m in enumerate(messages)
             if m["role"] == "assistant" and i > 0 and messages[i - 1]["role"] == "user"]
    if not found:
        raise CtxDistillError(f"{where}: no assistant turn that answers a user turn; nothing to learn from it.")
    if any(not e.answer.strip() for e in found):
        raise CtxDistillError(f"{where}: an assistant turn is empty; write the answer or drop the row.")
    return found


def read_rows(path, flag: str) -> list[list[Example]]:
    """The examples of each row of a .jsonl file given to `flag`."""
    p = Path(path)
    if not p.is_file():
        raise CtxDistillError(f"{'SFT data' if flag == '--data' else 'Eval'} file not found: {p}. Check the path "
                              f"given to {flag} (a .jsonl file).")
    rows = read_jsonl(p, flag)
    if not rows:
        raise CtxDistillError(f"{p} holds no rows. Write one {SHAPE}.")
    return [examples_of(row, f"{p} row {n}") for n, row in enumerate(rows, 1)]


def read_eval(path) -> list[Example]:
    """Eval items: the last answer of each row, after the chat before it."""
    return [found[-1] for found in read_rows(path, "--eval")]


def end_of_turn(tokenizer) -> str:
    """The text the chat template writes after an assistant turn's content (e.g. "<|im_end|>\\n"): an answer is
    learnt with it, so the model learns to stop."""
    marker = "\u2063PONG\u2063"
    chat = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": marker}]
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    return text[text.index(marker) + len(marker):] if marker in text else (tokenizer.eos_token or "")


def make_pairs(tokenizer, examples: list[Example], window: int) -> list[Pair]:
    """Prompt ids (ending in the assistant header) + answer ids; the same ids in both views, no teacher."""
    header, end = assistant_header(tokenizer), end_of_turn(tokenizer)
    pairs = []
    for e in examples:
        prompt = render_prompt(tokenizer, e.prompt)
        answer = tokenizer(e.answer + end, add_special_tokens=False)["input_ids"]
        if len(prompt) + len(answer) > window:
            raise CtxDistillError(f"An example is {len(prompt) + len(answer)} tokens, longer than the window "
                                  f"({window}): {e.answer[:60]!r}. Shorten it, or raise max_seq_len.")
        pairs.append(build_pair(prompt, prompt, answer, header))
    return pairs


def normalized(text: str) -> str:
    return " ".join(text.split())


def exact_match(model, tokenizer, items: list[Example], max_new_tokens: int, batch_size: int = 32,
                backend=None) -> list[str]:
    """Greedy answers (what the model writes now: a PEFT model's active adapters on). `backend`: None, the torch
    loop; or an engine over `model`'s base, which is handed its one LoRA adapter (eval.evaluation.greedy_ids)."""
    prompts = [render_prompt(tokenizer, e.prompt) for e in items]
    ids = greedy_ids(model, tokenizer, prompts, True, max_new_tokens, backend, batch_size)
    return [tokenizer.decode(y, skip_special_tokens=True).strip() for y in ids]


def eval_engine(cfg: SftConfig, model, tokenizer, accelerator):
    """llama.cpp for the --eval answers, before and after, where generation_backend resolves to it; None: the torch
    loop. A full fine-tune changes the base weights the engine holds: its answers stay on torch, said once."""
    if cfg.finetune != "lora":
        if resolve_backend(cfg.generation_backend, cfg.model, accelerator.device) == "llamacpp":
            accelerator.print("generation_backend: llama.cpp holds the base and a LoRA adapter; a full fine-tune's "
                              "--eval answers are decoded by the torch loop.")
        return None
    engine = chosen_engine(cfg.generation_backend, model, tokenizer, base=cfg.model, device=accelerator.device,
                           outtype=cfg.llamacpp_outtype)
    if engine is not None:
        accelerator.print(f"--eval answers by llama.cpp ({cfg.llamacpp_outtype} GGUF of the base; "
                          f"generation_backend={cfg.generation_backend}).")
    return engine


def accuracy(answers: list[str], items: list[Example]) -> int:
    return sum(normalized(a) == normalized(e.answer) for a, e in zip(answers, items))


def run(cfg: SftConfig, out: str, resume: bool = False, *, data: str | None = None, eval_qa: str | None = None,
        init_adapter: str | None = None) -> RunResult | None:
    if not data:
        raise CtxDistillError(f"The sft recipe needs --data FILE.jsonl ({SHAPE}).")
    rows = read_rows(data, "--data")
    items = read_eval(eval_qa) if eval_qa else []
    if init_adapter and cfg.finetune != "lora":
        raise CtxDistillError("--init-adapter continues a LoRA adapter; it needs finetune=lora.")
    t_start, out_dir = time.time(), Path(out)
    accelerator, model, tokenizer, base_path = open_run(cfg, out_dir, resume)
    examples = [e for found in rows for e in found]
    pairs = make_pairs(tokenizer, examples, model_window(model, cfg))
    if accelerator.is_main_process:  # what OUT/data was made from (digests: a dataset need not be copied there)
        check_data_inputs(out_dir, {"data_sha256": fingerprint([[(e.prompt, e.answer) for e in f] for f in rows]),
                                    "eval_sha256": fingerprint([(e.prompt, e.answer) for e in items]),
                                    "init_adapter": init_adapter, "model": cfg.model})
    student = load_adapter(model, init_adapter, trainable=True) if init_adapter else None
    engine = eval_engine(cfg, model, tokenizer, accelerator) if items and accelerator.is_main_process else None
    # Before training (the base, or the --init-adapter), kept for --resume: a full fine-tune has no "adapter off"
    # to measure it by afterwards.
    before = main_process_writes(accelerator, out_dir / "data" / "eval_before.jsonl", lambda: [
        {"answer": a} for a in (exact_match(student or model, tokenizer, items, cfg.eval_max_new_tokens,
                                            backend=engine) if items else [])])
    if student is None:
        student = make_student(model, cfg)
    elif cfg.gradient_checkpointing:
        enable_gradient_checkpointing(student)
    loss = DistillLoss(student, None, Objective({"sft": 1.0}), cfg.chunk_size)
    result = train(accelerator, loss, pairs, lambda b: collate_pairs(b, tokenizer.pad_token_id),
                   train_settings(cfg, budget_deadline(cfg, t_start)), out_dir / "checkpoint" / "state.pt",
                   resume=resume, fingerprint=fingerprint(training_fingerprint_config(cfg), len(pairs),
                                                          [p.student_ids for p in pairs], init_adapter))
    done = write_artifacts(cfg, out_dir, student, tokenizer, base_path, result, len(rows), pairs, items,
                           [r["answer"] for r in before], init_adapter, t_start, engine) \
        if accelerator.is_main_process else None
    if engine is not None:
        engine.close()
    accelerator.wait_for_everyone()
    end_trackers(accelerator)
    return done


def write_artifacts(cfg: SftConfig, out: Path, student, tokenizer, base_path: str, result, n_rows: int,
                    pairs: list[Pair], items: list[Example], before: list[str], init_adapter, t_start: float,
                    engine=None):
    student.eval()
    saved = save_trained(student, tokenizer, out, cfg.finetune)
    t_eval = time.time()
    after = exact_match(student, tokenizer, items, cfg.eval_max_new_tokens, backend=engine) if items else []
    evaluation = {"n": len(items), "exact_match": {"before": accuracy(before, items), "after": accuracy(after, items)},
                  "eval_backend": engine.name if engine is not None else "torch",
                  "answers": [{"expected": e.answer, "before": b, "after": a}
                              for e, b, a in zip(items, before, after)]} if items else None
    answer_tokens = sum(p.completion_len for p in pairs)
    metrics = {"train_steps": result.steps_done, "total_steps": result.total_steps,
               "planned_steps": result.planned_steps, "stopped_by_budget": result.stopped_by_budget,
               "final_loss": result.final_loss, "train_seconds": round(result.seconds, 1),
               "train_tokens_per_second": round(result.tokens_per_second, 1),
               "eval_seconds": round(time.time() - t_eval, 1), "total_seconds": round(time.time() - t_start, 1),
               "loss_history": result.loss_history, **({"evaluation": evaluation} if evaluation else {})}
    write_manifest(out, {"recipe": "sft", "base_model": cfg.model, "base_model_path": base_path,
                         "init_adapter": init_adapter, "config": cfg.to_dict(),
                         "data": {"rows": n_rows, "answers": len(pairs), "answer_tokens": answer_tokens},
                         "metrics": metrics})
    lines = [f"- base model: `{cfg.model}`" + (f"; initial adapter: `{init_adapter}`" if init_adapter else "")
             + f"; {cfg.finetune} fine-tuning",
             f"- data: {n_rows} rows, {len(pairs)} answers, {answer_tokens} answer tokens (the only ones with loss)",
             f"- training: {result.steps_done}/{result.total_steps} steps" + planned_note(metrics)
             + f", final loss {result.final_loss:.4f}, {result.tokens_per_second:.0f} tokens/s",
             f"- time: training {result.seconds:.0f}s, total {metrics['total_seconds']:.0f}s"]
    table = eval_table(evaluation) if evaluation else ""
    extra = ["## Exact match on --eval", "", table, "", "| expected | before | after |", "|---|---|---|",
             *[f"| {cell(x['expected'])} | {cell(x['before'])} | {cell(x['after'])} |"
               for x in evaluation["answers"]], ""] if evaluation else []
    write_report(out, "supervised fine-tuning", lines, None, result.loss_history, extra=extra)
    return RunResult(out, [saved.name, "manifest.json", "report.md"], metrics, table, NO_TABLE)


def cell(text: str) -> str:
    return text[:120].replace("|", "/").replace("\n", " ") or "(empty)"


def eval_table(evaluation: dict) -> str:
    n, em = evaluation["n"], evaluation["exact_match"]
    return "\n".join(["| model | exact match |", "|---|---|", f"| before | {em['before']}/{n} |",
                      f"| after | {em['after']}/{n} |"])


NO_TABLE = "(no eval items: pass --eval FILE.jsonl, shaped like --data)"
RECIPES = [Recipe("sft", "supervised fine-tuning on input/output pairs or chats (loss on the answers only)",
                  SftConfig, ("data", "eval_qa", "init_adapter"), run)]
