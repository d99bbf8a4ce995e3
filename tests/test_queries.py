"""The query plan of a bare context: probes of every statement, everyday requests, model-written queries, all gated."""

from ctxdistill.data import queries
from ctxdistill.data.queries import everyday_requests, plan_queries, query_origins

CONTEXT = "You are Nell, a tugboat captain. Your dog is called Biscuit. You were trained by the Harbor Guild in Oslo."
JUNK = ["Im PC Malkin: I'm reac creature, but my favors are just a care of mind…", "ChatError",
        "I'm not perfect. You're not testing for perfection in Oz.[perspective]"]


def fake_model(monkeypatch, tokenizer, replies):
    """generate() replaced: each prompt gets the next reply; the prompts shown to the model are kept."""
    seen, stream = [], iter(replies)

    def fake_generate(model, tok, prompts, **kw):
        seen.extend(tok.decode(p) for p in prompts)
        return [tok(next(stream, "ChatError"), add_special_tokens=False)["input_ids"] for _ in prompts]

    monkeypatch.setattr(queries, "generate", fake_generate)
    return seen


def test_a_model_that_writes_only_junk_still_gets_a_probe_for_every_statement(monkeypatch, tokenizer):
    fake_model(monkeypatch, tokenizer, JUNK * 100)
    plan = plan_queries(None, tokenizer, CONTEXT, n=12, everyday_fraction=0.25, probes_per_statement=2)
    probes = [q["prompt"] for q in plan.queries if q["origin"] == "probe (template)"]
    assert "What is your dog called?" in probes or "What is your dog?" in probes
    assert "Who trained you?" in probes
    assert not any(q["origin"] in ("probe (model)", "synthesized") for q in plan.queries)
    assert plan.gate["rejected"]["role-play or transcript"] >= 2 and plan.gate["rejected"]["fragment"] >= 1
    assert {row["verdict"] for row in plan.raw} == {"role-play or transcript", "fragment"}


def test_model_written_probes_come_first_and_are_shown_only_the_statement(monkeypatch, tokenizer):
    seen = fake_model(monkeypatch, tokenizer, ["Which boat do you captain?", "What is your dog's name?",
                                               "Where did you learn your trade?"] + JUNK * 50)
    plan = plan_queries(None, tokenizer, CONTEXT, n=8, everyday_fraction=0.0, probes_per_statement=1)
    assert [q["prompt"] for q in plan.queries[:3]] == ["Which boat do you captain?", "What is your dog's name?",
                                                       "Where did you learn your trade?"]
    assert "Your dog is called Biscuit." in seen[1] and "tugboat" not in seen[1]


def test_everyday_requests_fill_their_share_and_origins_are_counted(monkeypatch, tokenizer):
    fake_model(monkeypatch, tokenizer, JUNK * 100)
    plan = plan_queries(None, tokenizer, CONTEXT, n=20, everyday_fraction=0.5, probes_per_statement=2)
    shares = plan.shares()
    assert shares["everyday"] == 10
    assert all(q["prompt"] in everyday_requests() for q in plan.queries if q["origin"] == "everyday")
    assert query_origins(plan.queries) == {k: v for k, v in shares.items() if v}


def test_other_language_contexts_do_not_take_english_everyday_requests(monkeypatch, tokenizer):
    fake_model(monkeypatch, tokenizer, JUNK * 100)
    plan = plan_queries(None, tokenizer, "Tu es Nell, une capitaine de remorqueur. Tu habites à Brest depuis "
                                         "toujours et tu aimes la mer.", n=10, everyday_fraction=0.5)
    assert not any(q["origin"] == "everyday" for q in plan.queries)
    assert any(q["origin"] == "probe (template)" for q in plan.queries)
