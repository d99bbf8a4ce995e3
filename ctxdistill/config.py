"""Run configuration: plain data, from defaults ← YAML (--config) ← --set key=value, validated with clear errors."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from ctxdistill import CtxDistillError

SUMMARY_PROMPTS = ("Summarize the document above.", "List the key facts of the document above, one per line.")
QUESTION_PROMPT = "Write a quiz question about one fact from the document above. Reply with the question only."


@dataclass
class DistillConfig:
    # model and teacher
    model: str = "default"
    dtype: str = "auto"  # auto: bf16 where the hardware has it, else fp32
    device: str = ""  # "" picks cuda when present, else cpu
    context_kind: str = "system"  # system | prefix | document
    mode: str = "sequential"  # several contexts: sequential (one after another) | ensemble (teachers mixed)
    ensemble_weighting: str = "posterior"  # ensemble: views weighed by p(context | query, completion so far) | uniform
    replay: float = 1.0  # sequential: each later stage also replays this many × its size of earlier samples
    num_examples: int = 4  # --examples: examples shown to the teacher per query (a fresh subset each time)
    example_sets: int = 1  # --examples: subsets per query whose teacher distributions are averaged
    scratchpad: bool = False  # the teacher reasons before the answer delimiter; the student learns the answer only
    answer_delimiter: str = "Answer:"
    scratchpad_instruction: str = "Think step by step, then write 'Answer:' followed by the final answer."
    # what is trained
    finetune: str = "lora"  # lora | full
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: typing.Union[str, list] = "all-linear"
    gradient_checkpointing: bool = False  # recompute activations in the backward: less memory, ~1/3 more compute
    # "": the base with the adapter off (LoRA) or a frozen copy (full); "live": the current student (onpolicy);
    # else another model with the same tokenizer
    teacher: str = ""
    teacher_cache: bool = False  # score the samples once, keep the teacher's top-k on disk (needs top_k > 0)
    prefix_cache: bool = True  # encode the context once and reuse its KV cache in every teacher forward
    # objective: a term name, names joined by "+", or a mapping {term: weight}
    objective: typing.Union[str, dict] = "forward_kl"  # forward_kl | reverse_kl | jsd | sampled_kl | sft
    temperature: float = 1.0
    t2_scaling: bool = False  # multiply the divergence terms by T²
    jsd_beta: float = 0.5  # jsd only: 0 = forward KL, 1 = reverse KL
    top_k: int = 0  # 0: full vocabulary; k: a top-k support
    top_k_support: str = "teacher"  # teacher | student | union
    top_k_tail: str = "renorm"  # renorm | bucket (the rest of the mass as one outcome)
    skip_first: int = 0  # completion tokens at the start that carry no loss
    hidden_weight: float = 0.0  # Deep Context Distillation's hidden-state term, weighted against the logit terms
    hidden_layers: typing.Union[str, list] = "all"  # all, or a list of layer indices
    chunk_size: int = 256  # completion rows projected to the vocabulary at once
    # optimization
    lr: float = 0.0  # 0: 2e-3 for LoRA, 1e-5 for full fine-tuning
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    schedule: str = "cosine"
    grad_clip: float = 1.0
    epochs: float = 5.0
    max_steps: int = 0
    batch_size: int = 8
    micro_batch_size: int = 8
    seed: int = 0
    checkpoint_every: int = 25
    max_minutes: float = 0.0  # 0: no budget
    # data: queries and teacher samples
    num_queries: int = 64  # synthesized when no --prompts
    query_temperature: float = 1.0
    samples_per_query: int = 8
    sample_temperature: float = 0.8
    max_new_tokens: int = 96
    gen_batch_size: int = 64
    # documents (disc and its baselines)
    split_strategy: str = "random"  # random (sentence boundaries + the last sentence) | middle | uniform | token
    splits_per_doc: int = 4  # (prefix, suffix) splits per document per step
    max_suffix_tokens: int = 0  # 0: the rest of the document, up to half the window
    max_seq_len: int = 0  # 0: the model's window
    docs_per_batch: int = 1  # --stream: documents that arrive together, evaluated after each batch
    kl_weight: float = 1.0  # finetune-kl: weight of KL(initial ‖ model) next to next-token prediction
    # knowledge modules (knowledge recipe)
    knowledge_objective: str = "dcd"  # dcd | ntp-doc | ntp-synth (baselines: next-token on the text / on QA + text)
    knowledge_data: str = "synthetic"  # dcd: synthetic (summaries + QA about each chunk) | raw (document windows)
    chunk_tokens: int = 512  # documents are cut into chunks of this many tokens
    chunk_overlap: int = 64  # tokens shared by consecutive chunks
    summary_prompts: typing.Union[str, list] = dataclasses.field(default_factory=lambda: list(SUMMARY_PROMPTS))
    summaries_per_prompt: int = 8  # sampled per chunk per summary prompt
    summary_view: str = "text"  # what the student reads of a summary: text (the summary alone) | prompt (+ instruction)
    question_prompt: str = QUESTION_PROMPT
    questions_per_chunk: int = 64  # sampled; the kept (deduplicated) ones are answered with the chunk in context
    answers_per_question: int = 1  # 1: the greedy answer; more: sampled answers
    synth_temperature: float = 0.7
    raw_window: int = 256  # knowledge_data=raw: tokens per window (the teacher sees all of it)
    raw_loss_fraction: float = 0.25  # raw: the last share of the window, seen alone by the student, carries the loss
    retrieval_top_k: int = 1  # chunks put in context by the module + retrieval evaluation
    anchor_fraction: float = 0.0  # offline, dcd: this many × the pairs of general prompts where the base is matched
    anchor_prompts: str = ""  # their prompts: a file (.txt/.jsonl/.json), or "" for a bundled general set
    # on-policy (onpolicy recipe)
    offline_fraction: float = 0.0  # share of steps trained on teacher samples instead of the student's own
    # experience (ctxdistill experience)
    select_fraction: float = 0.25  # tasks that pick the best notes
    test_fraction: float = 0.25  # tasks for the report
    experience_candidates: int = 4  # note sets written (sampled) from the model's own traces
    traces_per_note: int = 6  # traces shown for writing one note set
    max_notes: int = 5  # notes per set
    # evaluation written to the report
    eval_max_new_tokens: int = 48

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr > 0 else (2e-3 if self.finetune == "lora" else 1e-5)

    def objective_terms(self) -> dict[str, float]:
        if isinstance(self.objective, dict):
            try:
                return {str(k): float(v) for k, v in self.objective.items()}
            except (TypeError, ValueError) as e:
                raise CtxDistillError(f"objective weights must be numbers, got {self.objective!r}.") from e
        return {name.strip(): 1.0 for name in str(self.objective).split("+") if name.strip()}

    def build_objective(self):
        from ctxdistill.core.objectives import Objective

        if isinstance(self.hidden_layers, str):
            if self.hidden_layers != "all":
                raise CtxDistillError(f"hidden_layers must be 'all' or a list of layer indices, got "
                                      f"{self.hidden_layers!r}.")
            layers = ()
        else:
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in self.hidden_layers):
                raise CtxDistillError(f"hidden_layers must be a list of integers, got {self.hidden_layers!r}.")
            layers = tuple(self.hidden_layers)
        return Objective(self.objective_terms(), temperature=self.temperature, t2_scaling=self.t2_scaling,
                         jsd_beta=self.jsd_beta, top_k=self.top_k, support=self.top_k_support, tail=self.top_k_tail,
                         hidden_weight=self.hidden_weight, hidden_layers=layers)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "DistillConfig":
        choices = {"finetune": ("lora", "full"), "mode": ("sequential", "ensemble"),
                   "context_kind": ("system", "prefix", "document"), "schedule": ("cosine", "linear", "constant"),
                   "split_strategy": ("random", "middle", "uniform", "token"),
                   "ensemble_weighting": ("posterior", "uniform"),
                   "knowledge_objective": ("dcd", "ntp-doc", "ntp-synth"), "knowledge_data": ("synthetic", "raw"),
                   "summary_view": ("text", "prompt")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise CtxDistillError(f"{key}={getattr(self, key)!r} is not valid; use one of {', '.join(allowed)}.")
        positive = ["num_examples", "example_sets", "lora_r", "batch_size", "micro_batch_size", "samples_per_query",
                    "max_new_tokens", "gen_batch_size", "chunk_size", "temperature", "eval_max_new_tokens",
                    "splits_per_doc", "docs_per_batch", "experience_candidates", "traces_per_note", "max_notes", "chunk_tokens",
                    "synth_temperature", "raw_window", "retrieval_top_k"]
        for key in positive:
            if getattr(self, key) <= 0:
                raise CtxDistillError(f"{key} must be > 0, got {getattr(self, key)}.")
        for key in ["epochs", "max_minutes", "lr", "weight_decay", "top_k", "max_steps", "warmup_ratio", "skip_first",
                    "replay", "max_suffix_tokens", "max_seq_len", "kl_weight", "offline_fraction", "chunk_overlap",
                    "summaries_per_prompt", "questions_per_chunk", "answers_per_question", "anchor_fraction"]:
            if getattr(self, key) < 0:
                raise CtxDistillError(f"{key} must be >= 0, got {getattr(self, key)}.")
        if self.batch_size >= self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise CtxDistillError(f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size "
                                  f"({self.micro_batch_size}). Change --set batch_size=... or micro_batch_size=....")
        if not self.model.strip():
            raise CtxDistillError("model is empty. Pass --model with a Hugging Face id, a path, or 'default'.")
        from ctxdistill.core.models import DTYPES

        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise CtxDistillError(f"dtype={self.dtype!r} is not valid; use auto or one of {', '.join(DTYPES)}.")
        if not (0 < self.select_fraction < 1 and 0 < self.test_fraction < 1
                and self.select_fraction + self.test_fraction < 1):
            raise CtxDistillError("select_fraction and test_fraction must be in (0, 1) and leave tasks for training "
                                  f"(got {self.select_fraction} and {self.test_fraction}).")
        if self.offline_fraction > 1:
            raise CtxDistillError(f"offline_fraction is a share of steps, in [0, 1]; got {self.offline_fraction}.")
        if not 0 < self.raw_loss_fraction < 1:
            raise CtxDistillError(f"raw_loss_fraction is the share of a window that carries the loss, in (0, 1); got "
                                  f"{self.raw_loss_fraction}.")
        if self.chunk_overlap >= self.chunk_tokens:
            raise CtxDistillError(f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_tokens "
                                  f"({self.chunk_tokens}).")
        if isinstance(self.summary_prompts, str):
            self.summary_prompts = [self.summary_prompts] if self.summary_prompts.strip() else []
        if not all(isinstance(p, str) and p.strip() for p in self.summary_prompts):
            raise CtxDistillError("summary_prompts must be a list of non-empty instructions (or [] for none).")
        if not self.question_prompt.strip() and self.questions_per_chunk:
            raise CtxDistillError("question_prompt is empty; write the instruction, or set questions_per_chunk=0.")
        if self.scratchpad and not self.answer_delimiter.strip():
            raise CtxDistillError("scratchpad needs a non-empty answer_delimiter.")
        objective = self.build_objective()  # refuses unknown terms, bad weights, supports and tails
        if self.teacher_cache and (not self.top_k or self.top_k_support != "teacher"):
            raise CtxDistillError("teacher_cache stores the teacher's top-k: set top_k > 0 and top_k_support=teacher.")
        if self.teacher_cache and ("sampled_kl" in objective.terms or objective.hidden_weight > 0):
            raise CtxDistillError("teacher_cache cannot serve sampled_kl or the hidden-state term (they need a live "
                                  "teacher); set teacher_cache=false.")
        return self


ALIASES = {"learning_rate": "lr", "lr_rate": "lr", "rank": "lora_r", "r": "lora_r", "alpha": "lora_alpha",
           "num_epochs": "epochs", "steps": "max_steps", "k": "top_k"}


def _coerce(key: str, value, typ):
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        allowed = typing.get_args(typ)
        if isinstance(value, allowed):
            return value
        raise CtxDistillError(f"{key} must be one of: {', '.join(a.__name__ for a in allowed)}; got {value!r}.")
    if typ in (int, float) and isinstance(value, str):
        try:  # YAML reads 1e-3 (no dot) as a string
            value = typ(value)
        except ValueError:
            pass
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif typ is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif typ is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise CtxDistillError(f"{key} must be of type {typ.__name__}, got {value!r}.")


def apply_overrides(cfg, values: dict, source: str):
    hints = typing.get_type_hints(type(cfg))
    names = [f.name for f in dataclasses.fields(cfg)]
    for key, value in values.items():
        if key not in names:
            close = ([ALIASES[key]] if key in ALIASES else []) + difflib.get_close_matches(key, names, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else f" Valid keys: {', '.join(names)}."
            raise CtxDistillError(f"Unknown config key '{key}' in {source}.{hint}")
        setattr(cfg, key, _coerce(key, value, hints[key]))
    return cfg


def parse_set(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise CtxDistillError(f"--set expects key=value, got '{item}'.")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise CtxDistillError(f"--set {item}: cannot parse the value ({e}).") from e
    return out


def load_config(config_file: str | None = None, sets: list[str] | None = None, defaults: dict | None = None,
                **cli_values) -> DistillConfig:
    """defaults (a recipe's own) ← YAML ← command-line flags ← --set."""
    cfg = apply_overrides(DistillConfig(), defaults or {}, "the recipe defaults")
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise CtxDistillError(f"Config file not found: {path}. Check the path given to --config.")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise CtxDistillError(f"{path} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise CtxDistillError(f"{path} must be a YAML mapping of key: value (see configs/offline.yaml).")
        apply_overrides(cfg, data, str(path))
    apply_overrides(cfg, {k: v for k, v in cli_values.items() if v is not None}, "the command line")
    apply_overrides(cfg, parse_set(sets), "--set")
    return cfg.validate()


