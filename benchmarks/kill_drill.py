"""Kill drill: SIGKILL a real training run at random moments, resume it, and compare with an uninterrupted run.

The run is `distill offline` on the default model (the bundled persona, a few prompts, a short schedule with a
checkpoint every two steps). One uninterrupted run gives the reference timeline. Drill n starts the same command in
a fresh folder and kills it with SIGKILL at a random moment of the n-th tenth of that timeline (so the kills cover
model loading and sampling, training, evaluation and the report); the last drill instead waits for a checkpoint's
temporary file and kills while torch.save writes it. Each drill then resumes with --resume until the run finishes,
and compares:
- the adapter weights with the reference's (the run is deterministic on the CPU: they must be identical);
- the evaluation (accuracy and answers) and the step count;
- the folder: no temporary or half-written files left (atomic writes leave `.NAME.XXXXXXXX`, `.tmp-*`,
  `.adapter-*` only while writing), and no lock held.

    python benchmarks/kill_drill.py [--drills 10] [--seed 0] [--out runs/kill_drill]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["What is your name?", "Where do you live?", "What do you do all day?"]
SETTINGS = ["samples_per_query=4", "max_new_tokens=32", "max_steps=12", "checkpoint_every=2", "batch_size=4",
            "micro_batch_size=4", "eval_max_new_tokens=16", "seed=0"]
TEMP_PATTERNS = (".tmp-", ".adapter-", ".model-")


def command(out: Path, prompts: Path, resume: bool) -> list[str]:
    sets = [x for s in SETTINGS for x in ("--set", s)]
    return [sys.executable, "-m", "ctxdistill.cli", "distill", "offline", "--context",
            str(ROOT / "examples" / "persona.json"), "--prompts", str(prompts), "--out", str(out), *sets,
            *(["--resume"] if resume else [])]


def run_to_end(out: Path, prompts: Path, resume: bool) -> float:
    t0 = time.time()
    done = subprocess.run(command(out, prompts, resume), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"run in {out} failed:\n{done.stderr[-3000:]}")
    return time.time() - t0


def phase_of(out: Path) -> str:
    """Where a killed run was, from what it had written."""
    if not (out / "data" / "samples.jsonl").exists():
        return "sampling"
    if not (out / "adapter").exists():
        return "training" if (out / "checkpoint").exists() else "pairs/model set-up"
    return "evaluation/report" if not (out / "manifest.json").exists() else "finished"


def adapter_state(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def leftovers(out: Path) -> list[str]:
    bad = []
    for path in out.rglob("*"):
        name = path.name
        if name.startswith(TEMP_PATTERNS) or name.endswith(".old") or (name.startswith(".") and name != ".lock"
                                                                      and "." in name[1:]):
            bad.append(str(path.relative_to(out)))
    if (out / ".lock").exists():
        bad.append(".lock (still held)")
    return bad


def compare(out: Path, reference: Path) -> tuple[float, bool]:
    """(max |Δw| of the adapter, evaluation and steps equal)."""
    ref, got = adapter_state(reference), adapter_state(out)
    diff = max(float((ref[k].float() - got[k].float()).abs().max()) for k in ref)
    m_ref = json.loads((reference / "manifest.json").read_text())["metrics"]
    m_got = json.loads((out / "manifest.json").read_text())["metrics"]
    same = m_ref.get("evaluation") == m_got.get("evaluation") and m_ref["train_steps"] == m_got["train_steps"]
    return diff, same


def after(seconds: float):
    """Kill at a moment of the timeline."""
    def wait(out: Path, proc) -> None:
        time.sleep(seconds)
    return wait


def while_writing_a_checkpoint(out: Path, proc) -> None:
    """Kill the moment a checkpoint's temporary file appears (torch.save is writing it)."""
    while proc.poll() is None and not any((out / "checkpoint").glob(".state*.pt.*")):
        time.sleep(0.005)


def drill(n: int, wait, root: Path, prompts: Path, reference: Path) -> dict:
    out = root / f"drill{n}"
    t0 = time.time()
    proc = subprocess.Popen(command(out, prompts, False), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait(out, proc)
    at = time.time() - t0
    finished_first = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    phase = "finished before the kill" if finished_first else phase_of(out)
    if wait is while_writing_a_checkpoint and not finished_first:
        phase = "checkpoint writing"
    resumes = 0
    while not (out / "manifest.json").exists() or resumes == 0:
        run_to_end(out, prompts, resume=True)
        resumes += 1
    diff, same = compare(out, reference)
    return {"drill": n, "killed_at_s": round(at, 1), "phase": phase, "resumes": resumes, "max_weight_diff": diff,
            "same_eval_and_steps": same, "leftovers": leftovers(out),
            "passed": diff == 0.0 and same and not leftovers(out)}


def table(rows: list[dict]) -> str:
    lines = ["| drill | killed at (s) | phase | max \\|Δw\\| vs uninterrupted | same eval + steps | leftovers | pass |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['drill']} | {r['killed_at_s']} | {r['phase']} | {r['max_weight_diff']:.1e} | "
              f"{'yes' if r['same_eval_and_steps'] else 'no'} | {', '.join(r['leftovers']) or 'none'} | "
              f"{'yes' if r['passed'] else 'NO'} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--drills", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "runs" / "kill_drill"))
    args = p.parse_args()
    root = Path(args.out)
    if root.exists() and any(root.iterdir()):
        if not (root / "reference").is_dir() or not (root / "prompts.txt").is_file():
            raise SystemExit(f"{root} holds other files; pass a new --out (the drill only replaces its own folder).")
        shutil.rmtree(root)  # an earlier drill's folder
    root.mkdir(parents=True, exist_ok=True)
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    reference = root / "reference"
    seconds = run_to_end(reference, prompts, resume=False)
    print(f"uninterrupted run: {seconds:.0f}s")
    rng = random.Random(args.seed)
    rows = []
    for n in range(1, args.drills + 1):  # one moment in each tenth of the timeline: sampling comes first
        at = rng.uniform(seconds * (n - 1) / args.drills, seconds * n / args.drills)
        wait = while_writing_a_checkpoint if n == args.drills else after(max(at, 3.0))
        rows.append(drill(n, wait, root, prompts, reference))
        print(f"drill {n}: {rows[-1]['phase']}, killed at {rows[-1]['killed_at_s']}s -> "
              f"{'pass' if rows[-1]['passed'] else 'FAIL'}", flush=True)
    text = table(rows)
    print("\n" + text + f"\n\n{sum(r['passed'] for r in rows)}/{len(rows)} passed")
    (root / "kill_drill.md").write_text(f"# Kill drill\n\nuninterrupted run: {seconds:.0f}s\n\n{text}\n")
    (root / "kill_drill.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
