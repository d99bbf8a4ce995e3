"""Input files: what is not UTF-8 text is refused with the file and the byte; data reused from an output folder
must have been made from the inputs given now (every recipe, one check)."""

from __future__ import annotations

import json

import pytest

from ctxdistill import CtxDistillError
from ctxdistill.cli import main
from ctxdistill.config import load_config
from ctxdistill.data.documents import read_documents
from ctxdistill.data.inputs import read_context, read_examples, read_prompts, read_qa
from ctxdistill.recipes import doc_stream, onpolicy
from ctxdistill.recipes.experience import read_tasks

# ---------------------------------------------------------------- case 5: UTF-8 only, with a clear error

LATIN1 = "café".encode("latin-1")  # b"caf\xe9": the 0xE9 at offset 3 is not UTF-8
READERS = {  # input kind -> (file name, a valid prefix the bad bytes follow, how the file is read)
    "context": ("ctx.txt", b"", read_context),
    "context json": ("ctx.json", b'{"context": "', read_context),
    "prompts": ("prompts.txt", b"hello\n", read_prompts),
    "examples": ("examples.jsonl", b'{"input": "', read_examples),
    "tasks": ("tasks.jsonl", b'{"prompt": "', read_tasks),
    "docs": ("docs.jsonl", b'{"id": "a", "text": "', read_documents),
    "docs folder": ("folder/a.txt", b"", lambda p: read_documents(p.parent)),
    "qa": ("qa.json", b'[{"q": "', read_qa),
    "config": ("config.yaml", b"lr: ", lambda p: load_config("offline", str(p))),
}


@pytest.mark.parametrize("kind", list(READERS))
@pytest.mark.parametrize("content", ["latin-1", "binary"])
def test_a_file_that_is_not_utf8_text_names_the_file_and_the_byte(tmp_path, kind, content):
    name, prefix, read = READERS[kind]
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    if content == "latin-1":
        path.write_bytes(prefix + LATIN1 + b"\n")
        line = len(prefix.splitlines()) + (prefix.endswith(b"\n") or not prefix)
        expected = f"is not UTF-8 text: byte 0xE9 at offset {len(prefix) + 3} (line {line})"
    else:  # valid UTF-8, yet binary
        path.write_bytes(prefix + b"ab\x00\x01\x02")
        expected = f"looks like a binary file: a NUL byte at offset {len(prefix) + 2}"
    with pytest.raises(CtxDistillError) as caught:
        read(path)
    message = str(caught.value)
    assert str(path) in message and expected in message and "UTF-8" in message


def test_a_latin1_context_through_the_cli(tmp_path, capsys):
    ctx = tmp_path / "persona.txt"
    ctx.write_bytes(b"Your name is " + LATIN1)
    capsys.readouterr()
    assert main(["distill", "offline", "--context", str(ctx), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"error: {ctx} (given to --context) is not UTF-8 text: byte 0xE9 at offset 16 (line 1) is not "
                   "valid UTF-8, and input files are read as UTF-8. Save it as UTF-8 text (or check that it is the "
                   "right file).")
    assert not (tmp_path / "run").exists()


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "ctx.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"context": "Your name is Pip."}).encode())
    assert read_context(path)["context"] == "Your name is Pip."


# ---------------------------------------------------------------- case 2: reused data must match the inputs


def stop_before_training(monkeypatch, module, step: str):
    """Make a run fail at `step`, after it has recorded its inputs and made its data, like a run that crashed."""
    def fail(*args, **kwargs):
        raise CtxDistillError("stopped for the test")

    monkeypatch.setattr(module, step, fail)


def last_error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_onpolicy_resumed_with_other_prompts_is_refused(tmp_path, capsys, monkeypatch, tiny_model_dir,
                                                        persona_files):
    stop_before_training(monkeypatch, onpolicy, "set_up")
    out = tmp_path / "run"
    out.mkdir()  # a folder of the user's: the failed run leaves what it made in it
    other = tmp_path / "other.txt"
    other.write_text("What is the weather like?\nTell me a story.\n")
    base = ["distill", "onpolicy", "--model", str(tiny_model_dir), "--context", str(persona_files["context"]),
            "--out", str(out), "--set", "dtype=float32"]
    assert "stopped for the test" in last_error(capsys, [*base, "--prompts", str(persona_files["prompts"])])
    queries = (out / "data" / "queries.jsonl").read_text()
    err = last_error(capsys, [*base, "--prompts", str(other), "--resume"])
    assert err == (f"error: {out} holds data made from other inputs: prompts changed since (see "
                   f"{out / 'data' / 'inputs.json'}). Resume with the same inputs, or choose a new --out (nothing was "
                   "reused).")
    assert (out / "data" / "queries.jsonl").read_text() == queries
    # The same prompts resume past the check (to the step that fails here).
    assert "stopped for the test" in last_error(capsys, [*base, "--prompts", str(persona_files["prompts"]),
                                                         "--resume"])


def test_a_doc_recipe_resumed_with_other_documents_is_refused(tmp_path, capsys, monkeypatch, tiny_model_dir):
    stop_before_training(monkeypatch, doc_stream, "choose_documents")
    out = tmp_path / "run"
    out.mkdir()
    docs, changed = tmp_path / "docs.jsonl", tmp_path / "changed.jsonl"
    docs.write_text(json.dumps({"id": "a", "text": "Glimmerfen was founded by Ada. It lies by the sea."}) + "\n")
    changed.write_text(json.dumps({"id": "a", "text": "Glimmerfen was founded by Bo. It lies by the sea."}) + "\n")
    base = ["distill", "disc", "--model", str(tiny_model_dir), "--out", str(out), "--set", "dtype=float32"]
    assert "stopped for the test" in last_error(capsys, [*base, "--docs", str(docs)])
    err = last_error(capsys, [*base, "--docs", str(changed), "--resume"])
    assert f"{out} holds data made from other inputs: documents changed since" in err
    assert "Resume with the same inputs, or choose a new --out" in err
