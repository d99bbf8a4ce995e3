"""SDFT's continual-learning experiment (Shenfeld et al. 2026, "Self-Distillation Enables Continual Learning") at the
default model's size: two skills learnt one after the other from demonstrations, by SFT, by ours (per-row
contexts, on-policy and offline) and by TRL's `SDFTTrainer`, on the same rows and the same wall-clock budget.

    python benchmarks/continual_skills.py --out runs/continual                 # make bench-continual
    python benchmarks/continual_skills.py --probe --out runs/continual-probe   # only the base, without and with help

The skills (generated from fixed seeds; 48 training and 24 held-out items each, no value shared between them):
- `timer`: a request for a timer ("Start a 15-minute timer. Answer with one line of JSON only.") answered by one
  strict JSON tool call, `{"tool": "timer", "minutes": 15}`;
- `date`: a date written out ("Give the ISO form of 14 March 2026. Reply with the date only.") rewritten in ISO
  form, `2026-03-14`, and nothing else.
Each training row is SDFT's `{"prompt", "demonstration"}` (the correct answer to this very prompt), which ours reads
with the teacher prompt as its `demonstration_template` (`--teacher-template`; by default the project's, SDFT's
"This is an example of a response to the question: ..."); SFT gets the same rows as `{"input", "output"}`; TRL gets
them as `{"prompt", "privileged_context"}` with the same teacher prompt as its `teacher_prompt_template`.

Phases, each kept under --out (a finished one is read back, an interrupted one resumes; a TRL stage restarts):
1. data/<skill>/: the rows in the three shapes, and the held-out test items;
2. <method>/stage1: the method learns `timer`; <method>/stage2: it learns `date`, starting from its stage-1
   adapter (ours and sft: --init-adapter; TRL: the stage-1 adapter loaded as trainable). Every teacher is the base
   shown the demonstration (adapter off), as in the paper;
3. eval/<row>.json: greedy answers, no context, the adapter on: every skill's test items (exact, format-strict
   checkers), the project's retention set (10 general questions, scored as the project does) and the mean per-token
   KL(base || model) on the base's own greedy answers to those questions (the project's drift probe); the base, and
   the base shown each test item's demonstration (the teacher), are rows too.

The last line is machine-readable: `CONTINUAL sft=<acc>/<retention> ours=<acc>/<retention> trl=<acc>/<retention>`,
acc = the mean skill accuracy (%) after the last stage, retention = how many of the 10 retention questions it answers
after the last stage; ours = on-policy; `trl=none/none` when TRL is not installed.
"""

from __future__ import annotations

import argparse
import calendar
import datetime
import importlib.util
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from phases import load_timings, load_with_adapters, run_phase, save_timings, write_lines

METHODS = {"sft": "sft (on the demonstrations)", "onpolicy": "ours, on-policy (onpolicy --data)",
           "offline": "ours, offline (offline --data)", "trl": "TRL SDFTTrainer"}
TRL_MISSING = "not installed (make bench-continual installs it)"
SEED = 0


# ----------------------------------------------------------------------------------------------------- the skills

@dataclass(frozen=True)
class Item:
    prompt: str
    answer: str


@dataclass(frozen=True)
class Skill:
    name: str
    make: Callable[[random.Random, int], list[Item]]  # n items whose values differ from one another
    check: Callable[[str, str], bool]  # (response, expected answer) -> right or not


TIMER_PHRASES = ["Set a timer for {n} minutes.", "Start a {n}-minute timer.", "Please time {n} minutes for me.",
                 "I need a timer for {n} minutes.", "Count down {n} minutes, please.",
                 "Can you set a {n} minute timer?"]
DATE_PHRASES = ["Write {date} as an ISO date.", "Give the ISO form of {date}.",
                "Rewrite the date {date} in ISO format.", "{date}: what is that in ISO format?"]
FIRST_DAY, DAYS = datetime.date(1990, 1, 1), 365 * 46  # dates from 1990 to 2035


# Each prompt asks for the answer alone, so that the teacher (the base shown the demonstration) copies it and stops;
# without that instruction the base model rambles after the right answer, and the strict checkers fail the teacher.
# What the instruction leaves to learn: the schema (tool name, keys, an integer, one line, no code fence) and the
# ISO rewrite (month number, zero-padding, order), which the base gets right for none of the probed items.
TIMER_ONLY, DATE_ONLY = " Answer with one line of JSON only.", " Reply with the date only."


