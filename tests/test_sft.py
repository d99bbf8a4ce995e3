"""The sft recipe: `ctxdistill distill sft --data FILE.jsonl` on {"input","output"} rows or HF chats, loss on the
answers only, LoRA or full, exact match on --eval, budget and --resume like every recipe."""

from __future__ import annotations

import json

import pytest
import torch

from ctxdistill import CtxDistillError
from ctxdistill.api import distill
from ctxdistill.recipes.sft import end_of_turn, examples_of, make_pairs, read_rows

ROWS = [{"input": "2 + 3?", "output": "5"}, {"input": "4 + 4?", "output": "8"}, {"input": "1 + 6?", "output": "7"}]
CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2 + 2?"},
                     {"role": "assistant", "content": "4"}]}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_chat_gives_one_example_per_assistant_turn_after_the_chat_before_it():
    first, second = examples_of(CHAT, "row 1")
    assert first.answer == "Hello." and [m["role"] for m in first.prompt] == ["system", "user"]
    assert second.answer == "4" and [m["content"] for m in second.prompt] == ["Be brief.", "Hi", "Hello.", "2 + 2?"]


def test_only_the_answer_and_its_end_of_turn_carry_the_loss(tokenizer):
    (example,) = examples_of({"input": "2 + 3?", "output": "5"}, "row 1")
    (pair,) = make_pairs(tokenizer, [example], 1024)
    assert tokenizer.decode(pair.completion) == "5" + end_of_turn(tokenizer)
    assert end_of_turn(tokenizer).startswith("<|im_end|>")
    assert tokenizer.decode(pair.student_ids[:pair.student_prompt_len]).endswith("2 + 3?<|im_end|>\n"
                                                                                 "<|im_start|>assistant\n")


@pytest.mark.parametrize("row, message", [
    ({"prompt": "x"}, "expected"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "each message needs \"role\""),
    ({"input": "x", "output": " "}, "an assistant turn is empty"),
])
def test_bad_rows_are_named(tmp_path, row, message):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], row])
    with pytest.raises(CtxDistillError, match=f"d.jsonl row 2: .*{message}"):
        read_rows(path, "--data")


def test_missing_data_is_refused_before_anything_loads(tmp_path, tiny_model_dir):
    with pytest.raises(CtxDistillError, match="needs --data"):
        distill("sft", out=tmp_path / "run", model=str(tiny_model_dir))
    with pytest.raises(CtxDistillError, match="SFT data file not found"):
        distill("sft", data=tmp_path / "nope.jsonl", out=tmp_path / "run", model=str(tiny_model_dir))
    assert not (tmp_path / "run").exists()


def test_sft_learns_the_answers_and_reports_exact_match(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", ROWS + [CHAT])
    result = distill("sft", data=data, eval=write_jsonl(tmp_path / "eval.jsonl", ROWS), out=tmp_path / "run",
                     schedule="constant", warmup_ratio=0,
                     model=str(tiny_model_dir), dtype="float32", finetune="full", epochs=60, batch_size=4,
                     micro_batch_size=4, lr=3e-3,
                     eval_max_new_tokens=4, checkpoint_every=10)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    em = manifest["metrics"]["evaluation"]["exact_match"]
    assert manifest["recipe"] == "sft" and manifest["data"] == {"rows": 4, "answers": 5, "answer_tokens": 16}
    assert em["before"] == 0 and em["after"] >= 2  # a random tiny model learns one-token answers it was shown
    assert manifest["metrics"]["loss_history"][-1] < manifest["metrics"]["loss_history"][0] / 10
    assert (tmp_path / "run" / "model" / "config.json").exists()
    assert f"| after | {em['after']}/3 |" in result.table and f"| after | {em['after']}/3 |" in (
        tmp_path / "run" / "report.md").read_text()


def test_lora_sft_writes_an_adapter_and_resume_continues(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    settings = {"dtype": "float32", "max_steps": 4, "batch_size": 1, "micro_batch_size": 1, "checkpoint_every": 2}
    distill("sft", data=data, out=tmp_path / "run", model=str(tiny_model_dir), **settings)
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()
    with pytest.raises(CtxDistillError, match="already holds a run"):
        distill("sft", data=data, out=tmp_path / "run", model=str(tiny_model_dir), **settings)
    state = torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == 4
    result = distill("sft", data=data, out=tmp_path / "run", model=str(tiny_model_dir), **settings, resume=True)
    assert result.metrics["train_steps"] == 4  # nothing left to do: the checkpoint is the end of the schedule
    with pytest.raises(CtxDistillError, match="holds data made from other inputs"):
        distill("sft", data=write_jsonl(tmp_path / "other.jsonl", ROWS[:2]), out=tmp_path / "run",
                model=str(tiny_model_dir), **settings, resume=True)


def test_init_adapter_continues_a_lora_adapter(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    settings = {"dtype": "float32", "max_steps": 1, "batch_size": 1, "micro_batch_size": 1}
    distill("sft", data=data, out=tmp_path / "first", model=str(tiny_model_dir), **settings)
    distill("sft", data=data, out=tmp_path / "second", model=str(tiny_model_dir),
            init_adapter=tmp_path / "first" / "adapter", **settings)
    manifest = json.loads((tmp_path / "second" / "manifest.json").read_text())
    assert manifest["init_adapter"] == str(tmp_path / "first" / "adapter")
    with pytest.raises(CtxDistillError, match="needs finetune=lora"):
        distill("sft", data=data, out=tmp_path / "third", model=str(tiny_model_dir), finetune="full",
                init_adapter=tmp_path / "first" / "adapter", **settings)
