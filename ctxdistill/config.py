"""Run configuration: one class per recipe, composed from shared sections; plain data, validated by pydantic.

Values come from the recipe's class defaults ← YAML (--config) ← command-line flags ← --set key=value. Keys stay
flat (`--set lr=1e-3`, not `optim.lr`), so a YAML file is one mapping. A key of another recipe is refused with the
name of the recipe that uses it; `configs/<recipe>.yaml` is generated from these classes (`make configs`).
"""

from __future__ import annotations

import difflib
import sys
import typing
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ctxdistill import CtxDistillError

Positive = Annotated[int, Field(gt=0)]
Count = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Share = Annotated[float, Field(ge=0, le=1)]
OpenShare = Annotated[float, Field(gt=0, lt=1)]
Names = Union[str, list]  # a name, or a list of them

SUMMARY_PROMPTS = ["Summarize the document above.", "List the key facts of the document above, one per line."]
QUESTION_PROMPT = "Write a quiz question about one fact from the document above. Reply with the question only."


def doc(default, text: str):
    """A field default with the line that documents it in configs/*.yaml."""
    return Field(default, description=text)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True,
                              allow_inf_nan=False)

    def to_dict(self) -> dict:
        return self.model_dump()


class ModelSection(Section):
    """model"""
    model: str = doc("default", "HF id, local directory, .gguf file, or 'default' (SmolLM2-135M-Instruct)")
    dtype: str = doc("auto", "auto: bf16 where the hardware has it, else fp32; or float32 | bfloat16 | float16")
    device: str = doc("", '"" picks cuda when present, else cpu')
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 0  # seed * 100_003 + epoch must still fit torch's 64-bit seeds

    @model_validator(mode="after")
    def _known_dtype(self):
        from ctxdistill.core.models import DTYPES

        if not self.model.strip():
            raise ValueError("model is empty. Pass --model with a Hugging Face id, a path, or 'default'.")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not valid; use auto or one of {', '.join(DTYPES)}.")
        check_device(self.device)
        return self


