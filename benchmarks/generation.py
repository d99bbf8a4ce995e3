"""Generation backends compared: the torch decode loop (core.generation) against llama.cpp (core.llamacpp).

On the default model (torch in float32; llama.cpp on the same weights written as an f32 GGUF, exact mode, and as
an f16 GGUF, the fast one), with torch.get_num_threads() threads for both:

1. tokens/s at batch 1, 8, 16 and 64, 96 new tokens per sequence (min_new_tokens=96: every row decodes all 96),
   prefill included, on the bundled retention questions;
2. greedy agreement on 20 of those questions (identical completions, and the mean share of a completion before
   the first differing token);
3. the two-sample check: ~2000 tokens sampled at temperature 1 by each backend from the same prompts, re-scored
   by the torch model; the per-token log-probs of each backend's samples are compared with the torch loop's
   (two-sample Kolmogorov-Smirnov statistic and the difference of the means), next to the same numbers for two
   torch runs with different seeds: what "the same distribution" looks like at this sample size. (Tokens of one
   completion are not independent, so no p-value is printed.)

With --onpolicy-step, it instead times `ctxdistill distill onpolicy` (examples/persona.json, a few steps) with
each backend and prints seconds per optimizer step, sampling and the student's LoRA swap included.

--tiny runs everything on a tiny random Llama (a check that the script works, not a measurement). The last line:

    GENERATION batch=16 torch=<tok/s> llamacpp=<tok/s>

(llamacpp: the f16 GGUF, what generation_backend=llamacpp uses by default). Run with `make bench-generation`
or `python benchmarks/generation.py`; it needs the llamacpp extra.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
BATCHES = (1, 8, 16, 64)
NEW_TOKENS = 96
AGREE_PROMPTS = 20
SAMPLED_TOKENS = 2000


def tiny_model(tokenizer):
    """A tiny random Llama with the default tokenizer, weights drawn wide so that its completions vary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model


def questions() -> list[str]:
    from ctxdistill.data.inputs import BUNDLED_RETENTION

    return [row["q"] for row in json.loads(BUNDLED_RETENTION.read_text(encoding="utf-8"))["qa"]]


def open_models(tiny: bool, work: Path):
    """(torch model, tokenizer, {outtype: llama.cpp backend}, the --model to name in a run)."""
    from ctxdistill.core.llamacpp import LlamaCppBackend
    from ctxdistill.core.models import default_gguf_file, load_model, load_tokenizer

    if tiny:
        tokenizer = load_tokenizer("default")
        model, base = tiny_model(tokenizer), str(work / "tiny-model")
        model.save_pretrained(base)
        tokenizer.save_pretrained(base)
        files = {t: work / f"tiny-{t}.gguf" for t in ("f32", "f16")}
    else:
        model, tokenizer, _ = load_model("default", "float32", "cpu")
        base, files = "default", {"f32": None, "f16": None}  # cached next to the converted model
    backends = {t: LlamaCppBackend.for_model(model, tokenizer, base, t, gguf_file=f,
                                             vocab_from=default_gguf_file() if tiny else None)
                for t, f in files.items()}
    return model, tokenizer, backends, base


def torch_generate(model, tokenizer):
    from ctxdistill.core.generation import generate

    return lambda prompts, **kw: generate(model, tokenizer, prompts, show_progress=False, **kw)


def quiet(backend):
    return lambda prompts, **kw: backend.generate(prompts, show_progress=False, **kw)


def tokens_per_second(sample, prompts: list[list[int]], batch: int, new_tokens: int) -> float:
    rows = [prompts[i % len(prompts)] for i in range(batch)]
    t0 = time.perf_counter()
    out = sample(rows, max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=1.0, seed=0,
                 batch_size=batch)
    seconds = time.perf_counter() - t0
    return sum(len(y) for y in out) / seconds


def greedy_agreement(sample, reference: list[list[int]], prompts, new_tokens: int) -> tuple[float, float]:
    out = sample(prompts, max_new_tokens=new_tokens, temperature=0.0)
    same = sum(a == b for a, b in zip(out, reference)) / len(prompts)
    shares = []
    for a, b in zip(out, reference):
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        shares.append(n / max(len(a), len(b), 1))
    return same, float(np.mean(shares))


