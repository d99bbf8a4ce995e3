"""benchmarks/generation.py --tiny: its --lora-swap and --offline-phase modes run end to end on a tiny random Llama
and print their table and machine-readable last line. (The real numbers come from `python benchmarks/generation.py
--lora-swap` and `--offline-phase` on the default model; see docs/generation.md.) The script needs the optional
llamacpp extra, so these tests skip without it."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "generation.py"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (optional extra 'llamacpp'): `make test-llamacpp` installs it")


def run_benchmark(*args: str) -> list[str]:
    """The script's stdout lines, run as a user runs it (it removes its own temporary folder)."""
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()


def table_row(lines: list[str], first_cell: str) -> list[str]:
    """The cells of the markdown table row whose first cell starts with `first_cell`."""
    line = next(line for line in lines if line.startswith(f"| {first_cell}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_lora_swap_times_both_ways_and_both_decode_the_same_lora():
    lines = run_benchmark("--lora-swap", "--steps", "1")
    assert any(line.startswith("| how | s per update | tok/s b8 | tok/s b16 | s per on-policy sampling step")
               for line in lines)
    for way in ("LoRA swap", "merged weights (GGUF written"):
        seconds, b8, b16, step = (float(cell) for cell in table_row(lines, way)[1:])
        assert b8 > 0 and b16 > 0 and step > seconds >= 0
    # --tiny runs the exact mode (f32): the merged weights give the swapped-in LoRA's greedy completions exactly,
    assert table_row(lines, "merged weights |")[1:] == ["100%", "100%"]
    # and the LoRA is not a no-op: without it the base writes other completions
    assert float(table_row(lines, "base, LoRA off")[2].rstrip("%")) < 100
    assert re.fullmatch(r"LORA_SWAP swap=\d+\.\d\d merged=\d+\.\d\d", lines[-1])


def test_offline_phase_times_the_data_generation_of_a_run_with_each_backend():
    lines = run_benchmark("--offline-phase")
    assert any(line.startswith("| backend | samples | s data generation | samples/s |") for line in lines)
    torch_row, llamacpp_row = table_row(lines, "torch |"), table_row(lines, "llamacpp |")
    # the same queries, the same samples per query: both backends draw the same number of samples
    assert int(torch_row[1]) == int(llamacpp_row[1]) > 0
    assert re.fullmatch(r"OFFLINE_GEN torch=\d+\.\d llamacpp=\d+\.\d", lines[-1])
