"""Teacher sources: the prefix KV cache, another model, the top-k disk cache, and rows skipped at the start."""

import json

import numpy as np
import pytest
import torch
from conftest import run_cli, tiny_llama

from ctxdistill import CtxDistillError
from ctxdistill.core.forward import shared_prefix_len
from ctxdistill.core.losses import DistillLoss, collate_pairs
from ctxdistill.core.models import add_lora
from ctxdistill.core.objectives import Objective
from ctxdistill.core.pairs import Context, assistant_header, build_pair, render_prompt
from ctxdistill.core.teacher import Teacher, load_teacher_model, vocabulary_rows
from ctxdistill.core.topk_cache import TopKCache, TopKWriter, build_topk_cache

CONTEXT = Context("You are Pip, the keeper of the Gullrock lighthouse. You love storms and tea. " * 3)


def make_pairs(tokenizer, n=6, seed=1):
    header = assistant_header(tokenizer)
    g = torch.Generator().manual_seed(seed)
    return [build_pair(render_prompt(tokenizer, f"question number {i}" + " more" * i, CONTEXT),
                       render_prompt(tokenizer, f"question number {i}" + " more" * i),
                       torch.randint(100, 40000, (5 + i,), generator=g).tolist(), header) for i in range(n)]


def sets(*items):
    return [arg for item in items for arg in ("--set", item)]


def test_shared_prefix_stops_before_the_last_prompt_token():
    assert shared_prefix_len([[1, 2, 3, 9], [1, 2, 4, 9]], [3, 3]) == 2
    assert shared_prefix_len([[1, 2, 3, 9], [1, 2, 3, 8]], [3, 3]) == 2  # the row predicting y[0] stays
    assert shared_prefix_len([[5, 1], [6, 1]], [1, 1]) == 0


def test_prefix_cache_gives_the_same_teacher_states_as_a_full_forward(tokenizer, tiny_model):
    pairs = make_pairs(tokenizer)
    teacher = Teacher(add_lora(tiny_model, r=4, alpha=8))
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    full, full_layers, offset = teacher.states(batch.teacher_ids, batch.teacher_mask, all_layers=True)
    assert offset == 0
    prefix = teacher.encode_shared_prefix([p.teacher_ids for p in pairs], [p.teacher_prompt_len for p in pairs])
    assert prefix is not None and len(prefix) > 30  # the system turn with the context
    cached, cached_layers, offset = teacher.states(batch.teacher_ids, batch.teacher_mask, all_layers=True)
    assert offset == len(prefix)
    rows = batch.teacher_rows
    torch.testing.assert_close(cached[rows[0], rows[1] - offset], full[rows], atol=1e-5, rtol=1e-4)
    for a, b in zip(cached_layers, full_layers):
        torch.testing.assert_close(a[rows[0], rows[1] - offset], b[rows], atol=1e-5, rtol=1e-4)


def test_distill_loss_is_the_same_with_and_without_the_prefix_cache(tokenizer, tiny_model):
    pairs = make_pairs(tokenizer)
    student = add_lora(tiny_model, r=4, alpha=8)
    with torch.no_grad():  # a non-zero adapter, so student and teacher differ
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    obj = Objective({"forward_kl": 1.0}, hidden_weight=0.5)
    teacher = Teacher(student)
    plain = DistillLoss(student, teacher, obj)(batch)[0]
    teacher.encode_shared_prefix([p.teacher_ids for p in pairs], [p.teacher_prompt_len for p in pairs])
    cached = DistillLoss(student, teacher, obj)(batch)[0]
    assert plain.item() > 0
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-4)


