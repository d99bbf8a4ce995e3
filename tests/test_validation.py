"""Input validation that must happen before any model work: the device, finite and bounded numbers, seeds, the
experience checker, and the benchmarks' way of calling the package."""

from __future__ import annotations

import json
import random
import sys
import typing
from pathlib import Path

import pytest
import torch
from test_bad_inputs import cli_error

from ctxdistill import CtxDistillError
from ctxdistill.config import CONFIGS, load_config
from ctxdistill.recipes.common import make_accelerator

# ---------------------------------------------------------------- device

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")


def offline_argv(persona_files, out: Path, *sets: str) -> list[str]:
    return ["distill", "offline", "--context", str(persona_files["context"]), "--prompts",
            str(persona_files["prompts"]), "--out", str(out), *[a for s in sets for a in ("--set", s)]]


@no_gpu
def test_cuda_on_a_machine_without_one_is_refused_naming_what_is_there(capsys, persona_files, tmp_path):
    err = cli_error(capsys, offline_argv(persona_files, tmp_path / "run", "device=cuda", "max_steps=1"))
    assert "device='cuda' is not available on this machine" in err
    assert "torch.cuda.is_available() is False" in err and "devices: cpu." in err
    assert not (tmp_path / "run").exists()  # refused before the output folder was made


@pytest.mark.parametrize("name", ["banana", "CUDA", "cuda:x", "0"])
def test_a_device_torch_cannot_parse_is_refused(name):
    with pytest.raises(CtxDistillError, match=f"device='{name}' is not a device name.*one of this machine's devices: "
                                              "cpu"):
        load_config("offline", sets=[f"device={name}"])


def test_a_device_type_runs_do_not_use_is_refused():
    with pytest.raises(CtxDistillError, match="device='meta' is not available on this machine"):
        load_config("offline", sets=["device=meta"])


def test_cuda_devices_are_checked_against_the_ones_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert load_config("offline", sets=["device=cuda:1"]).device == "cuda:1"
    assert load_config("offline", sets=["device=cuda"]).device == "cuda"
    with pytest.raises(CtxDistillError, match=r"'cuda:5' is not available .*it has 2 CUDA device\(s\).*"
                                              "devices: cpu, cuda:0, cuda:1"):
        load_config("offline", sets=["device=cuda:5"])


def test_the_accelerator_runs_on_the_configured_device():
    assert make_accelerator(load_config("offline", sets=["device=cpu"])).device.type == "cpu"


def test_an_accelerator_placed_elsewhere_than_asked_is_refused(monkeypatch):
    monkeypatch.setenv("ACCELERATE_TORCH_DEVICE", "meta")  # accelerate's own override of the device
    with pytest.raises(CtxDistillError, match="device='cpu' was asked for, but accelerate put this run on meta"):
        make_accelerator(load_config("offline", sets=["device=cpu"]))


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize("item, message", [
    ("lr=.nan", "lr must be a finite number, got nan."),
    ("lr=.inf", "lr must be a finite number, got inf."),
    ("epochs=.inf", "epochs must be a finite number, got inf."),
    ("grad_clip=-3", "grad_clip must be >= 0.0, got -3."),
    ("lora_alpha=-4", "lora_alpha must be > 0, got -4."),
    ("warmup_ratio=7", "warmup_ratio must be <= 1.0, got 7."),
    ("lora_dropout=5", "lora_dropout must be < 1.0, got 5."),
    ("max_new_tokens=-1", "max_new_tokens must be > 0, got -1."),
    ("seed=99999999999999999999999", "seed must be < 4294967296, got 99999999999999999999999."),
    ("seed=-1", "seed must be >= 0, got -1."),
    ("lora_targets=[.nan]", "lora_targets must be all-linear or a list of module names"),
])
def test_out_of_range_and_non_finite_values_are_refused(item, message):
    with pytest.raises(CtxDistillError) as e:
        load_config("offline", sets=[item])
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_max_minutes_flag_must_be_finite(capsys, persona_files, tmp_path, value):
    err = cli_error(capsys, offline_argv(persona_files, tmp_path / "run") + ["--max-minutes", value])
    assert err == f"error: max_minutes must be a finite number, got {value}."


def test_the_largest_seed_works_everywhere_a_seed_goes():
    seed = load_config("offline", sets=[f"seed={2**32 - 1}"]).seed
    torch.manual_seed(seed + 8)  # offline adds the context's index, synthetic data up to 2
    torch.Generator().manual_seed(seed * 100_003 + 1000)  # the training order: seed and epoch
    random.Random(seed).random()