def timer_items(rng: random.Random, n: int) -> list[Item]:
    return [Item(rng.choice(TIMER_PHRASES).format(n=minutes) + TIMER_ONLY,
                 json.dumps({"tool": "timer", "minutes": minutes})) for minutes in rng.sample(range(2, 181), n)]


def date_items(rng: random.Random, n: int) -> list[Item]:
    dates = [FIRST_DAY + datetime.timedelta(days=d) for d in rng.sample(range(DAYS), n)]
    return [Item(rng.choice(DATE_PHRASES).format(date=f"{d.day} {calendar.month_name[d.month]} {d.year}")
                 + DATE_ONLY, d.isoformat()) for d in dates]


def check_tool_call(response: str, answer: str) -> bool:
    """One line holding exactly the expected JSON object: the same keys, values and value types ("15" is not 15).
    Any other text around it, a code fence or a second line fails."""
    text = response.strip()
    if "\n" in text:
        return False
    try:
        got = json.loads(text)
    except json.JSONDecodeError:
        return False
    expected = json.loads(answer)
    return isinstance(got, dict) and got == expected and all(type(got[k]) is type(v) for k, v in expected.items())


def check_exact(response: str, answer: str) -> bool:
    """The answer and nothing else (surrounding whitespace aside): no sentence around it, no final period."""
    return response.strip() == answer


SKILLS = [Skill("timer", timer_items, check_tool_call), Skill("date", date_items, check_exact)]  # learnt in order


def skill_split(skill: Skill, n_train: int, n_test: int) -> tuple[list[Item], list[Item]]:
    """(train, test) of a skill, from its own seed: the same items on every run, no value in both."""
    items = skill.make(random.Random(f"continual {skill.name} {SEED}"), n_train + n_test)
    return items[:n_train], items[n_train:]


def teacher_prompt(item: Item, template: str) -> str:
    """What the teacher reads: the item's prompt with its demonstration, in the teacher template."""
    from ctxdistill.data.per_row import fill

    return fill(template, {"prompt": item.prompt, "demonstration": item.answer})


def trl_template(template: str) -> str:
    """The same teacher prompt in TRL's terms: its teacher_prompt_template fills {prompt} and {privileged_context}."""
    return template.replace("{demonstration}", "{privileged_context}")


def make_data(out: Path, sizes: dict) -> dict:
    """Per skill, its files under OUT/data/<skill> (rewritten only when their content changes: every phase's cache
    stays valid) and its test items."""
    data = {}
    for skill in SKILLS:
        train, test = skill_split(skill, sizes["train"], sizes["test"])
        folder = out / "data" / skill.name
        folder.mkdir(parents=True, exist_ok=True)
        files = {"rows": folder / "rows.jsonl", "sft": folder / "sft.jsonl", "trl": folder / "trl.jsonl",
                 "test": folder / "test.jsonl"}
        write_lines(files["rows"], [json.dumps({"prompt": x.prompt, "demonstration": x.answer}) for x in train])
        write_lines(files["sft"], [json.dumps({"input": x.prompt, "output": x.answer}) for x in train])
        write_lines(files["trl"], [json.dumps({"prompt": [{"role": "user", "content": x.prompt}],
                                               "privileged_context": x.answer}) for x in train])
        write_lines(files["test"], [json.dumps({"prompt": x.prompt, "answer": x.answer}) for x in test])
        data[skill.name] = {**files, "test_items": test}
    return data


# ------------------------------------------------------------------------------------------------------- training

def train_method(method: str, out: Path, data: dict, settings: dict, timings: dict) -> dict[int, Path]:
    """Both stages of one method; {stage: the adapter that holds everything learnt up to it, on the base}."""
    adapters, previous = {}, None
    for stage, skill in enumerate(SKILLS, 1):
        name, files = f"{method}/stage{stage}", data[skill.name]
        if method == "trl":
            trl_phase(name, out, files["trl"], previous, settings["trl"], settings["template"], timings)
        else:
            init = {"init_adapter": str(previous)} if previous is not None else {}
            run_phase(name, out, method, timings, data=files["sft" if method == "sft" else "rows"],
                      **init, **settings[method])
        adapters[stage] = previous = out / name / "adapter"
    return adapters


# ---------------------------------------------------------------------------------------------------------- TRL

