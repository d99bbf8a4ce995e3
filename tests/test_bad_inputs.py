"""Bad inputs: each one must raise CtxDistillError whose message names the problem *and* the fix.

Through the CLI (`ctxdistill.cli.main`) the same errors become `error: ...` on stderr and exit code 2. Everything here
fails before any real training or model download; the only model ever loaded is the tiny saved one.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from ctxdistill import CtxDistillError
from ctxdistill.cli import main
from ctxdistill.core.models import load_tokenizer, pick_dtype, resolve_model
from ctxdistill.core.pairs import (
    Context,
    as_messages,
    assistant_header,
    build_pair,
    check_tokenizers_match,
    render_prompt,
)
from ctxdistill.data.inputs import read_context, read_prompts, read_qa


def cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI, require exit code 2 and an `error:` line on stderr; return stderr."""
    capsys.readouterr()  # drop anything printed before
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2, f"expected exit code 2, got {rc}; stderr: {captured.err!r}"
    # The error is the last line (progress bars from loading a model may come before it).
    last = captured.err.strip().splitlines()[-1] if captured.err.strip() else ""
    assert last.startswith("error: "), captured.err
    return last


def has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


@pytest.fixture
def fresh_accelerate():
    """AcceleratorState is a process-wide singleton that refuses a second, different mixed_precision: reset it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


# ---------------------------------------------------------------- context files


def test_missing_context_file_names_path_and_flag(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(CtxDistillError) as e:
        read_context(missing)
    msg = str(e.value)
    assert "not found" in msg and str(missing) in msg
    assert "--context" in msg


def test_missing_context_file_via_cli_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    err = cli_error(capsys, ["distill", "offline", "--context", str(tmp_path / "nope.txt"), "--out", str(out)])
    assert "not found" in err and "--context" in err
    assert not out.exists()


def test_context_directory_instead_of_file(tmp_path):
    with pytest.raises(CtxDistillError) as e:
        read_context(tmp_path)
    msg = str(e.value)
    assert "is a directory" in msg and "pass a file" in msg


def test_context_invalid_json_gives_line_and_column(tmp_path):
    p = tmp_path / "ctx.json"
    p.write_text('{"context": "Your name is Pip.",\n  oops}')
    with pytest.raises(CtxDistillError) as e:
        read_context(p)
    msg = str(e.value)
    assert "not valid JSON" in msg and "line 2" in msg
    assert "--context" in msg and str(p) in msg


@pytest.mark.parametrize("payload", [{"text": "Your name is Pip."}, ["Your name is Pip."], {"context": 42}])
def test_context_json_without_string_context_field(tmp_path, payload):
    p = tmp_path / "ctx.json"
    p.write_text(json.dumps(payload))
    with pytest.raises(CtxDistillError) as e:
        read_context(p)
    msg = str(e.value)
    assert '"context"' in msg and "JSON object" in msg
    assert '{"context": ' in msg  # shows the shape to use
    assert ".txt" in msg  # ... or the alternative


@pytest.mark.parametrize("name,content", [("ctx.txt", "  \n\t\n"), ("ctx.json", '{"context": "   "}')])
def test_empty_context_text(tmp_path, name, content):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(CtxDistillError) as e:
        read_context(p)
    msg = str(e.value)
    assert "empty" in msg and str(p) in msg
    assert "Put the text" in msg


def test_empty_context_object():
    with pytest.raises(CtxDistillError, match="empty.*--context"):
        Context("   ")


def test_unknown_context_kind():
    with pytest.raises(CtxDistillError) as e:
        Context("Your name is Pip.", kind="footer")
    msg = str(e.value)
    assert "footer" in msg and all(k in msg for k in ("system", "prefix", "document"))


# ---------------------------------------------------------------- prompts files


def test_prompts_jsonl_line_without_prompt_field(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text('{"prompt": "Who are you?"}\n{"question": "Where?"}\n{"prompt": "Hi"}\n{"prompt": 3}\n')
    with pytest.raises(CtxDistillError) as e:
        read_prompts(p)
    msg = str(e.value)
    assert "[2, 4]" in msg  # exactly the bad lines
    assert '"prompt"' in msg and '{"prompt": "..."}' in msg


def test_prompts_jsonl_line_not_json(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text('{"prompt": "Who are you?"}\nWho are you?\n')
    with pytest.raises(CtxDistillError) as e:
        read_prompts(p)
    msg = str(e.value)
    assert "line 2" in msg and "not valid JSON" in msg
    assert "one JSON object" in msg and "--prompts" in msg


@pytest.mark.parametrize("name,content", [("p.txt", "\n   \n\n"), ("p.jsonl", ""), ("p.json", "[]"),
                                          ("p.json", '{"prompts": ["  "]}')])
def test_prompts_file_with_no_prompts(tmp_path, name, content):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(CtxDistillError) as e:
        read_prompts(p)
    msg = str(e.value)
    assert "no prompts" in msg
    assert "drop --prompts" in msg  # the fix: add some or let them be synthesized


def test_prompts_json_of_wrong_shape(tmp_path):
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"prompts": [{"prompt": "hi"}]}))
    with pytest.raises(CtxDistillError) as e:
        read_prompts(p)
    assert "list of strings" in str(e.value) and '"prompts"' in str(e.value)


def test_empty_prompts_via_cli(tmp_path, capsys, persona_files):
    p = tmp_path / "prompts.txt"
    p.write_text("\n\n")
    out = tmp_path / "run"
    err = cli_error(capsys, ["distill", "offline", "--context", str(persona_files["context"]), "--prompts", str(p),
                             "--out", str(out)])
    assert "no prompts" in err and "--prompts" in err
    assert not out.exists()


# ---------------------------------------------------------------- QA files


@pytest.mark.parametrize("payload", [
    {"q": "What is your name?", "a": ["Pip"]},  # an object, not a list
    [{"q": "What is your name?", "a": "Pip"}],  # answers not a list
    [{"question": "What is your name?", "a": ["Pip"]}],  # wrong key
    [{"q": "What is your name?", "a": []}],  # no accepted answer
    [],  # empty
])
def test_qa_file_of_wrong_shape(tmp_path, payload):
    p = tmp_path / "qa.json"
    p.write_text(json.dumps(payload))
    with pytest.raises(CtxDistillError) as e:
        read_qa(p, "--eval")
    msg = str(e.value)
    assert str(p) in msg and "non-empty JSON list" in msg
    assert '{"q": question, "a": [accepted answers]}' in msg


def test_qa_of_wrong_shape_via_cli_eval(tmp_path, capsys, persona_files):
    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps([{"q": "What is your name?", "a": "Pip"}]))
    err = cli_error(capsys, ["eval", "--adapter", str(tmp_path), "--context", str(persona_files["context"]),
                             "--qa", str(qa)])
    assert "qa.json" in err and '"a": [accepted answers]' in err


# ---------------------------------------------------------------- configuration


def test_unknown_recipe_via_cli(tmp_path, capsys, persona_files):
    err = cli_error(capsys, ["distill", "onlinee", "--context", str(persona_files["context"]),
                             "--out", str(tmp_path / "run")])
    assert "Unknown recipe 'onlinee'" in err and "Available: offline" in err


def test_unknown_dtype():
    with pytest.raises(CtxDistillError) as e:
        pick_dtype("fp8", torch.device("cpu"))
    msg = str(e.value)
    assert "Unknown dtype 'fp8'" in msg and "bf16" in msg and "auto" in msg


# ---------------------------------------------------------------- models and tokenizers


@pytest.mark.parametrize("name", ["/definitely/not/here", "./not-here", "a/b/c"])
def test_model_path_that_does_not_exist(name):
    with pytest.raises(CtxDistillError) as e:
        resolve_model(name)
    msg = str(e.value)
    assert "Model path not found" in msg and name in msg
    assert "existing directory" in msg and "'default'" in msg


def test_model_path_that_does_not_exist_via_cli(capsys):
    err = cli_error(capsys, ["model-path", "/definitely/not/here"])
    assert "Model path not found: /definitely/not/here" in err


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "README.md").write_text("not a model")
    with pytest.raises(CtxDistillError) as e:
        resolve_model(str(tmp_path))
    msg = str(e.value)
    assert "not a model directory" in msg and "config.json" in msg and "save_pretrained" in msg


def test_missing_gguf_file(tmp_path):
    gguf = tmp_path / "model.gguf"
    with pytest.raises(CtxDistillError) as e:
        resolve_model(str(gguf))
    msg = str(e.value)
    assert "GGUF file not found" in msg and str(gguf) in msg and "--model" in msg


def test_directory_that_is_not_a_model_via_cli_distill(tmp_path, capsys, persona_files, fresh_accelerate):
    not_model = tmp_path / "not-a-model"
    not_model.mkdir()
    err = cli_error(capsys, ["distill", "offline", "--context", str(persona_files["context"]),
                             "--out", str(tmp_path / "run"), "--model", str(not_model)])
    assert "not a model directory" in err and "config.json" in err


def test_chat_with_a_directory_that_is_not_an_adapter(tmp_path, capsys):
    err = cli_error(capsys, ["chat", "--adapter", str(tmp_path), "--prompt", "hi"])
    assert "not a PEFT adapter directory" in err and "adapter_config.json" in err and "OUT/adapter" in err


@pytest.fixture
def two_tokenizers(tiny_model_dir):
    """Two independent copies of the default tokenizer (loaded from the tiny model), safe to mutate."""
    return load_tokenizer(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))


def test_matching_tokenizers_pass(two_tokenizers):
    check_tokenizers_match(*two_tokenizers)  # the control: the checks below fail only because of the change


def test_tokenizer_chat_template_mismatch(two_tokenizers):
    teacher, student = two_tokenizers
    student.chat_template = teacher.chat_template.replace("<|im_start|>", "<|im_start|> ")
    with pytest.raises(CtxDistillError) as e:
        check_tokenizers_match(teacher, student)
    msg = str(e.value)
    assert "chat templates differ" in msg and "vocabularies differ" not in msg
    assert "same model family" in msg


def test_tokenizer_vocabulary_mismatch(two_tokenizers):
    teacher, student = two_tokenizers
    student.add_tokens(["<brand-new-token>"])
    with pytest.raises(CtxDistillError) as e:
        check_tokenizers_match(teacher, student)
    msg = str(e.value)
    assert "vocabularies differ" in msg and "same tokenizer and chat template" in msg


def test_tokenizer_without_chat_template(two_tokenizers):
    tok = two_tokenizers[0]
    tok.chat_template = None
    with pytest.raises(CtxDistillError) as e:
        render_prompt(tok, "hi")
    msg = str(e.value)
    assert "no chat template" in msg and "instruct/chat model" in msg


def test_multi_turn_query_not_ending_with_user():
    with pytest.raises(CtxDistillError) as e:
        as_messages([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    assert "ending with a 'user' turn" in str(e.value)


# ---------------------------------------------------------------- pairs


def test_prompts_rendered_with_different_templates(tokenizer):
    header = assistant_header(tokenizer)
    teacher = render_prompt(tokenizer, "Who are you?", Context("Your name is Pip."))
    student = render_prompt(tokenizer, "Who are you?")
    build_pair(teacher, student, [42, 43], header)  # the control: same template passes
    other = student[: -len(header)] + tokenizer("### Assistant:\n", add_special_tokens=False)["input_ids"]
    with pytest.raises(CtxDistillError) as e:
        build_pair(teacher, other, [42, 43], header)
    msg = str(e.value)
    assert "same assistant header" in msg and "different chat templates" in msg
    assert "one tokenizer" in msg


def test_context_longer_than_model_window(tokenizer):
    header = assistant_header(tokenizer)
    context = Context("The lighthouse keeper counts the waves. " * 40)
    teacher = render_prompt(tokenizer, "Who are you?", context)
    student = render_prompt(tokenizer, "Who are you?")
    completion = [42] * 10
    n = len(teacher) + len(completion)
    assert build_pair(teacher, student, completion, header, max_len=n).teacher_ids  # fits exactly
    with pytest.raises(CtxDistillError) as e:
        build_pair(teacher, student, completion, header, max_len=n - 1)
    msg = str(e.value)
    assert f"is {n} tokens" in msg and f"model window ({n - 1})" in msg
    assert "Shorten the context" in msg and "max_new_tokens" in msg


def test_no_room_for_a_context_in_the_window_via_cli(tmp_path, capsys, tiny_model_dir, persona_files,
                                                     fresh_accelerate):
    """A context longer than the window is split (see test_offline_features); a window too small for any is refused."""
    ctx = tmp_path / "long.txt"
    ctx.write_text("The lighthouse keeper counts the waves and writes them down. " * 150)  # > 1024 tokens
    out = tmp_path / "run"
    err = cli_error(capsys, ["distill", "offline", "--model", str(tiny_model_dir), "--context", str(ctx),
                             "--prompts", str(persona_files["prompts"]), "--out", str(out),
                             "--set", "max_new_tokens=900"])
    assert "model window (1024 tokens) leaves no room for a context" in err and "Lower max_new_tokens" in err
    assert not out.exists()  # nothing left behind: a corrected re-run needs no --resume


# ---------------------------------------------------------------- output directory


def test_out_dir_with_a_run_without_resume(tmp_path, capsys, persona_files, fresh_accelerate):
    out = tmp_path / "run"
    (out / "data").mkdir(parents=True)
    manifest = out / "manifest.json"
    manifest.write_text('{"recipe": "offline"}')
    queries = out / "data" / "queries.jsonl"
    queries.write_text('{"prompt": "old"}\n')
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    err = cli_error(capsys, ["distill", "offline", "--context", str(persona_files["context"]),
                             "--prompts", str(persona_files["prompts"]), "--out", str(out)])
    assert "already holds a run" in err and "--resume" in err and "new --out" in err
    assert "nothing was overwritten" in err
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


# ---------------------------------------------------------------- training loop


class _Example:
    completion_len = 3


class _MicroBatch(list):
    """Collated fake examples; the loop counts the loss rows of a micro-batch by its `labels` (one per example)."""

    @property
    def labels(self):
        return self


class _LossThatDiverges(torch.nn.Module):
    """forward(batch) → (summed loss, tokens): finite for the first `finite_calls` micro-batches, then NaN."""

    def __init__(self, finite_calls: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(4))
        self.calls, self.finite_calls = 0, finite_calls

    def forward(self, batch):
        self.calls += 1
        loss = (self.w ** 2).sum() * len(batch)
        if self.calls > self.finite_calls:
            loss = loss * float("nan")
        return loss, torch.tensor(3 * len(batch))


def test_nan_loss_stops_training_and_keeps_the_checkpoint(tmp_path, fresh_accelerate):
    from accelerate import Accelerator

    from ctxdistill.core.training import TrainSettings, train

    ckpt = tmp_path / "checkpoint" / "state.pt"
    settings = TrainSettings(lr=0.01, batch_size=2, micro_batch_size=2, max_steps=10, checkpoint_every=1)
    with pytest.raises(CtxDistillError) as e:
        train(Accelerator(cpu=True), _LossThatDiverges(finite_calls=2), [_Example()] * 4, _MicroBatch, settings,
              ckpt, fingerprint="fp")
    msg = str(e.value)
    assert "nan" in msg.lower() and "step 2" in msg and "diverged" in msg
    assert "checkpoint" in msg and str(ckpt) in msg
    assert "learning rate" in msg and "--set lr=" in msg and "--resume" in msg
    state = torch.load(ckpt, map_location="cpu", weights_only=False)  # the last good checkpoint is intact
    assert state["step"] == 2 and len(state["loss_history"]) == 2
    assert all(torch.isfinite(v).all() for v in state["trainable"].values())


def test_batch_size_not_a_multiple_of_micro_batch_size(tmp_path, fresh_accelerate):
    from accelerate import Accelerator

    from ctxdistill.core.training import TrainSettings, train

    module = _LossThatDiverges(finite_calls=10**6)
    settings = TrainSettings(batch_size=12, micro_batch_size=8, max_steps=1)
    with pytest.raises(CtxDistillError) as e:
        train(Accelerator(cpu=True), module, [_Example()] * 4, _MicroBatch, settings, tmp_path / "state.pt")
    msg = str(e.value)
    assert "12" in msg and "multiple of micro_batch_size (8)" in msg
    assert "--set batch_size=" in msg and "micro_batch_size=" in msg
    assert module.calls == 0 and not (tmp_path / "state.pt").exists()  # refused before any work


def test_no_training_examples(tmp_path, fresh_accelerate):
    from accelerate import Accelerator

    from ctxdistill.core.training import TrainSettings, train

    with pytest.raises(CtxDistillError, match="No training examples.*Check the prompts"):
        train(Accelerator(cpu=True), _LossThatDiverges(1), [], _MicroBatch, TrainSettings(), tmp_path / "s.pt")


def test_resume_with_a_checkpoint_from_other_settings(tmp_path, fresh_accelerate):
    from accelerate import Accelerator

    from ctxdistill.core.training import TrainSettings, train

    ckpt = tmp_path / "state.pt"
    settings = TrainSettings(batch_size=2, micro_batch_size=2, max_steps=1)
    train(Accelerator(cpu=True), _LossThatDiverges(10**6), [_Example()] * 2, _MicroBatch, settings, ckpt,
          fingerprint="run-a")
    with pytest.raises(CtxDistillError) as e:
        train(Accelerator(cpu=True), _LossThatDiverges(10**6), [_Example()] * 2, _MicroBatch, settings, ckpt,
              resume=True, fingerprint="run-b")
    msg = str(e.value)
    assert "another config or data" in msg and str(ckpt) in msg
    assert "same settings" in msg and "new --out" in msg