def test_top_k_cache_round_trips_exactly_and_matches_the_live_teacher(tokenizer, tiny_model, tmp_path):
    pairs = make_pairs(tokenizer)
    student = add_lora(tiny_model, r=4, alpha=8)
    teacher = Teacher(student)
    cache = build_topk_cache(tmp_path / "topk", teacher, pairs, k=16, temperature=2.0,
                             pad_id=tokenizer.pad_token_id, batch_size=4, chunk_size=5, fingerprint="abc")
    assert cache.ids.dtype == np.uint16  # the 49k vocabulary fits: 2 bytes per id
    assert cache.ids.shape == (sum(p.completion_len for p in pairs), 16) and cache.fingerprint == "abc"
    # What was written is the teacher's top-k at temperature 2 (another batching: equal up to float rounding).
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    t_h = teacher.states(batch.teacher_ids, batch.teacher_mask)[0][batch.teacher_rows]  # no prefix: offset 0
    logp = torch.log_softmax((t_h @ teacher.head.weight.T).float() / 2.0, -1)
    vals, ids = logp.topk(16, -1)
    rows = TopKCache(tmp_path / "topk").rows(pairs)
    assert torch.equal(rows.ids, ids)
    torch.testing.assert_close(rows.logp, vals, atol=1e-5, rtol=1e-5)
    # Training on the cache is training on the live teacher's top-k.
    obj = Objective({"forward_kl": 1.0}, temperature=2.0, top_k=16, tail="bucket")
    live = DistillLoss(student, teacher, obj)(batch)[0]
    from_disk = DistillLoss(student, TopKCache(tmp_path / "topk"), obj)(batch)[0]
    torch.testing.assert_close(from_disk, live, atol=1e-5, rtol=1e-4)
    assert not list(tmp_path.glob(".topk*"))  # no temporary folder left behind


def test_top_k_cache_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(0)
    entries = {f"pair{i}": (rng.integers(0, 49152, (n, 8)), rng.normal(-5, 3, (n, 8)).astype(np.float32))
               for i, n in enumerate([3, 1, 7])}
    writer = TopKWriter(tmp_path / "cache", 11, 8, 49152)
    for key, (ids, logp) in entries.items():
        writer.add(key, ids, logp)
    cache = writer.commit(temperature=1.0, fingerprint="f")
    for key, (ids, logp) in entries.items():
        row, n = cache.meta["index"][key]
        assert np.array_equal(cache.ids[row:row + n], ids) and np.array_equal(cache.logp[row:row + n], logp)
    big = TopKWriter(tmp_path / "big", 1, 2, 100_000)  # ids beyond uint16 are stored as int32
    big.add("x", np.array([[99_999, 70_000]]), np.zeros((1, 2), np.float32))
    assert big.commit(1.0, "").ids[0].tolist() == [99_999, 70_000]


def test_top_k_cache_refuses_pairs_it_has_not_seen_and_other_temperatures(tokenizer, tiny_model, tmp_path):
    pairs = make_pairs(tokenizer)
    cache = build_topk_cache(tmp_path / "c", Teacher(tiny_model), pairs[:2], k=4, temperature=1.0,
                             pad_id=tokenizer.pad_token_id)
    with pytest.raises(CtxDistillError, match="other data"):
        cache.rows(pairs[2:3])
    with pytest.raises(CtxDistillError, match="temperature"):
        DistillLoss(tiny_model, cache, Objective(temperature=2.0, top_k=4))
    with pytest.raises(CtxDistillError, match="meta.json"):
        TopKCache(tmp_path / "missing")


def test_skip_first_drops_the_first_rows_of_each_completion(tokenizer, tiny_model):
    pairs = make_pairs(tokenizer, n=3)
    full = collate_pairs(pairs, tokenizer.pad_token_id)
    skipped = collate_pairs(pairs, tokenizer.pad_token_id, skip_first=2)
    assert len(skipped.labels) == len(full.labels) - 2 * len(pairs)
    assert skipped.labels.tolist() == [t for p in pairs for t in p.completion[2:]]
    # Row i of the skipped batch is the row that predicts completion token i + 2 of its sequence.
    assert skipped.student_rows[1][0].item() == full.student_rows[1][0].item() + 2


def test_another_model_teaches_a_smaller_student(tokenizer, tmp_path):
    student = add_lora(tiny_llama(tokenizer, hidden=32, layers=1), r=4, alpha=8)
    bigger = tiny_llama(tokenizer, hidden=64, layers=3, seed=5)
    pairs = make_pairs(tokenizer)
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    loss, _ = DistillLoss(student, Teacher(student, other=bigger), Objective({"reverse_kl": 1.0}, top_k=8))(batch)
    loss.backward()
    assert loss.item() > 0 and any(p.grad is not None for p in student.parameters() if p.requires_grad)
    with pytest.raises(CtxDistillError, match="hidden size"):
        DistillLoss(student, Teacher(student, other=bigger), Objective(hidden_weight=1.0))