def available_devices() -> list[str]:
    """The devices a run can use on this machine, as `device` names."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def check_device(name: str) -> None:
    """"" or a device this machine has: a run must not fall back to another device than the one its manifest names."""
    if not name:
        return
    import torch

    available = available_devices()
    use = f'Use device="" (cuda when present, else cpu) or one of this machine\'s devices: {", ".join(available)}.'
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a device name. {use}") from None
    if device.type == "cpu" or f"{device.type}:{device.index}" in available or (
            device.index is None and any(d.split(":")[0] == device.type for d in available)):
        return
    if device.type == "cuda":
        why = (f"it has {torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available()
               else "torch.cuda.is_available() is False")
    else:
        why = "torch.backends.mps.is_available() is False" if device.type == "mps" else "runs use cpu, cuda or mps"
    raise ValueError(f"device={name!r} is not available on this machine ({why}; PyTorch {torch.__version__}). {use}")


class TrainedSection(Section):
    """what is trained"""
    finetune: Literal["lora", "full"] = "lora"
    lora_r: Positive = 16
    lora_alpha: Positive = 32
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    lora_targets: Names = doc("all-linear", "all-linear, or a list of module names, e.g. [q_proj, v_proj]")
    gradient_checkpointing: bool = doc(False, "recompute activations in the backward: less memory, ~1/3 more compute")

    @model_validator(mode="after")
    def _target_names(self):
        targets = self.lora_targets
        if not (isinstance(targets, str) and targets.strip()) and not (
                isinstance(targets, list) and targets and all(isinstance(t, str) and t.strip() for t in targets)):
            raise ValueError(f"lora_targets must be all-linear or a list of module names, e.g. [q_proj, v_proj]; "
                             f"got {targets!r}.")
        return self


class OptimSection(Section):
    """optimization and budget"""
    lr: NonNegative = doc(0.0, "0: 2e-3 for LoRA, 1e-5 for full fine-tuning")
    weight_decay: NonNegative = 0.0
    warmup_ratio: Share = 0.1
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    grad_clip: NonNegative = doc(1.0, "0: no clipping")
    epochs: NonNegative = 5.0
    max_steps: Count = doc(0, "0: epochs decide")
    batch_size: Positive = doc(8, "examples per optimizer step")
    micro_batch_size: Positive = doc(8, "examples per forward; batch_size is accumulated from them")
    checkpoint_every: Positive = doc(25, "optimizer steps between checkpoints (--resume continues from the last)")
    max_minutes: NonNegative = doc(0.0, "wall-clock budget of generation + training; 0: none")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr > 0 else (2e-3 if getattr(self, "finetune", "lora") == "lora" else 1e-5)

    @model_validator(mode="after")
    def _whole_micro_batches(self):
        if self.batch_size >= self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size "
                             f"({self.micro_batch_size}). Change --set batch_size=... or micro_batch_size=....")
        return self


class LossSection(Section):
    """loss"""
    chunk_size: Positive = doc(256, "completion rows projected to the vocabulary at once")


class ObjectiveSection(LossSection):
    """objective: a term, terms joined by "+", or a mapping {term: weight}, e.g. {forward_kl: 1.0, sft: 0.1}"""
    objective: Union[str, dict] = doc("forward_kl", "forward_kl | reverse_kl | jsd | sampled_kl | sft")
    temperature: PositiveFloat = 1.0
    t2_scaling: bool = doc(False, "multiply the divergence terms by T^2")
    jsd_beta: float = doc(0.5, "jsd only: 0 = forward KL, 1 = reverse KL")
    top_k: Count = doc(0, "0: full vocabulary; k: compare on a top-k support")
    top_k_support: Literal["teacher", "student", "union"] = "teacher"
    top_k_tail: Literal["renorm", "bucket"] = doc("renorm", "bucket: the rest of the mass is one extra outcome")
    skip_first: Count = doc(0, "completion tokens at the start that carry no loss")
    hidden_weight: NonNegative = doc(0.0, "Deep Context Distillation's hidden-state term, against the logit terms")
    hidden_layers: Names = doc("all", "all, or a list of layer indices, e.g. [10, 20, 29]")

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

    @model_validator(mode="after")
    def _objective_builds(self):
        self.build_objective()  # refuses unknown terms, bad weights, supports and tails
        return self


class GenerationSection(Section):
    """generation"""
    max_new_tokens: Positive = doc(96, "tokens per generated completion")
    gen_batch_size: Positive = doc(64, "sequences decoded together")
    generation_backend: Literal["auto", "torch", "llamacpp"] = doc(
        "auto", "who decodes samples: torch (the project's loop) | llamacpp (llama.cpp on the CPU; pip extra "
                "'llamacpp'; docs/generation.md) | auto: llamacpp when installed, on CPU, for a GGUF-based model")
    llamacpp_outtype: Literal["f32", "f16", "bf16"] = doc("f16", "generation_backend=llamacpp: the weights' GGUF type")


class TeacherSection(Section):
    """teacher"""
    teacher: str = doc("", '"": the base with the adapter off (LoRA) or a frozen copy (full); else another model, '
                           "same tokenizer")
    context_kind: Literal["system", "prefix", "document"] = doc("system", "where the context goes in the chat")
    prefix_cache: bool = doc(True, "encode the context once; every teacher forward reuses its KV cache")
    teacher_adapter: str = doc("", 'a PEFT adapter folder: the teacher is the base with it on (a second adapter on '
                                   'the same weights, no copy); "": none')
    amplify: NonNegative = doc(0.0, "α of context-amplified teacher targets (and offline samples): (1+α)·log p(·|c,x) "
                                    "− α·log p(·|x); 0: the teacher as is")


    @model_validator(mode="after")
    def _teacher_adapter_on_the_base(self):
        if not self.teacher_adapter:
            return self
        if self.teacher:
            raise ValueError(f"teacher_adapter puts an adapter on the student's own base, but teacher={self.teacher!r} "
                             "names another teacher. Use one of the two.")
        if getattr(self, "finetune", "lora") != "lora":
            raise ValueError("teacher_adapter shares the base weights between the teacher's adapter and the "
                             "student's: it needs finetune=lora (full fine-tuning changes the base).")
        from ctxdistill.core.models import check_adapter

        try:
            check_adapter(self.teacher_adapter)
        except CtxDistillError as e:
            raise ValueError(f"teacher_adapter: {e}") from None
        return self


class PerRowTemplatesSection(Section):
    """per-row contexts (--data): each row's teacher view; see docs/per_row_contexts.md"""
    teacher_template: str = doc("{prompt}\n\n{privileged_context}", "--data: the teacher's last user turn, from "
                                "the row's prompt and privileged context (TRL's teacher_prompt_template)")
    demonstration_template: str = doc(
        "{prompt}\n\nThis is an example of a response to the question:\n{demonstration}\n\nNow answer with a "
        "response of your own.", "--data rows with a \"demonstration\": the teacher's last user turn (SDFT)")
    solution_template: str = doc(
        "{prompt}\n\nHere is a reference solution:\n{solution}\n\nNow solve the problem yourself.",
        "--data rows with a \"solution\": the teacher's last user turn (OPSD)")

    @model_validator(mode="after")
    def _templates_name_their_fields(self):
        for key, fields in (("teacher_template", ("{prompt}", "{privileged_context}")),
                            ("demonstration_template", ("{prompt}", "{demonstration}")),
                            ("solution_template", ("{prompt}", "{solution}"))):
            missing = [f for f in fields if f not in getattr(self, key)]
            if missing:
                raise ValueError(f"{key} must contain {' and '.join(fields)}; it lacks {', '.join(missing)}.")
        return self