def trl_installed() -> bool:
    """Whether TRL's SDFTTrainer imports, tried in a process of its own: this process never imports TRL (the
    project does not need it), and a TRL that is installed but broken counts as missing."""
    if importlib.util.find_spec("trl") is None:
        return False
    tried = subprocess.run([sys.executable, "-c", "import trl.experimental.sdft"], capture_output=True, check=False)
    return tried.returncode == 0


def trl_phase(name: str, out: Path, rows: Path, init_adapter: Path | None, settings: dict, template: str,
              timings: dict) -> Path:
    """One TRL SDFTTrainer stage in a process of its own (TRL's Trainer sets process-wide state; its memory is its
    own), kept in OUT/<name> once finished; an interrupted stage starts again."""
    from ctxdistill.core.files import atomic_write_json
    from ctxdistill.core.models import resolve_model

    folder = out / name
    if not (folder / "stage.json").exists():
        path, kwargs = resolve_model(settings["model"])
        spec = {**settings, "model": path, "model_kwargs": kwargs, "rows": str(rows), "out": str(folder),
                "init_adapter": str(init_adapter) if init_adapter else None, "template": trl_template(template)}
        atomic_write_json(folder / "spec.json", spec)
        t0 = time.time()
        print(f"[{name}] TRL SDFTTrainer ...", flush=True)
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--trl-stage",
                               str(folder / "spec.json")], check=False)
        if done.returncode != 0:
            raise SystemExit(f"The TRL stage {name} failed (exit code {done.returncode}); its output is above.")
        timings[name] = round(time.time() - t0, 1)
        save_timings(out, timings)
    return folder / "adapter"


