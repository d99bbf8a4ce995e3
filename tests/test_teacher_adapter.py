"""--teacher-adapter: the teacher is the student's own base with a second, frozen adapter on (no copy of the base)."""

from __future__ import annotations

import json

import pytest
import torch

from ctxdistill import CtxDistillError
from ctxdistill.config import load_config
from ctxdistill.core.models import add_lora, load_model
from ctxdistill.core.teacher import (TEACHER_ADAPTER, Teacher, adapter_on, add_teacher_adapter,
                                     drop_teacher_adapter)


def randomize_lora(peft_model, seed: int) -> None:
    """LoRA starts as a no-op (B = 0): give the adapter weights that change the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.fixture(scope="module")
def teacher_adapter_dir(tiny_model_dir, tmp_path_factory):
    model, _, _ = load_model(str(tiny_model_dir), "float32", "cpu")
    peft = add_lora(model, r=4)
    randomize_lora(peft, seed=1)
    path = tmp_path_factory.mktemp("teacher") / "adapter"
    peft.save_pretrained(path)
    return path


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def reference_with_adapter(tiny_model_dir, adapter_dir):
    from peft import PeftModel

    from ctxdistill.core.models import peft_quietly

    base, _, _ = load_model(str(tiny_model_dir), "float32", "cpu")
    with peft_quietly():
        return PeftModel.from_pretrained(base, str(adapter_dir)).eval()


def student_with_teacher(tiny_model_dir, adapter_dir):
    """A student with its own (non-trivial) adapter, and the teacher's next to it; and the student's logits alone."""
    base, _, _ = load_model(str(tiny_model_dir), "float32", "cpu")
    student = add_lora(base, r=4)
    randomize_lora(student, seed=2)
    student.eval()
    return student


def test_teacher_view_has_the_teacher_adapter_and_student_view_its_own(tiny_model_dir, teacher_adapter_dir):
    ids = torch.tensor([[1, 5, 9, 42, 7, 300, 12]])
    student = student_with_teacher(tiny_model_dir, teacher_adapter_dir)
    student_alone = logits(student, ids)
    with student.disable_adapter():
        base_alone = logits(student, ids)
    add_teacher_adapter(student, str(teacher_adapter_dir))

    teacher = Teacher(student, adapter=TEACHER_ADAPTER)
    final, _, offset = teacher.states(ids, torch.ones_like(ids))
    expected = logits(reference_with_adapter(tiny_model_dir, teacher_adapter_dir), ids)
    assert offset == 0
    torch.testing.assert_close(teacher.head(final), expected, rtol=1e-5, atol=1e-5)
    # The student's view is its own adapter, unchanged by the teacher's forward; the two differ from each other
    # and from the base.
    torch.testing.assert_close(logits(student, ids), student_alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected, student_alone, atol=1e-3)
    assert not torch.allclose(expected, base_alone, atol=1e-3)


def test_the_base_weights_are_shared_not_copied(tiny_model_dir, teacher_adapter_dir):
    student = student_with_teacher(tiny_model_dir, teacher_adapter_dir)
    before = sum(p.numel() for p in student.parameters())
    add_teacher_adapter(student, str(teacher_adapter_dir))
    added = sum(p.numel() for p in student.parameters()) - before
    adapter = sum(p.numel() for n, p in student.named_parameters() if f".{TEACHER_ADAPTER}." in n)
    assert added == adapter  # only the teacher's LoRA weights were added
    assert Teacher(student, adapter=TEACHER_ADAPTER).model is student


def test_only_the_student_adapter_trains_across_teacher_forwards(tiny_model_dir, teacher_adapter_dir):
    student = student_with_teacher(tiny_model_dir, teacher_adapter_dir)
    add_teacher_adapter(student, str(teacher_adapter_dir))
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)
    teacher_before = {n: p.detach().clone() for n, p in student.named_parameters() if f".{TEACHER_ADAPTER}." in n}

    ids = torch.tensor([[1, 5, 9, 42, 7, 300, 12]])
    student.train()
    loss = student(input_ids=ids, labels=ids).loss  # the student's forward first, as DistillLoss does
    Teacher(student, adapter=TEACHER_ADAPTER).states(ids, torch.ones_like(ids))
    loss.backward()
    assert {n for n, p in student.named_parameters() if p.requires_grad} == trainable
    assert all(p.grad is not None for n, p in student.named_parameters() if n in trainable)
    assert all(p.grad is None for n, p in student.named_parameters() if f".{TEACHER_ADAPTER}." in n)
    torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.1).step()
    for n, p in student.named_parameters():
        if n in teacher_before:
            assert torch.equal(p, teacher_before[n])


def test_adapter_on_switches_back_after_an_error(tiny_model_dir, teacher_adapter_dir):
    student = add_teacher_adapter(student_with_teacher(tiny_model_dir, teacher_adapter_dir), str(teacher_adapter_dir))
    with pytest.raises(RuntimeError), adapter_on(student):
        assert student.active_adapter == TEACHER_ADAPTER
        raise RuntimeError("boom")
    assert student.active_adapter == "default"


def test_saved_student_adapter_holds_the_student_only(tiny_model_dir, teacher_adapter_dir, tmp_path):
    student = add_teacher_adapter(student_with_teacher(tiny_model_dir, teacher_adapter_dir), str(teacher_adapter_dir))
    drop_teacher_adapter(student)
    student.save_pretrained(tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["README.md", "adapter_config.json",
                                                                       "adapter_model.safetensors"]


def test_teacher_adapter_config_is_checked(tmp_path, teacher_adapter_dir):
    with pytest.raises(CtxDistillError, match="teacher_adapter: .* is not a PEFT adapter directory"):
        load_config("offline", teacher_adapter=str(tmp_path))
    with pytest.raises(CtxDistillError, match="names another teacher"):
        load_config("offline", teacher_adapter=str(teacher_adapter_dir), teacher="some/model")
    with pytest.raises(CtxDistillError, match="needs finetune=lora"):
        load_config("onpolicy", teacher_adapter=str(teacher_adapter_dir), sets=["finetune=full"])
    assert load_config("onpolicy", teacher_adapter=str(teacher_adapter_dir)).teacher_adapter == str(teacher_adapter_dir)


def test_offline_samples_and_scores_with_the_teacher_adapter(tiny_model_dir, teacher_adapter_dir, tmp_path):
    """The offline recipe end to end: its sampling view is the teacher's adapter, the report names it, and the
    saved adapter is the student's alone."""
    from ctxdistill.recipes import offline

    context = tmp_path / "ctx.json"
    context.write_text(json.dumps({"context": "Add the numbers digit by digit.", "prompts": ["1 + 2?", "3 + 4?"]}))
    cfg = load_config("offline", teacher_adapter=str(teacher_adapter_dir), model=str(tiny_model_dir),
                      sets=["dtype=float32", "max_new_tokens=6", "samples_per_query=1", "max_steps=2",
                            "batch_size=2", "micro_batch_size=2", "anchor_fraction=0"])
    inputs = offline.read_inputs(cfg, [str(context)], None, None, None)
    r = offline.set_up(cfg, inputs, tmp_path / "run", False, None)
    ids = torch.tensor([[1, 5, 9, 42]])
    expected = logits(reference_with_adapter(tiny_model_dir, teacher_adapter_dir), ids)
    with r.sampler_weights():
        torch.testing.assert_close(logits(r.sampler, ids), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits(r.sampler, ids), logits(r.student, ids))  # the student's view again

    from ctxdistill.recipes.common import holding_out_dir

    out = tmp_path / "full"
    with holding_out_dir(out):
        result = offline.run(cfg, str(out), context=[str(context)])
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert not (out / "adapter" / TEACHER_ADAPTER).exists()
    assert json.loads((out / "manifest.json").read_text())["config"]["teacher_adapter"] == str(teacher_adapter_dir)
    assert "adapter" in (out / "report.md").read_text() and result.metrics["train_steps"] == 2


def test_onpolicy_runs_with_the_teacher_adapter_and_saves_the_student_only(tiny_model_dir, teacher_adapter_dir,
                                                                          persona_files, tmp_path):
    from ctxdistill.api import distill

    result = distill("onpolicy", context=str(persona_files["context"]), prompts=persona_files["prompts"],
                     out=tmp_path / "run", model=str(tiny_model_dir), teacher_adapter=str(teacher_adapter_dir),
                     dtype="float32", max_steps=1, batch_size=2, micro_batch_size=2, max_new_tokens=4,
                     eval_max_new_tokens=4, offline_fraction=1.0)
    assert result.metrics["teacher_samples"] == 2  # the step sampled as the teacher (its adapter on)
    assert not (tmp_path / "run" / "adapter" / TEACHER_ADAPTER).exists()
    assert f"base model + adapter {teacher_adapter_dir}" in (tmp_path / "run" / "report.md").read_text()
