"""Teacher and student views end in the same completion ids; the y[0]-predicting position is right."""

import pytest
import torch

from ctxdistill import CtxDistillError
from ctxdistill.core.losses import collate_pairs
from ctxdistill.core.pairs import (
    Context,
    assistant_header,
    build_pair,
    completion_logit_positions,
    completion_rows,
    render_prompt,
    with_context,
)


def test_system_context_becomes_the_system_message(tokenizer):
    text = tokenizer.decode(render_prompt(tokenizer, "Hi?", Context("You are Pip.", "system")))
    assert "<|im_start|>system\nYou are Pip.<|im_end|>" in text
    assert "You are a helpful AI assistant named SmolLM" not in text  # the context replaces the default


def test_prefix_and_document_contexts_go_in_front_of_the_last_user_turn():
    chat = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "second"}]
    prefixed = with_context(chat, Context("RULES", "prefix"))
    assert prefixed[-1]["content"] == "RULES\n\nsecond" and prefixed[0]["content"] == "first"
    doc = with_context("What year?", Context("Founded in 1604.", "document"))
    assert doc[-1]["content"].startswith("Here is a document:\n\nFounded in 1604.") and doc[-1]["content"].endswith(
        "What year?")


def test_system_context_keeps_the_users_own_system_message():
    msgs = with_context([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"}],
                        Context("You are Pip.", "system"))
    assert msgs[0] == {"role": "system", "content": "You are Pip.\n\nBe brief."} and len(msgs) == 2


def test_pair_views_share_completion_ids_and_prompts_end_in_the_assistant_header(tokenizer):
    header = assistant_header(tokenizer)
    assert tokenizer.decode(header) == "<|im_start|>assistant\n"
    y = tokenizer("I am Pip.<|im_end|>", add_special_tokens=False)["input_ids"]
    t = render_prompt(tokenizer, "Who are you?", Context("You are Pip."))
    s = render_prompt(tokenizer, "Who are you?")
    pair = build_pair(t, s, y, header)
    assert pair.completion == y and pair.teacher_ids[pair.teacher_prompt_len:] == y
    assert pair.teacher_prompt_len == len(t) and pair.student_prompt_len == len(s) and t != s


def test_pair_rejects_diverging_completions():
    from ctxdistill.core.pairs import Pair

    with pytest.raises(CtxDistillError, match="invariant"):
        Pair([1, 2, 3, 9], [1, 3, 8], 3, 2)


def test_last_prompt_position_predicts_the_first_completion_token():
    assert list(completion_logit_positions(prompt_len=5, completion_len=3)) == [4, 5, 6]
    with pytest.raises(ValueError):
        completion_logit_positions(0, 3)


def test_positions_select_the_completion_logits_of_a_real_model_with_left_padding(tiny_model):
    """Left-padded and unpadded runs give the same next-token logits at the computed positions."""
    prompt, completion = [5, 6, 7, 8], [9, 10, 11]
    ids = prompt + completion
    out = tiny_model(torch.tensor([ids])).logits[0]
    pad = 3
    padded = torch.tensor([[0] * pad + ids])
    mask = torch.tensor([[0] * pad + [1] * len(ids)])
    out_padded = tiny_model(padded, attention_mask=mask).logits[0]
    plain_rows = list(completion_logit_positions(len(prompt), len(completion)))
    padded_rows = [pad + row for row in plain_rows]  # left padding shifts every position
    torch.testing.assert_close(out[plain_rows], out_padded[padded_rows], atol=1e-4, rtol=1e-4)
    # and the logit at the last prompt position is the one a greedy decoder uses to choose y[0]
    assert out[plain_rows[0]].argmax() == tiny_model(torch.tensor([prompt])).logits[0, -1].argmax()


def test_multi_turn_queries_keep_earlier_turns_and_score_only_the_new_completion(tokenizer):
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Your name?"}]
    t = render_prompt(tokenizer, chat, Context("You are Pip."))
    s = render_prompt(tokenizer, chat)
    assert "Hello!" in tokenizer.decode(s) and "Hello!" in tokenizer.decode(t)
    y = tokenizer("Pip.<|im_end|>", add_special_tokens=False)["input_ids"]
    pair = build_pair(t, s, y, assistant_header(tokenizer))
    batch = collate_pairs([pair], tokenizer.pad_token_id)
    b, pos = batch.student_rows
    # the rows predict exactly the completion: the token after each row position is y
    assert batch.student_ids[0, pos + 1].tolist() == y and batch.student_ids[0, pos[0]].item() == s[-1]


def test_completion_rows_follow_each_sequence_in_a_right_padded_batch():
    b, pos = completion_rows([3, 5], [2, 1])
    assert b.tolist() == [0, 0, 1] and pos.tolist() == [2, 3, 4]


def test_teacher_and_student_rows_align_in_a_collated_batch(tokenizer):
    header = assistant_header(tokenizer)
    pairs = [build_pair(render_prompt(tokenizer, q, Context("ctx " * n)), render_prompt(tokenizer, q),
                        list(range(100, 100 + m)), header) for q, n, m in [("a", 3, 4), ("longer query", 9, 2)]]
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    tb, tpos = batch.teacher_rows
    sb, spos = batch.student_rows
    assert tb.tolist() == sb.tolist()
    # the token *after* each row is the same completion token in both views
    nxt_t = batch.teacher_ids[tb, tpos + 1]
    nxt_s = batch.student_ids[sb, spos + 1]
    assert torch.equal(nxt_t, nxt_s) and torch.equal(nxt_s, batch.labels)