class PerRowSection(Section):
    """SDFT-style teachers (onpolicy); see docs/per_row_contexts.md"""
    teacher_kind: Literal["base", "live", "ema"] = doc(
        "base", "base: the frozen base (adapter off) | live: the current student | ema: a second LoRA adapter holding "
                "the moving average of the student's (TRL SDFT's teacher_model_kind)")
    ema_decay: Share = doc(0.99, "teacher_kind=ema: after each optimizer step ema = decay·ema + (1−decay)·student")
    generate_from_teacher: bool = doc(False, "sample every step from the teacher's view (the row's context) with the "
                                             "teacher's weights instead of the student's own view")

    @model_validator(mode="after")
    def _teacher_kind_is_the_students_adapter(self):
        if self.teacher_kind != "base" and getattr(self, "finetune", "lora") != "lora":
            raise ValueError(f"teacher_kind={self.teacher_kind} uses the student's LoRA adapter: it needs "
                             "finetune=lora.")
        if self.teacher_kind != "base" and (getattr(self, "teacher", "") not in ("", "live")
                                            or getattr(self, "teacher_adapter", "")):
            raise ValueError(f"teacher_kind={self.teacher_kind} is the student's own weights; it cannot be combined "
                             "with teacher or teacher_adapter (another teacher). Use one of the two.")
        return self


class QuerySection(Section):
    """queries and samples"""
    num_queries: Positive = doc(64, "made when there are no prompts: probes of the context's statements, everyday "
                                    "requests, model-written queries; all through the quality gate")
    everyday_fraction: Share = doc(0.5, "no prompts: share of the queries from the bundled everyday requests (they "
                                        "also fill what the probes leave)")
    synthesized_fraction: Share = doc(0.1, "no prompts: share of the queries the model writes shown the context")
    probes_per_statement: Count = doc(3, "no prompts: questions about each statement of the context (0: none)")
    query_temperature: PositiveFloat = 1.0
    sample_temperature: NonNegative = doc(0.8, "0: greedy")


class AnchorSection(Section):
    """anchors: general prompts where the student keeps to the teacher's own no-context answers"""
    anchor_fraction: NonNegative = doc(0.0, "anchor pairs per training pair (0: none)")
    anchor_prompts: str = doc("", 'a prompts file, or "" for the bundled general set')


class DocumentSection(Section):
    """documents"""
    max_seq_len: Count = doc(0, "0: the model's window")
    docs_per_batch: Positive = doc(1, "--stream: documents that arrive together, evaluated after each batch")


