"""The query plan of a bare context: probes of every statement, everyday requests, model-written queries, all gated."""

import json

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


def test_templates_come_first_and_the_model_writes_only_the_missing_probes_shown_one_statement(monkeypatch,
                                                                                             tokenizer):
    seen = fake_model(monkeypatch, tokenizer, [f"Which harbor job did you do in year {i}?" for i in range(200)])
    plan = plan_queries(None, tokenizer, CONTEXT, n=12, everyday_fraction=0.0, synthesized_fraction=0.0,
                        probes_per_statement=4)
    origins = [q["origin"] for q in plan.queries]
    assert origins[0] == "probe (template)" and "probe (model)" in origins
    probe_prompts = [p for p in seen if "Here is a sentence" in p]
    assert probe_prompts and all(sum(s in p for s in ("tugboat", "Biscuit", "Oslo")) == 1 for p in probe_prompts)


def test_everyday_requests_fill_their_share_and_origins_are_counted(monkeypatch, tokenizer):
    fake_model(monkeypatch, tokenizer, JUNK * 100)
    plan = plan_queries(None, tokenizer, CONTEXT, n=20, everyday_fraction=0.5, synthesized_fraction=0.0,
                        probes_per_statement=2)
    shares = query_origins(plan.queries)
    assert shares["probe (template)"] == 6 and shares["everyday"] == 14  # everyday requests fill what probes leave
    assert all(q["prompt"] in everyday_requests() for q in plan.queries if q["origin"] == "everyday")
    assert sum(shares.values()) == len(plan.queries) == 20


def test_other_language_contexts_do_not_take_english_everyday_requests(monkeypatch, tokenizer):
    fake_model(monkeypatch, tokenizer, JUNK * 100)
    plan = plan_queries(None, tokenizer, "Tu es Nell, une capitaine de remorqueur. Tu habites à Brest depuis "
                                         "toujours et tu aimes la mer.", n=10, everyday_fraction=0.5)
    assert not any(q["origin"] == "everyday" for q in plan.queries)
    assert any(q["origin"] == "probe (template)" for q in plan.queries)


def test_a_bare_text_context_trains_on_gated_queries_recorded_in_manifest_and_report(tiny_model_dir, tmp_path):
    from conftest import run_cli

    context = tmp_path / "persona.txt"
    context.write_text(CONTEXT + "\n")
    out = tmp_path / "run"
    result = run_cli("distill", "offline", "--model", str(tiny_model_dir), "--context", str(context), "--out",
                     str(out), "--set", "dtype=float32", "num_queries=12", "samples_per_query=1", "max_new_tokens=6",
                     "max_steps=1", "eval_max_new_tokens=3")
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "manifest.json").read_text())["data"]
    assert sum(data["query_origins"].values()) == data["queries"] == 12
    assert data["query_origins"]["probe (template)"] >= 3 and data["query_origins"]["everyday"] >= 3
    gate = data["query_gate"][0]
    assert gate["offered"] >= gate["accepted"] >= 12 and len(gate["raw"]) > 0
    report = (out / "report.md").read_text()
    assert "## Queries" in report and "Quality gate (persona.txt)" in report and "| model-written query |" in report
