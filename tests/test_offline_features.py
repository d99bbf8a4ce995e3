"""The offline recipe's fuller features, shown by the data that reaches the student (what it sees, what it learns):
scratch-pads, few-shot examples, several contexts (sequential and ensemble), over-long contexts, --init-adapter.

The tests call the recipe's steps (set_up, make_queries, make_samples, make_pairs, plan_stages, train_stages) and
look at what each returns; where a chosen completion matters, they write the teacher's samples themselves."""

import json
import warnings

import pytest
import torch

from ctxdistill.config import load_config
from ctxdistill.core.losses import DistillLoss, collate_pairs
from ctxdistill.core.objectives import Objective
from ctxdistill.core.pairs import Context, assistant_header, build_pair, render_prompt
from ctxdistill.core.teacher import Teacher
from ctxdistill.data.anchors import make_anchors, with_anchors
from ctxdistill.data.sources import Source, context_source, render_examples, split_to_fit
from ctxdistill.recipes import offline

SMALL = ["samples_per_query=1", "max_new_tokens=8", "eval_max_new_tokens=3", "max_steps=2", "batch_size=2",
         "micro_batch_size=2"]


def config(model_dir, *sets):
    return load_config("offline", sets=[*SMALL, *sets], model=str(model_dir))


def read_rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def set_up(cfg, out, context=(), prompts=None, examples=None):
    """The run's first two steps, as offline.run takes them: (OfflineRun, the inputs read)."""
    inputs = offline.read_inputs(cfg, context, prompts, examples, None)
    return offline.set_up(cfg, inputs, out, False, None), inputs