class EvalSection(Section):
    """evaluation written to the report"""
    eval_max_new_tokens: Positive = 48


class TrackingSection(Section):
    """experiment tracking (docs/tracking.md)"""
    report_to: Literal["none", "tensorboard", "wandb", "all"] = doc(
        "none", "none | tensorboard (event files in OUT/logs) | wandb | all (both); each needs its pip extra")
    run_name: str = doc("", 'the run\'s name in W&B; "": the name of the --out folder')

    @model_validator(mode="after")
    def _backends_installed(self):
        from ctxdistill.core.tracking import missing_extra

        problem = missing_extra(self.report_to)
        if problem:  # before the run starts: nothing is loaded or written
            raise ValueError(problem)
        return self


class OfflineConfig(ModelSection, TrainedSection, ObjectiveSection, OptimSection, TeacherSection, QuerySection,
                    GenerationSection, AnchorSection, PerRowTemplatesSection, EvalSection, TrackingSection):
    """offline: teacher samples, several contexts, few-shot examples, scratch-pads"""
    mode: Literal["sequential", "ensemble"] = doc("sequential", "several contexts: one after another | teachers "
                                                               "mixed")
    ensemble_weighting: Literal["posterior", "uniform"] = doc(
        "posterior", "ensemble: each view weighed by p(context | query, completion so far) | uniform")
    replay: NonNegative = doc(1.0, "sequential: each later stage also replays this many x its size of earlier samples")
    num_examples: Positive = doc(4, "--examples: examples shown to the teacher per query (a fresh subset each time)")
    example_sets: Positive = doc(1, "--examples: subsets per query whose teacher distributions are averaged")
    scratchpad: bool = doc(False, "the teacher reasons before answer_delimiter; the student learns only the answer")
    answer_delimiter: str = "Answer:"
    scratchpad_instruction: str = "Think step by step, then write 'Answer:' followed by the final answer."
    amplify: Optional[NonNegative] = doc(None, "α of context-amplified teacher samples and targets: (1+α)·log "
                                               "p(·|c,x) − α·log p(·|x); 0: the teacher as is; null (auto): 1 with one "
                                               "live teacher view, else 0")
    teacher_cache: bool = doc(False, "score the samples once, keep the teacher's top-k on disk (needs top_k > 0)")
    samples_per_query: Positive = doc(8, "teacher samples per given prompt or probe of a statement")
    samples_per_other_query: Positive = doc(2, "teacher samples per everyday or model-written query")
    evidence_filter: Annotated[float, Field(ge=0, lt=1)] = doc(
        0.0, "drop this share of the teacher samples the context explains least (mean log p(y|c,x) − log p(y|x))")

    @property
    def one_teacher_view(self) -> bool:
        """One live teacher view per sample: what amplification sharpens (a split context is checked at run time)."""
        return not self.teacher_cache and self.mode == "sequential" and self.example_sets == 1

    @model_validator(mode="after")
    def _offline_rules(self):
        if self.scratchpad and not self.answer_delimiter.strip():
            raise ValueError("scratchpad needs a non-empty answer_delimiter.")
        if self.teacher == "live":
            raise ValueError("teacher=live (the current student as its own teacher) is for the onpolicy recipe; "
                             "offline samples are written before training, by a fixed teacher.")
        if self.amplify and not self.one_teacher_view:
            raise ValueError("amplify sharpens one teacher view against the same model without the context; it "
                             "needs the live teacher (teacher_cache=false) and one view (mode=sequential, "
                             "example_sets=1). Leave amplify unset (auto) or set it to 0.")
        if self.teacher_cache and (not self.top_k or self.top_k_support != "teacher"):
            raise ValueError("teacher_cache stores the teacher's top-k: set top_k > 0 and top_k_support=teacher.")
        objective = self.build_objective()
        if self.teacher_cache and ("sampled_kl" in objective.terms or objective.hidden_weight > 0):
            raise ValueError("teacher_cache cannot serve sampled_kl or the hidden-state term (they need a live "
                             "teacher); set teacher_cache=false.")
        return self


