"""The output folder of a run: one run at a time (OUT/.lock), checked before any model is loaded, removed after a
failure only if the run made it, `--set` with several pairs, and Ctrl-C."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path

import pytest

from ctxdistill.cli import build_parser, main
from ctxdistill.config import load_config
from ctxdistill.recipes import RunResult, registry
from ctxdistill.recipes.common import LOCK, make_accelerator, prepare_out_dir

DEAD_PID = 2**22 + 12345  # above Linux's largest pid: never a live process


def cli(capsys, argv: list[str]) -> tuple[int, str]:
    """(exit code, the last line on stderr) of a CLI call."""
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


def offline_args(out, persona_files, model="default", *extra: str) -> list[str]:
    return ["distill", "offline", "--model", str(model), "--context", str(persona_files["context"]),
            "--prompts", str(persona_files["prompts"]), "--out", str(out), *extra]


def write_lock(out: Path, pid: int, host: str | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    holder = {"pid": pid, "host": host or socket.gethostname(), "started": "2025-01-02 03:04:05"}
    (out / LOCK).write_text(json.dumps(holder))
    return holder


@pytest.fixture
def fake_offline(monkeypatch):
    """Replace the offline recipe's run by one that opens its folder as every recipe does (open_run ->
    prepare_out_dir), records what it saw, then does what `behave` says: return, raise, or be interrupted."""
    seen = {}

    def install(behave=None):
        recipe = registry()["offline"]

        def run(cfg, out, resume=False, **inputs):
            prepare_out_dir(make_accelerator(cfg), Path(out), resume)
            seen["lock"] = json.loads((Path(out) / LOCK).read_text())
            if behave is not None:
                behave(Path(out))
            return RunResult(Path(out), [], {}, "table")

        monkeypatch.setitem(registry(), "offline", dataclasses.replace(recipe, run=run))
        return seen

    return install


# ---------------------------------------------------------------- case 1: one run per output folder


def test_a_lock_held_by_a_live_run_refuses_and_is_left_alone(tmp_path, capsys, persona_files, fake_offline):
    seen = fake_offline()
    out = tmp_path / "run"
    holder = write_lock(out, os.getppid())  # alive: the process that started the tests
    rc, err = cli(capsys, offline_args(out, persona_files))
    assert rc == 2 and not seen
    assert f"is in use by pid {os.getppid()} on host {socket.gethostname()} (started 2025-01-02 03:04:05)" in err
    assert "Wait for that run to end" in err
    assert json.loads((out / LOCK).read_text()) == holder  # not released: it is not ours
    rc, err = cli(capsys, offline_args(out, persona_files, "default", "--resume"))  # --resume takes the lock too
    assert rc == 2 and "is in use by pid" in err


def test_a_lock_from_another_host_is_refused_with_advice(tmp_path, capsys, persona_files, fake_offline):
    fake_offline()
    out = tmp_path / "run"
    write_lock(out, DEAD_PID, host="elsewhere")
    rc, err = cli(capsys, offline_args(out, persona_files))
    assert rc == 2 and f"is in use by pid {DEAD_PID} on host elsewhere" in err
    assert f"delete {out / LOCK}" in err and (out / LOCK).exists()


def test_a_stale_lock_is_taken_over_with_a_warning_and_released(tmp_path, capsys, persona_files, fake_offline):
    seen = fake_offline()
    out = tmp_path / "run"
    write_lock(out, DEAD_PID)
    with pytest.warns(UserWarning, match=f"taking over the lock of pid {DEAD_PID}"):
        rc, _ = cli(capsys, offline_args(out, persona_files))
    assert rc == 0
    assert seen["lock"]["pid"] == os.getpid() and seen["lock"]["host"] == socket.gethostname()
    assert not (out / LOCK).exists()


def test_the_lock_is_gone_after_a_finished_and_after_a_failed_run(tmp_path, capsys, tiny_model_dir, persona_files):
    out = tmp_path / "run"
    tiny = ["--set", "dtype=float32", "samples_per_query=1", "max_new_tokens=4", "eval_max_new_tokens=2",
            "max_steps=1", "batch_size=2", "micro_batch_size=2"]
    rc, err = cli(capsys, offline_args(out, persona_files, tiny_model_dir, *tiny))
    assert rc == 0, err
    assert (out / "manifest.json").exists() and not (out / LOCK).exists()
    # Run again: refused (a finished run), and the refusal says so; the lock it took is released.
    rc, err = cli(capsys, offline_args(out, persona_files, tiny_model_dir, *tiny))
    assert rc == 2 and "already holds a run: a finished run (manifest.json)" in err and "--resume" in err
    assert not (out / LOCK).exists()
    # A failed run (--resume with a window too small for the context) keeps the folder, releases the lock.
    rc, err = cli(capsys, offline_args(out, persona_files, tiny_model_dir, *tiny, "--resume",
                                       "--set", "max_new_tokens=1000"))
    assert rc == 2 and "window" in err
    assert (out / "manifest.json").exists() and not (out / LOCK).exists()


# ---------------------------------------------------------------- case 3: --out that cannot be written


def test_out_that_is_a_file_is_refused_before_any_model_is_loaded(tmp_path, capsys, persona_files):
    out = tmp_path / "run.txt"
    out.write_text("mine")
    rc, err = cli(capsys, offline_args(out, persona_files, tmp_path / "no-such-model"))
    assert rc == 2 and err == f"error: --out {out} is a file, not a folder. Choose a folder path for --out (the " \
                              "file was not touched)."
    assert out.read_text() == "mine"


def test_out_that_is_not_writable_is_refused_before_any_model_is_loaded(tmp_path, capsys, persona_files):
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        probe = locked / "probe"
        try:
            probe.mkdir()
            writable = True  # root ignores permissions: test with folders that nobody can write
            probe.rmdir()
        except PermissionError:
            writable = False
        cases = [(Path("/proc/ctxdistill-out"), "Cannot create --out /proc/ctxdistill-out"),
                 (Path("/sys"), "--out /sys is not writable")] if writable else \
            [(locked / "sub", f"Cannot create --out {locked / 'sub'}: Permission denied"),
             (locked, f"--out {locked} is not writable (Permission denied)")]
        for out, message in cases:
            rc, err = cli(capsys, offline_args(out, persona_files, tmp_path / "no-such-model"))
            assert rc == 2 and message in err and "Choose a folder you can write to" in err
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------- case 4: a failed run leaves nothing behind


def long_context_args(tmp_path, out, tiny_model_dir, persona_files, *extra):
    ctx = tmp_path / "long.txt"
    ctx.write_text("The lighthouse keeper counts the waves and writes them down. " * 150)
    return ["distill", "offline", "--model", str(tiny_model_dir), "--context", str(ctx), "--prompts",
            str(persona_files["prompts"]), "--out", str(out), "--set", "max_new_tokens=900", *extra]


def test_a_failed_run_removes_the_folder_it_made(tmp_path, capsys, tiny_model_dir, persona_files):
    out = tmp_path / "new" / "run"  # neither folder exists yet
    rc, err = cli(capsys, long_context_args(tmp_path, out, tiny_model_dir, persona_files))
    assert rc == 2 and "leaves no room for a context" in err
    assert not (tmp_path / "new").exists()
    rc, err = cli(capsys, long_context_args(tmp_path, out, tiny_model_dir, persona_files))  # same command: same error
    assert rc == 2 and "leaves no room for a context" in err and "already holds" not in err


def test_a_failed_run_never_removes_a_folder_that_existed(tmp_path, capsys, tiny_model_dir, persona_files):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _ = cli(capsys, long_context_args(tmp_path, empty, tiny_model_dir, persona_files))
    assert rc == 2 and empty.is_dir() and not (empty / LOCK).exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own file")
    rc, err = cli(capsys, long_context_args(tmp_path, mine, tiny_model_dir, persona_files))
    assert rc == 2 and "is not empty (notes.txt) and holds no ctxdistill run" in err
    rc, err = cli(capsys, long_context_args(tmp_path, mine, tiny_model_dir, persona_files, "--resume"))
    assert rc == 2 and "leaves no room for a context" in err
    assert (mine / "notes.txt").read_text() == "the user's own file" and not (mine / LOCK).exists()


def test_the_refusal_says_what_the_folder_holds(tmp_path, capsys, persona_files, fake_offline):
    fake_offline()
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "state.pt").write_bytes(b"x")
    rc, err = cli(capsys, offline_args(out, persona_files))
    assert rc == 2 and "an unfinished run (last checkpoint: checkpoint/state.pt)" in err
    (out / "checkpoint" / "state.pt").unlink()
    (out / "data").mkdir()
    rc, err = cli(capsys, offline_args(out, persona_files))
    assert rc == 2 and "a run that stopped before its first checkpoint (it kept data/)" in err
    assert "Pass --resume to continue it with the same inputs, or choose a new --out" in err


# ---------------------------------------------------------------- case 6: --set with several pairs


@pytest.mark.parametrize("command", [["distill", "offline"], ["experience", "--tasks", "t.jsonl"]])
def test_set_takes_several_pairs(command):
    args = build_parser().parse_args([*command, "--out", "o", "--set", "lr=0.5", "max_steps=3", "--set", "seed=7"])
    assert args.set == ["lr=0.5", "max_steps=3", "seed=7"]
    cfg = load_config("offline" if command[0] == "distill" else "experience", None, args.set)
    assert (cfg.learning_rate, cfg.max_steps, cfg.seed) == (0.5, 3, 7)


# ---------------------------------------------------------------- case 7: Ctrl-C


def test_ctrl_c_prints_where_it_stopped_and_how_to_resume(tmp_path, capsys, persona_files, fake_offline):
    def interrupt(out):
        (out / "data").mkdir()
        raise KeyboardInterrupt

    fake_offline(interrupt)
    out = tmp_path / "run"
    argv = offline_args(out, persona_files, "default", "--set", "seed=1")
    rc, err = cli(capsys, argv)
    assert rc == 130
    assert err == (f"interrupted: before the first checkpoint; {out} keeps the data made so far. Resume with: "
                   f"ctxdistill distill offline --model default --context {persona_files['context']} --prompts "
                   f"{persona_files['prompts']} --out {out} --set seed=1 --resume")
    assert (out / "data").is_dir() and not (out / LOCK).exists()  # kept for --resume, and free

    def interrupt_after_a_checkpoint(out):
        (out / "checkpoint").mkdir()
        (out / "checkpoint" / "state.pt").write_bytes(b"x")
        raise KeyboardInterrupt

    fake_offline(interrupt_after_a_checkpoint)
    rc, err = cli(capsys, [*argv, "--resume"])
    assert rc == 130 and err.startswith(f"interrupted: {out} keeps its last checkpoint (checkpoint/state.pt). ")
    assert err.endswith("--set seed=1 --resume") and err.count("--resume") == 1


def test_resume_removes_only_the_half_written_files_of_a_killed_run(tmp_path):
    from ctxdistill.recipes.common import remove_partial_writes

    out = tmp_path / "run"
    for folder in [".tmp-abc123", ".adapter-old-x1", "adapter", "checkpoint"]:
        (out / folder).mkdir(parents=True)
    partial = [out / ".tmp-abc123" / "adapter_model.safetensors", out / "checkpoint" / ".state.pt.ab12cd34",
               out / ".manifest.json.k2j3h4g5"]
    kept = [out / "adapter" / "adapter_model.safetensors", out / "checkpoint" / "state.pt", out / "notes.txt",
            out / ".lock", out / ".gitignore"]
    for path in partial + kept:
        path.write_text("x")
    removed = remove_partial_writes(out)
    assert sorted(removed) == sorted([".tmp-abc123", ".adapter-old-x1", "checkpoint/.state.pt.ab12cd34",
                                      ".manifest.json.k2j3h4g5"])
    assert all(p.exists() for p in kept) and not any(p.exists() for p in partial)


def test_atomic_writes_get_the_permissions_of_a_plain_write(tmp_path):
    """A manifest or report written atomically is as readable as one written with open() (mkstemp alone gives 0600)."""
    import os

    from ctxdistill.core.files import atomic_write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "atomic.txt", "x")
    assert os.stat(tmp_path / "atomic.txt").st_mode & 0o777 == os.stat(plain).st_mode & 0o777
