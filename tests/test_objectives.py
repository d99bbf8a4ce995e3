"""Every objective on completion rows equals a naive full-logits implementation, values and gradients.

The naive references below are written from the definitions (probability vectors, explicit supports, the GKD
formula) and share no code with ctxdistill.core.objectives.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from ctxdistill import CtxDistillError
from ctxdistill.core.objectives import (
    Objective,
    TeacherLogits,
    TeacherTopK,
    forward_kl,
    head_loss,
    hidden_state_term,
)

V = 101


def make(n=37, h=16, v=V, seed=0):
    g = torch.Generator().manual_seed(seed)
    s_h = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    t_h = torch.randn(n, h, generator=g, dtype=torch.float64)
    s_head = torch.nn.Linear(h, v, bias=False).double()
    t_head = torch.nn.Linear(h, v, bias=False).double()
    torch.nn.init.normal_(s_head.weight, generator=g)
    torch.nn.init.normal_(t_head.weight, generator=g)
    labels = torch.randint(0, v, (n,), generator=g)
    return s_h, t_h, s_head, t_head, labels


# ---------------- naive references ----------------

def naive_kl(p, q):
    """KL(p‖q) per row from probability vectors; outcomes with p = 0 contribute nothing."""
    safe_p = torch.where(p > 0, p, torch.ones_like(p))
    return torch.where(p > 0, p * (safe_p.log() - q.log()), torch.zeros_like(p)).sum(-1)


def gkd_jsd(p_teacher, q_student, beta):
    """Generalized JSD as defined in GKD (Agarwal et al. 2024), with its β=0 / β=1 limits as forward / reverse KL."""
    if beta == 0:
        return naive_kl(p_teacher, q_student)
    if beta == 1:
        return naive_kl(q_student, p_teacher)
    m = beta * p_teacher + (1 - beta) * q_student
    return beta * naive_kl(p_teacher, m) + (1 - beta) * naive_kl(q_student, m)


def support_sets(t_logits, s_logits, k, support):
    rows = []
    for i in range(t_logits.shape[0]):
        t_top = set(t_logits[i].topk(k).indices.tolist())
        s_top = set(s_logits[i].detach().topk(k).indices.tolist())
        rows.append(sorted({"teacher": t_top, "student": s_top, "union": t_top | s_top}[support]))
    return rows


def restrict(p, sets, tail):
    """Probability vectors on each row's support: renormalized, or with the rest of the mass as one outcome."""
    out = []
    for i, ids in enumerate(sets):
        on = p[i, ids]
        if tail == "renorm":
            out.append(on / on.sum())
        else:
            rest = (1 - on.sum()).clamp_min(0) if len(ids) < p.shape[-1] else torch.zeros((), dtype=p.dtype)
            out.append(torch.cat([on, rest.reshape(1)]))
    return out


def naive_loss(s_h, s_w, t_h, t_w, obj: Objective, labels=None):
    T = obj.temperature
    s_logits, t_logits = s_h @ s_w.T, t_h @ t_w.T
    p_s, p_t = F.softmax(s_logits / T, -1), F.softmax(t_logits / T, -1)
    total = torch.zeros((), dtype=s_h.dtype)
    scale = T * T if obj.t2_scaling else 1.0
    for name, weight in obj.terms.items():
        if name == "sft":
            total = total + weight * F.cross_entropy(s_logits, labels, reduction="sum")
            continue
        if name == "sampled_kl":
            log_s = F.log_softmax(s_logits / T, -1).gather(-1, labels[:, None])[:, 0]
            log_t = F.log_softmax(t_logits / T, -1).gather(-1, labels[:, None])[:, 0]
            # Surrogate whose value is the log-ratio and whose gradient is log-ratio · ∇ log p_s(y).
            ratio = (log_s - log_t).detach()
            total = total + weight * (ratio.sum() + (ratio * (log_s - log_s.detach())).sum())
            continue
        beta = {"forward_kl": 0.0, "reverse_kl": 1.0, "jsd": obj.jsd_beta}[name]
        if obj.top_k:
            sets = support_sets(t_logits / T, s_logits / T, obj.top_k, obj.support)
            per_row = torch.stack([gkd_jsd(pt, ps, beta) for pt, ps in
                                   zip(restrict(p_t, sets, obj.tail), restrict(p_s, sets, obj.tail))])
        else:
            per_row = gkd_jsd(p_t, p_s, beta)
        total = total + weight * scale * per_row.sum()
    return total