class OnpolicyConfig(ModelSection, TrainedSection, ObjectiveSection, OptimSection, TeacherSection, PerRowSection,
                     PerRowTemplatesSection, QuerySection, GenerationSection, AnchorSection, EvalSection,
                     TrackingSection):
    """onpolicy: the student samples without the context, the teacher scores the same ids with it"""
    objective: Union[str, dict] = doc(
        {"reverse_kl": 1.0, "forward_kl": 1.0}, "on the student's samples: reverse KL (the paper) plus forward KL, "
                                                "which moves mass onto a context token the student still finds "
                                                "unlikely; the paper's loss alone: configs/presets/opcd-paper.yaml")
    top_k: Count = 256
    top_k_support: Literal["teacher", "student", "union"] = doc("union", "the teacher's likeliest tokens are in the "
                                                                         "divergence too, not only the student's")
    teacher: str = doc("", '"": the base with the adapter off | live: the current student | another model')
    offline_fraction: Share = doc(0.0, "share of steps on teacher samples instead of the student's own")
    sample_temperature: NonNegative = 1.0
    max_new_tokens: Positive = 48
    batch_size: Positive = doc(8, "queries (= samples) per optimizer step: more, smaller steps learn more per minute")
    micro_batch_size: Positive = 8
    max_steps: Count = doc(200, "every step samples afresh, so training is counted in steps")
    amplify: NonNegative = doc(1.0, "α of context-amplified teacher targets: (1+α)·log p(·|c,x) − α·log p(·|x); 0: "
                                    "the teacher as is")
    probe_repeats: Positive = doc(8, "each given prompt or probe of a statement is drawn this many times as often as an "
                                     "everyday or model-written query")
    anchor_fraction: Optional[NonNegative] = doc(
        None, "anchor queries per training query: general requests on which the student is held to the base "
              "without the context (retention). Unset: 0.1 for a context, 0 for --data rows (as TRL's SDFT); 0: none")
    lr: NonNegative = 2e-3
    warmup_ratio: Share = 0.05

    @model_validator(mode="after")
    def _live_teacher_needs_lora(self):
        if self.teacher == "live" and self.finetune != "lora":
            raise ValueError("teacher=live reads the context with the student's current weights; it needs "
                             "finetune=lora (a full fine-tune would score with the weights it is updating).")
        if (self.anchor_fraction or 0) > 0 and self.hidden_weight > 0:
            raise ValueError("anchors hold the final rows to the base; the hidden-state term has no base rows to "
                             "compare with. Set anchor_fraction=0 or hidden_weight=0.")
        return self


class ExperienceConfig(OnpolicyConfig):
    """experience: solve tasks, write notes from the traces, keep the best, consolidate them on-policy"""
    amplify: NonNegative = doc(0.0, "α of context-amplified targets in the consolidation (measured on personas, "
                                    "not on notes: off by default)")
    anchor_fraction: NonNegative = doc(0.0, "retention anchors in the consolidation (measured on personas, not on "
                                            "notes: off by default)")
    # The consolidation was measured with the on-policy settings of the OPCD paper; they stay its defaults.
    objective: Union[str, dict] = "reverse_kl"
    top_k_support: Literal["teacher", "student", "union"] = "student"
    max_new_tokens: Positive = 64
    batch_size: Positive = doc(16, "queries (= samples) per optimizer step")
    micro_batch_size: Positive = 16
    max_steps: Count = doc(110, "every step samples afresh, so training is counted in steps")
    select_fraction: OpenShare = doc(0.25, "tasks that pick the best note set")
    test_fraction: OpenShare = doc(0.25, "tasks for the report")
    experience_candidates: Positive = doc(4, "note sets written (sampled) from the model's own traces")
    traces_per_note: Positive = doc(6, "traces shown for writing one note set")
    max_notes: Positive = doc(5, "notes per set")

    @model_validator(mode="after")
    def _tasks_left_to_train(self):
        if self.select_fraction + self.test_fraction >= 1:
            raise ValueError("select_fraction and test_fraction must leave tasks for training "
                             f"(got {self.select_fraction} and {self.test_fraction}).")
        return self


