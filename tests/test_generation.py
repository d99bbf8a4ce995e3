"""Sampling: a shared prefix's KV cache gives the same samples, the merged copy samples like the LoRA model."""

import torch

from ctxdistill.core.forward import encode_prefix
from ctxdistill.core.generation import MergedCopy, decode_attention, generate
from ctxdistill.core.models import add_lora
from ctxdistill.core.pairs import Context, render_prompt

CONTEXT = Context("You are Pip, the keeper of the Gullrock lighthouse. You love storms and tea.")


def prompts(tokenizer, n=5):
    return [render_prompt(tokenizer, "question" + " again" * i, CONTEXT) for i in range(n)]


def test_a_shared_prefix_cache_gives_the_same_greedy_samples(tokenizer, tiny_model):
    ps = prompts(tokenizer)
    plain = generate(tiny_model, tokenizer, ps, max_new_tokens=8, temperature=0, batch_size=3, show_progress=False)
    shared = min(len(p) for p in ps) - 6
    prefix = encode_prefix(tiny_model, ps[0][:shared])
    cached = generate(tiny_model, tokenizer, ps, max_new_tokens=8, temperature=0, batch_size=3,
                      show_progress=False, prefix=prefix)
    assert cached == plain and all(len(y) > 0 for y in plain)
    # A prefix some prompt does not start with is ignored, not misused.
    other = generate(tiny_model, tokenizer, ps + [[1, 2, 3]], max_new_tokens=4, temperature=0, batch_size=8,
                     show_progress=False, prefix=prefix)
    assert other[:1] == [y[:4] for y in plain[:1]]


def test_the_lean_decoder_matches_transformers_generate_greedy(tokenizer, tiny_model):
    ps = prompts(tokenizer, 3)
    ours = generate(tiny_model, tokenizer, ps, max_new_tokens=10, temperature=0, show_progress=False)
    width = max(len(p) for p in ps)
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in ps])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps])
    ref = tiny_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    assert [y[:10] for y in ours] == [r[width:width + len(y)].tolist() for r, y in zip(ref, ours)]


def test_sampling_follows_the_distribution():
    from ctxdistill.core.generation import sample_next

    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(20000, 4)
    counts = torch.bincount(sample_next(logits, 1.0), minlength=4) / 20000
    torch.testing.assert_close(counts, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.015, rtol=0)
    assert sample_next(logits, 0.0).unique().tolist() == [0]


def test_min_new_tokens_forces_the_length(tokenizer, tiny_model):
    ys = generate(tiny_model, tokenizer, prompts(tokenizer, 2), max_new_tokens=12, min_new_tokens=12, temperature=1.0,
                  show_progress=False, seed=0)
    assert [len(y) for y in ys] == [12, 12]


def test_merged_copy_samples_like_the_lora_model_and_follows_updates(tokenizer, tiny_model):
    student = add_lora(tiny_model, r=4, alpha=8)
    merged = MergedCopy(student)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)  # as after some training steps
    x = torch.tensor([prompts(tokenizer, 1)[0]])
    merged.sync()
    with torch.no_grad():
        torch.testing.assert_close(merged.model(x).logits, student(input_ids=x).logits, atol=1e-4, rtol=1e-4)
    assert not any(p.requires_grad for p in merged.model.parameters())


def test_decode_attention_switches_to_eager_on_cpu_and_back(tiny_model):
    tiny_model.set_attn_implementation("sdpa")
    with decode_attention(tiny_model, batch=8, width=100):
        assert tiny_model.config._attn_implementation == "eager"
    assert tiny_model.config._attn_implementation == "sdpa"
    with decode_attention(tiny_model, batch=64, width=8000):  # a long prefill keeps SDPA
        assert tiny_model.config._attn_implementation == "sdpa"
