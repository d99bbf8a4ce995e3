"""Teacher kinds as TRL's SDFT names them (teacher_kind: base | live | ema), generate_from_teacher, the leading
completion tokens left out of the loss (skip_first, TRL's num_loss_tokens_to_skip), and the EMA adapter kept by
checkpoints."""

import json

import pytest
import torch
from conftest import run_cli
from test_per_row_contexts import TINY, TRL_ROWS, per_row_steps, write_jsonl

from ctxdistill import CtxDistillError
from ctxdistill.core.ema import EMA_ADAPTER, EmaAdapter
from ctxdistill.core.losses import collate_pairs
from ctxdistill.core.models import add_lora
from ctxdistill.core.pairs import build_pair
from ctxdistill.recipes import onpolicy


def nudge_adapter(student, by: float):
    """Stand-in for an optimizer step: move every weight of the student's own adapter."""
    with torch.no_grad():
        for n, p in student.named_parameters():
            if ".default." in n:
                p.add_(by)


def hidden(student, ids):
    return student.base_model.model.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state


def view(tokenizer):
    ids = torch.tensor([tokenizer("The teacher reads this view.")["input_ids"]])
    return ids, torch.ones_like(ids)


@pytest.mark.parametrize("kind", ["base", "live", "ema"])
def test_each_teacher_kind_gives_the_logits_it_claims(tiny_model_dir, tmp_path, tokenizer, kind):
    cfg, inputs, models, queries = per_row_steps(tiny_model_dir, tmp_path, TRL_ROWS, teacher_kind=kind,
                                                 ema_decay=0.5, prefix_cache=False)  # whole views, any text
    setup = onpolicy.set_up(cfg, models, queries)
    student, ids = setup.student, view(tokenizer)[0]
    nudge_adapter(student, 0.05)  # the student moved away from where it (and its EMA) started
    if setup.ema is not None:
        setup.ema.update()
    teacher_states = setup.teacher.states(ids, torch.ones_like(ids))[0]
    with torch.no_grad():
        live = hidden(student, ids)
        with student.disable_adapter():
            base = hidden(student, ids)
    if kind == "base":  # the frozen base: the adapter off
        torch.testing.assert_close(teacher_states, base)
    elif kind == "live":  # the current student, adapter on
        torch.testing.assert_close(teacher_states, live)
    else:  # the EMA sits between the two: neither the base nor the live student
        assert not torch.allclose(teacher_states, live) and not torch.allclose(teacher_states, base)
    assert student.active_adapter == "default"
    assert all(p.requires_grad for n, p in student.named_parameters() if ".default." in n)


def test_the_ema_adapter_is_the_decayed_average_of_the_students(tiny_model, tokenizer):
    student = add_lora(tiny_model, r=4, alpha=8)
    ema = EmaAdapter(student, decay=0.9)
    named = dict(student.named_parameters())
    name = next(n for n in named if ".default." in n and "lora_B" in n)
    twin = named[name.replace(".default.", f".{EMA_ADAPTER}.")]
    start = named[name].detach().clone()
    torch.testing.assert_close(twin, start)  # starts as the student's initial adapter
    nudge_adapter(student, 0.2)
    ema.update()
    nudge_adapter(student, 0.2)
    ema.update()
    # ema_2 = 0.9·(0.9·θ0 + 0.1·θ1) + 0.1·θ2, θ1 = θ0 + 0.2, θ2 = θ0 + 0.4
    torch.testing.assert_close(twin, start + 0.9 * 0.1 * 0.2 + 0.1 * 0.4)
    assert not twin.requires_grad and named[name].requires_grad
    # its forward is the model with the averaged weights in the student's place
    ids, mask = view(tokenizer)
    with ema.active(), torch.no_grad():
        through_ema = hidden(student, ids)
    saved = {n: p.detach().clone() for n, p in named.items() if ".default." in n}
    with torch.no_grad():
        for n, p in named.items():
            if ".default." in n:
                p.copy_(named[n.replace(".default.", f".{EMA_ADAPTER}.")])
        torch.testing.assert_close(through_ema, hidden(student, ids))
        for n, value in saved.items():
            named[n].copy_(value)