class DiscConfig(ModelSection, TrainedSection, ObjectiveSection, OptimSection, DocumentSection, EvalSection,
                 TrackingSection):
    """disc: teacher = frozen initial model on prefix + suffix, student = suffix alone; forward KL at T=2 (x T^2) plus
    the suffix's own tokens (sft), full weights. The paper's loss alone: --config configs/presets/disc-paper.yaml"""
    finetune: Literal["lora", "full"] = doc("full", "full: measured to learn facts stated once; the paper: lora")
    objective: Union[str, dict] = doc(
        {"forward_kl": 0.25, "sft": 1.0}, "the hybrid: KL to the prefix-conditioned teacher regularises next-token "
                                          "learning of the suffix; the paper: forward_kl")
    temperature: PositiveFloat = 2.0
    t2_scaling: bool = True
    lr: NonNegative = doc(1e-4, "the paper's LoRA: 1e-3")
    warmup_ratio: Share = 0.05
    epochs: NonNegative = doc(20.0, "passes over the documents; each pass draws fresh splits")
    batch_size: Positive = doc(1, "documents per optimizer step: a document's splits accumulate into one step")
    micro_batch_size: Positive = 1
    split_strategy: Literal["random", "middle", "uniform", "token"] = doc(
        "random", "random (splits_per_doc - 1 random sentence boundaries + the last sentence) | middle | uniform | "
                  "token")
    splits_per_doc: Positive = doc(8, "(prefix, suffix) splits per document per step")
    max_suffix_tokens: Count = doc(0, "0: the rest of the document, up to half the window")


class FinetuneConfig(ModelSection, TrainedSection, LossSection, OptimSection, DocumentSection, EvalSection,
                     TrackingSection):
    """finetune: next-token prediction on the document text, full weights"""
    finetune: Literal["lora", "full"] = "full"
    lr: NonNegative = 1e-5
    warmup_ratio: Share = 0.05
    epochs: NonNegative = doc(20.0, "passes over the documents")
    batch_size: Positive = doc(1, "documents per optimizer step")
    micro_batch_size: Positive = 1


class FinetuneKLConfig(FinetuneConfig):
    """finetune-kl: next-token prediction + kl_weight x KL(initial || model) on the same tokens"""
    kl_weight: NonNegative = doc(1.0, "weight of KL(initial || model) next to next-token prediction")
    temperature: PositiveFloat = 1.0


class LoraFinetuneConfig(FinetuneConfig):
    """lora-finetune: next-token prediction on the document text, a LoRA adapter"""
    finetune: Literal["lora", "full"] = "lora"
    lr: NonNegative = 1e-3


class SftConfig(ModelSection, TrainedSection, LossSection, OptimSection, EvalSection, TrackingSection):
    """sft: supervised fine-tuning on input/output pairs or chats; the loss is on the answers (assistant turns) only"""
    max_seq_len: Count = doc(0, "0: the model's window; a longer example is refused")
    eval_max_new_tokens: Positive = doc(64, "--eval: tokens generated per answer (exact match needs the whole answer)")
    generation_backend: Literal["auto", "torch", "llamacpp"] = doc(
        "auto", "who decodes the --eval answers: torch | llamacpp | auto (docs/generation.md); LoRA runs only")
    llamacpp_outtype: Literal["f32", "f16", "bf16"] = doc("f16", "generation_backend=llamacpp: the weights' GGUF type")


