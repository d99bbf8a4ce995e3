"""Knowledge modules: chunking, synthetic data (and its cache), the pairs each objective trains on, raw-text windows,
BM25 retrieval, the recipe's steps (modules, their questions, their time), combining modules, and the recipe,
library and eval from the command line on a tiny model."""

import json

import pytest
import torch
from conftest import run_cli, tiny_llama

from ctxdistill import CtxDistillError
from ctxdistill.core.losses import collate_pairs
from ctxdistill.core.pairs import render_prompt
from ctxdistill.data.chunks import Chunk, chunk_document, chunk_spans
from ctxdistill.data.retrieval import ChunkIndex
from ctxdistill.data.synthetic import SynthSettings, clean_question, synthesize
from ctxdistill.recipes.knowledge import (
    NO_QUESTIONS,
    module_deadline,
    module_name,
    own_questions,
    plan_modules,
    raw_pairs,
    run,
    synthetic_pairs,
)

MILL = "Harrow Mill grinds oats. It stands on the river Tam. Its miller is Ona Pell, who bought it in 1911."
BAY = "Glimmer Bay is a fishing town on the coast of Norland. The harbour holds 40 boats. The mayor is Bram Voss."


def test_chunks_cover_the_document_with_the_given_overlap(tokenizer):
    assert chunk_spans(5, 8, 2) == [(0, 5)]  # shorter than a chunk: one chunk
    spans = chunk_spans(20, 8, 2)
    assert spans == [(0, 8), (6, 14), (12, 20)]
    assert all(a[1] - b[0] == 2 for a, b in zip(spans, spans[1:]))
    text = " ".join([MILL, BAY] * 3)
    chunks = chunk_document(tokenizer, "d", text, chunk_tokens=24, overlap=4)
    assert len(chunks) > 2 and [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.text in text for c in chunks)  # cut from the original string, not re-decoded
    assert chunks[0].text.startswith("Harrow Mill") and text.rstrip().endswith(chunks[-1].text)
    with pytest.raises(CtxDistillError, match="smaller than chunk_tokens"):
        chunk_spans(20, 8, 8)


@pytest.mark.parametrize("sample, question", [
    ("Question: Who bought the mill?\n\nAnswer: Ona Pell", "Who bought the mill?"),
    ("1. What river is the mill on? It is the Tam.", "What river is the mill on?"),
    ("What does the mill grind?\nA: oats", "What does the mill grind?"),
    ("Here is a summary of the document.", ""),  # no question
    ("Why?", ""),  # too short to be about anything
])
def test_questions_are_cut_out_of_what_the_model_writes(sample, question):
    assert clean_question(sample) == question


def test_synthetic_data_is_generated_once_per_chunk_and_then_read_from_the_cache(tokenizer, tmp_path, monkeypatch):
    model = tiny_llama(tokenizer)
    chunks = [Chunk("mill", 0, MILL), Chunk("bay", 0, BAY)]
    settings = SynthSettings(("Summarize the document above.",), 3, "Ask a question about the document above.", 4,
                             1, 1.0, 6, seed=0)
    rows = synthesize(model, tokenizer, chunks, settings, tmp_path, "tiny")
    assert rows and {r["chunk"] for r in rows} == {"mill#0", "bay#0"}
    assert all(r["kind"] in ("summary", "qa") and r["completion_ids"] for r in rows)
    summaries = [(r["chunk"], r["text"]) for r in rows if r["kind"] == "summary"]
    assert len(summaries) == len(set(summaries))  # deduplicated
    assert len(list(tmp_path.glob("*.json"))) == 2  # one cache file per chunk

    import ctxdistill.data.synthetic as synthetic

    def must_not_generate(*a, **k):
        raise AssertionError("the cache should have served this chunk")

    monkeypatch.setattr(synthetic, "synthesize_chunk", must_not_generate)
    assert synthesize(model, tokenizer, chunks, settings, tmp_path, "tiny") == rows
    with pytest.raises(AssertionError, match="cache"):  # other inputs (another chunk text) are generated again
        synthesize(model, tokenizer, [Chunk("mill", 0, MILL + " More.")], settings, tmp_path, "tiny")