def run_trl_stage(spec_file: str) -> None:
    """TRL's SDFTTrainer on one skill's rows, stopped at the wall budget; the adapter saved with save_pretrained.
    Its defaults, except: the same LoRA (r 16, alpha 32, all linear layers), lr (2e-3), batch (8 rows, one
    completion each: num_generations=1) and completion length as ours; SDFT's teacher prompt as ours writes it;
    fp32 on the CPU, no gradient checkpointing (ours runs without); a constant lr (a decaying schedule needs the
    step count, which the wall budget decides)."""
    t_start = time.time()  # the budget counts from here, as ours counts from the start of its run
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    from ctxdistill.core.files import atomic_write_dir, atomic_write_json, read_jsonl

    spec = json.loads(Path(spec_file).read_text(encoding="utf-8"))
    budget = spec["minutes"] * 60

    class WallBudget(TrainerCallback):
        """Stops before a step that would end past the budget (from the mean step time so far)."""

        def __init__(self):
            self.ends, self.stopped = [], False

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.time())
            per_step = (self.ends[-1] - self.ends[0]) / (len(self.ends) - 1) if len(self.ends) > 1 else 0.0
            if time.time() + per_step - t_start >= budget:
                control.should_training_stop = self.stopped = True

    torch.manual_seed(spec["seed"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"], padding_side="left", truncation_side="left",
                                              **spec["model_kwargs"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32, **spec["model_kwargs"])
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    if spec["init_adapter"]:  # the earlier stage's adapter, trained further (the teacher: the base, adapter off)
        model, peft_config = PeftModel.from_pretrained(model, spec["init_adapter"], is_trainable=True), None
    stop = WallBudget()
    with tempfile.TemporaryDirectory(prefix="trl-sdft-") as tmp:
        config = SDFTConfig(
            output_dir=tmp, max_steps=spec["max_steps"], per_device_train_batch_size=spec["batch_size"],
            gradient_accumulation_steps=1, num_generations=1, max_completion_length=spec["max_new_tokens"],
            teacher_prompt_template=spec["template"], learning_rate=spec["lr"], lr_scheduler_type="constant",
            warmup_steps=0, bf16=False, fp16=False, use_cpu=not torch.cuda.is_available(),
            gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
            seed=spec["seed"], dataloader_num_workers=0)
        trainer = SDFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(read_jsonl(
            Path(spec["rows"]), "rows")), processing_class=tokenizer, peft_config=peft_config, callbacks=[stop])
        trainer.train()
    out = Path(spec["out"])
    atomic_write_dir(out / "adapter", lambda tmp: trainer.model.save_pretrained(tmp), ".adapter-")
    atomic_write_json(out / "stage.json", {"steps": trainer.state.global_step, "max_steps": spec["max_steps"],
                                           "stopped_by_budget": stop.stopped,
                                           "seconds": round(time.time() - t_start, 1),
                                           "losses": [log["loss"] for log in trainer.state.log_history
                                                      if "loss" in log]})


# --------------------------------------------------------------------------------------------------- evaluation

class Evaluator:
    """The base model once with every adapter next to the others (switched by name), and the drift probe: the
    base's own greedy answers to the retention questions, against which each model's KL is measured."""

    def __init__(self, model_name: str, adapters: dict[str, Path], retention: list[dict], retention_tokens: int):
        from ctxdistill.eval.evaluation import DriftProbe

        self.model, self.tokenizer, self.names = load_with_adapters(model_name, adapters, dtype="float32")
        self.retention = retention
        self.probe = DriftProbe(self.model, self.tokenizer, retention, retention_tokens)

    def answers(self, adapter: str | None, prompts: list[str], max_new_tokens: int) -> list[str]:
        from ctxdistill.eval.evaluation import answers

        if adapter is not None:
            self.model.set_adapter(self.names[adapter])
        return answers(self.model, self.tokenizer, prompts, None, adapter is not None, max_new_tokens)

    def kept(self, adapter: str | None) -> dict:
        """Retention (correct answers, scored as the project does) and KL(base || model) per token."""
        from ctxdistill.eval.evaluation import score

        if adapter is None:
            got = self.probe.initial_answers
            return {"correct": score(got, self.retention), "n": len(self.retention), "kl_to_base": 0.0,
                    "answers": got}
        self.model.set_adapter(self.names[adapter])
        m = self.probe.measure(self.model)
        return {"correct": m["accuracy"], "n": m["n"], "kl_to_base": m["kl_to_initial"], "answers": m["answers"]}


def skill_result(evaluator, adapter: str | None, skill: Skill, test: list[Item], prompts: list[str],
                 max_new_tokens: int) -> dict:
    got = evaluator.answers(adapter, prompts, max_new_tokens)
    correct = [skill.check(g, x.answer) for g, x in zip(got, test)]
    return {"correct": sum(correct), "n": len(test), "accuracy": round(100 * sum(correct) / len(test), 1),
            "answers": [{"prompt": x.prompt, "expected": x.answer, "got": g, "ok": ok}
                        for x, g, ok in zip(test, got, correct)]}


def evaluate_row(out: Path, row: str, evaluator, data: dict, tokens: dict, template: str, timings: dict) -> dict:
    """One row (base, teacher, or an adapter by name), kept in OUT/eval/<row>.json. The teacher is the base shown
    each test item's own demonstration; it has no retention row (it is the base)."""
    from ctxdistill.core.files import atomic_write_json

    path = out / "eval" / f"{row}.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    t0, adapter = time.time(), None if row in ("base", "teacher") else row
    result = {"row": row, "skills": {}}
    for skill in SKILLS:
        test = data[skill.name]["test_items"]
        prompts = [teacher_prompt(x, template) if row == "teacher" else x.prompt for x in test]
        result["skills"][skill.name] = skill_result(evaluator(), adapter, skill, test, prompts, tokens["skill"])
    if row != "teacher":
        result["retention"] = evaluator().kept(adapter)
    result["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(path, result)
    timings[f"eval {row}"] = result["seconds"]
    save_timings(out, timings)
    return result


def evaluate_all(out: Path, model: str, adapters: dict[str, Path], data: dict, settings: dict, timings: dict) -> dict:
    from ctxdistill.data.inputs import read_retention

    loaded, tokens = {}, settings["tokens"]

    def evaluator():  # loaded once, only if some row is not cached
        if "e" not in loaded:
            loaded["e"] = Evaluator(model, adapters, read_retention(None), tokens["retention"])
        return loaded["e"]

    return {row: evaluate_row(out, row, evaluator, data, tokens, settings["template"], timings)
            for row in ["base", "teacher", *adapters]}


# -------------------------------------------------------------------------------------------------------- table

def accuracy_cell(result: dict | None, skill: str) -> str:
    if result is None:
        return "–"
    s = result["skills"][skill]
    return f"{s['accuracy']:.0f}% ({s['correct']}/{s['n']})"


def stage_cells(result: dict | None) -> list[str]:
    return [accuracy_cell(result, skill.name) for skill in SKILLS]


def method_minutes(method: str, timings: dict) -> float:
    """Training wall time of a method, both stages, evaluation left out."""
    return sum(v for k, v in timings.items() if k.startswith(f"{method}/")) / 60


def table(results: dict, timings: dict, trl: bool) -> str:
    names = [s.name for s in SKILLS]
    header = ([f"{n} after stage 1" for n in names] + [f"{n} after stage 2" for n in names]
              + ["retention (stage 1 → 2)", "KL(base ‖ model) (stage 1 → 2)", "minutes"])
    lines = ["| row | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    base, teacher = results["base"], results["teacher"]
    dashes = ["–"] * len(names)
    lines.append(f"| base (no training) | {' | '.join(stage_cells(base))} | {' | '.join(dashes)} | "
                 f"{base['retention']['correct']}/{base['retention']['n']} | 0 | – |")
    lines.append(f"| base shown the item's demonstration (the teacher) | {' | '.join(stage_cells(teacher))} | "
                 f"{' | '.join(dashes)} | – | – | – |")
    for method, label in METHODS.items():
        first, last = results.get(f"{method}_1"), results.get(f"{method}_2")
        if method == "trl" and not trl:
            lines.append(f"| {label} | {TRL_MISSING} |" + " |" * (len(header) - 1))
            continue
        r1, r2 = first["retention"], last["retention"]
        lines.append(f"| {label} | {' | '.join(stage_cells(first) + stage_cells(last))} | "
                     f"{r1['correct']} → {r2['correct']}/{r2['n']} | "
                     f"{r1['kl_to_base']:.4f} → {r2['kl_to_base']:.4f} | {method_minutes(method, timings):.1f} |")
    return "\n".join(lines)


def continual_line(results: dict, trl: bool) -> str:
    def cell(method: str) -> str:
        last = results.get(f"{method}_2")
        if (method == "trl" and not trl) or last is None:
            return "none/none"
        accuracy = sum(s["accuracy"] for s in last["skills"].values()) / len(last["skills"])
        return f"{accuracy:.1f}/{last['retention']['correct']}"

    return f"CONTINUAL sft={cell('sft')} ours={cell('onpolicy')} trl={cell('trl')}"


# ------------------------------------------------------------------------------------------------------ the run

SIZES = {"full": {"train": 48, "test": 24}, "quick": {"train": 4, "test": 2}}


def phase_settings(args) -> dict:
    """Per method: its own defaults under one wall budget per skill (--minutes-per-skill; the budget decides how far
    onpolicy, offline and TRL get, sft stops after its 5 epochs if sooner); the same completion length (48 tokens,
    the answers take about 20), the same teacher prompt (--teacher-template) and fp32 on every side. --quick: two
    steps of each, on a tiny model."""
    common = {"model": args.model, "seed": SEED, "dtype": "float32"}
    reads = {"demonstration_template": args.teacher_template}  # how ours renders each row's teacher view
    if args.quick:
        tiny = {**common, "max_steps": 2, "batch_size": 2, "micro_batch_size": 2}
        return {"sft": tiny, "onpolicy": {**tiny, **reads, "max_new_tokens": 8, "top_k": 16},
                "offline": {**tiny, **reads, "max_new_tokens": 8, "samples_per_query": 1},
                "trl": {"model": args.model, "seed": SEED, "minutes": 60.0, "max_steps": 2, "batch_size": 2,
                        "max_new_tokens": 8, "lr": 2e-3},
                "tokens": {"skill": 8, "retention": 8}, "template": args.teacher_template}
    budget = {**common, "max_minutes": args.minutes_per_skill}
    teacher = {**budget, **reads, "max_new_tokens": 48}
    return {"sft": budget, "onpolicy": teacher, "offline": teacher,
            "trl": {"model": args.model, "seed": SEED, "minutes": args.minutes_per_skill, "max_steps": 200,
                    "batch_size": 8, "max_new_tokens": 48, "lr": 2e-3},  # onpolicy's max_steps, batch and lr
            "tokens": {"skill": 32, "retention": 48}, "template": args.teacher_template}


def run(args) -> dict:
    out = Path(args.out)
    data = make_data(out, SIZES["quick" if args.quick else "full"])
    settings = phase_settings(args)
    if args.probe:  # the base without and with the demonstration: does it lack the skills, can the teacher help?
        return probe(out, args.model, data, settings["tokens"], settings["template"])
    timings, trl = load_timings(out), trl_installed()
    adapters = {}
    for method in METHODS:
        if method == "trl" and not trl:
            print(f"TRL: {TRL_MISSING}; its column is left out.", flush=True)
            continue
        for stage, adapter in train_method(method, out, data, settings, timings).items():
            adapters[f"{method}_{stage}"] = adapter  # a PEFT adapter name: no dots
    results = evaluate_all(out, args.model, adapters, data, settings, timings)
    text = table(results, timings, trl)
    last = continual_line(results, trl)
    print(f"\nContinual skills: {' then '.join(s.name for s in SKILLS)}, greedy, no context, "
          f"{len(data[SKILLS[0].name]['test_items'])} held-out items each\n\n{text}\n", flush=True)
    print(last, flush=True)
    write_outputs(out, results, timings, text, last, settings)
    return results


class BaseOnly:
    """The base model alone, for --probe: it answers as the base and as the teacher (shown the demonstration)."""

    def __init__(self, model_name: str):
        from ctxdistill.core.models import load_model

        self.model, self.tokenizer, _ = load_model(model_name, "float32")

    def answers(self, adapter: None, prompts: list[str], max_new_tokens: int) -> list[str]:
        from ctxdistill.eval.evaluation import answers

        return answers(self.model, self.tokenizer, prompts, None, False, max_new_tokens)


def probe(out: Path, model: str, data: dict, tokens: dict, template: str) -> dict:
    """No training: each skill's test items answered by the base, without and with the item's demonstration (a
    skill worth learning is one where the first is far below the second); kept in OUT/probe.json."""
    from ctxdistill.core.files import atomic_write_json

    base = BaseOnly(model)
    results = {row: {"skills": {s.name: skill_result(base, None, s, data[s.name]["test_items"], [
        teacher_prompt(x, template) if row == "teacher" else x.prompt for x in data[s.name]["test_items"]],
        tokens["skill"])
        for s in SKILLS}} for row in ("base", "teacher")}
    for skill in SKILLS:
        print(f"{skill.name}: base {accuracy_cell(results['base'], skill.name)}, with the demonstration "
              f"{accuracy_cell(results['teacher'], skill.name)}", flush=True)
    atomic_write_json(out / "probe.json", results)
    return results


def write_outputs(out: Path, results: dict, timings: dict, text: str, last: str, settings: dict) -> None:
    from ctxdistill.core.files import atomic_write_json, atomic_write_text

    atomic_write_text(out / "table.md", text + "\n\n" + last + "\n")
    atomic_write_json(out / "results.json", {"skills": [s.name for s in SKILLS], "rows": results,
                                             "timings": timings, "settings": settings, "continual": last})


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/continual", help="every phase is kept here; a rerun continues")
    p.add_argument("--model", default="default")
    p.add_argument("--minutes-per-skill", type=float, default=3.0,
                   help="wall budget of each method on each skill (4 methods x 2 skills + evaluation: ~28 min)")
    p.add_argument("--quick", action="store_true", help="a few items and two steps each: a smoke test (tiny models)")
    p.add_argument("--teacher-template",
                   help="the teacher's prompt, with {prompt} and {demonstration} (ours' demonstration_template, TRL's "
                        "teacher_prompt_template); default: the project's. Phases already under --out are not rerun: "
                        "give a new --out")
    p.add_argument("--probe", action="store_true",
                   help="no training: the base's accuracy on the test items without and with the demonstration")
    p.add_argument("--trl-stage", help=argparse.SUPPRESS)  # internal: one TRL stage, in a process of its own
    a = p.parse_args(argv)
    from ctxdistill import CtxDistillError

    try:
        a.teacher_template = teacher_template_of(a.teacher_template)
    except CtxDistillError as e:
        p.error(f"--teacher-template: {e}")
    return a


def teacher_template_of(given: str | None) -> str:
    """The given teacher prompt, checked as the project checks its demonstration_template; else the project's."""
    from pydantic import ValidationError

    from ctxdistill.config import OnpolicyConfig, friendly_error

    try:
        return OnpolicyConfig(**({"demonstration_template": given} if given else {})).demonstration_template
    except ValidationError as e:
        raise friendly_error(e, OnpolicyConfig) from None


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    if arguments.trl_stage:
        run_trl_stage(arguments.trl_stage)
    else:
        run(arguments)