class KnowledgeConfig(ModelSection, TrainedSection, ObjectiveSection, OptimSection, GenerationSection,
                      AnchorSection, EvalSection, TrackingSection):
    """knowledge: documents -> plug-in LoRA modules by deep context distillation (or a next-token baseline)"""
    lora_alpha: Positive = 16
    lr: NonNegative = 1e-3
    hidden_weight: NonNegative = 1.0
    epochs: NonNegative = 16.0
    warmup_ratio: Share = 0.05
    anchor_fraction: NonNegative = 0.5
    max_seq_len: Count = doc(0, "0: the model's window")
    knowledge_objective: Literal["dcd", "ntp-doc", "ntp-synth"] = doc("dcd", "dcd | ntp-doc | ntp-synth (--objective)")
    knowledge_data: Literal["synthetic", "raw"] = doc("synthetic", "dcd: synthetic (summaries + QA about each chunk) "
                                                                   "| raw (document windows)")
    chunk_tokens: Positive = doc(512, "documents are cut into chunks of this many tokens")
    chunk_overlap: Count = doc(64, "tokens shared by consecutive chunks")
    summary_prompts: Names = Field(default_factory=lambda: list(SUMMARY_PROMPTS))
    summaries_per_prompt: Count = doc(8, "sampled per chunk per summary prompt")
    summary_view: Literal["text", "prompt"] = doc("text", "what the student reads of a summary: the text alone | "
                                                          "with its instruction")
    question_prompt: str = QUESTION_PROMPT
    questions_per_chunk: Count = doc(64, "sampled; the kept (deduplicated) ones are answered with the chunk in context")
    answers_per_question: Count = doc(1, "1: the greedy answer; more: sampled answers")
    synth_temperature: PositiveFloat = 0.7
    raw_window: Positive = doc(256, "knowledge_data=raw: tokens per window (the teacher sees all of it)")
    raw_loss_fraction: OpenShare = doc(0.25, "raw: the last share of the window, seen alone by the student, carries "
                                             "the loss")
    retrieval_top_k: Positive = doc(1, "chunks put in context for the retrieval rows of the evaluation")

    @model_validator(mode="after")
    def _knowledge_rules(self):
        if self.finetune != "lora":
            raise ValueError("A knowledge module is a LoRA adapter: the knowledge recipe needs finetune=lora.")
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_tokens "
                             f"({self.chunk_tokens}).")
        if isinstance(self.summary_prompts, str):
            self.__dict__["summary_prompts"] = [self.summary_prompts] if self.summary_prompts.strip() else []
        if not all(isinstance(p, str) and p.strip() for p in self.summary_prompts):
            raise ValueError("summary_prompts must be a list of non-empty instructions (or [] for none).")
        if not self.question_prompt.strip() and self.questions_per_chunk:
            raise ValueError("question_prompt is empty; write the instruction, or set questions_per_chunk=0.")
        return self


CONFIGS: dict[str, type[Section]] = {
    "offline": OfflineConfig, "onpolicy": OnpolicyConfig, "experience": ExperienceConfig, "disc": DiscConfig,
    "finetune": FinetuneConfig, "finetune-kl": FinetuneKLConfig, "lora-finetune": LoraFinetuneConfig,
    "knowledge": KnowledgeConfig, "sft": SftConfig,
}
ALIASES = {"learning_rate": "lr", "lr_rate": "lr", "rank": "lora_r", "r": "lora_r", "alpha": "lora_alpha",
           "num_epochs": "epochs", "steps": "max_steps", "k": "top_k"}


def owners_of(key: str) -> list[str]:
    return [name for name, cls in CONFIGS.items() if key in cls.model_fields]


