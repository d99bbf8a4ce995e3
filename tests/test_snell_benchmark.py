"""benchmarks/snell_addition.py --quick: every phase of the 8-digit addition benchmark on a tiny model, its cache,
and its machine-readable last line. (The real numbers come from `make bench-snell`; see docs/sft.md.)"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import snell_addition as snell  # noqa: E402


def test_the_scratchpad_adds_column_by_column_from_the_right():
    pad = snell.scratchpad(19999999, 80000001)
    lines = pad.splitlines()
    assert lines[0] == "9+1+0=10" and lines[1] == "9+0+1=10" and lines[-2] == "1+8+1=10"
    assert lines[-1] == "Answer: 100000000" and len(lines) == 9
    assert {len(line) for line in lines[:-1]} == {8}  # every column line has the same width
    assert snell.answer_of(pad, scratch=True) == "100000000"
    assert snell.answer_of("The sum is 1,234.", scratch=False) == "1234"
    assert snell.answer_of("no delimiter 12", scratch=True) is None


def test_splits_are_fixed_and_disjoint():
    test = snell.problems("test", 200)
    assert test == snell.problems("test", 200) and len(set(test)) == 200
    assert not set(test) & set(snell.problems("train", 500)) and not set(test) & set(snell.problems("dev", 200))
    assert all(10_000_000 <= a <= 99_999_999 and 10_000_000 <= b <= 99_999_999 for a, b in test)


@pytest.fixture(scope="module")
def format_aware_tiny_model(tiny_model_dir, tmp_path_factory):
    """A tiny random model fully fine-tuned on the quick teacher data, so that it writes the 'Answer:' delimiter
    (a random one never does, and offline distillation then has no sample to learn from)."""
    from ctxdistill.api import distill

    folder = tmp_path_factory.mktemp("snell")
    files = snell.make_data(folder / "seed", snell.SIZES["quick"])
    distill("sft", data=files["teacher"], out=folder / "base", model=str(tiny_model_dir), dtype="float32",
            finetune="full", lr=3e-3, schedule="constant", warmup_ratio=0, max_steps=40, batch_size=8,
            micro_batch_size=8)
    return folder / "base" / "model"


def test_quick_benchmark_runs_every_phase_and_a_rerun_reads_them_back(format_aware_tiny_model, tmp_path, capsys):
    args = snell.parse_args(["--quick", "--model", str(format_aware_tiny_model), "--out", str(tmp_path / "b")])
    results = snell.run(args)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"SNELL teacher=\d+\.\d before=\d+\.\d after=\d+\.\d transfer=\d+\.\d", last)
    for phase in ("teacher", "student", "transfer"):
        assert (tmp_path / "b" / phase / "adapter" / "adapter_model.safetensors").exists()
    student = json.loads((tmp_path / "b" / "student" / "manifest.json").read_text())
    assert student["config"]["teacher_adapter"] == str(tmp_path / "b" / "teacher" / "adapter")
    assert student["data"]["pairs"] > 0 and student["config"]["scratchpad"]
    assert set(results) == {"teacher", "before", "after", "transfer"} and results["teacher"]["n"] == 4
    timings = json.loads((tmp_path / "b" / "timings.json").read_text())
    assert {"teacher", "student", "transfer", "eval teacher", "eval after"} <= set(timings)

    again = snell.run(args)  # every phase and row is read back from OUT, nothing is trained or generated again
    assert again == results and json.loads((tmp_path / "b" / "timings.json").read_text()) == timings
