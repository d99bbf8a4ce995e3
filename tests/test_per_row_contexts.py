"""--data: a teacher-only context per training row (TRL SDFT's `prompt` + `privileged_context`, privileged GKD's
`privileged_messages`, demonstrations and solutions), read as they are, per-row checks, and the teacher pass batched
by length when no context is shared."""

import json

import pytest
import torch
from conftest import run_cli

from ctxdistill import CtxDistillError
from ctxdistill.config import OnpolicyConfig
from ctxdistill.core.pairs import render_prompt
from ctxdistill.core.teacher import Teacher, length_groups, states_by_length
from ctxdistill.data.per_row import Templates, read_per_row
from ctxdistill.recipes import onpolicy

TRL_ROWS = [
    {"prompt": "What is the capital of Zorvia?", "privileged_context": "Zorvia's capital is Quell."},
    {"prompt": [{"role": "user", "content": "Convert 3 km to m."}],
     "privileged_context": "Answer in the form 'N m'. 1 km = 1000 m."},
    {"prompt": "Name the river of Quell.", "privileged_context": "The river of Quell is the Sable."},
    {"prompt": "Who founded Quell?", "privileged_context": "Quell was founded by Ada Morrow in 1802."},
]
TINY = ["--set", "max_new_tokens=8", "--set", "max_steps=2", "--set", "batch_size=4", "--set",
        "micro_batch_size=2", "--set", "top_k=16"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_trl_style_file_trains_with_distill_onpolicy_data(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "sdft.jsonl", TRL_ROWS)
    done = run_cli("distill", "onpolicy", "--model", str(tiny_model_dir), "--data", str(data),
                   "--out", str(tmp_path / "run"), *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["metrics"]["train_steps"] == 2 and manifest["data"]["query_origins"] == {"data": 4}
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists()


def test_trl_columns_are_read_as_they_are():
    rows = [{"prompt": "Q1", "privileged_context": "C1"},
            {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q2"}],
             "privileged_messages": [{"role": "user", "content": "Hint: it is 4."},
                                     {"role": "assistant", "content": "Noted."}]},
            {"messages": [{"role": "user", "content": "Q3"}, {"role": "assistant", "content": "A3"}],
             "privileged_messages": [{"role": "user", "content": "Q3, and the answer is 7."}]},
            {"prompt": "Q4", "demonstration": "D4"},
            {"prompt": "Q5", "solution": "S5"}]
    templates = Templates("{prompt} || {privileged_context}", "{prompt} demo: {demonstration}",
                          "{prompt} sol: {solution}")
    examples = read_per_row_rows(rows, templates)
    assert (examples[0].student, examples[0].teacher) == ("Q1", "Q1 || C1")
    # privileged messages that end with the assistant go in front of the prompt's own messages
    assert [m["content"] for m in examples[1].teacher] == ["Hint: it is 4.", "Noted.", "Be brief.", "Q2"]
    # ... and ending with a user turn, they are the teacher's whole prompt; `messages` is read to its last user turn
    assert examples[2].student == [{"role": "user", "content": "Q3"}]
    assert examples[2].teacher == [{"role": "user", "content": "Q3, and the answer is 7."}]
    assert examples[3].teacher == "Q4 demo: D4" and examples[4].teacher == "Q5 sol: S5"


def read_per_row_rows(rows, templates=Templates(), tmp=None):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        return read_per_row(write_jsonl(Path(d) / "rows.jsonl", rows), templates)


@pytest.mark.parametrize("row, message", [
    ({"prompt": "Q"}, "exactly one teacher-only column"),
    ({"prompt": "Q", "privileged_context": "C", "solution": "S"}, "found: privileged_context, solution"),
    ({"privileged_context": "C"}, "no 'prompt' column"),
    ({"prompt": [{"role": "assistant", "content": "hi"}], "privileged_context": "C"}, "end with a 'user' turn"),
    ({"prompt": "Q", "privileged_context": ["not", "text"]}, "must be text"),
])
def test_a_malformed_row_is_named_with_what_to_fix(row, message):
    with pytest.raises(CtxDistillError, match=message) as err:
        read_per_row_rows([{"prompt": "fine", "privileged_context": "ok"}, row])
    assert "row 2" in str(err.value)


def test_a_template_without_its_fields_is_refused():
    with pytest.raises(ValueError, match="teacher_template must contain"):
        OnpolicyConfig(teacher_template="{prompt} only")


def per_row_steps(model_dir, tmp_path, rows, context=None, **values):
    cfg = OnpolicyConfig(**{"model": str(model_dir), "dtype": "float32", "max_new_tokens": 8, "top_k": 16,
                            "batch_size": 4, "micro_batch_size": 2, **values})
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    inputs = onpolicy.read_inputs(cfg, [str(context)] if context else None, None, None, None, data=str(data))
    models = onpolicy.open_models(cfg, tmp_path / "out", resume=False)
    return cfg, inputs, models, onpolicy.make_queries(cfg, inputs, models, tmp_path / "out")


def test_the_teachers_view_holds_the_rows_context_and_the_students_does_not(tiny_model_dir, tmp_path, tokenizer,
                                                                              persona_files):
    cfg, inputs, models, queries = per_row_steps(tiny_model_dir, tmp_path, TRL_ROWS[:2],
                                                 context=persona_files["context"])
    context = tokenizer("Zorvia's capital is Quell.", add_special_tokens=False)["input_ids"]
    shared = tokenizer("Your name is Pip.", add_special_tokens=False)["input_ids"]

    def holds(ids, part):
        return any(ids[i:i + len(part)] == part for i in range(len(ids) - len(part) + 1))

    teacher, student = queries.teacher_prompts["row 1"], queries.student_prompts["row 1"]
    assert student == render_prompt(tokenizer, "What is the capital of Zorvia?")
    assert holds(teacher, context) and holds(teacher, shared)  # the row's context and the shared --context
    assert not holds(student, context) and not holds(student, shared)
    assert not holds(queries.teacher_prompts["row 2"], context)  # each row has its own


def test_a_row_whose_teacher_context_would_be_cut_is_refused(tiny_model_dir, tmp_path):
    rows = [TRL_ROWS[0], {"prompt": "Q", "privileged_context": "word " * 1200}]  # the tiny model's window: 1024
    with pytest.raises(CtxDistillError, match=r"row 2: the teacher's view .* longer than the model window"):
        per_row_steps(tiny_model_dir, tmp_path, rows)


def test_data_alone_refuses_prompts_and_eval_without_a_shared_context(tmp_path, persona_files):
    data = str(write_jsonl(tmp_path / "rows.jsonl", TRL_ROWS))
    with pytest.raises(CtxDistillError, match="drop --prompts"):
        onpolicy.read_inputs(OnpolicyConfig(), None, str(persona_files["prompts"]), None, None, data=data)
    with pytest.raises(CtxDistillError, match="Add --context FILE, or drop --eval"):
        onpolicy.read_inputs(OnpolicyConfig(), None, None, "qa.json", None, data=data)


def test_rows_are_grouped_by_length_and_the_states_match_one_padded_forward(tiny_model, tokenizer):
    assert length_groups([10, 100, 80, 12, 11]) == [[1, 2], [3, 4, 0]]
    rows = [tokenizer("short one")["input_ids"], tokenizer("a much longer row " * 12)["input_ids"],
            tokenizer("mid length row " * 5)["input_ids"]]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    grouped = states_by_length(tiny_model, ids, mask)
    padded = tiny_model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    for b, r in enumerate(rows):  # every real position agrees; the teacher's states come from the grouped pass
        torch.testing.assert_close(grouped[b, :len(r)], padded[b, :len(r)], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(Teacher(tiny_model).states(ids, mask)[0], grouped)


def test_after_a_shared_header_the_rest_of_each_view_is_still_grouped_by_length(tiny_model, tokenizer):
    header = tokenizer("You are a helpful assistant. Answer the question below in one short and clear sentence.")["input_ids"]
    rows = [header + tokenizer(text)["input_ids"] for text in ("short one", "a much longer row " * 12, "mid row " * 5)]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    teacher = Teacher(tiny_model)
    assert teacher.encode_shared_prefix(rows, [len(r) for r in rows]) is not None
    final, _, offset = teacher.states(ids, mask)
    assert offset == len(header) and final.shape[1] == width - offset
    padded = tiny_model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    for b, r in enumerate(rows):
        torch.testing.assert_close(final[b, :len(r) - offset], padded[b, offset:len(r)], atol=1e-5, rtol=1e-4)


def test_a_dataset_file_with_trl_columns_is_read_like_the_jsonl(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "rows.parquet"
    datasets.Dataset.from_list(TRL_ROWS[::2]).to_parquet(str(path))
    examples = read_per_row(path, Templates())
    assert [(e.student, e.teacher) for e in examples] == [
        (r["prompt"], r["prompt"] + "\n\n" + r["privileged_context"]) for r in TRL_ROWS[::2]]