def sample(tokenizer, source: int, query: str, contexts: list[str], text: str) -> dict:
    """One row of samples.jsonl as make_samples writes it, with a completion of our choosing."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return {"source": source, "query": query, "contexts": contexts, "completion_ids": ids, "text": text}


def prompt_text(tokenizer, ids, n):
    return tokenizer.decode(ids[:n])

def test_scratchpad_teacher_reasons_and_the_student_learns_only_the_answer(tokenizer, tiny_model_dir, persona_files,
                                                                            tmp_path):
    cfg = config(tiny_model_dir, "scratchpad=true")
    run, inputs = set_up(cfg, tmp_path / "run", [str(persona_files["context"])], str(persona_files["prompts"]))
    assert all("Think step by step" in offline.teacher_query(q, cfg) for q in inputs.prompts)  # asked to reason
    said = ["The keeper lives by the sea, so Answer: Gullrock", "I am not sure at all."]
    samples = [sample(tokenizer, 0, q, [run.sources[0].text], said[i % 2]) for i, q in enumerate(inputs.prompts)]
    pairs, sources_of, dropped = offline.make_pairs(run, samples)
    assert dropped == 2 and len(pairs) == 2  # 4 samples, 2 lack the delimiter
    for pair in pairs:
        learned = tokenizer.decode(pair.completion)
        assert learned.strip().startswith("Gullrock") and "keeper" not in learned  # no reasoning in the targets
        student_sees = tokenizer.decode(pair.student_ids)
        assert "Think step by step" not in student_sees and "Answer:" not in student_sees
        teacher_sees = prompt_text(tokenizer, pair.teacher_ids, pair.teacher_prompt_len)
        assert "Think step by step" in teacher_sees and "lighthouse of Gullrock" in teacher_sees  # context
        assert teacher_sees.endswith("so Answer:")  # + its own reasoning
    stages = offline.plan_stages(cfg, len(run.sources), sources_of)
    results, _ = offline.train_stages(run, pairs, samples, sources_of, stages, [])
    assert [r.steps_done for r in results] == [2]

def test_few_shot_examples_are_a_fresh_subset_per_query_for_the_teacher_only(tokenizer, tiny_model_dir,
                                                                             persona_files, tmp_path):
    examples = tmp_path / "ex.jsonl"
    examples.write_text("\n".join(json.dumps({"input": f"word{i}", "output": f"WORD{i}"}) for i in range(10)))
    cfg = config(tiny_model_dir, "num_examples=3", "context_kind=prefix")
    run, inputs = set_up(cfg, tmp_path / "run", prompts=str(persona_files["prompts"]), examples=str(examples))
    queries = offline.make_queries(run, inputs.prompts)
    samples = offline.make_samples(run, queries)  # the tiny model samples under each query's examples
    assert [s["query"] for s in samples] == [q["prompt"] for q in queries] == inputs.prompts
    assert all(s["contexts"][0].count("Input: ") == 3 for s in samples)  # k examples per query
    assert len({s["contexts"][0] for s in samples}) > 1  # a different subset per query
    pairs, _, _ = offline.make_pairs(run, samples)
    for pair, s in zip(pairs, samples):
        teacher_sees = prompt_text(tokenizer, pair.teacher_ids, pair.teacher_prompt_len)
        assert teacher_sees.count("Input: ") == 3 and "WORD" in teacher_sees
        student_sees = prompt_text(tokenizer, pair.student_ids, pair.student_prompt_len)
        assert "Input: " not in student_sees and "WORD" not in student_sees and s["query"] in student_sees

def test_sequential_mode_trains_one_stage_per_context_and_ensemble_averages_them(tokenizer, tiny_model_dir,
                                                                                 tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"context": "Your name is Pip.", "prompts": ["Who are you?", "Your name?"],
                             "eval": [{"q": "What is your name?", "a": ["Pip"]}]}))
    b.write_text(json.dumps({"context": "The lighthouse is on Gullrock.", "prompts": ["Where is the lighthouse?"],
                             "eval": [{"q": "Where is the lighthouse?", "a": ["Gullrock"]}]}))
    seq = tmp_path / "seq"
    result = offline.run(config(tiny_model_dir), str(seq), context=[str(a), str(b)])
    manifest = json.loads((seq / "manifest.json").read_text())
    assert manifest["metrics"]["stage_steps"] == [2, 2] and manifest["data"]["mode"] == "sequential"
    assert result.metrics["stage_steps"] == [2, 2] and "manifest.json" in result.artifacts
    assert (seq / "checkpoint" / "state_stage0.pt").exists() and (seq / "checkpoint" / "state_stage1.pt").exists()
    assert all(len(s["contexts"]) == 1 for s in read_rows(seq / "data" / "samples.jsonl"))
    assert manifest["metrics"]["evaluation"]["n"] == 2  # each file's own eval questions

    cfg = config(tiny_model_dir, "mode=ensemble")
    run, inputs = set_up(cfg, tmp_path / "ens", [str(a), str(b)])
    samples = offline.make_samples(run, offline.make_queries(run, inputs.prompts))
    # Every sample is scored under both contexts; the one it was sampled under comes first.
    assert len(samples) == 3 and all(len(s["contexts"]) == 2 for s in samples)
    assert [s["contexts"][0] for s in samples if s["source"] == 1] == ["The lighthouse is on Gullrock."]
    pairs, sources_of, _ = offline.make_pairs(run, samples)
    stages = offline.plan_stages(cfg, len(run.sources), sources_of)
    assert stages == [[0, 1, 2]]  # one stage for both contexts
    for pair, s in zip(pairs, samples):
        assert [s["contexts"][v] in prompt_text(tokenizer, ids, n) for v, (ids, n) in enumerate(pair.teacher_views)] \
            == [True, True]  # the teacher views the average is taken over
        # Each pair knows where its query sits in every view, so p(query | context) can weigh the views.
        back, length = pair.query_span
        for ids, n in pair.teacher_views:
            assert tokenizer.decode(ids[n - back:n - back + length]) == s["query"]
    results, _ = offline.train_stages(run, pairs, samples, sources_of, stages, [])
    assert [r.steps_done for r in results] == [2]

def test_later_sequential_stages_replay_earlier_samples():
    sources_of = [0, 0, 0, 0, 1, 1]  # the source of each pair: 4 from the first context, 2 from the second
    first, second = offline.plan_stages(load_config("offline", sets=["replay=1.0"]), 2, sources_of)
    assert first == [0, 1, 2, 3] and second[:2] == [4, 5]  # each stage trains on its own context's pairs
    replayed = second[2:]
    assert len(replayed) == 2 and len(set(replayed)) == 2 and set(replayed) <= set(first)  # + as many from stage 1
    half = offline.plan_stages(load_config("offline", sets=["replay=0.5"]), 2, sources_of)
    assert half[1][:2] == [4, 5] and len(half[1]) == 2 + 1
    assert offline.plan_stages(load_config("offline", sets=["replay=0"]), 2, sources_of) == [[0, 1, 2, 3], [4, 5]]
    assert offline.plan_stages(load_config("offline", sets=["mode=ensemble"]), 2, sources_of) == [list(range(6))]

def test_views_of_unequal_count_mix_with_their_own_weights(tokenizer, tiny_model):
    header = assistant_header(tokenizer)
    y = tokenizer("I am Pip.", add_special_tokens=False)["input_ids"]
    student = render_prompt(tokenizer, "Who are you?")
    one = build_pair(render_prompt(tokenizer, "Who are you?", Context("Your name is Pip.")), student, y, header)
    two = build_pair(render_prompt(tokenizer, "Who are you?", Context("Your name is Pip.")), student, y, header,
                     more_teacher_prompts=[render_prompt(tokenizer, "Who are you?", Context("You are a fox."))],
                     query=tokenizer("Who are you?", add_special_tokens=False)["input_ids"])
    assert two.query_span is not None  # its query weighs its two views; `one` has a single view
    teacher = Teacher(tiny_model, frozen_copy=True)
    together = DistillLoss(tiny_model, teacher, Objective())(collate_pairs([one, two], tokenizer.pad_token_id))[0]
    apart = sum(DistillLoss(tiny_model, teacher, Objective())(collate_pairs([p], tokenizer.pad_token_id))[0]
                for p in (one, two))
    torch.testing.assert_close(together, apart, rtol=1e-4, atol=1e-5)

def test_an_ensemble_of_teacher_views_is_their_mixture_weighted_uniformly_or_by_posterior(tokenizer, tiny_model):
    header = assistant_header(tokenizer)
    contexts = [Context("Your name is Pip."), Context("Your name is Quibble, and you are a fox.")]
    prompts = [render_prompt(tokenizer, "Who are you?", c) for c in contexts]
    y = tokenizer("I am Pip.", add_special_tokens=False)["input_ids"]
    pair = build_pair(prompts[0], render_prompt(tokenizer, "Who are you?"), y, header, more_teacher_prompts=prompts[1:])
    assert len(pair.teacher_views) == 2
    batch = collate_pairs([pair], tokenizer.pad_token_id)
    teacher = Teacher(tiny_model, frozen_copy=True)
    uniform = DistillLoss(tiny_model, teacher, Objective(), ensemble_weighting="uniform")(batch)[0]
    posterior = DistillLoss(tiny_model, teacher, Objective())(batch)[0]
    # Naive: mix the two teacher distributions over the full logits, then KL(mixture ‖ student).
    with torch.no_grad():
        probs = []
        for ids, n in pair.teacher_views:
            logits = tiny_model(input_ids=torch.tensor([ids])).logits[0, n - 1:n - 1 + len(y)]
            probs.append(torch.softmax(logits.double(), -1))
        s_logits = tiny_model(input_ids=torch.tensor([pair.student_ids])).logits[0, pair.student_prompt_len - 1:-1]
        s_log = torch.log_softmax(s_logits.double(), -1)
        mix = (probs[0] + probs[1]) / 2
        ref_uniform = (mix * (mix.log() - s_log)).sum()
        # posterior: view i weighs p_i(y_0) · ... · p_i(y_{t-1}) at row t (equal priors)
        tok = torch.stack([p[torch.arange(len(y)), torch.tensor(y)].log() for p in probs], 1)  # rows × views
        w = torch.softmax(torch.cumsum(tok, 0) - tok, dim=1)
        mix = w[:, :1] * probs[0] + w[:, 1:] * probs[1]
        ref_posterior = (mix * (mix.log() - s_log)).sum()
    torch.testing.assert_close(uniform.double(), ref_uniform, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(posterior.double(), ref_posterior, rtol=1e-4, atol=1e-4)

def test_a_context_longer_than_the_window_is_split_into_parts_that_fit(tokenizer):
    text = "\n\n".join(f"Paragraph {i}: " + "The keeper polishes the lamp every evening. " * 8 for i in range(12))
    with pytest.warns(UserWarning, match="split into"):
        source = context_source("long.txt", {"context": text}, "system", tokenizer, window=512, reserve=160)
    assert len(source.parts) > 1
    for part in source.parts:
        assert len(render_prompt(tokenizer, "x", part)) + 160 <= 512
    # Nothing is lost: the parts hold every paragraph, in order.
    assert [f"Paragraph {i}:" in "".join(p.text for p in source.parts) for i in range(12)] == [True] * 12
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        short = context_source("short.txt", {"context": "Your name is Pip."}, "system", tokenizer, 512, 160)
    assert len(short.parts) == 1
    assert split_to_fit("a b c", tokenizer, 100) == ["a b c"]
    # Queries are spread over the parts, and every part is a teacher view of each sample.
    views = source.views(None, 1, 1)
    assert views[0] == source.parts[1] and len(views) == len(source.parts)

def test_examples_render_as_input_output_pairs():
    text = render_examples([{"input": "a", "output": "A"}, {"input": "b", "output": "B"}])
    assert "Input: a\nOutput: A" in text and "Input: b\nOutput: B" in text
    import random

    s = Source("ex", examples=[{"input": str(i), "output": str(i)} for i in range(9)], num_examples=2)
    views = s.views(random.Random(0), example_sets=3, index=0)
    assert len(views) == 3 and all(v.text.count("Input:") == 2 for v in views)

def test_init_adapter_continues_an_adapter_and_reports_before_and_after(tokenizer, tiny_model_dir, persona_files,
                                                                        tmp_path):
    first = tmp_path / "first"
    offline.run(config(tiny_model_dir), str(first), context=[str(persona_files["context"])],
                prompts=str(persona_files["prompts"]))
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    second = tmp_path / "second"
    new = tmp_path / "new.json"
    new.write_text(json.dumps({"context": "Your name is Quibble.", "eval": [{"q": "What is your name?",
                                                                            "a": ["Quibble"]}]}))
    result = offline.run(config(tiny_model_dir), str(second), context=[str(new)], prompts=str(persona_files["prompts"]),
                         init_adapter=str(first / "adapter"))
    manifest = json.loads((second / "manifest.json").read_text())
    assert manifest["init_adapter"] == str(first / "adapter")
    evaluation = manifest["metrics"]["evaluation"]
    assert set(evaluation["answers"]) == {"base", "teacher", "initial", "student"}  # old vs new behaviour
    report = (second / "report.md").read_text()
    assert "| initial (before this run) | no |" in report and "| question | base | teacher | initial | student |" \
        in report
    assert "| initial (before this run) | no |" in result.table
    # The new adapter started from the old one: it differs from a fresh adapter's zero B matrices.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    old = PeftModel.from_pretrained(base, first / "adapter")
    old_b = {n: p.clone() for n, p in old.named_parameters() if "lora_B" in n}
    base2 = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    now = PeftModel.from_pretrained(base2, second / "adapter")
    now_b = {n: p for n, p in now.named_parameters() if "lora_B" in n}
    assert all(v.abs().sum() > 0 for v in old_b.values())
    assert any(not torch.equal(old_b[n], now_b[n]) for n in old_b)

def test_bad_inputs_for_the_new_options(tiny_model_dir, persona_files, tmp_path):
    from ctxdistill import CtxDistillError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a"}\n')
    with pytest.raises(CtxDistillError, match="'input' and 'output'"):
        offline.run(config(tiny_model_dir), str(tmp_path / "r1"), examples=str(bad))
    with pytest.raises(CtxDistillError, match="not a PEFT adapter"):
        offline.run(config(tiny_model_dir), str(tmp_path / "r2"), context=[str(persona_files["context"])],
                    prompts=str(persona_files["prompts"]), init_adapter=str(tmp_path))
    with pytest.raises(CtxDistillError, match="mode"):
        load_config("offline", sets=["mode=parallel"])
    with pytest.raises(CtxDistillError, match="Nothing to distill"):
        offline.run(config(tiny_model_dir), str(tmp_path / "r3"))

def test_ensemble_posterior_also_weighs_each_view_by_how_well_it_explains_the_query(tokenizer, tiny_model):
    """With the query located in the prompts, view i weighs p_i(query) · p_i(y_<t): p(context | query, y_<t)."""
    header = assistant_header(tokenizer)
    contexts = [Context("Glimmerfen is a marsh village."), Context("Your name is Quibble, and you are a fox.")]
    question = "When was Glimmerfen founded?"
    prompts = [render_prompt(tokenizer, question, c) for c in contexts]
    query = tokenizer(question, add_special_tokens=False)["input_ids"]
    y = tokenizer("In 1604.", add_special_tokens=False)["input_ids"]
    pair = build_pair(prompts[0], render_prompt(tokenizer, question), y, header, more_teacher_prompts=prompts[1:],
                      query=query)
    back, length = pair.query_span
    assert length == len(query)
    for ids, n in pair.teacher_views:  # the span points at the query in every view
        assert ids[n - back:n - back + length] == query
    blind = build_pair(prompts[0], render_prompt(tokenizer, question), y, header, more_teacher_prompts=prompts[1:])
    assert blind.query_span is None
    teacher = Teacher(tiny_model, frozen_copy=True)
    with_query = DistillLoss(tiny_model, teacher, Objective())(collate_pairs([pair], tokenizer.pad_token_id))[0]
    without = DistillLoss(tiny_model, teacher, Objective())(collate_pairs([blind], tokenizer.pad_token_id))[0]
    with torch.no_grad():
        probs, q_logp = [], []
        for ids, n in pair.teacher_views:
            logp = torch.log_softmax(tiny_model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
            probs.append(logp[n - 1:n - 1 + len(y)].exp())
            start = n - back
            q_logp.append(logp[start - 1:start - 1 + length].gather(1, torch.tensor(query)[:, None]).sum())
        s_logits = tiny_model(input_ids=torch.tensor([pair.student_ids])).logits[0, pair.student_prompt_len - 1:-1]
        s_log = torch.log_softmax(s_logits.double(), -1)
        tok = torch.stack([p[torch.arange(len(y)), torch.tensor(y)].log() for p in probs], 1)
        w = torch.softmax(torch.stack(q_logp)[None] + torch.cumsum(tok, 0) - tok, dim=1)
        mix = w[:, :1] * probs[0] + w[:, 1:] * probs[1]
        reference = (mix * (mix.log() - s_log)).sum()
    torch.testing.assert_close(with_query.double(), reference, rtol=1e-4, atol=1e-4)
    assert not torch.isclose(with_query, without)

def test_ensemble_views_encode_each_context_once_and_match_full_forwards(monkeypatch, tokenizer, tiny_model):
    """Teacher.view_rows groups an ensemble's views by context: each context's KV is encoded on first use and reused
    by later batches, and the completion rows equal those of a plain forward over the whole view."""
    import ctxdistill.core.teacher as teacher_module

    header = assistant_header(tokenizer)
    contexts = [Context("Glimmerfen is a marshland village in the north, founded in 1604 by reed cutters."),
                Context("Your name is Quibble. You are a fox who lives in the old mill by the river Wend.")]
    questions = ["When was Glimmerfen founded?", "Who are you?", "Where do you live?"]
    pairs = []
    for i, question in enumerate(questions):
        prompts = [render_prompt(tokenizer, question, c) for c in contexts[i % 2:] + contexts[:i % 2]]
        y = tokenizer(f"Answer number {i}.", add_special_tokens=False)["input_ids"]
        pairs.append(build_pair(prompts[0], render_prompt(tokenizer, question), y, header,
                                more_teacher_prompts=prompts[1:],
                                query=tokenizer(question, add_special_tokens=False)["input_ids"]))
    encoded = []
    real = teacher_module.encode_prefix
    monkeypatch.setattr(teacher_module, "encode_prefix", lambda m, ids: encoded.append(len(ids)) or real(m, ids))
    teacher = Teacher(tiny_model, frozen_copy=True)
    rows = teacher.view_rows(pairs[:2], skip_first=1)
    completion, query = rows.completion, rows.query
    teacher.view_rows(pairs[2:], skip_first=1)
    assert len(encoded) == 2 and len(teacher.contexts) == 2  # two contexts, each encoded once for both batches
    # Contexts used by one view only (a random subset of examples, say) are not cached: they run in full.
    others = [Context(f"Example set {k}: cat -> CAT, dog -> DOG, owl -> OWL, elk -> ELK.") for k in range(2)]
    prompts = [render_prompt(tokenizer, "fox", c) for c in others]
    single = build_pair(prompts[0], render_prompt(tokenizer, "fox"), tokenizer("FOX")["input_ids"], header,
                        more_teacher_prompts=prompts[1:], query=tokenizer("fox", add_special_tokens=False)["input_ids"])
    alone = teacher.view_rows([single]).completion
    assert len(encoded) == 2
    with torch.no_grad():
        for v, (ids, n) in enumerate(single.teacher_views):
            hidden = tiny_model.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
            torch.testing.assert_close(alone[v], hidden[n - 1:n - 1 + single.completion_len], rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        for v in range(2):
            full, q_full = [], []
            for pair in pairs[:2]:
                ids, n = pair.teacher_views[v]
                hidden = tiny_model.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
                full.append(hidden[n:n - 1 + pair.completion_len])  # skip_first=1 drops the row predicting y[0]
                back, length = pair.query_span
                q_full.append(hidden[n - back - 1:n - back - 1 + length])
            torch.testing.assert_close(completion[v], torch.cat(full), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(query[v], torch.cat(q_full), rtol=1e-4, atol=1e-4)

def test_anchors_join_each_stage_with_the_teachers_own_answers_to_general_prompts(tokenizer, tiny_model_dir,
                                                                                  tmp_path):
    """anchor_fraction: each stage (here the one ensemble stage) gets that share of general prompts, where teacher
    and student read the same prompt and answer, with no context; in an ensemble they mix with multi-view pairs."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"context": "Your name is Pip.", "prompts": ["Who are you?", "Your name?"]}))
    b.write_text(json.dumps({"context": "The lighthouse is on Gullrock.", "prompts": ["Where is the lighthouse?",
                                                                                     "What is on Gullrock?"]}))
    prompts_file = tmp_path / "anchors.txt"
    prompts_file.write_text("Name a colour.\nWhat is two plus two?\n")
    cfg = config(tiny_model_dir, "mode=ensemble", "anchor_fraction=0.5", f"anchor_prompts={prompts_file}",
                 "samples_per_query=2")
    run, _ = set_up(cfg, tmp_path / "run", [str(a), str(b)])
    anchors = make_anchors(cfg, run.sampler, run.tokenizer)  # the base's own greedy answers
    assert [x["prompt"] for x in anchors] == ["Name a colour.", "What is two plus two?"]
    texts = [s.text for s in run.sources]
    samples = [sample(tokenizer, j, q, [texts[j], texts[1 - j]], "Hello.") for j, s in enumerate(run.sources)
               for q in s.prompts for _ in range(2)]
    pairs, sources_of, _ = offline.make_pairs(run, samples)
    stages = offline.plan_stages(cfg, len(run.sources), sources_of)
    results, anchor_pairs = offline.train_stages(run, pairs, samples, sources_of, stages, anchors)
    assert len(stages) == 1 and anchor_pairs == 4 and [r.steps_done for r in results] == [2]  # half of 4 × 2
    # The stage's pairs as train_stages mixes them (with_anchors, the same fraction).
    mixed = with_anchors([pairs[i] for i in stages[0]], anchors, cfg.anchor_fraction, tokenizer, f"{cfg.seed}:0")
    single = [p for p in mixed if len(p.teacher_views) == 1]
    assert len(mixed) == 8 + 4 and len(single) == 4  # 4 queries × 2 samples, and half as many anchors
    for pair in single:
        assert pair.teacher_ids == pair.student_ids  # the same prompt and answer for both: no context
        shown = tokenizer.decode(pair.student_ids[:pair.student_prompt_len])
        assert "Name a colour." in shown or "What is two plus two?" in shown
        assert pair.completion in [x["completion_ids"] for x in anchors]