def test_dcd_pairs_show_the_chunk_to_the_teacher_only_and_ntp_pairs_to_no_one(tokenizer):
    chunks = {"mill#0": Chunk("mill", 0, MILL)}
    answer = tokenizer("Ona Pell bought it.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    rows = [{"chunk": "mill#0", "kind": "qa", "prompt": "Who bought the mill?", "completion_ids": answer}]
    (dcd,) = synthetic_pairs(tokenizer, rows, chunks, 1024, teacher=True)
    teacher_text = tokenizer.decode(dcd.teacher_ids[:dcd.teacher_prompt_len])
    student_text = tokenizer.decode(dcd.student_ids[:dcd.student_prompt_len])
    assert MILL in teacher_text and "Who bought the mill?" in teacher_text
    assert "Harrow" not in student_text and dcd.student_ids[:dcd.student_prompt_len] == \
        render_prompt(tokenizer, "Who bought the mill?")  # the student sees the question as a user would ask it
    assert dcd.completion == answer  # and both learn the same answer ids
    batch = collate_pairs([dcd], tokenizer.pad_token_id)
    assert batch.teacher_ids[batch.teacher_rows][0] == batch.student_ids[batch.student_rows][0]
    (ntp,) = synthetic_pairs(tokenizer, rows, chunks, 1024, teacher=False)
    assert ntp.teacher_ids == ntp.student_ids and "Harrow" not in tokenizer.decode(ntp.student_ids)


def test_a_summary_is_plain_text_to_the_student_and_follows_the_chunk_for_the_teacher(tokenizer):
    chunks = {"mill#0": Chunk("mill", 0, MILL)}
    summary = tokenizer("Harrow Mill on the Tam is owned by Ona Pell.", add_special_tokens=False)["input_ids"]
    rows = [{"chunk": "mill#0", "kind": "summary", "prompt": "Summarize the document above.",
             "completion_ids": summary + [tokenizer.eos_token_id]}]
    (pair,) = synthetic_pairs(tokenizer, rows, chunks, 1024, teacher=True)
    assert pair.student_ids == summary and pair.student_prompt_len == 1  # no template, no instruction, no end token
    assert MILL in tokenizer.decode(pair.teacher_ids[:pair.teacher_prompt_len])
    assert pair.completion == summary[1:]
    (with_prompt,) = synthetic_pairs(tokenizer, rows, chunks, 1024, teacher=True, summary_view="prompt")
    assert with_prompt.student_ids[:with_prompt.student_prompt_len] == \
        render_prompt(tokenizer, "Summarize the document above.")


def test_anchor_pairs_hold_the_module_to_the_base_on_general_prompts(tokenizer):
    from ctxdistill.config import load_config
    from ctxdistill.data.anchors import anchor_pair, make_anchors

    anchors = make_anchors(load_config("knowledge", sets=["max_new_tokens=8"]), tiny_llama(tokenizer), tokenizer)
    assert len(anchors) >= 20 and all(a["completion_ids"] for a in anchors)  # the bundled general prompts
    pair = anchor_pair(tokenizer, anchors[0])
    assert pair.teacher_ids == pair.student_ids  # no chunk: the teacher is simply the base (adapter off)
    assert pair.completion == anchors[0]["completion_ids"]


def test_raw_windows_give_the_student_the_last_quarter_and_score_it_against_the_whole_window():
    ids = list(range(100, 200))  # 100 tokens
    pairs = raw_pairs(ids, window=40, loss_fraction=0.25)
    for p in pairs:
        assert len(p.teacher_ids) <= 40 and p.teacher_ids[-len(p.student_ids):] == p.student_ids
        assert p.student_prompt_len == 1 and p.completion_len <= 10  # one prompt token, then the scored span
        assert p.teacher_prompt_len == len(p.teacher_ids) - p.completion_len  # the teacher saw everything before
    # the spans tile the text: every token after the first span is scored exactly once
    scored = [t for p in pairs for t in p.completion]
    assert len(scored) == len(set(scored)) and set(scored) == set(ids[11:])


def test_bm25_finds_the_chunk_that_answers_even_among_two_documents():
    index = ChunkIndex([Chunk("mill", 0, MILL), Chunk("bay", 0, BAY)])
    assert index.search("Who is the miller of Harrow Mill?")[0].doc_id == "mill"
    assert index.search("How many boats does the harbour hold?")[0].doc_id == "bay"
    assert [c.doc_id for c in index.search("mayor", k=2)] == ["bay", "mill"]


def test_a_module_per_document_goes_under_modules_and_the_corpus_module_is_the_adapter(tmp_path):
    from ctxdistill.data.documents import Document

    docs = [Document("mill", MILL), Document("Glimmer Bay", BAY)]
    per_doc = plan_modules(docs, tmp_path, per_document=True)
    bay = module_name("Glimmer Bay")  # not a plain file name: a slug and a hash of the id
    assert bay.startswith("Glimmer_Bay-")
    assert [(m.name, m.group) for m in per_doc] == [("mill", docs[:1]), (bay, docs[1:])]
    assert [m.target for m in per_doc] == [tmp_path / "modules" / "mill", tmp_path / "modules" / bay]
    (corpus,) = plan_modules(docs, tmp_path, per_document=False)
    assert corpus.name == "corpus" and corpus.group == docs and corpus.target == tmp_path / "adapter"


def test_a_document_module_answers_its_own_questions_and_those_retrieval_routes_to_it():
    from ctxdistill.eval.knowledge_eval import question_set

    items = [("mill", {"q": "Who is the miller?", "a": ["Ona Pell"]}),
             ("bay", {"q": "How many boats?", "a": ["40"]}),
             (None, {"q": "Who is the mayor of Glimmer Bay?", "a": ["Bram Voss"]})]  # names no document
    chunks = [Chunk("mill", 0, MILL), Chunk("bay", 0, BAY)]
    qs = question_set(items, {"mill": MILL, "bay": BAY}, chunks)
    assert own_questions(items, qs, "mill") == [0]
    assert own_questions(items, qs, "bay") == [1, 2]  # BM25 ranks the bay chunk first for the mayor
    assert own_questions(items, qs, None) == [0, 1, 2]  # the corpus module answers everything


def test_modules_share_the_time_left_equally_and_evaluation_time_is_given_back(tmp_path):
    import time

    from ctxdistill.config import load_config

    cfg = load_config("knowledge", max_minutes=1.0)
    now = time.time()
    deadline = module_deadline(cfg, now, eval_seconds=30.0, modules_left=2)
    assert deadline == pytest.approx(now + (60 + 30) / 2, abs=1.0)  # half of the 60 s budget + 30 s evaluated
    assert module_deadline(cfg, now, 0.0, 1) == pytest.approx(now + 60, abs=1.0)  # the last module: all that is left
    assert module_deadline(load_config("knowledge"), now, 30.0, 2) is None  # no budget, no deadline


def test_run_without_questions_returns_its_artifacts_and_says_how_to_get_a_table(tiny_model_dir, tmp_path):
    from ctxdistill.config import KnowledgeConfig, load_config
    from ctxdistill.recipes.knowledge import RECIPES

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in (("mill", MILL), ("bay", BAY))))
    cfg = load_config("knowledge", sets=[*TINY_KM[1::2], "model=" + str(tiny_model_dir)], knowledge_objective="ntp-doc")
    (recipe,) = RECIPES
    assert (recipe.name, recipe.config, recipe.run) == ("knowledge", KnowledgeConfig, run)
    assert recipe.inputs == ("docs", "qa", "retention", "per_document")
    result = run(cfg, str(tmp_path / "out"), docs=str(docs), per_document=True)
    assert result.artifacts == ["modules", "manifest.json", "report.md"]
    assert all((result.out / a).exists() for a in result.artifacts)
    assert result.table == "" and result.no_table == NO_QUESTIONS
    assert NO_QUESTIONS in (result.out / "report.md").read_text()
    assert [m["name"] for m in result.metrics["modules"]] == ["mill", "bay"] and "knowledge" not in result.metrics
    manifest = json.loads((result.out / "manifest.json").read_text())
    assert manifest["objective"] == "ntp-doc" and manifest["config"] == cfg.to_dict()
    with pytest.raises(CtxDistillError, match="pass --docs"):
        run(cfg, str(tmp_path / "none"))