def check_against_naive(obj, chunk_size=7, train_head=True, seed=0):
    s_h, t_h, s_head, t_head, labels = make(seed=seed)
    s_head.weight.requires_grad_(train_head)
    wrt = [s_h, s_head.weight] if train_head else [s_h]
    ours = head_loss(s_h, s_head, TeacherLogits(t_h, t_head), labels, obj, chunk_size)
    ref = naive_loss(s_h, s_head.weight, t_h, t_head.weight, obj, labels)
    torch.testing.assert_close(ours, ref)
    for g_ours, g_ref in zip(torch.autograd.grad(ours, wrt), torch.autograd.grad(ref, wrt)):
        torch.testing.assert_close(g_ours, g_ref)
    return ours


# ---------------- the tests ----------------

SUPPORTS = [(0, "teacher", "renorm")] + [(5, s, t) for s in ("teacher", "student", "union")
                                         for t in ("renorm", "bucket")]


@pytest.mark.parametrize("term", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("top_k,support,tail", SUPPORTS)
def test_divergences_match_naive_on_every_support(term, top_k, support, tail):
    obj = Objective({term: 1.0}, jsd_beta=0.3, top_k=top_k, support=support, tail=tail)
    check_against_naive(obj)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_jsd_matches_the_gkd_definition(beta):
    loss = check_against_naive(Objective({"jsd": 1.0}, jsd_beta=beta))
    s_h, t_h, s_head, t_head, _ = make()
    if beta == 0.0:  # the endpoints are the two KLs
        torch.testing.assert_close(loss, head_loss(s_h, s_head, TeacherLogits(t_h, t_head), None,
                                                   Objective({"forward_kl": 1.0})))
    if beta == 1.0:
        torch.testing.assert_close(loss, head_loss(s_h, s_head, TeacherLogits(t_h, t_head), None,
                                                   Objective({"reverse_kl": 1.0})))
    if beta == 0.5:  # symmetric JSD is bounded by log 2 per row
        assert 0 < loss.item() / s_h.shape[0] < math.log(2)


@pytest.mark.parametrize("t2", [False, True])
def test_temperature_and_t2_scaling(t2):
    obj = Objective({"forward_kl": 1.0}, temperature=2.0, t2_scaling=t2)
    loss = check_against_naive(obj)
    plain = check_against_naive(Objective({"forward_kl": 1.0}, temperature=2.0))
    torch.testing.assert_close(loss, plain * (4.0 if t2 else 1.0))


def test_sampled_token_estimator_value_and_gradient():
    obj = Objective({"sampled_kl": 1.0}, temperature=1.0)
    loss = check_against_naive(obj, train_head=False)
    s_h, t_h, s_head, t_head, labels = make()
    log_ratio = (F.log_softmax(s_h @ s_head.weight.T, -1) - F.log_softmax(t_h @ t_head.weight.T, -1))
    torch.testing.assert_close(loss, log_ratio.gather(-1, labels[:, None]).sum())


def test_composed_terms_with_weights_and_sft():
    obj = Objective({"forward_kl": 0.7, "reverse_kl": 0.2, "sft": 0.1}, top_k=9, support="union", tail="bucket")
    check_against_naive(obj, chunk_size=5)
    s_h, _, s_head, _, labels = make()
    torch.testing.assert_close(head_loss(s_h, s_head, None, labels, Objective({"sft": 1.0}), chunk_size=8),
                               F.cross_entropy(s_h @ s_head.weight.T, labels, reduction="sum"))


def test_row_weights_mask_rows_out():
    s_h, t_h, s_head, t_head, _ = make()
    mask = torch.zeros(s_h.shape[0], dtype=torch.float64)
    mask[5:] = 1.0
    obj = Objective({"reverse_kl": 1.0})
    masked = head_loss(s_h, s_head, TeacherLogits(t_h, t_head), None, obj, 8, row_weight=mask)
    tail_only = head_loss(s_h[5:], s_head, TeacherLogits(t_h[5:], t_head), None, obj, 8)
    torch.testing.assert_close(masked, tail_only)


@pytest.mark.parametrize("tail", ["renorm", "bucket"])
def test_cached_teacher_top_k_equals_live_teacher_support(tail):
    s_h, t_h, s_head, t_head, _ = make()
    t_logp = F.log_softmax(t_h @ t_head.weight.T / 2.0, -1)
    vals, ids = t_logp.topk(6, -1)
    obj = Objective({"forward_kl": 1.0, "jsd": 0.5}, temperature=2.0, top_k=6, tail=tail)
    live = head_loss(s_h, s_head, TeacherLogits(t_h, t_head), None, obj, 7)
    cached = head_loss(s_h, s_head, TeacherTopK(ids, vals), None, obj, 7)
    torch.testing.assert_close(live, cached)
    torch.testing.assert_close(torch.autograd.grad(live, s_h)[0], torch.autograd.grad(cached, s_h)[0])


def test_identical_models_give_zero_and_different_ones_positive():
    s_h, t_h, s_head, t_head, _ = make()
    for term in ("forward_kl", "reverse_kl", "jsd"):
        obj = Objective({term: 1.0}, top_k=5, support="union", tail="bucket")
        assert abs(head_loss(t_h, t_head, TeacherLogits(t_h, t_head), None, obj).item()) < 1e-9
        assert head_loss(s_h, s_head, TeacherLogits(t_h, t_head), None, obj).item() > 0.1
    assert forward_kl(s_h, s_head, t_h, t_head).item() > 0.1


def test_full_vocabulary_support_with_a_tail_has_no_nan():
    obj = Objective({"forward_kl": 1.0, "reverse_kl": 1.0}, top_k=V, support="union", tail="bucket")
    check_against_naive(obj)


def test_bf16_autocast_keeps_fp32_reduction_close_to_fp64():
    s_h, t_h, s_head, t_head, _ = make(n=64, h=64, v=2000)
    ref = head_loss(s_h, s_head, TeacherLogits(t_h, t_head), None, Objective())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = head_loss(s_h.float(), s_head.float(), TeacherLogits(t_h.float(), t_head.float()), None, Objective())
    assert low.dtype == torch.float32
    assert abs(low.item() - ref.item()) / ref.item() < 0.05


def test_no_rows_times_vocabulary_tensor_is_kept_for_backward():
    s_h, t_h, s_head, t_head, labels = make(n=64, v=5000)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    obj = Objective({"forward_kl": 1.0, "sft": 0.5}, top_k=50, support="union", tail="bucket")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = head_loss(s_h, s_head, TeacherLogits(t_h, t_head), labels, obj, chunk_size=16)
    assert saved and max(saved) < 64 * 5000  # gradients kept are N × H and V × H, never N × V
    loss.backward()
    assert s_h.grad is not None and torch.isfinite(s_h.grad).all()


def test_hidden_state_term_is_the_normalized_l1_averaged_over_layers():
    g = torch.Generator().manual_seed(1)
    s = [torch.randn(10, 8, generator=g, requires_grad=True) for _ in range(3)]
    t = [torch.randn(10, 8, generator=g) * (i + 1) for i in range(3)]
    ours = hidden_state_term(s, t) / 10  # a sum over rows; per token it is the DESIGN formula
    ref = sum((a - b).abs().mean() / b.abs().mean() for a, b in zip(s, t)) / 3
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours, s), torch.autograd.grad(ref, s))
    assert hidden_state_term(t, t).item() == 0.0


