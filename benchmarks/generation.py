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

With --lora-swap, it compares the two ways to hand an on-policy student's updated LoRA (r=16 on all linear layers,
as onpolicy adds it, with random non-zero B) to llama.cpp after each update: swapping a GGUF LoRA into the running
engine (`LlamaCppBackend.use_lora`), or writing the merged weights as the engine's GGUF and loading a fresh engine.
Per update: seconds to hand it over, decode tokens/s at batch 8 and 16 with it, and one on-policy sampling step
(the update handed over + 8 × 96 tokens at batch 8); then greedy agreement of the two engines. Last line:

    LORA_SWAP swap=<s per sampling step> merged=<s per sampling step>

With --offline-phase, it times `ctxdistill distill offline` (examples/persona.json and persona_prompts.txt,
max_steps=1, so the run is nearly all data generation) with each backend, and reads the data-generation phase's
seconds from the run's manifest (metrics.generation_seconds). Last line:

    OFFLINE_GEN torch=<s> llamacpp=<s>

--tiny runs every mode on a tiny random Llama (a check that the script works, not a measurement). The default
mode's last line:

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
    print("\n| samples (T=1, re-scored by torch) | tokens | mean log-prob | KS vs torch | mean − torch's |")
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


# ------------------------------------------------------------------------------------------- --lora-swap

LORA_B_STD = 0.01  # a fresh LoRA's B is 0, a no-op; drawn this wide, the adapter changes the model's completions
UPDATE_STD = 0.001  # how far each simulated optimizer update moves every B
SWAP_BATCHES = (8, 16)
STEP_BATCH = 8  # an on-policy step samples one batch of 8 (onpolicy's default batch size)


def random_lora(model):
    """`model` with a LoRA as onpolicy adds it (its defaults: r=16, alpha 32, all linear layers), B drawn non-zero."""
    from ctxdistill.core.models import add_lora

    student = add_lora(model, r=16, alpha=32, targets="all-linear")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, LORA_B_STD)
    return student.eval()


def simulated_update(student, k: int) -> None:
    """Move every B a little, as an optimizer step would: each hand-over must carry the adapter as it is now."""
    noise = torch.Generator().manual_seed(k)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if ".lora_B." in name:
                p.add_(torch.randn(p.shape, generator=noise) * UPDATE_STD)


def lora_layers(student) -> list:
    """(name in the transformers model, LoRA layer) of every adapted layer."""
    from peft.tuners.lora import LoraLayer

    from ctxdistill.core.forward import base_model

    return [(name, m) for name, m in base_model(student).named_modules() if isinstance(m, LoraLayer)]


def merged_state_dict(student) -> dict[str, torch.Tensor]:
    """The base weights plus the active LoRA's delta (PEFT's own get_delta_weight: its scale and layout), under
    transformers' names, as export_state_dict_gguf takes them; the student is left as it is."""
    from ctxdistill.core.llamacpp import base_state_dict

    weights, adapter = base_state_dict(student), student.active_adapter
    with torch.no_grad():
        for name, layer in lora_layers(student):
            weights[f"{name}.weight"] = weights[f"{name}.weight"] + layer.get_delta_weight(adapter)
    return weights


def relative_delta(student) -> float:
    """Mean over the adapted layers of ||ΔW|| / ||W||: how much the random LoRA changes the weights."""
    adapter = student.active_adapter
    with torch.no_grad():
        return float(np.mean([(layer.get_delta_weight(adapter).norm() / layer.get_base_layer().weight.norm()).item()
                              for _, layer in lora_layers(student)]))


