"""Check `ctxdistill export` against llama.cpp itself (through llama-cpp-python) on the default model.

A LoRA (r=16, all linear layers) whose B is random (seed 0, std B_STD: small enough that the answers stay text,
large enough that they change) is put on the default model and exported three ways:

- the base model as an f32 GGUF (`export` of the converted model folder) + the adapter as an f32 GGUF LoRA, loaded
  with `Llama(base, lora_path=...)`: llama.cpp applies the adapter itself;
- the base with the adapter merged, as one f32 GGUF;
- for information, the shipped Q4_1 GGUF + the same LoRA file (what a user would load): llama.cpp multiplies Q4_1
  weights with 8-bit-quantized activations, so its logits differ more, and it is not part of the verdict.

Each is compared with our torch model (float32, PEFT adapter) on the same token ids: the next-token logits after
each prompt (max |difference|), and greedy answers (argmax, up to NEW_TOKENS tokens, stopped at <|im_end|>).
llama.cpp runs with an f32 KV cache so that only the arithmetic order differs. Pass: both f32 logit differences
<= TOLERANCE and every greedy answer identical. Run with `make check-export` (installs the pinned
llama-cpp-python, which builds llama.cpp from source: several minutes), or `python benchmarks/check_export.py`.
The last line reads:

    EXPORT lora_logit_maxdiff=<x> merged_logit_maxdiff=<y> greedy_agree=<k>/<n>

(n = questions x the two f32 variants).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "check-export"
TOLERANCE = 0.05  # max |logit difference| for the f32 exports (logits of this model are of order 10-30)
B_STD = 0.01
NEW_TOKENS = 32
QUESTIONS = ["What is the capital of France?", "Name three colours of the rainbow.",
             "Write one sentence about the sea.", "What is 12 plus 7?", "Who are you?"]


def make_adapter(model, out: Path) -> None:
    import torch

    from ctxdistill.core.models import add_lora

    peft_model = add_lora(model, r=16, alpha=32)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, B_STD)
    peft_model.save_pretrained(out)


def torch_logits(model, ids: list[int]):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float().numpy()


def torch_greedy(model, ids: list[int], eos: int) -> list[int]:
    out = []
    for _ in range(NEW_TOKENS):
        token = int(torch_logits(model, ids + out).argmax())
        if token == eos:
            break
        out.append(token)
    return out


def llama_logits(llm, ids: list[int]):
    llm.reset()
    llm.eval(ids)
    return llm.scores[llm.n_tokens - 1].copy()


def llama_greedy(llm, ids: list[int], eos: int) -> list[int]:
    out = []
    logits = llama_logits(llm, ids)
    for _ in range(NEW_TOKENS):
        token = int(logits.argmax())
        if token == eos:
            break
        out.append(token)
        llm.eval([token])
        logits = llm.scores[llm.n_tokens - 1]
    return out


def open_llama(model_path: Path, lora_path: Path | None = None):
    import os

    import llama_cpp

    return llama_cpp.Llama(str(model_path), lora_path=str(lora_path) if lora_path else None, logits_all=True,
                           n_ctx=512, n_threads=os.cpu_count(), type_k=llama_cpp.GGML_TYPE_F32,
                           type_v=llama_cpp.GGML_TYPE_F32, verbose=False)


def main() -> int:
    import numpy as np

    from ctxdistill.core.models import default_model_path, load_adapter, load_model
    from ctxdistill.core.pairs import render_prompt
    from ctxdistill.core.models import default_gguf_file
    from ctxdistill.core.export import export

    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed: run `make check-export`.", file=sys.stderr)
        return 2
    WORK.mkdir(parents=True, exist_ok=True)
    base, tok, _ = load_model("default", "float32", "cpu")
    make_adapter(base, WORK / "adapter")
    base, _, _ = load_model("default", "float32", "cpu")  # add_lora wrapped the first copy in place
    plain = [torch_logits(base, render_prompt(tok, q)) for q in QUESTIONS]
    model = load_adapter(base, str(WORK / "adapter")).eval()

    files = {
        "base": export(default_model_path(), "gguf", WORK / "base-f32.gguf", "f32", "default", overwrite=True).out,
        "lora": export(WORK / "adapter", "gguf-lora", WORK / "lora-f32.gguf", "f32", "default", overwrite=True).out,
        "merged": export(WORK / "adapter", "gguf", WORK / "merged-f32.gguf", "f32", "default", overwrite=True).out,
    }
    variants = {"f32 base + LoRA": (files["base"], files["lora"]), "merged f32": (files["merged"], None),
                "Q4_1 base + LoRA (info)": (default_gguf_file(), files["lora"])}
    prompts = [render_prompt(tok, q) for q in QUESTIONS]
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    ours = [torch_logits(model, ids) for ids in prompts]
    ours_greedy = [torch_greedy(model, ids, eos) for ids in prompts]
    effect = max(float(np.abs(a - b).max()) for a, b in zip(ours, plain))
    print(f"adapter effect on torch logits: max |with - without| = {effect:.3f}\n")

    maxdiff, agree = {}, {}
    rows = []
    for name, (model_path, lora_path) in variants.items():
        llm = open_llama(model_path, lora_path)
        diffs = [float(np.abs(llama_logits(llm, ids) - ref).max()) for ids, ref in zip(prompts, ours)]
        answers = [llama_greedy(llm, ids, eos) for ids in prompts]
        llm.close()
        maxdiff[name] = max(diffs)
        agree[name] = sum(a == b for a, b in zip(answers, ours_greedy))
        rows.append((name, maxdiff[name], agree[name], answers))

    print("| llama.cpp model | max logit diff | greedy answers equal |")
    print("|---|---|---|")
    for name, diff, same, _ in rows:
        print(f"| {name} | {diff:.4f} | {same}/{len(QUESTIONS)} |")
    print()
    for i, q in enumerate(QUESTIONS):
        print(f"Q: {q}\n  torch:       {tok.decode(ours_greedy[i])!r}")
        for name, _, _, answers in rows:
            print(f"  {name + ':':12} {tok.decode(answers[i])!r}")
    lora_diff, merged_diff = maxdiff["f32 base + LoRA"], maxdiff["merged f32"]
    k = agree["f32 base + LoRA"] + agree["merged f32"]
    n = 2 * len(QUESTIONS)
    ok = lora_diff <= TOLERANCE and merged_diff <= TOLERANCE and k == n
    print(f"\n{'PASS' if ok else 'FAIL'}: tolerance {TOLERANCE} on f32 logits, every greedy answer equal")
    print(f"EXPORT lora_logit_maxdiff={lora_diff:.4g} merged_logit_maxdiff={merged_diff:.4g} greedy_agree={k}/{n}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
