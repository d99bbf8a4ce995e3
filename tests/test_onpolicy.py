"""The onpolicy recipe (OPCD) and `ctxdistill experience` end to end on tiny models: the student's own samples,
offline mixing, live and cross-size teachers, the forgetting report, checkers and the three experience accuracies."""

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli, tiny_llama

from ctxdistill import CtxDistillError
from ctxdistill.config import OnpolicyConfig
from ctxdistill.core.generation import generate
from ctxdistill.eval.checkers import load_checker
from ctxdistill.recipes import onpolicy

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY = ["--set", "max_new_tokens=8", "--set", "eval_max_new_tokens=4", "--set", "max_steps=2",
        "--set", "batch_size=4", "--set", "micro_batch_size=2", "--set", "top_k=16"]


def run_onpolicy(model_dir, persona_files, out, *extra):
    return run_cli("distill", "onpolicy", "--model", str(model_dir), "--context", str(persona_files["context"]),
                   "--prompts", str(persona_files["prompts"]), "--out", str(out), *TINY, *extra)


def test_onpolicy_trains_on_the_students_own_samples_and_reports_forgetting(tiny_model_dir, persona_files, tmp_path):
    done = run_onpolicy(tiny_model_dir, persona_files, tmp_path / "run")
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    m = manifest["metrics"]
    assert manifest["recipe"] == "onpolicy" and m["train_steps"] == 2
    assert m["student_samples"] == 8 and m["teacher_samples"] == 0  # 2 steps × 4 queries, all the student's own
    cfg = manifest["config"]
    assert (cfg["objective"], cfg["top_k_support"], cfg["top_k_tail"]) == \
        ({"reverse_kl": 1.0, "forward_kl": 1.0}, "union", "renorm")  # the defaults: reverse + forward KL
    retention = m["evaluation"]["retention"]
    assert retention["kl_to_base"]["base"] == 0.0 and retention["kl_to_base"]["student"] >= 0.0
    report = (tmp_path / "run" / "report.md").read_text()
    assert "KL(base ‖ model)" in report and "| student (distilled) | no |" in report
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "run" / "adapter")


def test_onpolicy_takes_exactly_one_context(persona_files):
    cfg = OnpolicyConfig()
    for contexts in ([], [str(persona_files["context"])] * 2):
        with pytest.raises(CtxDistillError, match="exactly one --context FILE"):
            onpolicy.read_inputs(cfg, contexts, None, None, None)


def steps(model_dir, persona_files, out, **values):
    """The recipe's steps up to the collate, in process, on fp32 tiny models: inputs, models, queries, set-up."""
    cfg = OnpolicyConfig(**{"model": str(model_dir), "dtype": "float32", "max_new_tokens": 8, "top_k": 16,
                            "batch_size": 4, "micro_batch_size": 2, **values})
    inputs = onpolicy.read_inputs(cfg, [str(persona_files["context"])], str(persona_files["prompts"]), None, None)
    models = onpolicy.open_models(cfg, out, resume=False)
    queries = onpolicy.make_queries(cfg, inputs, models, out)
    setup = onpolicy.set_up(cfg, models, queries)
    return cfg, models, queries, setup, onpolicy.SampleCollate(cfg, models, queries, setup)


def plain_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("offline_fraction, source", [(0.0, "student"), (1.0, "teacher")])
def test_a_step_samples_from_the_student_or_on_an_offline_step_from_the_teacher_with_the_context(
        tiny_model_dir, persona_files, tmp_path, tokenizer, offline_fraction, source):
    cfg, models, queries, setup, collate = steps(tiny_model_dir, persona_files, tmp_path / "run",
                                                 offline_fraction=offline_fraction)
    with torch.no_grad():  # a trained student: its samples differ from the base model's
        for name, p in setup.student.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    batch = queries.texts
    samples = collate.sample(batch)

    def sampled_by(model, prompts):
        return generate(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens,
                        temperature=cfg.sample_temperature, batch_size=cfg.gen_batch_size, seed=samples.seed,
                        show_progress=False)

    teacher = sampled_by(plain_model(tiny_model_dir), [queries.teacher_prompts[q] for q in batch])  # base + context
    student = sampled_by(setup.student, [queries.student_prompts[q] for q in batch])  # adapter on, no context
    expected, not_expected = (teacher, student) if source == "teacher" else (student, teacher)
    assert samples.from_teacher is (source == "teacher")
    assert samples.completions == expected and samples.completions != not_expected
    assert collate.stats.teacher_samples + collate.stats.student_samples == len(batch)