def _float_fields(cls) -> list[str]:
    def floats(annotation) -> bool:
        return annotation is float or any(floats(a) for a in typing.get_args(annotation))
    return [name for name, field in cls.model_fields.items() if floats(field.annotation)]


@pytest.mark.parametrize("recipe", list(CONFIGS))
def test_every_float_key_refuses_nan_and_defaults_dump_as_strict_json(recipe):
    """The manifest holds cfg.to_dict(): finite by construction, so strict JSON can always write it."""
    json.dumps(load_config(recipe).to_dict(), allow_nan=False)
    for key in _float_fields(CONFIGS[recipe]):
        with pytest.raises(CtxDistillError, match=f"{key} must be a finite number, got nan"):
            load_config(recipe, sets=[f"{key}=.nan"])


# ---------------------------------------------------------------- experience: the checker before any model work


def write_tasks(path: Path, answers: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"task {i}?", "answer": a}) + "\n" for i, a in enumerate(answers)))
    return path


def experience_error(capsys, tmp_path: Path, checker: str, answers: list[str]) -> str:
    """The CLI error of an experience run whose model does not exist: a check made after load_model would fail on
    the model instead."""
    tasks = write_tasks(tmp_path / "tasks.jsonl", answers)
    out = tmp_path / "out"
    err = cli_error(capsys, ["experience", "--tasks", str(tasks), "--checker", checker, "--out", str(out),
                             "--model", str(tmp_path / "no-such-model")])
    assert "no-such-model" not in err and not out.exists()
    return err


def test_an_invalid_regex_answer_is_refused_before_the_model_loads(capsys, tmp_path):
    err = experience_error(capsys, tmp_path, "regex", ["4", "1?", "(12", "x", "y", "z"])
    assert "tasks.jsonl, task 3 (line 3, blank lines not counted): the answer '(12' is not a valid regular " \
           "expression for --checker regex (missing ), unterminated subpattern at position 0)" in err
    assert "use --checker exact or contains" in err


def user_checker(tmp_path: Path, monkeypatch, module: str, source: str) -> str:
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{module}:judge"


def test_a_checker_with_the_wrong_signature_is_refused_before_the_model_loads(capsys, tmp_path, monkeypatch):
    spec = user_checker(tmp_path, monkeypatch, "two_args_checker", "def judge(response, answer):\n    return True\n")
    err = experience_error(capsys, tmp_path, spec, ["1", "2", "3", "4", "5", "6"])
    assert err == ("error: The checker 'two_args_checker:judge' must take (prompt, response, answer); its signature "
                   "is (response, answer). Change the function or pass another --checker.")


def test_a_checker_that_fails_on_the_first_task_is_refused_before_the_model_loads(capsys, tmp_path, monkeypatch):
    spec = user_checker(tmp_path, monkeypatch, "failing_checker",
                        "def judge(prompt, response, answer):\n    return int(response) > 0\n")
    err = experience_error(capsys, tmp_path, spec, ["seven", "2", "3", "4", "5", "6"])
    assert "The checker 'failing_checker:judge' failed on task 1 of" in err
    assert "ValueError: invalid literal for int() with base 10: 'seven'" in err


def test_a_checker_that_returns_no_verdict_is_refused(capsys, tmp_path, monkeypatch):
    spec = user_checker(tmp_path, monkeypatch, "silent_checker", "def judge(prompt, response, answer, *rest):\n"
                                                                 "    pass\n")
    err = experience_error(capsys, tmp_path, spec, ["1", "2", "3", "4", "5", "6"])
    assert err.endswith("returned None on task 1 of " + str(tmp_path / "tasks.jsonl") + "; it must return True or "
                        "False.")


# ---------------------------------------------------------------- benchmarks


def test_benchmarks_call_the_package_through_this_interpreter(monkeypatch):
    """make runs .venv/bin/python without an activated venv: a bare `ctxdistill` would not be on PATH."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import trl_sdft
    finally:
        sys.path.pop(0)
    calls = []
    monkeypatch.setattr(trl_sdft.subprocess, "run",
                        lambda argv, **kw: calls.append(argv) or type("Done", (), {"stdout": "/models/x\n"})())
    assert trl_sdft._default_model_path() == "/models/x"
    assert calls == [[sys.executable, "-m", "ctxdistill.cli", "model-path", "default"]]
