"""A teacher the student can beat: context-amplified targets and samples (Shi et al. 2023), and teacher samples
kept by how much the context explains them."""

import json
import math

import pytest
import torch
from conftest import run_cli

from ctxdistill.core.generation import generate
from ctxdistill.core.losses import DistillLoss, collate_pairs, context_evidence
from ctxdistill.core.models import add_lora
from ctxdistill.core.objectives import PLAUSIBLE, Objective, amplified_logprobs
from ctxdistill.core.pairs import Context, assistant_header, build_pair, render_prompt
from ctxdistill.core.teacher import Teacher


def test_amplification_sharpens_what_the_context_changes_and_leaves_implausible_tokens_alone():
    with_context = torch.tensor([[3.0, 2.5, 0.0, -9.0]]).log_softmax(-1)
    without = torch.tensor([[1.0, 3.0, 0.0, -20.0]]).log_softmax(-1)
    assert torch.allclose(amplified_logprobs(with_context, without, 0.0), with_context)
    sharpened = amplified_logprobs(with_context, without, 1.0).exp()
    assert sharpened[0, 0] > with_context.exp()[0, 0]  # the token the context made likelier gains
    assert sharpened[0, 1] < with_context.exp()[0, 1]  # the one it made less likely loses
    # token 3 is far below PLAUSIBLE of the top token: its huge ratio (−9 vs −20) is not amplified
    assert with_context[0, 3] < with_context.max() + math.log(PLAUSIBLE)
    assert sharpened[0, 3] < 1e-4


def pairs_for(tokenizer, context_text: str):
    header = assistant_header(tokenizer)
    ctx = Context(context_text) if context_text else None
    return [build_pair(render_prompt(tokenizer, q, ctx), render_prompt(tokenizer, q),
                       tokenizer(" Hello there friend", add_special_tokens=False)["input_ids"], header)
            for q in ("Who are you?", "Say hi.")]


def distill_loss(tokenizer, model, pairs, amplify: float) -> float:
    student = add_lora(model, r=4, alpha=8)
    loss = DistillLoss(student, Teacher(student), Objective({"forward_kl": 1.0}), amplify=amplify)
    value = float(loss(collate_pairs(pairs, tokenizer.pad_token_id))[0].detach())
    student.unload()
    return value


def test_amplified_targets_change_the_loss_only_where_the_context_changes_the_teacher(tokenizer, tiny_model):
    same_views = pairs_for(tokenizer, "")  # the teacher reads what the student reads
    assert distill_loss(tokenizer, tiny_model, same_views, 2.0) == pytest.approx(
        distill_loss(tokenizer, tiny_model, same_views, 0.0), abs=1e-5)
    with_context = pairs_for(tokenizer, "Your name is Pip and you live in a lighthouse.")
    assert distill_loss(tokenizer, tiny_model, with_context, 2.0) != pytest.approx(
        distill_loss(tokenizer, tiny_model, with_context, 0.0), abs=1e-4)


def test_amplified_sampling_with_alpha_zero_is_plain_sampling_and_greedy_follows_the_amplified_argmax(
        tokenizer, tiny_model):
    ctx = Context("Your name is Pip.")
    prompts = [render_prompt(tokenizer, q, ctx) for q in ("Who are you?", "Hi!")]
    plain = [render_prompt(tokenizer, q) for q in ("Who are you?", "Hi!")]
    kw = dict(max_new_tokens=1, temperature=0.0, show_progress=False)
    assert generate(tiny_model, tokenizer, prompts, **kw) == generate(tiny_model, tokenizer, prompts,
                                                                      contrast=plain, alpha=0.0, **kw)
    first = generate(tiny_model, tokenizer, prompts, contrast=plain, alpha=3.0, **kw)
    for p, q, got in zip(prompts, plain, first):
        with torch.no_grad():
            lc = tiny_model(torch.tensor([p])).logits[0, -1].float()
            lq = tiny_model(torch.tensor([q])).logits[0, -1].float()
        assert got[0] == int(amplified_logprobs(lc, lq, 3.0).argmax())


def test_context_evidence_is_the_mean_gain_in_log_prob_from_the_context(tokenizer, tiny_model):
    pairs = pairs_for(tokenizer, "Always greet people warmly.")
    scores = context_evidence(tiny_model, pairs, tokenizer.pad_token_id, batch_size=1)
    for pair, score in zip(pairs, scores):
        def logp(ids, start):
            with torch.no_grad():
                lp = tiny_model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
            return sum(lp[start - 1 + t, y] for t, y in enumerate(pair.completion))
        gain = logp(pair.teacher_ids, pair.teacher_prompt_len) - logp(pair.student_ids, pair.student_prompt_len)
        assert score == pytest.approx(float(gain) / pair.completion_len, abs=1e-4)


def test_offline_with_amplify_and_an_evidence_filter_records_what_was_dropped(tiny_model_dir, persona_files,
                                                                            tmp_path):
    out = tmp_path / "run"
    result = run_cli("distill", "offline", "--model", str(tiny_model_dir), "--context", str(persona_files["context"]),
                     "--prompts", str(persona_files["prompts"]), "--out", str(out), "--set", "dtype=float32",
                     "samples_per_query=2", "max_new_tokens=8", "eval_max_new_tokens=4", "max_steps=2",
                     "amplify=1.0", "evidence_filter=0.5")
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "manifest.json").read_text())["data"]
    assert data["samples"] == 8 and data["evidence_filter"]["dropped"] == 4 and data["pairs"] == 4
    assert data["evidence_filter"]["mean_evidence_kept"] >= data["evidence_filter"]["mean_evidence_dropped"]


def test_amplify_needs_one_live_teacher_view(tiny_model_dir, persona_files, tmp_path):
    result = run_cli("distill", "offline", "--model", str(tiny_model_dir), "--context", str(persona_files["context"]),
                     "--out", str(tmp_path / "x"), "--set", "amplify=1", "mode=ensemble")
    assert result.returncode != 0 and "amplify sharpens one teacher view" in result.stderr


def test_amplify_is_on_by_default_for_one_teacher_view_and_gives_way_to_a_split_context():
    from types import SimpleNamespace

    from ctxdistill import CtxDistillError
    from ctxdistill.config import load_config
    from ctxdistill.recipes.offline import resolve_amplify

    whole, split = SimpleNamespace(parts=["all"], examples=None), SimpleNamespace(parts=["a", "b"], examples=None)
    assert resolve_amplify(load_config("offline"), [whole]) == 1.0
    assert resolve_amplify(load_config("offline"), [split]) == 0.0  # auto: off where it is not defined
    assert resolve_amplify(load_config("offline", sets=["mode=ensemble"]), [whole]) == 0.0
    assert resolve_amplify(load_config("offline", sets=["amplify=2"]), [whole]) == 2.0
    with pytest.raises(CtxDistillError, match="split into parts"):
        resolve_amplify(load_config("offline", sets=["amplify=2"]), [split])


def test_the_amplified_tail_never_gains_on_the_plausible_tokens():
    with_context = torch.tensor([[0.0, -1.2, -6.0, -7.0]]).log_softmax(-1)  # tokens 2, 3 are implausible
    without = torch.tensor([[0.0, -5.0, -6.0, -7.0]]).log_softmax(-1)
    before = with_context.exp()[0, 2:].sum() / with_context.exp()[0, :2].sum()
    after = amplified_logprobs(with_context, without, 1.0).exp()
    assert after[0, 2:].sum() / after[0, :2].sum() <= before + 1e-6
