"""Snell, Klein, Zhong (2022), "Learning by Distilling Context", 8-digit addition: a scratch-pad internalized into
a direct answer, on the project's default model.

    python benchmarks/snell_addition.py --out runs/snell          # make bench-snell
    python benchmarks/snell_addition.py --out runs/snell-dev --split dev   # tuning: other problems, same phases

Phases, each kept under --out (a finished one is read back, an interrupted one resumes):
1. data/: the task, generated from fixed seeds: 500 scratch-pad training examples, fresh questions for the teacher to
   answer during distillation, the 200 held-out test problems (and a dev set with its own seed, for tuning);
2. teacher/: `sft` of a LoRA adapter on the 500 scratch-pad examples (the teacher's view: the context as system
   prompt, the question and the scratch-pad instruction);
3. student/: `offline` scratch-pad distillation with `--teacher-adapter teacher/adapter`: the teacher (base +
   that adapter) writes its scratch-pad and answer for each fresh question, the student sees the bare question and
   learns only the answer tokens: by default the teacher's answer as the target, as Snell et al. fine-tune the model
   to predict its own final answer (`--student-objective forward_kl`: the teacher's distribution there, reading
   its own scratch-pad; twice the cost of a step);
4. transfer/: Snell's "transfer" baseline: `sft` on the same 500 questions' direct answers;
5. eval_*.json: greedy answers on the held-out problems: the teacher with its scratch-pad, the base model answering
   directly (student before), the student after, the transfer baseline. Exact match of the sum.

The last line is machine-readable: `SNELL teacher=<%> before=<%> after=<%> transfer=<%>`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

from phases import load_timings, load_with_adapters, run_phase, save_timings, write_lines

# the scratch-pad the teacher learns: one line per column, right to left, "x+y+carry=two-digit sum", then the answer
CONTEXT = "You are a careful calculator."
INSTRUCTION = "Work it out column by column from the right, then write 'Answer:' and the sum."
DELIMITER = "Answer:"
PAPER = {"teacher": 93.0, "before": 0.0, "after": 94.7, "transfer": 72.0}  # T5-small, Snell et al. 2022, Table 1
SEEDS = {"train": 1, "distill": 2, "test": 3, "dev": 4}
DIGITS = 8  # --quick: 2 (a tiny random model learns the format of a short scratch-pad in a few steps)


def question(a: int, b: int) -> str:
    return f"What is {a} + {b}?"


def scratchpad(a: int, b: int, digits: int = DIGITS) -> str:
    """Each line restates the two digits it adds and the carry, so what the model copies sits right beside it; every
    line has the same width, so the sum's digits sit at fixed offsets when the answer is written."""
    xs, ys, carry, lines, sums = str(a).zfill(digits)[::-1], str(b).zfill(digits)[::-1], 0, [], []
    for x, y in zip(xs, ys):
        total = int(x) + int(y) + carry
        lines.append(f"{x}+{y}+{carry}={total:02d}")
        sums.append(str(total % 10))
        carry = total // 10
    answer = (str(carry) if carry else "") + "".join(reversed(sums))
    assert int(answer) == a + b
    return "\n".join(lines) + f"\n{DELIMITER} {answer}"


def problems(split: str, n: int, digits: int = DIGITS) -> list[tuple[int, int]]:
    """n distinct problems of `split`, from its own seed (the held-out ones are never trained on)."""
    rng, seen = random.Random(SEEDS[split]), set()
    low, high = 10 ** (digits - 1), 10 ** digits - 1
    while len(seen) < n:
        seen.add((rng.randint(low, high), rng.randint(low, high)))
    return sorted(seen, key=lambda p: rng.random())


def teacher_messages(a: int, b: int) -> list[dict]:
    """The teacher's view, exactly as the offline recipe renders it: the context as system prompt, the question with
    the scratch-pad instruction after it (offline.teacher_query)."""
    return [{"role": "system", "content": CONTEXT}, {"role": "user", "content": f"{question(a, b)}\n\n{INSTRUCTION}"}]


