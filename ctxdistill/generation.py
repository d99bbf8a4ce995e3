"""Batched sampling with transformers `generate`, left-padded, in wide length-sorted batches."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm


def stop_token_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _trim(ids: list[int], stops: set[int], pad_id: int) -> list[int]:
    """Cut after the first stop token (kept, so the student learns to end its turn)."""
    for i, t in enumerate(ids):
        if t in stops:
            return ids[: i + 1]
    while ids and ids[-1] == pad_id and pad_id not in stops:
        ids = ids[:-1]
    return ids


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int = 128, temperature: float = 1.0,
             top_p: float = 1.0, batch_size: int = 64, desc: str = "generating", seed: int | None = None,
             show_progress: bool = True) -> list[list[int]]:
    """Complete each prompt (token ids); temperature 0 is greedy. Returns completion ids, stop token included."""
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_token_ids(model, tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch: less padding
    out: list[list[int] | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(prompts), desc=desc, unit="seq", disable=not show_progress, dynamic_ncols=True)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(prompts[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                p = prompts[i]
                input_ids[row, width - len(p):] = torch.tensor(p)
                attention[row, width - len(p):] = 1
            sampling = temperature > 0
            generated = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), max_new_tokens=max_new_tokens,
                do_sample=sampling, temperature=temperature if sampling else None, top_p=top_p if sampling else None,
                top_k=0 if sampling else None, eos_token_id=stops, pad_token_id=pad_id,
            )
            for row, i in enumerate(idx):
                out[i] = _trim(generated[row, width:].tolist(), set(stops), pad_id)
            bar.update(len(idx))
    finally:
        bar.close()
        model.train(was_training)
    return out  # type: ignore[return-value]