class MergedEngine:
    """The merged way: after each update the merged weights are written as the engine's GGUF (over the last one)
    and a fresh llama.cpp engine loads them; it samples with no LoRA."""

    def __init__(self, student, swap_engine, outtype: str, path: Path):
        self.student, self.like, self.outtype, self.path = student, swap_engine, outtype, path
        self.engine = None

    def hand_over(self) -> tuple[float, float]:
        """(seconds merging and writing the GGUF, seconds loading a fresh engine on it)."""
        from ctxdistill.core.export import export_state_dict_gguf
        from ctxdistill.core.llamacpp import LlamaCppBackend
        from ctxdistill.core.models import default_gguf_file

        t0 = time.perf_counter()
        self.close()
        export_state_dict_gguf(merged_state_dict(self.student), self.like.config, default_gguf_file(), self.path,
                               self.outtype)
        written = time.perf_counter()
        self.engine = LlamaCppBackend(self.path, self.like.stops, self.like.config, self.like.base,
                                      kv_f32=self.outtype == "f32")
        return written - t0, time.perf_counter() - written

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


def vocabulary_read_seconds() -> float:
    """What export_state_dict_gguf spends, on every call, reading the tokenizer from the default model's GGUF."""
    import gguf

    from ctxdistill.core.export import read_kvs
    from ctxdistill.core.models import default_gguf_file

    t0 = time.perf_counter()
    read_kvs(gguf.GGUFReader(default_gguf_file()))
    return time.perf_counter() - t0


def lora_swap(tiny: bool, updates: int, work: Path) -> int:
    """Per update of an on-policy student's LoRA: swapped into the running engine, or merged and reloaded."""
    from ctxdistill.core.llamacpp import LlamaCppBackend
    from ctxdistill.core.models import default_gguf_file, load_model, load_tokenizer
    from ctxdistill.core.pairs import render_prompt

    # --tiny runs the exact mode (f32): there both ways must give the same greedy completions token for token
    outtype = "f32" if tiny else "f16"
    if tiny:
        tokenizer = load_tokenizer("default")
        model, base = tiny_model(tokenizer), "tiny"
    else:
        model, tokenizer, _ = load_model("default", "float32", "cpu")
        base = "default"
    swap = LlamaCppBackend.for_model(model, tokenizer, base, outtype,
                                     gguf_file=work / f"tiny-{outtype}.gguf" if tiny else None,
                                     vocab_from=default_gguf_file())
    student = random_lora(model)
    merged = MergedEngine(student, swap, outtype, work / f"merged-{outtype}.gguf")
    prompts = [render_prompt(tokenizer, q) for q in questions()]
    new_tokens = 16 if tiny else NEW_TOKENS
    print(f"threads: {torch.get_num_threads()}, model: {'tiny random Llama' if tiny else 'default (torch float32)'}, "
          f"GGUF {outtype}; LoRA r=16, alpha 32 on {len(lora_layers(student))} linear layers, B ~ N(0, "
          f"{LORA_B_STD}) (||ΔW||/||W|| {relative_delta(student):.3f} on average); {updates} updates timed after one "
          f"warm-up; {new_tokens} new tokens per sequence\n")
    try:
        timed = {"swap": [], "merged": []}
        for k in range(updates + 1):  # update 0 warms up: first allocations, the swap engine's first context
            simulated_update(student, k)
            t0 = time.perf_counter()
            swap.use_lora(student)
            swap_row = {"update": time.perf_counter() - t0}
            swap_row.update({b: tokens_per_second(quiet(swap), prompts, b, new_tokens) for b in SWAP_BATCHES})
            write_s, load_s = merged.hand_over()
            merged_row = {"update": write_s + load_s, "write": write_s, "load": load_s}
            merged_row.update({b: tokens_per_second(quiet(merged.engine), prompts, b, new_tokens)
                               for b in SWAP_BATCHES})
            if k:
                timed["swap"].append(swap_row)
                timed["merged"].append(merged_row)

        def mean(way: str, key) -> float:
            return float(np.mean([row[key] for row in timed[way]]))

        def step_seconds(way: str) -> float:  # the update handed over, then one batch of on-policy samples
            return float(np.mean([row["update"] + STEP_BATCH * new_tokens / row[STEP_BATCH] for row in timed[way]]))

        print(f"| how | s per update | tok/s b8 | tok/s b16 | s per on-policy sampling step (update + "
              f"{STEP_BATCH} × {new_tokens} tokens at batch {STEP_BATCH}) |")
        print("|---|---|---|---|---|")
        names = {"swap": "LoRA swap (GGUF LoRA into the running engine)",
                 "merged": "merged weights (GGUF written, fresh engine)"}
        for way, name in names.items():
            print(f"| {name} | {mean(way, 'update'):.2f} | {mean(way, 8):.1f} | {mean(way, 16):.1f} | "
                  f"{step_seconds(way):.2f} |")
        print(f"\nmerged, per update: {mean('merged', 'write'):.2f} s merging and writing the GGUF (of which "
              f"{vocabulary_read_seconds():.2f} s, measured apart, is export_state_dict_gguf reading the tokenizer "
              f"from the default model's GGUF again), {mean('merged', 'load'):.2f} s loading the fresh engine (its "
              "KV cache is made at its first batch, inside the decode times).")

        agree = prompts[:AGREE_PROMPTS]
        reference = quiet(swap)(agree, max_new_tokens=new_tokens, temperature=0.0)
        merged_agreement = greedy_agreement(quiet(merged.engine), reference, agree, new_tokens)
        swap.use_lora(None)  # the base alone: the LoRA must change its completions, or the check above is empty
        base_agreement = greedy_agreement(quiet(swap), reference, agree, new_tokens)
        print(f"\n| engine | greedy completions identical to the LoRA swap's ({len(agree)} prompts) "
              "| mean share before the first difference |")
        print("|---|---|---|")
        for name, (same, share) in (("merged weights", merged_agreement),
                                    ("base, LoRA off (a check that the LoRA changes the output)", base_agreement)):
            print(f"| {name} | {same:.0%} | {share:.0%} |")
        print(f"\nLORA_SWAP swap={step_seconds('swap'):.2f} merged={step_seconds('merged'):.2f}")
    finally:
        merged.close()
        swap.close()
    return 0