def test_offline_cli_with_another_teacher_and_a_top_k_cache(tokenizer, tiny_model_dir, persona_files, tmp_path):
    bigger = tmp_path / "bigger"
    tiny_llama(tokenizer, hidden=96, layers=3, seed=7).save_pretrained(bigger)
    tokenizer.save_pretrained(bigger)
    out = tmp_path / "run"
    r = run_cli("distill", "offline", "--model", str(tiny_model_dir), "--teacher", str(bigger),
                "--context", str(persona_files["context"]), "--prompts", str(persona_files["prompts"]),
                "--out", str(out), *sets("max_steps=2", "samples_per_query=1", "max_new_tokens=6",
                                         "teacher_cache=true", "top_k=8", "top_k_tail=bucket", "eval_max_new_tokens=4"))
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["teacher"] == str(bigger) and manifest["metrics"]["train_steps"] == 2
    assert (out / "data" / "teacher_topk" / "ids.npy").exists()


def test_a_teacher_with_another_tokenizer_is_refused(tokenizer, tiny_model_dir, persona_files, tmp_path):
    from transformers import AutoTokenizer

    other = tmp_path / "other"
    tiny_llama(tokenizer).save_pretrained(other)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    tok.save_pretrained(other)
    r = run_cli("distill", "offline", "--model", str(tiny_model_dir), "--teacher", str(other),
                "--context", str(persona_files["context"]), "--prompts", str(persona_files["prompts"]),
                "--out", str(tmp_path / "run"), "--set", "max_steps=1")
    assert r.returncode == 2 and "special tokens differ" in r.stderr


def test_a_teacher_with_a_padded_embedding_is_cut_to_the_students_rows(tokenizer, tiny_model, tmp_path):
    """Padded rows (past the tokenizer) are ids no token reaches: cut at load time, not refused after sampling."""
    padded = tmp_path / "padded"
    bigger = tiny_llama(tokenizer, hidden=96, layers=3, seed=7)
    bigger.resize_token_embeddings(len(tokenizer) + 64)
    bigger.save_pretrained(padded)
    tokenizer.save_pretrained(padded)
    n = len(tokenizer)
    with pytest.warns(UserWarning, match=f"padded past the tokenizer: the teacher {padded} has {n + 64} "
                                         f"input-embedding and {n + 64} lm_head rows, the student {n} lm_head rows, "
                                         f"the shared tokenizer {n} tokens. It is cut to the student's {n} rows"):
        teacher = load_teacher_model(str(padded), tokenizer, "float32", "cpu", student=tiny_model)
    assert vocabulary_rows(teacher) == (n, n)
    torch.testing.assert_close(teacher.lm_head.weight, bigger.lm_head.weight[:n])
    student = add_lora(tiny_model, r=4, alpha=8)
    batch = collate_pairs(make_pairs(tokenizer, n=2), tokenizer.pad_token_id)
    loss, _ = DistillLoss(student, Teacher(student, other=teacher), Objective({"forward_kl": 1.0}))(batch)
    assert torch.isfinite(loss) and loss.item() > 0


def test_a_teacher_with_fewer_rows_than_a_padded_student_is_refused_at_load(tokenizer, tiny_model_dir):
    student = tiny_llama(tokenizer)
    student.resize_token_embeddings(len(tokenizer) + 64)
    n = len(tokenizer)
    with pytest.raises(CtxDistillError, match=f"has {n} input-embedding and {n} lm_head rows, the student {n + 64} "
                                              f"lm_head rows, the shared tokenizer {n} tokens. The tokenizers are the "
                                              "same, so the difference is a padded embedding matrix"):
        load_teacher_model(str(tiny_model_dir), tokenizer, "float32", "cpu", student=student)


def test_a_teacher_with_fewer_rows_than_its_tokenizer_is_refused_at_load(tokenizer, tmp_path):
    short = tmp_path / "short"
    model = tiny_llama(tokenizer)
    model.resize_token_embeddings(len(tokenizer) - 16)
    model.save_pretrained(short)
    tokenizer.save_pretrained(short)
    with pytest.raises(CtxDistillError, match=f"The teacher's vocabulary is smaller than its tokenizer: the teacher "
                                              f"{short} has {len(tokenizer) - 16} input-embedding"):
        load_teacher_model(str(short), tokenizer, "float32", "cpu")
