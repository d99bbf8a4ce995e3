"""Forward passes that stop before the logits, shared by the teacher, the loss, generation and evaluation.

`decoder_states` returns hidden states only: the loss projects just the completion rows to the vocabulary. A prefix
that every sequence starts with (a context) is encoded once by `encode_prefix` and its KV cache reused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Below this many shared tokens, encoding a prefix once costs more than it saves.
MIN_SHARED_PREFIX = 16


def base_model(model):
    """The transformers model under a PEFT wrapper (LoRA layers stay injected), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def output_head(model) -> torch.nn.Module:
    return base_model(model).get_output_embeddings()


def num_layers(model) -> int:
    return base_model(model).config.num_hidden_layers


@dataclass
class PrefixKV:
    """The KV cache of token ids every view starts with, computed once, batch size 1."""

    ids: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]

    def __len__(self) -> int:
        return len(self.ids)

    def expand(self, batch: int, config):
        from transformers import DynamicCache

        # expand() makes views; the forward concatenates onto them, so the stored tensors are never written.
        return DynamicCache(ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                                            for k, v in self.layers], config=config)


@torch.no_grad()
def encode_prefix(model, ids: list[int]) -> PrefixKV:
    """The KV cache of `ids` under `model`'s current weights, for views (or samples) that all start with them."""
    device = next(model.parameters()).device
    out = base_model(model).get_decoder()(input_ids=torch.tensor([list(ids)], device=device), use_cache=True)
    cache = out.cache
    layers = [(layer.keys, layer.values) for layer in cache.layers] if hasattr(cache, "layers") else list(cache)
    return PrefixKV(list(ids), layers)


def decoder_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, all_layers: bool = False,
                   prefix: PrefixKV | None = None):
    """(final post-norm hidden states B × L × H, per-layer outputs or None), without computing any logits.

    With `prefix`, `input_ids` are what follows the prefix; positions continue after it."""
    decoder = base_model(model).get_decoder()
    kwargs = dict(input_ids=input_ids, use_cache=prefix is not None, output_hidden_states=all_layers)
    if prefix is None:
        kwargs["attention_mask"] = attention_mask
    else:
        b, length, p = input_ids.shape[0], input_ids.shape[1], len(prefix)
        ones = torch.ones((b, p), dtype=attention_mask.dtype, device=attention_mask.device)
        positions = torch.arange(p, p + length, device=input_ids.device)
        kwargs.update(attention_mask=torch.cat([ones, attention_mask], 1), position_ids=positions.expand(b, -1),
                      cache=prefix.expand(b, decoder.config))
    out = decoder(**kwargs)
    layers = list(out.hidden_states[1:]) if all_layers else None  # [0] is the embeddings
    return out.last_hidden_state, layers


def final_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final (post-norm) hidden states, B × L × H, without computing any logits."""
    return decoder_states(model, input_ids, attention_mask)[0]


def shared_prefix_len(sequences: list[list[int]], prompt_lens: list[int]) -> int:
    """Length of the token prefix all sequences share, leaving each prompt at least its last token."""
    if not sequences:
        return 0
    first, n = sequences[0], min(prompt_lens) - 1
    for seq in sequences[1:]:
        n = min(n, len(seq))
        i = 0
        while i < n and seq[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)
