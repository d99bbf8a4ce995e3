"""End to end on the real default model (SmolLM2-135M-Instruct): a short offline run through the CLI."""

import json

import pytest
from conftest import run_cli

pytestmark = pytest.mark.slow


def test_short_offline_run_on_the_default_model_moves_the_student_toward_the_teacher(tmp_path):
    ctx = tmp_path / "persona.json"
    ctx.write_text(json.dumps({
        "context": "Your name is Orla. You live in the lighthouse of Gullrock.",
        "eval": [{"q": "What is your name?", "a": ["Orla"]}, {"q": "Where do you live?", "a": ["Gullrock"]}]}))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Who are you?\nWhere is your home?\nIntroduce yourself.\nWhat should I call you?\n")
    out = tmp_path / "run"
    done = run_cli("distill", "offline", "--context", str(ctx), "--prompts", str(prompts), "--out", str(out),
                   "--set", "samples_per_query=4", "--set", "max_new_tokens=40", "--set", "max_steps=12",
                   "--set", "eval_max_new_tokens=24", "--max-minutes", "8")
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    kl = m["metrics"]["evaluation"]["kl_to_teacher"]
    assert kl["student"] < 0.7 * kl["base"]  # the student without context is much closer to the teacher
    assert m["metrics"]["evaluation"]["accuracy"]["teacher"] >= 1

    # the adapter is a plain PEFT adapter over a plain transformers base
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    base = PeftConfig.from_pretrained(out / "adapter").base_model_name_or_path
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out / "adapter")
    assert model.active_adapter == "default"