@pytest.mark.parametrize("bad", [dict(terms={"kl": 1.0}), dict(terms={"forward_kl": -1.0}), dict(temperature=0),
                                 dict(jsd_beta=1.5), dict(support="both"), dict(tail="drop"), dict(top_k=-1),
                                 dict(terms={})])
def test_bad_objectives_are_refused_clearly(bad):
    with pytest.raises(CtxDistillError):
        Objective(**bad)


def test_cache_with_student_support_and_sampled_term_without_teacher_logits_are_refused():
    s_h, t_h, s_head, t_head, labels = make()
    vals, ids = F.log_softmax(t_h @ t_head.weight.T, -1).topk(4, -1)
    with pytest.raises(CtxDistillError, match="support"):
        head_loss(s_h, s_head, TeacherTopK(ids, vals), None, Objective(top_k=4, support="student"))
    with pytest.raises(CtxDistillError, match="sampled_kl"):
        head_loss(s_h, s_head, TeacherTopK(ids, vals), labels, Objective({"sampled_kl": 1.0}, top_k=4))
    with pytest.raises(CtxDistillError, match="misaligned"):
        head_loss(s_h[:3], s_head, TeacherLogits(t_h, t_head), None, Objective())


def test_posterior_view_weights_follow_how_well_each_view_explains_the_completion_so_far():
    from ctxdistill.core.objectives import posterior_view_weights

    prior = torch.tensor([[0.5, 0.5]] * 5)
    # two sequences (3 rows, 2 rows); view 0 explains the tokens well (log p = -0.1), view 1 badly (-3)
    logp = torch.tensor([[-0.1, -3.0]] * 5)
    sequence = torch.tensor([0, 0, 0, 1, 1])
    w = posterior_view_weights(prior, logp, sequence)
    expected = []
    for seq_rows in ([0, 1, 2], [3, 4]):
        for t, _ in enumerate(seq_rows):  # p(view | y_<t) ∝ prior · exp(Σ_{s<t} log p_view(y_s))
            scores = torch.tensor([0.5 * math.exp(-0.1 * t), 0.5 * math.exp(-3.0 * t)])
            expected.append(scores / scores.sum())
    torch.testing.assert_close(w, torch.stack(expected))
    assert w[0].tolist() == [0.5, 0.5] and w[3].tolist() == [0.5, 0.5]  # each sequence starts from the prior
    assert w[2, 0] > 0.99
    # a padded view (prior 0) never gets weight
    w = posterior_view_weights(torch.tensor([[1.0, 0.0]] * 2), logp[:2], torch.tensor([0, 0]))
    assert w[:, 1].tolist() == [0.0, 0.0]