# ------------------------------------------------------------------------------ timed runs of the CLI

OFFLINE_TINY = ["max_new_tokens=16", "samples_per_query=2"]  # --tiny: a quick check


def run_model(tiny: bool, work: Path) -> str:
    """The --model the timed runs name, its f16 base GGUF written beforehand where the runs look for it: the
    conversion is a one-time cost, not part of a run (and a tiny folder, which has no GGUF to copy a tokenizer
    from, could not be converted by the run at all)."""
    from ctxdistill.core.llamacpp import base_gguf
    from ctxdistill.core.models import default_gguf_file, load_model, load_tokenizer

    if not tiny:
        base_gguf(load_model("default", "float32", "cpu")[0], "default", "f16")
        return "default"
    tokenizer = load_tokenizer("default")  # before the cache moves: the converted default model lives there
    os.environ["CTXDISTILL_CACHE"] = str(work / "cache")  # the tiny model's GGUF; the runs below inherit it
    folder = str(work / "tiny-model")
    tiny_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    base_gguf(load_model(folder, "float32", "cpu")[0], folder, "f16", vocab_from=default_gguf_file())
    return folder


def run_distill(recipe: str, model_arg: str, backend: str, out: Path, settings: list[str]) -> float | None:
    """`ctxdistill distill RECIPE` on the persona example with `backend` (torch float32, as the tok/s table);
    its wall seconds, or None when it failed (its error printed)."""
    cmd = [sys.executable, "-m", "ctxdistill.cli", "distill", recipe, "--model", model_arg,
           "--context", str(ROOT / "examples" / "persona.json"),
           "--prompts", str(ROOT / "examples" / "persona_prompts.txt"), "--out", str(out),
           "--set", "dtype=float32", "--set", f"generation_backend={backend}", "--set", "eval_max_new_tokens=4"]
    for setting in settings:
        cmd += ["--set", setting]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        return None
    return time.perf_counter() - t0


