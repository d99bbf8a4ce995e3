"""benchmarks/vs_trl.py with a context per row: the rows both sides train on, our views of them, a short run of our
side on a tiny model, and the machine-readable summary. TRL is a benchmark-only extra: the tests that need it skip
cleanly without it. (The real measurement is `python benchmarks/vs_trl.py --contexts per-row`; see
docs/per_row_contexts.md.)"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import trl_sdft  # noqa: E402
import vs_trl  # noqa: E402

WINDOW = 1024


def test_the_rows_are_trl_sdft_columns_each_with_a_different_context():
    rows = trl_sdft.per_row_dataset()
    assert rows == trl_sdft.per_row_dataset()  # deterministic: every run and both sides see the same rows
    assert len(rows) >= 8 and all(set(row) == {"prompt", "privileged_context"} for row in rows)
    assert all(row["prompt"][-1]["role"] == "user" for row in rows)
    assert len({row["privileged_context"] for row in rows}) == len(rows)


def test_contexts_differ_in_length_from_about_60_to_200_tokens(tokenizer):
    lengths = [len(tokenizer(row["privileged_context"])["input_ids"]) for row in trl_sdft.per_row_dataset()]
    assert min(lengths) >= 50 and max(lengths) <= 220, lengths
    assert max(lengths) - min(lengths) >= 100, lengths
    assert len(set(lengths)) >= len(lengths) // 2, lengths
    batch = lengths[:8]  # one optimizer step's rows: short and long together
    assert max(batch) >= 2 * min(batch), batch


def test_each_teacher_view_holds_its_own_context_and_the_student_view_none(tokenizer):
    rows = trl_sdft.per_row_dataset()
    views = vs_trl.per_row_views_of(tokenizer, rows, 96, WINDOW)
    contexts = [row["privileged_context"] for row in rows]
    for row, (teacher, student) in zip(rows, views):
        teacher_text, student_text = tokenizer.decode(teacher), tokenizer.decode(student)
        question = row["prompt"][-1]["content"]
        assert [c for c in contexts if c in teacher_text] == [row["privileged_context"]]
        assert not any(c in student_text for c in contexts)
        assert question in teacher_text and question in student_text
        # TRL's default template: the question, a blank line, then the privileged context
        assert f"{question}\n\n{row['privileged_context']}" in teacher_text
    assert len({len(teacher) for teacher, _ in views}) > len(views) // 2


def test_a_row_too_long_for_the_window_is_refused_by_its_number(tokenizer):
    from ctxdistill import CtxDistillError

    rows = trl_sdft.per_row_dataset(3)
    with pytest.raises(CtxDistillError, match=r"row \d: the teacher's view .* longer than the model window"):
        vs_trl.per_row_views_of(tokenizer, rows, 96, 200)


def test_the_shared_job_keeps_one_document_before_every_question(tokenizer):
    teacher, student = vs_trl.job_views(tokenizer, "shared", 96, WINDOW)
    assert len(teacher) == len(student) == len(trl_sdft.QUESTIONS)
    assert all(trl_sdft.DOCUMENT in tokenizer.decode(t) for t in teacher)
    assert not any(trl_sdft.DOCUMENT in tokenizer.decode(s) for s in student)


@pytest.mark.parametrize("teacher_generates", [False, True], ids=["student-generates", "teacher-generates"])
def test_our_side_trains_on_the_per_row_job_without_a_prefix(tiny_model_dir, teacher_generates):
    result = vs_trl.run_ours(2, teacher_generates, batch_size=4, completion_tokens=8, contexts="per-row",
                             model_name=str(tiny_model_dir))
    assert result["contexts"] == "per-row" and result["teacher_prefix_tokens"] == 0
    assert result["completion_tokens_per_step"] == [32, 32]  # 4 rows x 8 tokens, every step
    assert all(n >= 1 for n in result["teacher_length_groups_per_step"])
    assert result["seconds_per_step"] > 0 and all(loss == loss for loss in result["losses"])  # finite, not NaN


def _row(contexts, setting, trl_s, ours_s, trl_mb=4000.0, ours_mb=3000.0, checkpointing=False):
    return {"contexts": contexts, "setting": setting, "checkpointing": checkpointing,
            "ours": {"seconds_per_step": ours_s, "peak_rss_mb": ours_mb},
            "trl": {"seconds_per_step": trl_s, "peak_rss_mb": trl_mb} if trl_s else None}


def test_the_summary_lines_end_with_the_per_row_ratio():
    rows = [_row("shared", "student", 10.0, 4.0), _row("shared", "teacher", 9.0, 3.0),
            _row("per-row", "student", 12.0, 5.0), _row("per-row", "teacher", 11.0, 4.0, ours_mb=3500.0),
            _row("per-row", "student", 20.0, 1.0, checkpointing=True)]  # not the first measured: not summarized
    assert vs_trl.summary_lines(rows) == [
        "VS_TRL shared student=2.50 teacher=3.00 peak_mb_student=3000/4000 peak_mb_teacher=3000/4000",
        "VS_TRL per_row student=2.40 teacher=2.75 peak_mb_student=3000/4000 peak_mb_teacher=3500/4000"]
    assert vs_trl.summary_lines([_row("per-row", "student", None, 5.0)]) == [
        "VS_TRL per_row student=na teacher=na peak_mb_student=na peak_mb_teacher=na"]


def test_our_views_are_the_token_ids_trl_builds_from_the_same_rows(tokenizer):
    """TRL's SDFTTrainer composes the teacher prompt with its default template and tokenizes both prompts with its own
    code: the ids must be ours, so both sides score the same sequences."""
    sdft = pytest.importorskip("trl.experimental.sdft.sdft_trainer", reason="TRL is the benchmark-only extra")
    from trl.experimental.sdft import SDFTConfig

    default_template = SDFTConfig.__dataclass_fields__["teacher_prompt_template"].default
    trainer = SimpleNamespace(args=SimpleNamespace(teacher_prompt_template=default_template),
                              processing_class=tokenizer, chat_template_kwargs={}, max_prompt_length=512)
    rows = trl_sdft.per_row_dataset()
    prompts, contexts = [r["prompt"] for r in rows], [r["privileged_context"] for r in rows]
    teacher_prompts = sdft.DemonstrationTeacherContextBuilder(trainer).select_generation_prompts(prompts, contexts)
    trl_teacher = sdft.SDFTTrainer._tokenize_prompts(trainer, teacher_prompts)
    trl_student = sdft.SDFTTrainer._tokenize_prompts(trainer, prompts)
    ours = vs_trl.per_row_views_of(tokenizer, rows, 96, WINDOW)
    assert [list(t) for t in trl_teacher] == [teacher for teacher, _ in ours]
    assert [list(s) for s in trl_student] == [student for _, student in ours]
