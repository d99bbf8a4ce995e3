"""A bare context is enough? Distil a context given as a plain .txt (no prompts file) under a time budget, with
each query source and teacher option on and off, and print one table: accuracy without the context, retention,
KL to the base, steps planned/done, time.

    python benchmarks/bare_context.py --context persona.txt --eval persona_eval.json --minutes 5 \
        --variants default alpha=1 "evidence=0.25" --out runs/bare

A variant is a name from VARIANTS, or `key=value` pairs joined by "," passed to --set (e.g. "amplify=1,
evidence_filter=0.25"). Each run is kept in OUT/<variant>; a finished one is read back, not rerun.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {  # name -> --set pairs, on top of the recipe's defaults
    "default": [],
    "no-everyday": ["everyday_fraction=0"],
    "no-probes": ["probes_per_statement=0"],
    "only-synthesized": ["everyday_fraction=0", "probes_per_statement=0", "synthesized_fraction=1"],
    "alpha=0": ["amplify=0"],
    "alpha=0.5": ["amplify=0.5"],
    "alpha=1": ["amplify=1"],
    "alpha=2": ["amplify=2"],
    "evidence=0.25": ["evidence_filter=0.25"],
    "no-synthesized": ["synthesized_fraction=0"],
    "tokens=48": ["max_new_tokens=48"],
}


def run_variant(recipe: str, name: str, args, out: Path) -> dict:
    manifest = out / "manifest.json"
    if not manifest.exists():
        sets = VARIANTS.get(name, name.split(","))
        cmd = [sys.executable, "-m", "ctxdistill.cli", "distill", recipe, "--context", args.context, "--eval",
               args.eval, "--out", str(out), "--max-minutes", str(args.minutes), "--model", args.model,
               *(["--set", *sets] if sets else []), *(["--resume"] if out.exists() else [])]
        t0 = time.time()
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        print(f"{name}: {time.time() - t0:.0f}s", flush=True)
    return json.loads(manifest.read_text())


def row(name: str, m: dict) -> str:
    metrics, ev = m["metrics"], m["metrics"].get("evaluation", {})
    acc, n = ev.get("accuracy", {}), ev.get("n", 0)
    ret = ev.get("retention", {})
    r_acc, r_n = ret.get("accuracy", {}), ret.get("n", 0)
    origins = ", ".join(f"{k} {v}" for k, v in m["data"].get("query_origins", {}).items())
    return (f"| {name} | {acc.get('student', '?')}/{n} | {acc.get('teacher', '?')}/{n} | {acc.get('base', '?')}/{n} | "
            f"{r_acc.get('student', '?')}/{r_n} (base {r_acc.get('base', '?')}) | "
            f"{ret.get('kl_to_base', {}).get('student', float('nan')):.3f} | "
            f"{metrics['train_steps']}/{metrics['total_steps']} (planned {metrics.get('planned_steps', '?')}) | "
            f"{metrics['stopped_by_budget']} | {metrics['total_seconds']:.0f}s | {origins} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", required=True, help="the context as a plain .txt file")
    parser.add_argument("--eval", required=True, help="questions about the context: [{q, a: [...]}]")
    parser.add_argument("--recipe", default="offline", choices=["offline", "onpolicy"])
    parser.add_argument("--minutes", type=float, default=5.0, help="--max-minutes of every run")
    parser.add_argument("--model", default="default")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--out", default="runs/bare_context")
    args = parser.parse_args()
    lines = ["| variant | student (no context) | teacher (context) | base | retention | KL to base | steps done/total "
             "| stopped by budget | time | queries |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in args.variants:
        lines.append(row(name, run_variant(args.recipe, name, args, Path(args.out) / name.replace("/", "_"))))
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    (Path(args.out) / "table.md").write_text(table + "\n", encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