def onpolicy_step(tiny: bool, steps: int, work: Path) -> int:
    """Seconds per on-policy optimizer step, end to end (`ctxdistill distill onpolicy`), with each backend."""
    model_arg = run_model(tiny, work)
    print("| backend | steps | s per step | of which sampling |")
    print("|---|---|---|---|")
    for backend in ("torch", "llamacpp"):
        out = work / backend
        if run_distill("onpolicy", model_arg, backend, out,
                       [f"max_steps={steps}"] + (["max_new_tokens=16"] if tiny else [])) is None:
            return 1
        m = json.loads((out / "manifest.json").read_text())["metrics"]
        n = max(m["train_steps"], 1)
        print(f"| {backend} | {m['train_steps']} | {(m['train_seconds'] + m['generation_seconds']) / n:.2f} | "
              f"{m['generation_seconds'] / n:.2f} |")
    return 0


def generated(data: Path) -> tuple[int, int]:
    """(completions, their tokens) an offline run sampled: its teacher samples and anchors (OUT/data)."""
    rows = []
    for name in ("samples.jsonl", "anchors.jsonl"):
        if (data / name).is_file():
            rows += [json.loads(line) for line in (data / name).read_text(encoding="utf-8").splitlines() if line]
    return len(rows), sum(len(row["completion_ids"]) for row in rows)


def offline_phase(tiny: bool, work: Path) -> int:
    """Offline's data-generation phase end to end with each backend: the run's own metrics.generation_seconds
    (queries, teacher samples and anchors; llama.cpp's engine is started inside it). max_steps=1 keeps the
    training after it short."""
    model_arg = run_model(tiny, work)
    print(f"model: {'tiny random Llama' if tiny else 'default (torch float32)'}; examples/persona.json + "
          "persona_prompts.txt, max_steps=1; s data generation: the run's metrics.generation_seconds\n")
    print("| backend | samples | s data generation | samples/s | completion tokens | tokens/s | whole run s |")
    print("|---|---|---|---|---|---|---|")
    seconds = {}
    for backend in ("torch", "llamacpp"):
        out = work / f"offline-{backend}"
        wall = run_distill("offline", model_arg, backend, out, ["max_steps=1"] + (OFFLINE_TINY if tiny else []))
        if wall is None:
            return 1
        seconds[backend] = json.loads((out / "manifest.json").read_text())["metrics"]["generation_seconds"]
        samples, tokens = generated(out / "data")
        rate = (lambda n: f"{n / seconds[backend]:.1f}") if seconds[backend] > 0 else (lambda n: "—")
        print(f"| {backend} | {samples} | {seconds[backend]:.1f} | {rate(samples)} | {tokens} | {rate(tokens)} | "
              f"{wall:.1f} |")
    print(f"\nOFFLINE_GEN torch={seconds['torch']:.1f} llamacpp={seconds['llamacpp']:.1f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny random model: checks the script, measures nothing")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--onpolicy-step", action="store_true", help="time on-policy steps end to end instead")
    mode.add_argument("--lora-swap", action="store_true",
                      help="time handing an updated LoRA to llama.cpp: swapped in, or merged weights reloaded")
    mode.add_argument("--offline-phase", action="store_true",
                      help="time offline's data-generation phase end to end with each backend")
    parser.add_argument("--steps", type=int, default=4,
                        help="--onpolicy-step: optimizer steps per backend; --lora-swap: updates timed")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}.")
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed: run `make bench-generation`.", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="ctxdistill-bench-generation-"))  # tiny models, runs; removed at the end
    try:
        if args.onpolicy_step:
            return onpolicy_step(args.tiny, args.steps, work)
        if args.lora_swap:
            return lora_swap(args.tiny, args.steps, work)
        if args.offline_phase:
            return offline_phase(args.tiny, work)
        return measure(args.tiny, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
