"""Shared fixtures: tiny random models (fast, no files) that use the default model's real tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_llama(tokenizer, hidden: int = 64, layers: int = 2, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tokenizer():
    from ctxdistill.core.models import load_tokenizer

    return load_tokenizer("default")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A saved tiny random Llama with the default tokenizer and chat template: usable as --model."""
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_llama(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_model(tokenizer):
    return tiny_llama(tokenizer)


@pytest.fixture(scope="session")
def persona_files(tmp_path_factory) -> dict:
    """A small persona context with train prompts and eval questions, like examples/persona.json."""
    import json

    d = tmp_path_factory.mktemp("persona")
    ctx = {"context": "Your name is Pip. You live in the lighthouse of Gullrock.",
           "eval": [{"q": "What is your name?", "a": ["Pip"]}, {"q": "Where do you live?", "a": ["Gullrock"]}]}
    (d / "persona.json").write_text(json.dumps(ctx))
    (d / "prompts.txt").write_text("Who are you?\nWhere is your home?\nSay hello.\nWhat do you do all day?\n")
    return {"context": d / "persona.json", "prompts": d / "prompts.txt", "dir": d}


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps a process-wide state that refuses a second, different mixed_precision: reset per test."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def run_cli(*args: str, env_extra: dict | None = None, timeout: int = 600):
    """Run the installed `ctxdistill` command in a subprocess, as a user would."""
    import subprocess
    import sys

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "ctxdistill.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