def _random_adapter(model, path, seed):
    from ctxdistill.core.models import add_lora

    torch.manual_seed(seed)
    peft_model = add_lora(model, r=4, alpha=8)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)
    peft_model.save_pretrained(path)
    return peft_model.unload()


def test_combined_modules_equal_the_sum_of_their_deltas_and_load_with_plain_peft(tokenizer, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ctxdistill.recipes.module_library import combine, load_adapters

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base = _random_adapter(base, tmp_path / "a", 1)
    _random_adapter(base, tmp_path / "b", 2)
    x = torch.tensor([render_prompt(tokenizer, "Who bought the mill?")])

    def logits(model):
        with torch.no_grad():
            return model(input_ids=x).logits

    both = logits(load_adapters(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                [str(tmp_path / "a"), str(tmp_path / "b")]))
    one = logits(load_adapters(AutoModelForCausalLM.from_pretrained(tiny_model_dir), [str(tmp_path / "a")]))
    assert not torch.allclose(both, one, atol=1e-3)  # the second module changes the output
    for how, rank in (("cat", None), ("sum", 8)):
        out = combine([str(tmp_path / "a"), str(tmp_path / "b")], tmp_path / how, how=how, rank=rank,
                      model=str(tiny_model_dir))
        plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
        assert torch.allclose(logits(plain), both, atol=1e-4), how  # rank 8 holds two rank-4 deltas exactly
        assert json.loads((out / "module.json").read_text())["sources"] == [str(tmp_path / "a"), str(tmp_path / "b")]
    half = combine([str(tmp_path / "a"), str(tmp_path / "b")], tmp_path / "half", weights=[1.0, 0.0],
                   model=str(tiny_model_dir))
    assert torch.allclose(logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                                           half)), one, atol=1e-4)
    with pytest.raises(CtxDistillError, match="one weight per module"):
        combine([str(tmp_path / "a"), str(tmp_path / "b")], tmp_path / "x", weights=[1.0], model=str(tiny_model_dir))
    with pytest.raises(CtxDistillError, match="not a module"):
        combine([str(tmp_path / "a"), str(tmp_path)], tmp_path / "y", model=str(tiny_model_dir))


