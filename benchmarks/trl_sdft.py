"""Throughput and peak memory of TRL's `SDFTTrainer` (trl 1.16, `trl.experimental.sdft`) on CPU.

The TRL side of the comparison: on-policy self-distillation with a privileged context. Each optimizer step samples
8 completions of exactly 96 tokens, runs the teacher (base weights, LoRA adapter disabled) on privileged context +
question + completion and the student (LoRA r=16 on all linear layers) on question + completion, and backpropagates
TRL's default SDFT loss (top-100 generalized JSD, alpha=0.5, on the student's top-k support). Two datasets:
- `--contexts shared`: one 129-token document is every row's privileged context (placed before the question);
- `--contexts per-row`: 16 rows, each with a fictional document of its own (about 60 to 200 tokens) and a question
  about it, in TRL's columns `prompt` / `privileged_context` and TRL's default teacher template, read in order (so
  the ctxdistill side, benchmarks/vs_trl.py, can feed each step the same rows).

Needs `pip install "trl==1.16.*"` in the venv (it leaves torch/transformers/peft/accelerate as they are). Run it in a
fresh process so that the peak RSS is TRL's alone:

    python benchmarks/trl_sdft.py --steps 3 [--contexts shared|per-row] [--generate-from-teacher] [--json-out OUT.json]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A fictional document of 129 tokens (SmolLM2 tokenizer) and 16 short questions about it.
DOCUMENT = (
    "Veldmarsh is an invented lakeside town. Rope-makers founded it "
    "in 1783, and it has 4,210 residents. Its symbol is a copper heron on the roof of the old ferry house. Every "
    "October the town holds the Lantern Regatta, when 300 paper boats float across Lake Merrow. The mayor is Ilse "
    "Corvane, a former beekeeper elected in 2019. The local dish is smoked eel. The Grey Span "
    "bridge has eleven arches and was rebuilt after a flood in 1911. Children attend Hollin School."
)

QUESTIONS = [
    "When was Veldmarsh founded?",
    "Who founded Veldmarsh?",
    "How many people live in Veldmarsh?",
    "What is the symbol of Veldmarsh?",
    "Where does the copper heron stand?",
    "What festival does Veldmarsh hold in October?",
    "How many paper boats are floated during the regatta?",
    "On which lake is Veldmarsh?",
    "Who is the mayor of Veldmarsh?",
    "What did the mayor do before she was elected?",
    "What is the local dish of Veldmarsh?",
    "What is the name of the bridge in Veldmarsh?",
    "How many arches does the Grey Span have?",
    "Why was the Grey Span rebuilt in 1911?",
    "What school do children in Veldmarsh attend?",
    "What is Veldmarsh known for?",
]

# The per-row job: invented places, each with a document of its own of 4 to 12 facts (about 60 to 200 tokens) and one
# question about one of them. Written for this benchmark; every value comes from a generator seeded by the row's
# number, so every run (and both sides) sees the same rows.
PER_ROW_COUNT = 16
PLACES = ["Orlenby", "Quessa Ford", "Marrowick", "Tallow Reach", "Venhollow", "Brisk Harbour", "Idris Mere",
          "Cobble Deep", "Saltremy", "Wendle Cross", "Ferrowgate", "Lunmoor", "Pellacre", "Thistlebrook", "Ambergill",
          "Rookhaven"]
PLACE_KINDS = ["mountain village", "river port", "island town", "mining town", "market town", "fishing village",
               "canal town", "hill fort"]
FACTS = [  # (sentence of the document, question it answers)
    ("{place} was founded in {year} by {founders}.", "When was {place} founded?"),
    ("It has {people} residents.", "How many people live in {place}?"),
    ("Its emblem is a {color} {animal} painted on the {building}.", "What is the emblem of {place}?"),
    ("Every {month} the town holds the {festival}, when {count} lanterns are carried to the {building}.",
     "What festival does {place} hold in {month}?"),
    ("The mayor is {person}, a former {trade} elected in {elected}.", "Who is the mayor of {place}?"),
    ("The local dish is {dish}.", "What is the local dish of {place}?"),
    ("The {bridge} bridge has {arches} arches and was rebuilt after a {disaster} in {rebuilt}.",
     "How many arches does the {bridge} bridge have?"),
    ("Children attend {school}, which has {pupils} pupils.", "Which school do children in {place} attend?"),
    ("The nearest city is {city}, {distance} kilometres to the {direction}.", "What is the nearest city to {place}?"),
    ("Its main trade is {goods}, sold mostly in {city}.", "What is the main trade of {place}?"),
    ("The oldest building is the {oldest}, built in {oldest_year} from {material}.",
     "What is the oldest building in {place}?"),
    ("Visitors are told never to {taboo} on the {building} steps.", "What must visitors never do in {place}?"),
]
FACT_WORDS = {
    "founders": ["rope-makers", "salt traders", "two exiled monks", "a guild of glassblowers", "shepherds"],
    "color": ["copper", "blue", "white", "green", "golden", "black"],
    "animal": ["heron", "fox", "owl", "stag", "carp", "wren", "badger"],
    "building": ["ferry house", "town hall", "old mill", "granary", "lighthouse", "bell tower"],
    "month": ["March", "May", "July", "September", "October", "December"],
    "festival": ["Lantern Regatta", "Ash Fair", "Night of Bells", "Harvest Walk", "Feast of Nets", "Kite Day"],
    "person": ["Ilse Corvane", "Tobias Wren", "Maren Holt", "Ansel Fiske", "Petra Lund", "Oskar Vale"],
    "trade": ["beekeeper", "ferryman", "teacher", "blacksmith", "midwife", "clockmaker"],
    "dish": ["smoked eel", "barley stew with plums", "fried river trout", "onion tart", "rye dumplings"],
    "bridge": ["Grey Span", "Old Ninearch", "Miller's Way", "Swan Crossing", "Red Bow"],
    "disaster": ["flood", "fire", "storm", "landslide"],
    "school": ["Hollin School", "the Quay School", "St Brannoc's", "the Hill Academy"],
    "city": ["Carrowmere", "Istrel", "Dunmarrow", "Pellinor", "Saskbridge"],
    "direction": ["north", "south", "east", "west"],
    "goods": ["wool", "slate", "salted fish", "cider", "rope", "glass beads"],
    "oldest": ["chapel of St Orr", "toll house", "watchtower", "tithe barn", "customs hall"],
    "material": ["grey granite", "red brick", "oak beams", "river stone"],
    "taboo": ["whistle", "sit down", "count the stairs", "wear green", "eat bread"],
}


def place_document(row: int) -> tuple[str, str]:
    """(document, question) of one invented place: 4 + (7 * row) % 9 facts, so neighbouring rows differ in length."""
    rng = random.Random(f"vs_trl per-row {row}")
    place = PLACES[row % len(PLACES)]
    values = {key: rng.choice(words) for key, words in FACT_WORDS.items()}
    values.update(place=place, year=rng.randrange(1400, 1900), people=f"{rng.randrange(300, 20000):,}",
                  count=rng.randrange(20, 500), elected=rng.randrange(2005, 2025), arches=rng.randrange(2, 14),
                  rebuilt=rng.randrange(1800, 1990), pupils=rng.randrange(40, 900), distance=rng.randrange(5, 90),
                  oldest_year=rng.randrange(1100, 1700))
    n_facts = 4 + (7 * row) % 9
    chosen = sorted(rng.sample(range(len(FACTS)), n_facts))
    document = f"{place} is an invented {rng.choice(PLACE_KINDS)}. " + " ".join(
        FACTS[f][0].format(**values) for f in chosen)
    return document, FACTS[chosen[rng.randrange(n_facts)]][1].format(**values)


def per_row_dataset(n: int = PER_ROW_COUNT) -> list[dict]:
    """TRL SDFT rows, each with a privileged context of its own: {"prompt": chat messages, "privileged_context"}."""
    rows = []
    for row in range(n):
        document, question = place_document(row)
        rows.append({"prompt": [{"role": "user", "content": question}], "privileged_context": document})
    return rows


def shared_dataset(document: str, questions: list[str]) -> list[dict]:
    """TRL SDFT rows that all carry the same privileged context."""
    return [{"prompt": [{"role": "user", "content": q}], "privileged_context": document} for q in questions]


def run_trl(
    model_path: str,
    document: str,
    prompts: list[str],
    steps: int,
    generate_from_teacher: bool,
    out_dir: str,
    *,
    teacher_prompt_template: str = "{privileged_context}\n\n{prompt}",
    **settings,
) -> dict:
    """The shared-context job: every row's privileged context is `document`, placed before the question (as the
    ctxdistill side's "prefix" context); rows drawn shuffled. `settings` are run_trl_rows' keywords."""
    return run_trl_rows(model_path, shared_dataset(document, prompts), steps, generate_from_teacher, out_dir,
                        teacher_prompt_template=teacher_prompt_template, shuffle=True, **settings)


def run_trl_rows(
    model_path: str,
    rows: list[dict],
    steps: int,
    generate_from_teacher: bool,
    out_dir: str,
    *,
    batch_size: int = 8,
    num_generations: int = 1,
    completion_tokens: int = 96,
    force_full_length: bool = True,
    lora_r: int = 16,
    lora_alpha: int = 32,
    learning_rate: float = 2e-3,
    gradient_checkpointing: bool = False,
    teacher_prompt_template: str | None = None,
    shuffle: bool = False,
    seed: int = 0,
) -> dict:
    """Run `steps` optimizer steps of SDFTTrainer on CPU in fp32 and return its throughput and peak RSS.

    `rows` is the dataset as SDFTTrainer takes it: {"prompt", "privileged_context"} per row. The teacher's prompt is
    `teacher_prompt_template` (None: TRL's default). Without `shuffle` the rows are read in order, step s taking rows
    s*batch_size ... (mod len(rows)), as the ctxdistill side does.

    One optimizer step = one generation batch of `batch_size` completions (`per_device_train_batch_size=batch_size`,
    `gradient_accumulation_steps=1`, so `steps_per_generation=1` and `generation_batch_size=batch_size`): sample the
    completions (`num_generations` per question, so `batch_size // num_generations` distinct questions), one teacher
    forward without gradients, one student forward + backward, one AdamW step.

    Returns seconds_per_step and tokens_per_s (completion tokens in the loss per second) averaged over the steps
    after the first (warm-up) one, and peak_rss_mb of the whole process (ru_maxrss), plus a few details.
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    if steps < 2:
        raise ValueError("steps must be >= 2: the first step is warm-up and is not timed")

    class Probe(TrainerCallback):
        """Times optimizer steps and counts the completion tokens that enter the loss."""

        def __init__(self):
            self.step_ends: list[float] = []
            self.tokens: list[int] = []  # per generation batch (= per optimizer step here)
            self.lengths: list[list[int]] = []
            self.logs: list[dict] = []
            self.gen_seconds: list[float] = []  # sampling the completions (+ tokenizing prompts), per step
            self.t0 = None
            self._gen_start = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.step_ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                self.logs.append(dict(logs))

        # SDFT-specific events, dispatched by SDFTTrainer to every callback that defines them: the first fires just
        # before `generate`, the second once the completions and the teacher inputs are built.
        def on_generation_prompts_selected(self, **kwargs):
            self._gen_start = time.perf_counter()

        def on_self_distillation_batch_prepared(self, completion_ids=None, teacher_attention_mask=None, **kwargs):
            self.gen_seconds.append(time.perf_counter() - self._gen_start)
            mask = teacher_attention_mask[:, -completion_ids.size(1) :]
            self.tokens.append(int(mask.sum()))
            self.lengths.append(mask.sum(1).tolist())

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left", truncation_side="left")
    dataset = Dataset.from_list(rows)
    template = {} if teacher_prompt_template is None else {"teacher_prompt_template": teacher_prompt_template}

    generation_kwargs = {"min_new_tokens": completion_tokens} if force_full_length else None
    config = SDFTConfig(
        output_dir=out_dir,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        num_generations=num_generations,
        max_completion_length=completion_tokens,
        generation_kwargs=generation_kwargs,  # min_new_tokens: EOS is masked until 96 tokens, so every row is full
        temperature=1.0,
        generate_from_teacher=generate_from_teacher,
        **template,
        teacher_model_kind="base",  # teacher = same weights with the LoRA adapter disabled
        distillation_mode="topk_logits",  # TRL's SDFT default
        distillation_topk=100,
        distillation_alpha=0.5,
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=1.0,
        # TRL defaults bf16=True; on a CPU without use_cpu=True TrainingArguments then refuses to start, and with
        # use_cpu=True it would run the forward under bf16 autocast. Plain fp32 here.
        bf16=False,
        fp16=False,
        use_cpu=True,
        gradient_checkpointing=gradient_checkpointing,  # TRL defaults to True; off here (small model, speed)
        model_init_kwargs={"dtype": torch.float32},
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        shuffle_dataset=shuffle,
        seed=seed,
        dataloader_num_workers=0,
    )
    peft_config = LoraConfig(
        r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    probe = Probe()
    trainer = SDFTTrainer(
        model=model_path,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[probe],
    )
    rss_after_init_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainer.train()

    ends = probe.step_ends
    if len(ends) != steps or len(probe.tokens) != steps:
        raise RuntimeError(f"expected {steps} steps, saw {len(ends)} step ends and {len(probe.tokens)} batches")
    timed = ends[-1] - ends[0]  # steps 2..N
    timed_tokens = sum(probe.tokens[1:])
    losses = [log["loss"] for log in probe.logs if "loss" in log]
    return {
        "seconds_per_step": timed / (steps - 1),
        "tokens_per_s": timed_tokens / timed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_init_mb": rss_after_init_mb,  # peak so far once the model, adapter and trainer exist
        "generation_seconds_per_step": sum(probe.gen_seconds[1:]) / (steps - 1),  # part of seconds_per_step
        "first_step_s": ends[0] - probe.t0,
        "step_seconds": [b - a for a, b in zip([probe.t0, *ends[:-1]], ends)],
        "generation_seconds": probe.gen_seconds,
        "completion_tokens_per_step": probe.tokens,
        "completion_lengths": probe.lengths,
        "losses": losses,
        "steps": steps,
        "generate_from_teacher": generate_from_teacher,
        "rows": len(rows),
        "teacher_prompt_template": trainer.args.teacher_prompt_template,
        "batch_size": batch_size,
        "num_generations": num_generations,
        "max_completion_length": completion_tokens,
        "force_full_length": force_full_length,
        "lora_r": lora_r,
        "dtype": "float32",
        "torch_threads": torch.get_num_threads(),
    }


def _default_model_path() -> str:
    # This interpreter's package, not a `ctxdistill` on PATH: make runs .venv/bin/python without an activated venv.
    out = subprocess.run([sys.executable, "-m", "ctxdistill.cli", "model-path", "default"], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument(
        "--generate-from-teacher",
        action="store_true",
        help="sample completions from the document-conditioned prompt (TRL: generate_from_teacher=True)",
    )
    p.add_argument("--contexts", choices=["shared", "per-row"], default="shared",
                   help="one document for every row, or a document of its own per row (TRL's default template)")
    p.add_argument("--json-out", default="")
    p.add_argument("--model", default="", help="model directory (default: `ctxdistill model-path default`)")
    p.add_argument("--out-dir", default="", help="Trainer output_dir (default: a temporary directory)")
    p.add_argument("--no-force-length", action="store_true", help="let completions stop at EOS before 96 tokens")
    p.add_argument("--gradient-checkpointing", action="store_true", help="TRL's default; off unless given")
    a = p.parse_args()

    model_path = a.model or _default_model_path()
    settings = dict(force_full_length=not a.no_force_length, gradient_checkpointing=a.gradient_checkpointing)
    with tempfile.TemporaryDirectory() as tmp:
        if a.contexts == "shared":
            result = run_trl(model_path, DOCUMENT, QUESTIONS, a.steps, a.generate_from_teacher, a.out_dir or tmp,
                             **settings)
        else:
            result = run_trl_rows(model_path, per_row_dataset(), a.steps, a.generate_from_teacher, a.out_dir or tmp,
                                  **settings)
    result["contexts"] = a.contexts
    text = json.dumps(result, indent=2)
    print(text)
    if a.json_out:
        from ctxdistill.core.files import atomic_write_text  # creates the folder, never leaves a half-written file

        atomic_write_text(Path(a.json_out), text + "\n")


if __name__ == "__main__":
    sys.exit(main())