def sampled_logprobs(sample, model, prompts, new_tokens: int, seed: int, target: int) -> np.ndarray:
    """Per-token log-probs, under the torch model, of completions `sample` draws at T=1 until `target` tokens."""
    scores, round_ = [], 0
    while sum(len(s) for s in scores) < target:
        outs = sample(prompts, max_new_tokens=new_tokens, temperature=1.0, seed=seed + round_)
        round_ += 1
        with torch.no_grad():
            for prompt, y in zip(prompts, outs):
                if not y:
                    continue
                ids = torch.tensor([prompt + y])
                logp = torch.log_softmax(model(ids).logits[0, len(prompt) - 1:-1].float(), -1)
                scores.append(logp.gather(-1, torch.tensor(y)[:, None])[:, 0].numpy())
    return np.concatenate(scores)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def measure(tiny: bool, work: Path) -> int:
    from ctxdistill.core.pairs import render_prompt

    model, tokenizer, backends, _ = open_models(tiny, work)
    prompts = [render_prompt(tokenizer, q) for q in questions()]
    new_tokens = 16 if tiny else NEW_TOKENS
    samplers = {"torch": torch_generate(model, tokenizer),
                **{f"llamacpp {t}": quiet(backend) for t, backend in backends.items()}}
    print(f"threads: {torch.get_num_threads()}, {new_tokens} new tokens per sequence, model: "
          f"{'tiny random Llama' if tiny else 'default (torch float32)'}\n")

    print("| backend | " + " | ".join(f"batch {b} tok/s" for b in BATCHES) + " |")
    print("|---|" + "---|" * len(BATCHES))
    speed = {}
    for name, sample in samplers.items():
        sample(prompts[:2], max_new_tokens=2, temperature=1.0, seed=0)  # warm-up: first allocations
        speed[name] = {b: tokens_per_second(sample, prompts, b, new_tokens) for b in BATCHES}
        print(f"| {name} | " + " | ".join(f"{speed[name][b]:.1f}" for b in BATCHES) + " |")

    agree_prompts = prompts[:AGREE_PROMPTS]
    reference = samplers["torch"](agree_prompts, max_new_tokens=new_tokens, temperature=0.0)
    print(f"\n| backend | greedy completions identical to torch ({len(agree_prompts)} prompts) "
          "| mean share before the first difference |")
    print("|---|---|---|")
    for name in backends:
        same, share = greedy_agreement(samplers[f"llamacpp {name}"], reference, agree_prompts, new_tokens)
        print(f"| llamacpp {name} | {same:.0%} | {share:.0%} |")

    target = 300 if tiny else SAMPLED_TOKENS
    base = sampled_logprobs(samplers["torch"], model, agree_prompts, new_tokens, 1000, target)
    print(f"\n| samples (T=1, re-scored by torch) | tokens | mean log-prob | KS vs torch | mean − torch's |")
    print("|---|---|---|---|---|")
    print(f"| torch, seeds 1000+ | {len(base)} | {base.mean():.3f} | — | — |")
    # other seeds for each: both backends draw with the same code and RNG, so equal seeds could repeat samples
    for k, (name, sample) in enumerate([("torch, seeds 2000+ (noise floor)", samplers["torch"])] +
                                       [(f"llamacpp {t}", samplers[f"llamacpp {t}"]) for t in backends]):
        other = sampled_logprobs(sample, model, agree_prompts, new_tokens, 2000 + 1000 * k, target)
        print(f"| {name} | {len(other)} | {other.mean():.3f} | {ks_statistic(base, other):.3f} | "
              f"{other.mean() - base.mean():+.3f} |")
    for backend in backends.values():
        backend.close()
    print(f"\nGENERATION batch=16 torch={speed['torch'][16]:.1f} llamacpp={speed['llamacpp f16'][16]:.1f}")
    return 0


def onpolicy_step(tiny: bool, steps: int, work: Path) -> int:
    """Seconds per on-policy optimizer step, end to end (`ctxdistill distill onpolicy`), with each backend."""
    from ctxdistill.core.models import default_gguf_file, load_model

    model_arg = "default"
    if tiny:  # a tiny folder: its base GGUF is written first where the run looks for it (it has no GGUF origin)
        from ctxdistill.core.llamacpp import base_gguf
        from ctxdistill.core.models import load_tokenizer

        os.environ["CTXDISTILL_CACHE"] = str(work / "cache")  # for the runs below too
        tokenizer = load_tokenizer("default")
        model_arg = str(work / "tiny-model")
        tiny_model(tokenizer).save_pretrained(model_arg)
        tokenizer.save_pretrained(model_arg)
        base_gguf(load_model(model_arg, "float32", "cpu")[0], model_arg, "f16", vocab_from=default_gguf_file())
    print("| backend | steps | s per step | of which sampling |")
    print("|---|---|---|---|")
    for backend in ("torch", "llamacpp"):
        out = work / backend
        cmd = [sys.executable, "-m", "ctxdistill.cli", "distill", "onpolicy", "--model", model_arg,
               "--set", "dtype=float32", "--context", str(ROOT / "examples" / "persona.json"),
               "--prompts", str(ROOT / "examples" / "persona_prompts.txt"), "--out", str(out),
               "--set", f"max_steps={steps}", "--set", f"generation_backend={backend}",
               "--set", "eval_max_new_tokens=4"] + (["--set", "max_new_tokens=16"] if tiny else [])
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        m = json.loads((out / "manifest.json").read_text())["metrics"]
        n = max(m["train_steps"], 1)
        print(f"| {backend} | {m['train_steps']} | {(m['train_seconds'] + m['generation_seconds']) / n:.2f} | "
              f"{m['generation_seconds'] / n:.2f} |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny random model: checks the script, measures nothing")
    parser.add_argument("--onpolicy-step", action="store_true", help="time on-policy steps end to end instead")
    parser.add_argument("--steps", type=int, default=4, help="--onpolicy-step: optimizer steps per backend")
    args = parser.parse_args()
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed: run `make bench-generation`.", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="ctxdistill-bench-generation-"))  # tiny models, runs; removed at the end
    try:
        return onpolicy_step(args.tiny, args.steps, work) if args.onpolicy_step else measure(args.tiny, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