def check_keys(cls: type[Section], recipe: str, values: dict, source: str) -> None:
    """Unknown keys get a suggestion, keys of another recipe the name of that recipe; bools are not numbers."""
    names = list(cls.model_fields)
    for key, value in values.items():
        if key not in names:
            owners = owners_of(key)
            if owners:
                raise CtxDistillError(f"'{key}' (in {source}) is a key of the {', '.join(owners)} "
                                      f"recipe{'s' if len(owners) > 1 else ''}; the "
                                      f"{recipe} recipe does not use it. Remove it, or run that recipe.")
            close = ([ALIASES[key]] if key in ALIASES else []) + difflib.get_close_matches(key, names, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else f" Valid keys: {', '.join(names)}."
            raise CtxDistillError(f"Unknown config key '{key}' in {source}.{hint}")
        kind = _type_name(cls.model_fields[key].annotation)
        if isinstance(value, bool) and kind in ("int", "float"):
            raise CtxDistillError(f"{key} must be of type {kind}, got {value!r}.")


def _type_name(annotation) -> str:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Annotated:
        return _type_name(args[0])
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(map(str, args))
    if args:
        return " or ".join(_type_name(a) for a in args)
    return getattr(annotation, "__name__", str(annotation))


def friendly_error(e: ValidationError, cls: type[Section]) -> CtxDistillError:
    """pydantic's first error in the project's words: the key, what it must be, and the value given."""
    err = e.errors()[0]
    key = err["loc"][0] if err["loc"] else ""
    value, kind, ctx = err.get("input"), err["type"], err.get("ctx", {})
    if kind == "value_error":
        return CtxDistillError(str(ctx.get("error", err["msg"])).removeprefix("Value error, "))
    if kind == "literal_error":
        choices = typing.get_args(cls.model_fields[key].annotation)
        return CtxDistillError(f"{key}={value!r} is not valid; use one of {', '.join(choices)}.")
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        bound = next(iter(ctx.values()))
        return CtxDistillError(f"{key} must be {bounds[kind]} {bound}, got {value}.")
    if kind == "finite_number":
        return CtxDistillError(f"{key} must be a finite number, got {value!r}.")
    return CtxDistillError(f"{key} must be of type {_type_name(cls.model_fields[key].annotation)}, got {value!r}.")


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


def read_yaml(config_file: str) -> dict:
    from ctxdistill.core.files import read_text

    path = Path(config_file)
    if not path.is_file():
        raise CtxDistillError(f"Config file not found: {path}. Check the path given to --config.")
    try:
        data = yaml.safe_load(read_text(path, "--config")) or {}
    except yaml.YAMLError as e:
        raise CtxDistillError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise CtxDistillError(f"{path} must be a YAML mapping of key: value (see configs/offline.yaml).")
    return data


def load_config(recipe: str = "offline", config_file: str | None = None, sets: list[str] | None = None,
                **cli_values):
    """The recipe's defaults ← YAML ← command-line flags (None: not given) ← --set, validated."""
    if recipe not in CONFIGS:
        raise CtxDistillError(f"Unknown recipe '{recipe}'. Available: {', '.join(CONFIGS)}.")
    cls = CONFIGS[recipe]
    values: dict = {}
    sources = [(read_yaml(config_file) if config_file else {}, str(config_file)),
               ({k: v for k, v in cli_values.items() if v is not None}, "the command line"),
               (parse_set(sets), "--set")]
    for layer, source in sources:
        check_keys(cls, recipe, layer, source)
        values.update(layer)
    try:
        return cls(**values)
    except ValidationError as e:
        raise friendly_error(e, cls) from None


def config_yaml(recipe: str) -> str:
    """configs/<recipe>.yaml: every key of the recipe with its default and its line of documentation, by section."""
    cls = CONFIGS[recipe]
    lines = [f"# Every key of `ctxdistill {'' if recipe == 'experience' else 'distill '}{recipe}`, with its default. "
             "Pass with --config FILE or --set key=value.", "# Generated from ctxdistill/config.py (make configs)."]
    seen = set()
    recipes = [c for c in reversed(cls.__mro__) if c in CONFIGS.values()]  # e.g. onpolicy, then experience
    shared = [c for c in cls.__mro__ if issubclass(c, Section) and c is not Section and c not in recipes]
    for section in shared + recipes:
        own = [k for k in section.__annotations__ if k in cls.model_fields and k not in seen]
        if not own:
            continue
        lines += ["", "# -- " + " ".join((section.__doc__ or section.__name__).split())]
        for key in own:
            seen.add(key)
            field = cls.model_fields[key]
            value = field.get_default(call_default_factory=True)
            text = f"{key}: " + yaml.safe_dump([value], default_flow_style=True, width=10_000).strip()[1:-1]
            note = next((c.model_fields[key].description for c in cls.__mro__
                         if issubclass(c, Section) and key in c.model_fields and c.model_fields[key].description), "")
            lines.append(f"{text}  # {note}" if note else text)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m ctxdistill.config configs/  — rewrites every configs/<recipe>.yaml
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "configs")
    for name in CONFIGS:
        (folder / f"{name}.yaml").write_text(config_yaml(name), encoding="utf-8")
        print(f"wrote {folder / name}.yaml")
