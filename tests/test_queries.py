"""Query synthesis: the model sees the context and example queries; answers are cleaned and deduplicated."""

from ctxdistill.data import queries
from ctxdistill.data.queries import clean_query, synthesize_queries


def test_clean_query_takes_the_first_line_without_bullets_or_quotes():
    assert clean_query('\n- "What is your name?"\nAnd more') == "What is your name?"
    assert clean_query("2) Where do you live?") == "Where do you live?"
    assert clean_query("Question: Why?  ") == "Why?"


def test_synthesis_shows_context_and_examples_and_deduplicates(monkeypatch, tokenizer):
    seen_prompts = []
    replies = iter(["What is your name?", "what is your NAME?!", "Where were you built?", "ok", "- Who made you?"] * 4)

    def fake_generate(model, tok, prompts, **kw):
        seen_prompts.extend(tok.decode(p) for p in prompts)
        return [tok(next(replies), add_special_tokens=False)["input_ids"] for _ in prompts]

    monkeypatch.setattr(queries, "generate", fake_generate)
    found = synthesize_queries(None, tokenizer, "Your name is Pip.", n=3, examples=["Who are you?", "Hi?"])
    assert found == ["What is your name?", "Where were you built?", "Who made you?"]
    assert "Your name is Pip." in seen_prompts[0]
    assert "- Who are you?" in seen_prompts[0] or "- Hi?" in seen_prompts[0]