def test_ensemble_loss_uses_posterior_weights_by_default(tokenizer):
    """An ensemble pair: with posterior weighting the target is the mixture under p(view | y_<t); uniform differs."""
    from conftest import tiny_llama

    from ctxdistill.core.losses import DistillLoss, collate_pairs
    from ctxdistill.core.models import add_lora
    from ctxdistill.core.pairs import Context, assistant_header, build_pair, render_prompt
    from ctxdistill.core.teacher import Teacher

    student = add_lora(tiny_llama(tokenizer), r=4, alpha=8)
    header = assistant_header(tokenizer)
    y = tokenizer("I am Zorblax from Fernhollow.")["input_ids"]
    views = [render_prompt(tokenizer, "Who are you?", Context(c)) for c in ("Your name is Zorblax.", "Be terse.")]
    pair = build_pair(views[0], render_prompt(tokenizer, "Who are you?"), y, header, more_teacher_prompts=views[1:])
    batch = collate_pairs([pair], tokenizer.pad_token_id)
    default = DistillLoss(student, Teacher(student))(batch)[0]
    posterior = DistillLoss(student, Teacher(student), ensemble_weighting="posterior")(batch)[0]
    uniform = DistillLoss(student, Teacher(student), ensemble_weighting="uniform")(batch)[0]
    assert torch.isfinite(posterior)
    torch.testing.assert_close(default, posterior)
    assert not torch.isclose(default, uniform)
