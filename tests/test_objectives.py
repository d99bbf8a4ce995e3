"""Chunked objectives on completion rows equal a naive full-logits implementation, values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from ctxdistill.objectives import forward_kl, sft


def naive_forward_kl(s_h, s_w, t_h, t_w, temperature, top_k):
    s_logp = F.log_softmax((s_h @ s_w.T) / temperature, -1)
    t_logits = (t_h @ t_w.T) / temperature
    if top_k:
        vals, idx = t_logits.topk(top_k, -1)
        mask = torch.full_like(t_logits, float("-inf")).scatter(-1, idx, vals)
        t_p = F.softmax(mask, -1)
        return -(t_p * s_logp).sum() + (t_p[t_p > 0] * t_p[t_p > 0].log()).sum()
    t_p = F.softmax(t_logits, -1)
    return (t_p * (t_p.log() - s_logp)).sum()


def make(n=37, h=16, v=101, seed=0):
    g = torch.Generator().manual_seed(seed)
    s_h = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    t_h = torch.randn(n, h, generator=g, dtype=torch.float64)
    s_head = torch.nn.Linear(h, v, bias=False).double()
    t_head = torch.nn.Linear(h, v, bias=False).double()
    torch.nn.init.normal_(s_head.weight, generator=g)
    torch.nn.init.normal_(t_head.weight, generator=g)
    return s_h, t_h, s_head, t_head


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("top_k", [0, 5])
@pytest.mark.parametrize("chunk_size", [7, 1000])
def test_forward_kl_matches_naive_values_and_gradients(temperature, top_k, chunk_size):
    s_h, t_h, s_head, t_head = make()
    ours = forward_kl(s_h, s_head, t_h, t_head, temperature, top_k, chunk_size)
    g_ours, gw_ours = torch.autograd.grad(ours, [s_h, s_head.weight])
    ref = naive_forward_kl(s_h, s_head.weight, t_h, t_head.weight, temperature, top_k)
    g_ref, gw_ref = torch.autograd.grad(ref, [s_h, s_head.weight])
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)
    torch.testing.assert_close(gw_ours, gw_ref)


def test_forward_kl_is_zero_for_identical_models_and_positive_otherwise():
    s_h, t_h, s_head, t_head = make()
    same = forward_kl(t_h, t_head, t_h, t_head)
    assert abs(same.item()) < 1e-9
    assert forward_kl(s_h, s_head, t_h, t_head).item() > 0.1


def test_sft_matches_cross_entropy_with_gradients():
    s_h, _, s_head, _ = make()
    labels = torch.randint(0, 101, (s_h.shape[0],))
    ours = sft(s_h, s_head, labels, chunk_size=8)
    ref = F.cross_entropy(s_h @ s_head.weight.T, labels, reduction="sum")
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours, s_h)[0], torch.autograd.grad(ref, s_h)[0])


def test_chunks_never_hold_more_than_chunk_rows_of_logits():
    """The loss's saved tensors are the inputs only: backward recomputes each chunk's logits."""
    s_h, t_h, s_head, t_head = make(n=64, v=5000)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward_kl(s_h, s_head, t_h, t_head, chunk_size=16)
    assert max(saved) < 64 * 5000  # no N × vocab tensor kept for backward
    loss.backward()
    assert s_h.grad is not None and torch.isfinite(s_h.grad).all()
