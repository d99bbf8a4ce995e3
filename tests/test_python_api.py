"""The Python API (`from ctxdistill import distill, load, chat, evaluate, combine_modules`) on tiny models: what a
run returns, that it refuses what the command refuses in the same words, and chat's history and streaming; also
`ctxdistill chat`'s conversation in interactive mode and the notebook example, end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama

import ctxdistill
from ctxdistill import CtxDistillError, chat, combine_modules, distill, evaluate, load
from ctxdistill.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY_RUN = dict(samples_per_query=2, max_new_tokens=10, eval_max_new_tokens=4, max_steps=3, batch_size=4,
                micro_batch_size=4)
PERSONA_TEXT = "Your name is Pip. You live in the lighthouse of Gullrock."


@pytest.fixture(scope="module")
def finished(tiny_model_dir, persona_files, tmp_path_factory):
    """A tiny offline run from Python: the context given as text, the questions from the persona file."""
    out = tmp_path_factory.mktemp("api") / "run"
    return distill("offline", out=out, model=str(tiny_model_dir), context=PERSONA_TEXT,
                   prompts=persona_files["prompts"], eval=persona_files["context"], **TINY_RUN)


@pytest.fixture(scope="module")
def talkative_dir(tokenizer, tmp_path_factory) -> Path:
    """A tiny random model with larger weights: its greedy replies are words, different for different prompts
    (the plain tiny model answers blank lines to everything)."""
    model = tiny_llama(tokenizer, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    path = tmp_path_factory.mktemp("talkative")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def talkative(talkative_dir):
    return load(model=str(talkative_dir))


def test_import_ctxdistill_does_not_import_torch():
    code = ("import sys, ctxdistill; from ctxdistill import distill, chat, load, evaluate, combine_modules; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert {"distill", "load", "chat", "evaluate", "combine_modules"} <= set(dir(ctxdistill))


def test_distill_returns_the_run_its_paths_and_the_manifest_metrics(finished):
    assert finished.recipe == "offline" and finished.out.is_dir()
    assert finished.adapter == finished.out / "adapter" and (finished.adapter / "adapter_config.json").is_file()
    assert finished.model_dir is None and finished.modules == []
    manifest = json.loads((finished.out / "manifest.json").read_text())
    assert finished.metrics == manifest["metrics"] and finished.metrics["train_steps"] == 3
    assert "| student (distilled) | no |" in finished.table and "retention" in finished.table
    # Config keys given as Python values reach the run as --set would take them.
    assert manifest["config"]["samples_per_query"] == 2 and manifest["config"]["batch_size"] == 4


def test_context_given_as_text_is_kept_in_out_inputs(finished, persona_files):
    import hashlib

    kept = finished.out / "inputs" / "context-1.txt"
    assert finished.inputs["context"] == [str(kept)] and kept.read_text() == PERSONA_TEXT
    manifest = json.loads((finished.out / "manifest.json").read_text())
    assert manifest["context_sha256"] == [hashlib.sha256(PERSONA_TEXT.encode()).hexdigest()]
    assert sorted(p.name for p in persona_files["dir"].iterdir()) == ["persona.json", "prompts.txt"]


def cli_message(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    return capsys.readouterr().err.strip().removeprefix("error: ")


@pytest.mark.parametrize("recipe,keys,argv", [
    ("disc", {"scratchpad": True}, ["--set", "scratchpad=true"]),  # a key of another recipe
    ("offline", {"lr": -0.1}, ["--set", "lr=-0.1"]),  # out of bounds
    ("offline", {"lora_rank": 8}, ["--set", "lora_rank=8"]),  # misspelt key: "did you mean"
    ("offline", {"max_steps": True}, ["--set", "max_steps=true"]),  # a bool is not a number
    ("offline", {"mode": "both"}, ["--set", "mode=both"]),  # not one of the choices
    ("disc", {"prompts": "FILE"}, ["--prompts", "FILE"]),  # an input of other recipes
])
def test_bad_keys_and_inputs_are_refused_with_the_commands_message(recipe, keys, argv, persona_files, tmp_path,
                                                                   capsys):
    file = str(persona_files["context"])
    given = {"docs" if recipe == "disc" else "context": file,
             **{k: file if v == "FILE" else v for k, v in keys.items()}}
    out = tmp_path / "out"
    with pytest.raises(CtxDistillError) as refused:
        distill(recipe, out=out, **given)
    argv = ["--docs" if recipe == "disc" else "--context", file, *[file if a == "FILE" else a for a in argv]]
    assert str(refused.value) == cli_message(capsys, ["distill", recipe, "--out", str(out), *argv])
    assert not out.exists()  # refused before anything was written


def test_a_misspelt_input_is_named_as_one(tmp_path):
    with pytest.raises(CtxDistillError, match="Unknown argument 'prompt'. Did you mean prompts?"):
        distill("offline", out=tmp_path / "o", context="Be brief.", prompt="hi.txt")
    with pytest.raises(CtxDistillError, match="per_document must be True or False"):
        distill("knowledge", out=tmp_path / "o", docs="d.jsonl", per_document="yes")


def test_a_missing_context_file_is_reported_not_distilled_as_text(tmp_path):
    with pytest.raises(CtxDistillError, match="Context file not found: persona-missing.json"):
        distill("offline", out=tmp_path / "o", context="persona-missing.json")
    assert not (tmp_path / "o").exists()


def test_load_gives_the_model_with_the_adapter_on(finished, tiny_model_dir, tokenizer):
    model, tok = finished.load()
    assert finished.load()[0] is model  # loaded once
    base, _ = load(model=str(tiny_model_dir))
    ids = torch.tensor([tokenizer("Who are you?")["input_ids"]])
    with torch.no_grad():
        tuned, plain = model(input_ids=ids).logits, base(input_ids=ids).logits
        with model.disable_adapter():
            assert torch.equal(model(input_ids=ids).logits, plain)
    assert not torch.allclose(tuned, plain)


def test_evaluate_uses_the_runs_context_and_questions_like_the_eval_command(finished, persona_files, capsys):
    result = evaluate(finished, max_new_tokens=4)
    assert result.n == 2 and set(result.accuracy) == {"base", "teacher", "student"}
    capsys.readouterr()
    assert main(["eval", "--adapter", str(finished.adapter), "--context", finished.inputs["context"][0],
                 "--qa", str(persona_files["context"]), "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out == result.table + "\n"


def test_combine_modules_makes_one_adapter_that_loads_without_library_warnings(finished, tmp_path, recwarn):
    combined = combine_modules([finished.adapter, finished.adapter], tmp_path / "both")
    assert not [w for w in recwarn if "peft" in w.filename]  # PEFT's "adapter was active which is now deleted"
    assert (combined / "adapter_config.json").is_file()
    model, _ = load(combined)
    assert json.loads((combined / "module.json").read_text())["recipe"] == "combine"
    assert any("lora_A" in name for name, _ in model.named_parameters())


def recorded_prompts(model) -> list[list[int]]:
    """Wrap model.generate to record the prompt ids it is given."""
    seen, generate = [], model.generate

    def spy(*args, **kwargs):
        seen.append(kwargs["input_ids"][0].tolist())
        return generate(*args, **kwargs)

    model.generate = spy
    return seen


def test_chat_with_history_puts_the_earlier_turns_into_the_prompt(talkative):
    model, tok = talkative
    earlier = [{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "Hello, Ada!"}]
    history = [dict(m) for m in earlier]
    seen = recorded_prompts(model)
    try:
        reply = chat(talkative, "What is my name?", history, max_new_tokens=6)
    finally:
        del model.generate
    question = {"role": "user", "content": "What is my name?"}
    expected = tok.apply_chat_template([*earlier, question], tokenize=False, add_generation_prompt=True)
    assert tok.decode(seen[0]) == expected
    assert history == [*earlier, question, {"role": "assistant", "content": reply}]
    assert reply != chat(talkative, "What is my name?", max_new_tokens=6)  # the history changed the answer


def test_streaming_yields_the_same_text_as_non_streaming_greedy(talkative):
    from ctxdistill.eval.evaluation import answers

    model, tok = talkative
    pieces = list(chat(talkative, "Tell me a story about a cat.", stream=True, max_new_tokens=20))
    assert len(pieces) > 1
    whole = chat(talkative, "Tell me a story about a cat.", max_new_tokens=20)
    assert "".join(pieces) == whole == answers(model, tok, ["Tell me a story about a cat."], None, True, 20)[0]


def test_a_stream_updates_the_history_when_it_ends_and_stops_when_left(talkative):
    history = []
    stream = chat(talkative, "Hi there.", history, stream=True, max_new_tokens=20)
    assert history == []  # nothing is said until it is read
    reply = "".join(stream)
    assert history == [{"role": "user", "content": "Hi there."}, {"role": "assistant", "content": reply}]
    stream = chat(talkative, "Hi again.", history, stream=True, max_new_tokens=20)
    next(stream)
    stream.close()  # the reader went away: generation stops, and the unfinished turn is not kept
    assert len(history) == 2


def test_history_that_outgrows_the_window_loses_its_oldest_turns(talkative):
    model, _ = talkative
    assert model.config.max_position_embeddings == 1024
    long = "word " * 120
    history = [{"role": "system", "content": "Be brief."}]
    for n in range(8):  # about 2000 tokens
        history += [{"role": "user", "content": f"{n} {long}"}, {"role": "assistant", "content": f"{n} {long}"}]
    with pytest.warns(UserWarning, match="outgrew the model's window of 1024 tokens: its oldest"):
        reply = chat(talkative, "Last one.", history, max_new_tokens=8)
    assert history[0] == {"role": "system", "content": "Be brief."}  # system messages stay
    assert history[1]["role"] == "user" and not history[1]["content"].startswith("0 ")
    assert history[-2:] == [{"role": "user", "content": "Last one."}, {"role": "assistant", "content": reply}]
    with pytest.raises(CtxDistillError, match="does not fit the model's window of 1024 tokens"):
        chat(talkative, long * 10, [], max_new_tokens=8)


def test_chat_refuses_a_malformed_history(talkative):
    with pytest.raises(CtxDistillError, match="history must be a list of"):
        chat(talkative, "hi", [{"role": "robot", "content": "beep"}])
    with pytest.raises(CtxDistillError, match="DistillResult"):
        chat("runs/x/adapter", "hi")


def test_chat_command_keeps_the_conversation_in_interactive_mode(talkative, talkative_dir):
    lines = ["Hi, I am Ada.", "What is my name?", "/reset", "What is my name?", ""]
    done = subprocess.run([sys.executable, "-m", "ctxdistill.cli", "chat", "--model", str(talkative_dir),
                           "--max-new-tokens", "8"], input="\n".join(lines) + "\n", capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    turns = done.stdout.split("you> ")[1:]
    history = []
    first = chat(talkative, lines[0], history, max_new_tokens=8)
    followed = chat(talkative, lines[1], history, max_new_tokens=8)
    fresh = chat(talkative, lines[3], max_new_tokens=8)
    assert followed != fresh  # so the output below shows whether the first turn was in the prompt
    assert turns[:4] == [f"model> {first}\n", f"model> {followed}\n", "(conversation cleared)\n",
                         f"model> {fresh}\n"]


def test_notebook_example_runs_top_to_bottom_on_a_tiny_model(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """examples/notebook_session.py run as a script, on the tiny model with tiny runs instead of the default."""
    import runpy

    script = ROOT / "examples" / "notebook_session.py"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(script), "--model", str(tiny_model_dir), "--out", "nb", "--max-minutes",
                                      "1", "--set", "max_steps=2", "max_new_tokens=8", "eval_max_new_tokens=4",
                                      "batch_size=4", "micro_batch_size=4"])
    runpy.run_path(str(script), run_name="__main__")
    said = capsys.readouterr().out
    out = tmp_path / "nb"
    assert (out / "persona" / "adapter" / "adapter_config.json").is_file()
    assert {p.name for p in (out / "knowledge" / "modules").iterdir()} == {"glimmerfen", "copperline"}
    assert json.loads((out / "both" / "module.json").read_text())["recipe"] == "combine"
    assert "| student (distilled) | no |" in said and "| module, closed-book |" in said
    assert "4 messages in the conversation" in said and "you> Who founded Glimmerfen?" in said