@pytest.fixture(scope="module")
def bigger_teacher_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("bigger")
    tiny_llama(tokenizer, hidden=96, layers=3, seed=1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_a_bigger_teacher_with_the_same_tokenizer_teaches_a_smaller_student(tiny_model_dir, bigger_teacher_dir,
                                                                          persona_files, tmp_path):
    """The loss the student trains on scores its samples with the bigger model reading the context: it equals
    KL(student ‖ bigger model) computed from that model's own forward, and not the one against the base."""
    cfg, models, queries, setup, collate = steps(tiny_model_dir, persona_files, tmp_path / "run",
                                                 teacher=str(bigger_teacher_dir), top_k=0, amplify=0,
                                                 objective="reverse_kl")
    bigger, base = plain_model(bigger_teacher_dir), plain_model(tiny_model_dir)
    assert bigger.config.hidden_size > base.config.hidden_size
    batch = collate(queries.texts[:2])
    with torch.no_grad():
        loss, _ = setup.loss(batch)
        s_log = setup.student(input_ids=batch.student_ids, attention_mask=batch.student_mask).logits[
            batch.student_rows].log_softmax(-1)

        def reverse_kl(teacher_model):
            t_log = teacher_model(input_ids=batch.teacher_ids, attention_mask=batch.teacher_mask).logits[
                batch.teacher_rows].log_softmax(-1)
            return (s_log.exp() * (s_log - t_log)).sum()

    torch.testing.assert_close(loss, reverse_kl(bigger), rtol=1e-4, atol=1e-6)
    assert not torch.isclose(loss, reverse_kl(base), rtol=1e-2)


def test_a_teacher_with_another_tokenizer_is_refused(tiny_model_dir, persona_files, tmp_path, tokenizer):
    other = tmp_path / "other"
    tiny_llama(tokenizer).save_pretrained(other)
    tokenizer.save_pretrained(other)
    config = json.loads((other / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (other / "tokenizer_config.json").write_text(json.dumps(config))
    (other / "chat_template.jinja").unlink(missing_ok=True)
    done = run_onpolicy(tiny_model_dir, persona_files, tmp_path / "run", "--teacher", str(other))
    assert done.returncode == 2 and "tokenizers do not match" in done.stderr


def test_live_teacher_runs_and_needs_lora(tiny_model_dir, persona_files, tmp_path):
    done = run_onpolicy(tiny_model_dir, persona_files, tmp_path / "live", "--teacher", "live")
    assert done.returncode == 0, done.stderr[-3000:]
    done = run_onpolicy(tiny_model_dir, persona_files, tmp_path / "full", "--teacher", "live", "--set", "finetune=full")
    assert done.returncode == 2 and "finetune=lora" in done.stderr


def test_live_teacher_scores_with_the_adapter_on(tiny_model, tokenizer):
    from ctxdistill.core.models import add_lora
    from ctxdistill.core.teacher import Teacher

    student = add_lora(tiny_model, r=4, alpha=8)
    with torch.no_grad():
        for n, p in student.named_parameters():
            if "lora_B" in n:
                p.add_(0.5)
    ids = torch.tensor([tokenizer("Hello there, friend")["input_ids"]])
    mask = torch.ones_like(ids)
    live = Teacher(student, live=True).states(ids, mask)[0]
    base = Teacher(student).states(ids, mask)[0]
    with torch.no_grad():
        on = student.base_model.model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(live, on)
    assert not torch.allclose(live, base)


@pytest.mark.parametrize("spec, response, answer, ok", [
    ("exact", " 42. ", "42", True), ("exact", "42 apples", "42", False),
    ("contains", "It is Paris.", "paris", True), ("number", "The answer is 1,042.", "1042", True),
    ("number", "about 41", "42", False), ("regex", "code AB-12", r"[A-Z]{2}-\d+", True),
])
def test_checkers(spec, response, answer, ok):
    assert load_checker(spec)("q", response, answer) is ok


def test_a_checker_can_be_a_user_function_and_bad_specs_are_refused():
    same_as_contains = load_checker("ctxdistill.eval.checkers:contains")  # loaded by module path, like a user's own
    assert same_as_contains("q", "It is Paris.", "paris") is True and same_as_contains("q", "Rome", "paris") is False
    with pytest.raises(CtxDistillError, match="not a function"):
        load_checker("ctxdistill.eval.checkers:BUILTIN")
    with pytest.raises(CtxDistillError, match="Unknown checker"):
        load_checker("fuzzy")
    with pytest.raises(CtxDistillError, match="Cannot load"):
        load_checker("no_such_module_xyz:check")


def test_experience_runs_end_to_end_and_reports_three_accuracies(tiny_model_dir, tmp_path):
    out = tmp_path / "exp"
    done = run_cli("experience", "--model", str(tiny_model_dir), "--tasks", str(EXAMPLES / "arithmetic_tasks.jsonl"),
                   "--checker", "number", "--out", str(out), "--set", "experience_candidates=2",
                   "--set", "max_new_tokens=12", "--set", "eval_max_new_tokens=6", "--set", "max_steps=2",
                   "--set", "batch_size=4", "--set", "micro_batch_size=4", "--set", "top_k=16")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "experience.json").read_text())
    assert result["splits"] == {"train": 16, "select": 8, "test": 8}
    assert set(result["test_accuracy"]) == {"without_notes", "notes_in_context", "consolidated_without_notes"}
    assert result["consolidation"]["train_steps"] == 2 and result["notes"].startswith("- ")
    notes = json.loads((out / "notes.json").read_text())
    assert notes["context"] == result["notes"] and len(notes["prompts"]) == 16  # the train tasks are the queries
    report = (out / "report.md").read_text()
    assert "| base | no |" in report and "| base | yes |" in report and "| consolidated (onpolicy) | no |" in report
    assert (out / "consolidated" / "adapter" / "adapter_config.json").exists()


def test_experience_refuses_too_few_or_malformed_tasks(tmp_path):
    from ctxdistill.recipes.experience import read_tasks

    (tmp_path / "few.jsonl").write_text('{"prompt": "1+1?", "answer": 2}\n')
    with pytest.raises(CtxDistillError, match="at least 6"):
        read_tasks(tmp_path / "few.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"question": "1+1?"}\n' * 6)
    with pytest.raises(CtxDistillError, match="prompt"):
        read_tasks(tmp_path / "bad.jsonl")


def lora_b(adapter_dir, model_dir) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter_dir)
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}


