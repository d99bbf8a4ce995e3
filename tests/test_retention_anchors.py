"""Retention anchors in the on-policy recipe: general requests on which the student is held to the base model
without the context, so that what the context changes (a persona's voice) does not leak into every answer."""

import json

import pytest
from conftest import run_cli
from test_onpolicy import TINY, run_onpolicy

from ctxdistill.config import OnpolicyConfig
from ctxdistill.core.losses import DistillLoss, collate_pairs
from ctxdistill.core.models import add_lora
from ctxdistill.core.objectives import Objective
from ctxdistill.core.pairs import Context, assistant_header, build_pair, render_prompt
from ctxdistill.core.teacher import Teacher
from ctxdistill.data.anchors import anchor_draws


def persona_pair(tokenizer, anchor: bool):
    """A pair whose teacher view reads a persona the student does not see."""
    q = "What is the capital of France?"
    pair = build_pair(render_prompt(tokenizer, q, Context("You are Pip, a pirate. Talk like one.")),
                      render_prompt(tokenizer, q), tokenizer(" Arr, Paris!", add_special_tokens=False)["input_ids"],
                      assistant_header(tokenizer))
    pair.anchor = anchor
    return pair


@pytest.mark.parametrize("amplify", [0.0, 2.0])
def test_an_anchor_pair_is_held_to_the_base_without_the_context(tokenizer, tiny_model, amplify):
    student = add_lora(tiny_model, r=4, alpha=8)  # a fresh adapter: the student is still the base
    loss = DistillLoss(student, Teacher(student), Objective({"forward_kl": 1.0, "reverse_kl": 1.0}), amplify=amplify)
    try:
        anchored = float(loss(collate_pairs([persona_pair(tokenizer, True)], tokenizer.pad_token_id))[0].detach())
        taught = float(loss(collate_pairs([persona_pair(tokenizer, False)], tokenizer.pad_token_id))[0].detach())
        mixed = collate_pairs([persona_pair(tokenizer, False), persona_pair(tokenizer, True)], tokenizer.pad_token_id)
    finally:
        student.unload()
    assert anchored == pytest.approx(0.0, abs=1e-5)  # the base is its own target: nothing to learn
    assert taught > 1e-3  # the same pair, not an anchor: the persona's teacher differs from the base
    n = persona_pair(tokenizer, True).completion_len
    assert mixed.anchor_rows.tolist() == [False] * n + [True] * n


def test_anchor_draws_cycle_through_every_prompt_before_repeating_one():
    draws = anchor_draws(["a", "b", "c"], 7, seed=0)
    assert len(draws) == 7 and sorted(draws[:3]) == sorted(draws[3:6]) == ["a", "b", "c"]
    assert anchor_draws(["a", "b"], 5, seed=1) == anchor_draws(["a", "b"], 5, seed=1)
    assert anchor_draws([], 3, seed=0) == []


def test_onpolicy_mixes_anchor_queries_in_and_counts_them(tiny_model_dir, persona_files, tmp_path):
    anchors = tmp_path / "anchors.txt"
    anchors.write_text("Name a fruit.\nWhat is two plus two?\n")
    done = run_onpolicy(tiny_model_dir, persona_files, tmp_path / "run", "--set", "anchor_fraction=0.5",
                        "--set", f"anchor_prompts={anchors}")
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["data"]["query_origins"]["anchor"] == 2
    assert "| anchor |" in (tmp_path / "run" / "report.md").read_text()


def test_anchors_are_refused_with_the_hidden_state_term():
    with pytest.raises(ValueError, match="anchor_fraction=0 or hidden_weight=0"):
        OnpolicyConfig(anchor_fraction=0.2, hidden_weight=1.0)
    assert OnpolicyConfig(hidden_weight=1.0).anchor_fraction is None  # unset: no conflict


def test_anchors_default_on_for_a_context_and_off_for_data_rows_unless_asked(tiny_model_dir, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": q, "privileged_context": "Answer in exactly three words."}) + "\n"
                            for q in ("Hi", "Name a colour.")))
    common = ["distill", "onpolicy", "--model", str(tiny_model_dir), "--data", str(rows), *TINY]
    done = run_cli(*common, "--out", str(tmp_path / "plain"))
    assert done.returncode == 0, done.stderr[-3000:]
    origins = json.loads((tmp_path / "plain" / "manifest.json").read_text())["data"]["query_origins"]
    assert "anchor" not in origins  # TRL's SDFT has none: not on by default with rows
    done = run_cli(*common, "--out", str(tmp_path / "anchored"), "--set", "anchor_fraction=0.5")
    assert done.returncode == 0, done.stderr[-3000:]
    origins = json.loads((tmp_path / "anchored" / "manifest.json").read_text())["data"]["query_origins"]
    assert origins["anchor"] > 0 and origins["data"] == 2