@pytest.fixture
def km_docs(tmp_path):
    docs = [{"id": "mill", "text": MILL, "qa": [{"q": "Who is the miller of Harrow Mill?", "a": ["Ona Pell"]}]},
            {"id": "bay", "text": BAY, "qa": [{"q": "Who is the mayor of Glimmer Bay?", "a": ["Bram Voss"]}]}]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


TINY_KM = ["--set", "epochs=1", "--set", "summaries_per_prompt=2", "--set", "questions_per_chunk=2",
           "--set", "max_new_tokens=8", "--set", "eval_max_new_tokens=4", "--set", "batch_size=4",
           "--set", "micro_batch_size=4"]


def test_knowledge_recipe_library_and_eval_from_the_command_line(tiny_model_dir, km_docs, tmp_path):
    env = {"CTXDISTILL_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "km"
    done = run_cli("distill", "knowledge", "--model", str(tiny_model_dir), "--docs", str(km_docs), "--out", str(out),
                   *TINY_KM, env_extra=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| module, closed-book |" in done.stdout and "| base + retrieved chunks (BM25) |" in done.stdout
    module = json.loads((out / "adapter" / "module.json").read_text())
    assert module["recipe"] == "knowledge" and module["objective"] == "dcd"
    assert [d["id"] for d in module["documents"]] == ["mill", "bay"] and len(module["documents"][0]["sha256"]) == 64
    assert module["config"]["lora_r"] == 16 and module["config"]["hidden_weight"] == 1.0  # the paper's start
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["synthetic_rows"] > 0 and manifest["metrics"]["knowledge"]["n"] == 2
    assert set(manifest["metrics"]["knowledge"]["accuracy"]) == {"closed_book", "open_book", "retrieval", "module",
                                                                 "module_retrieval"}
    assert (out / "report.png").exists() and "## Answers" in (out / "report.md").read_text()
    assert list((tmp_path / "cache" / "synthetic").glob("*.json"))  # the data is cached for the next run
    assert (out / "data" / "anchors.jsonl").exists()  # dcd holds the module to the base on general prompts

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / "adapter")

    # One module per document, and a next-token baseline.
    per_doc = tmp_path / "per-doc"
    done = run_cli("distill", "knowledge", "--model", str(tiny_model_dir), "--docs", str(km_docs), "--out",
                   str(per_doc), "--per-document", "--objective", "ntp-doc", *TINY_KM, env_extra=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.name for p in (per_doc / "modules").iterdir()} == {"mill", "bay"}
    bay = json.loads((per_doc / "modules" / "bay" / "module.json").read_text())
    assert bay["objective"] == "ntp-doc" and [d["id"] for d in bay["documents"]] == ["bay"]
    assert bay["metrics"]["questions"] == 1  # each module answers its own document's questions

    listed = run_cli("modules", "list", str(tmp_path))
    assert listed.returncode == 0 and "knowledge / dcd" in listed.stdout and "knowledge / ntp-doc" in listed.stdout
    shown = run_cli("modules", "show", str(per_doc / "modules" / "mill"))
    assert shown.returncode == 0 and json.loads(shown.stdout)["documents"][0]["id"] == "mill"
    done = run_cli("modules", "combine", str(per_doc / "modules" / "mill"), str(per_doc / "modules" / "bay"),
                   "--out", str(tmp_path / "both"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert [d["id"] for d in json.loads((tmp_path / "both" / "module.json").read_text())["documents"]] == \
        ["mill", "bay"]

    done = run_cli("eval", "--docs", str(km_docs), "--adapter", str(per_doc / "modules" / "mill"), "--adapter",
                   str(per_doc / "modules" / "bay"), "--max-new-tokens", "4", "--out", str(tmp_path / "ev"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| module + retrieved chunks |" in done.stdout and (tmp_path / "ev" / "report.png").exists()
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["n"] == 2
    said = run_cli("chat", "--adapter", str(per_doc / "modules" / "mill"), "--adapter", str(tmp_path / "both"),
                   "--prompt", "Who is the miller?", "--max-new-tokens", "3")
    assert said.returncode == 0, said.stderr[-2000:]

    # Resuming a finished run trains nothing again.
    again = run_cli("distill", "knowledge", "--model", str(tiny_model_dir), "--docs", str(km_docs), "--out",
                    str(out), "--resume", *TINY_KM, env_extra=env)
    assert again.returncode == 0 and "already trained" in again.stdout + again.stderr, again.stderr[-2000:]


def test_knowledge_refuses_bad_settings_with_the_fix(tiny_model_dir, km_docs, tmp_path):
    base = ["distill", "knowledge", "--model", str(tiny_model_dir), "--docs", str(km_docs)]
    done = run_cli(*base, "--out", str(tmp_path / "a"), "--set", "finetune=full")
    assert done.returncode == 2 and "finetune=lora" in done.stderr
    done = run_cli(*base, "--out", str(tmp_path / "b"), "--set", "chunk_overlap=600")
    assert done.returncode == 2 and "chunk_overlap" in done.stderr
    done = run_cli("distill", "disc", "--docs", str(km_docs), "--objective", "ntp-doc", "--out", str(tmp_path / "c"))
    assert done.returncode == 2 and "knowledge recipe" in done.stderr
    done = run_cli("eval", "--docs", str(km_docs), "--context", str(km_docs), "--adapter", str(tmp_path))
    assert done.returncode == 2 and "one of the two" in done.stderr
    done = run_cli("modules", "show", str(tmp_path))
    assert done.returncode == 2 and "not a module" in done.stderr