def test_the_training_loop_updates_the_ema_each_step_and_restores_it_on_resume(tiny_model, tmp_path):
    from accelerate import Accelerator

    from ctxdistill.core.training import TrainSettings, train

    student = add_lora(tiny_model, r=4, alpha=8)
    ema = EmaAdapter(student, decay=0.5)
    lora = [p for p in student.parameters() if p.requires_grad]

    class SquaredWeights(torch.nn.Module):  # any loss that moves the student's adapter
        def __init__(self):
            super().__init__()
            self.student = student

        def forward(self, batch):
            return sum((p ** 2).sum() for p in lora) + 1.0, 1

    class Batch:
        labels = [0]

    settings = TrainSettings(lr=0.1, max_steps=3, batch_size=1, micro_batch_size=1, checkpoint_every=1,
                             warmup_ratio=0.0, schedule="constant")
    state = tmp_path / "state.pt"
    train(Accelerator(cpu=True), SquaredWeights(), [0], lambda b: Batch(), settings, state, follower=ema)
    assert ema.updates == 3
    after = [e.detach().clone() for _, e in ema.pairs]
    # the average trails the student's adapter (LoRA's B starts at zero and stays there under this loss)
    assert any(not torch.equal(own.detach(), e.detach()) for own, e in ema.pairs)
    for _, e in ema.pairs:  # lost, then restored from the loop's checkpoint
        e.data.zero_()
    train(Accelerator(cpu=True), SquaredWeights(), [0], lambda b: Batch(), settings, state, resume=True,
          follower=ema)
    for (_, e), saved in zip(ema.pairs, after):
        torch.testing.assert_close(e, saved)
    stale = torch.load(state, weights_only=False)
    del stale["follower"]
    torch.save(stale, state)
    with pytest.raises(CtxDistillError, match="no state for EmaAdapter"):
        train(Accelerator(cpu=True), SquaredWeights(), [0], lambda b: Batch(), settings, state, resume=True,
              follower=ema)


@pytest.mark.parametrize("kind", ["base", "ema"])
def test_generate_from_teacher_samples_from_the_teacher_view(tiny_model_dir, tmp_path, kind):
    cfg, inputs, models, queries = per_row_steps(tiny_model_dir, tmp_path, TRL_ROWS, teacher_kind=kind,
                                                 generate_from_teacher=True)
    setup = onpolicy.set_up(cfg, models, queries)
    collate = onpolicy.SampleCollate(cfg, models, queries, setup)
    seen = {}

    def record(model, prompts, seed, prefix=None):
        layers = [m for m in setup.student.modules() if hasattr(m, "_active_adapter")]
        seen.update(prompts=prompts, adapter=layers[0]._active_adapter, disabled=layers[0].disable_adapters)
        return [[7, 8] for _ in prompts]

    collate._generate = record
    batch = collate(["row 1", "row 2"])
    assert seen["prompts"] == [queries.teacher_prompts["row 1"], queries.teacher_prompts["row 2"]]
    assert collate.stats.teacher_samples == 2 and collate.stats.student_samples == 0
    if kind == "ema":
        assert seen["adapter"] == EMA_ADAPTER and not seen["disabled"]
    else:
        assert seen["disabled"]  # the frozen base: the student's adapter off
    assert batch.student_ids.shape[0] == 2


def test_skipped_completion_tokens_carry_no_loss():
    pairs = [build_pair([1, 2, 3, 9], [5, 9], [11, 12, 13, 14]), build_pair([1, 2, 9], [6, 7, 9], [21, 22, 23])]
    batch = collate_pairs(pairs, 0, skip_first=2)
    assert batch.labels.tolist() == [13, 14, 23]  # the first two tokens of each completion are out
    # the rows that predict them: after prompt + the two skipped tokens, in both views
    assert batch.student_rows[1].tolist() == [3, 4, 4] and batch.teacher_rows[1].tolist() == [5, 6, 4]


def test_an_ema_run_trains_end_to_end_and_keeps_its_ema_with_the_checkpoint(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "sdft.jsonl", TRL_ROWS)
    out = tmp_path / "run"
    done = run_cli("distill", "onpolicy", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
                   *TINY, "--set", "teacher_kind=ema", "--set", "generate_from_teacher=true",
                   "--set", "skip_first=1", "--set", "checkpoint_every=1")
    assert done.returncode == 0, done.stderr[-3000:]
    saved = torch.load(out / "checkpoint" / "state.pt", weights_only=False)
    assert saved["follower"]["updates"] == saved["step"] == 2  # the EMA is kept with the loop's checkpoint
    assert not (out / "adapter" / EMA_ADAPTER).exists()  # the adapter folder holds the student only
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["teacher_samples"] == 8 and manifest["config"]["teacher_kind"] == "ema"