def make_data(out: Path, sizes: dict) -> dict:
    """The task's files under OUT/data (the same content for the same sizes: every phase's cache stays valid)."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    digits = sizes["digits"]
    train, fresh = problems("train", sizes["train"], digits), problems("distill", sizes["distill"], digits)
    write_lines(data / "teacher_train.jsonl", [json.dumps({"messages": teacher_messages(a, b) + [
        {"role": "assistant", "content": scratchpad(a, b, digits)}]}) for a, b in train])
    write_lines(data / "transfer_train.jsonl", [json.dumps({"input": question(a, b), "output": str(a + b)})
                                                for a, b in train])
    write_lines(data / "distill_questions.txt", [question(a, b) for a, b in fresh])
    write_lines(data / "context.txt", [CONTEXT])
    return {name: data / f for name, f in [("teacher", "teacher_train.jsonl"), ("transfer", "transfer_train.jsonl"),
                                            ("questions", "distill_questions.txt"), ("context", "context.txt")]}


def answer_of(text: str, scratch: bool) -> str | None:
    """The sum a response gives: after the last delimiter with a scratch-pad, else its first number."""
    if scratch:
        if DELIMITER not in text:
            return None
        text = text.rsplit(DELIMITER, 1)[1]
    found = re.search(r"\d+", text.replace(",", ""))
    return found.group(0) if found else None


class Evaluator:
    """The base model once, with each adapter loaded next to the others by name (switched, never copied)."""

    def __init__(self, model_name: str, adapters: dict[str, Path], batch_size: int):
        self.model, self.tokenizer, self.names = load_with_adapters(model_name, adapters)
        self.batch_size = batch_size

    def answers(self, adapter: str | None, prompts: list, max_new_tokens: int) -> list[list[int]]:
        from contextlib import nullcontext

        from ctxdistill.core.generation import generate
        from ctxdistill.core.pairs import render_prompt

        if adapter is not None:
            self.model.set_adapter(self.names[adapter])
        ids = [render_prompt(self.tokenizer, p) for p in prompts]
        with self.model.disable_adapter() if adapter is None else nullcontext():
            return generate(self.model, self.tokenizer, ids, max_new_tokens=max_new_tokens, temperature=0.0,
                            batch_size=self.batch_size, desc=f"eval {adapter or 'base'}")


def evaluate_row(out: Path, row: str, evaluator, adapter: str | None, scratch: bool, test, max_new_tokens: int,
                 tag: str, timings: dict) -> dict:
    """Exact match of one row on the held-out problems, kept in OUT/eval_<tag>_<row>.json."""
    from ctxdistill.core.files import atomic_write_json

    path = out / f"eval_{tag}_{row}.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    t0 = time.time()
    prompts = [teacher_messages(a, b) if scratch else question(a, b) for a, b in test]
    ids = evaluator().answers(adapter, prompts, max_new_tokens)
    texts = [evaluator().tokenizer.decode(y, skip_special_tokens=True) for y in ids]
    correct = [answer_of(t, scratch) == str(a + b) for t, (a, b) in zip(texts, test)]
    result = {"row": row, "n": len(test), "correct": sum(correct), "accuracy": round(100 * sum(correct) / len(test), 1),
              "tokens_per_answer": round(sum(len(y) for y in ids) / len(ids), 1),
              "seconds": round(time.time() - t0, 1),
              "answers": [{"q": question(a, b), "expected": a + b, "got": t} for t, (a, b) in zip(texts, test)]}
    atomic_write_json(path, result)
    timings[f"eval {row}"] = result["seconds"]
    save_timings(out, timings)
    return result


SIZES = {"full": {"train": 500, "distill": 1000, "test": 200, "dev": 200, "digits": DIGITS},
         "quick": {"train": 8, "distill": 4, "test": 4, "dev": 4, "digits": 2}}


def phase_settings(args) -> dict:
    """Per phase: the settings that fit the full run into an hour on a 2-core CPU (measured step rates, see
    docs/sft.md); --quick: a few steps, for the smoke test on a tiny model."""
    common = {"model": args.model, "seed": 0}
    if args.quick:
        tiny = {**common, "dtype": "float32", "max_steps": 2, "batch_size": 2, "micro_batch_size": 2}
        return {"teacher": tiny, "transfer": tiny, "student": {**tiny, "max_new_tokens": 32}, "scratch_tokens": 32,
                "direct_tokens": 4}
    return {"teacher": {**common, "epochs": args.teacher_epochs, "lr": 2e-3, "max_minutes": args.teacher_minutes},
            "transfer": {**common, "epochs": args.teacher_epochs, "lr": 2e-3, "max_minutes": args.transfer_minutes},
            "student": {**common, "epochs": args.student_epochs, "lr": 2e-3, "max_minutes": args.student_minutes,
                        "max_new_tokens": 100},
            "scratch_tokens": 100, "direct_tokens": 16}


def run(args) -> dict:
    out = Path(args.out)
    sizes = SIZES["quick" if args.quick else "full"]
    files = make_data(out, sizes)
    settings = phase_settings(args)
    timings = load_timings(out)
    run_phase("teacher", out, "sft", timings, data=files["teacher"], **settings["teacher"])
    run_phase("student", out, "offline", timings, context=str(files["context"]), prompts=files["questions"],
              teacher_adapter=str(out / "teacher" / "adapter"), scratchpad=True, scratchpad_instruction=INSTRUCTION,
              answer_delimiter=DELIMITER, samples_per_query=1, sample_temperature=0.0, amplify=0.0,
              anchor_fraction=0.0, objective=args.student_objective, **settings["student"])
    run_phase("transfer", out, "sft", timings, data=files["transfer"], **settings["transfer"])

    test = problems(args.split, sizes[args.split], sizes["digits"])
    adapters = {"teacher": out / "teacher" / "adapter", "student": out / "student" / "adapter",
                "transfer": out / "transfer" / "adapter"}
    loaded = {}

    def evaluator():  # loaded once, only if some row is not cached
        if "e" not in loaded:
            loaded["e"] = Evaluator(args.model, adapters, args.eval_batch_size)
        return loaded["e"]

    rows = {"teacher": ("teacher", True, settings["scratch_tokens"]),
            "before": (None, False, settings["direct_tokens"]),
            "after": ("student", False, settings["direct_tokens"]),
            "transfer": ("transfer", False, settings["direct_tokens"])}
    results = {row: evaluate_row(out, row, evaluator, adapter, scratch, test, tokens, args.split, timings)
               for row, (adapter, scratch, tokens) in rows.items()}
    print_table(results, timings, args.split)
    return results


def print_table(results: dict, timings: dict, split: str) -> None:
    n = results["teacher"]["n"]
    labels = {"teacher": "teacher, with its scratch-pad", "before": "student before (base, direct answer)",
              "after": "student after context distillation (direct)", "transfer": "transfer baseline (sft on answers)"}
    print(f"\n8-digit addition, exact match on {n} {split} problems (Snell et al. 2022: T5-small; ours: the default "
          "model)\n")
    print("| row | Snell et al. | ours | tokens per answer |")
    print("|---|---|---|---|")
    for row, label in labels.items():
        r = results[row]
        print(f"| {label} | {PAPER[row]:.1f}% | {r['accuracy']:.1f}% ({r['correct']}/{n}) | {r['tokens_per_answer']} |")
    print("\nwall time per phase: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
          + f" (total {sum(timings.values()) / 60:.1f} min)")
    print(f"SNELL teacher={results['teacher']['accuracy']:.1f} before={results['before']['accuracy']:.1f} "
          f"after={results['after']['accuracy']:.1f} transfer={results['transfer']['accuracy']:.1f}", flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/snell", help="every phase is kept here; a rerun continues")
    p.add_argument("--model", default="default")
    p.add_argument("--split", choices=["test", "dev"], default="test",
                   help="the held-out problems to score (dev: for tuning, its own seed)")
    p.add_argument("--quick", action="store_true", help="a few examples and steps: a smoke test (tiny models)")
    p.add_argument("--teacher-epochs", type=float, default=3.0)
    p.add_argument("--student-epochs", type=float, default=2.0)
    p.add_argument("--teacher-minutes", type=float, default=22.0)
    p.add_argument("--student-minutes", type=float, default=25.0)
    p.add_argument("--student-objective", default="sft",
                   help="sft: the teacher's answers as hard targets, as Snell et al. (no teacher forward in a step); "
                        "forward_kl: its distribution on the answer tokens")
    p.add_argument("--transfer-minutes", type=float, default=6.0)
    p.add_argument("--eval-batch-size", type=int, default=50)
    return p.parse_args(argv)


if __name__ == "__main__":
    run(parse_args(sys.argv[1:]))