def test_init_adapter_keeps_training_that_adapter_and_reports_it_as_initial(tiny_model_dir, persona_files,
                                                                             tmp_path):
    assert run_onpolicy(tiny_model_dir, persona_files, tmp_path / "first").returncode == 0
    first = tmp_path / "first" / "adapter"
    done = run_onpolicy(tiny_model_dir, persona_files, tmp_path / "second", "--init-adapter", str(first))
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "second" / "manifest.json").read_text())
    assert manifest["init_adapter"] == str(first)
    assert set(manifest["metrics"]["evaluation"]["answers"]) == {"base", "teacher", "initial", "student"}
    assert "| initial (before this run) | no |" in (tmp_path / "second" / "report.md").read_text()
    old, now = lora_b(first, tiny_model_dir), lora_b(tmp_path / "second" / "adapter", tiny_model_dir)
    assert all(v.abs().sum() > 0 for v in old.values())  # a fresh adapter's B is zero: this one carries on
    assert any(not torch.equal(old[n], now[n]) for n in old)  # and it trained
    done = run_onpolicy(tiny_model_dir, persona_files, tmp_path / "full", "--init-adapter", str(first),
                        "--set", "finetune=full")
    assert done.returncode == 2 and "needs finetune=lora" in done.stderr


@pytest.mark.parametrize("teacher_kind, holds_the_adapter", [("base", False), ("live", True), ("ema", True)])
def test_with_init_adapter_only_a_live_or_ema_teacher_starts_from_the_adapter(teacher_kind, holds_the_adapter,
                                                                              tiny_model_dir, persona_files, tmp_path,
                                                                              tokenizer):
    """The base teacher stays the base (adapter off); the live student and its EMA begin as the given adapter."""
    assert run_onpolicy(tiny_model_dir, persona_files, tmp_path / "first").returncode == 0
    cfg = OnpolicyConfig(model=str(tiny_model_dir), dtype="float32", teacher_kind=teacher_kind,
                         generation_backend="torch")
    models = onpolicy.open_models(cfg, tmp_path / "second", resume=False)
    inputs = onpolicy.read_inputs(cfg, [str(persona_files["context"])], str(persona_files["prompts"]), None, None)
    queries = onpolicy.make_queries(cfg, inputs, models, tmp_path / "second")
    setup = onpolicy.set_up(cfg, models, queries, str(tmp_path / "first" / "adapter"))
    ids = torch.tensor([queries.teacher_prompts[queries.texts[0]]])  # a base teacher has its context encoded
    mask = torch.ones_like(ids)
    teacher = setup.teacher.states(ids, mask)[0][:, -4:]
    with torch.no_grad():
        student = setup.student.base_model.model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        with setup.student.disable_adapter():
            base = setup.student.base_model.model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    student, base = student[:, -4:], base[:, -4:]
    assert not torch.allclose(student, base)
    torch.testing.assert_close(teacher, student if holds_the_adapter else base)
