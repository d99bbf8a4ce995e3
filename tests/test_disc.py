"""DiSC and its baselines: sentence splitting, (prefix, suffix) splits and their alignment, documents in, short
documents, the steps of the stream loop, and the recipes end to end on a tiny model (LoRA and full fine-tuning,
stream mode, compare)."""

import json
import random
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from ctxdistill import CtxDistillError
from ctxdistill.config import load_config
from ctxdistill.core.losses import collate_pairs
from ctxdistill.data.documents import read_documents
from ctxdistill.data.splits import split_pair, split_points, split_sentences, tokenize_document, whole_text_pairs
from ctxdistill.recipes import baselines, disc
from ctxdistill.recipes.doc_stream import choose_documents, make_learner, read_inputs, set_up, stream_manifest

RECIPES = {r.name: r for r in disc.RECIPES + baselines.RECIPES}

DOC = ("Glimmer Bay is a fishing town on the coast of Norland. It was founded in 1702 by Dr. Ada Voss. "
       "The harbour holds 40 boats. Each spring the town hosts the Eel Race. The mayor is Bram Voss, the founder's "
       "heir.")


def sentences(text):
    return [text[a:b] for a, b in split_sentences(text)]


def test_sentences_respect_abbreviations_initials_numbers_and_quotes():
    text = ('Dr. Smith met Mrs. Jones at 3.5 p.m. on Monday. "Is it done?" she asked. J. R. R. Tolkien wrote it. '
            "It cost $3.50, i.e. cheap. The U.S. is big!\n\nA new paragraph starts here. Last one")
    assert sentences(text) == ["Dr. Smith met Mrs. Jones at 3.5 p.m. on Monday.", '"Is it done?" she asked.',
                               "J. R. R. Tolkien wrote it.", "It cost $3.50, i.e. cheap.", "The U.S. is big!",
                               "A new paragraph starts here.", "Last one"]


def test_sentences_split_before_numbers_and_keep_lowercase_continuations():
    assert sentences("It was 1999. 2000 came next. see you... Later on.") == [
        "It was 1999.", "2000 came next. see you...", "Later on."]
    assert sentences("No boundary here") == ["No boundary here"]
    assert sentences("   ") == []


def test_boundaries_fall_on_sentence_starts_in_token_space(tokenizer):
    doc = tokenize_document(tokenizer, "d", DOC)
    assert len(doc.boundaries) == 4  # five sentences
    for b in doc.boundaries:
        assert tokenizer.decode(doc.ids[:b]).rstrip().endswith(".")
    assert tokenizer.decode(doc.ids[doc.boundaries[-1]:]).strip().startswith("The mayor")


def test_strategies_choose_where_the_suffix_starts(tokenizer):
    doc = tokenize_document(tokenizer, "d", DOC)
    rng = random.Random(0)
    chosen = split_points(doc, "random", 3, rng)
    assert len(chosen) == 3 and doc.boundaries[-1] in chosen and set(chosen) <= set(doc.boundaries)
    assert len(set(split_points(doc, "random", 99, rng))) == 4  # never more than the document has
    middle = split_points(doc, "middle", 3, rng)
    assert middle == [min(doc.boundaries, key=lambda b: abs(b - len(doc.ids) / 2))]
    assert split_points(doc, "uniform", 2, rng) == [doc.boundaries[0], doc.boundaries[-1]]
    tokens = split_points(doc, "token", 5, rng)
    assert len(tokens) == 5 and all(1 <= t <= len(doc.ids) - 2 for t in tokens)
    with pytest.raises(CtxDistillError, match="split_strategy"):
        split_points(doc, "paragraph", 2, rng)


def test_split_pair_aligns_teacher_and_student_on_the_suffix_skipping_its_first_token(tokenizer):
    """The teacher reads prefix + suffix, the student the suffix alone; both score the same suffix tokens from the
    second one on, and each scored position predicts the same next token in both views."""
    doc = tokenize_document(tokenizer, "d", DOC)
    at = doc.boundaries[1]
    pair = split_pair(doc.ids, at, window=1024)
    suffix = doc.ids[at:]
    assert pair.teacher_ids == doc.ids and pair.student_ids == suffix
    assert pair.completion == suffix[1:]  # the first suffix token is the student's whole prompt: never scored
    batch = collate_pairs([pair], tokenizer.pad_token_id)
    (tb, tpos), (sb, spos) = batch.teacher_rows, batch.student_rows
    assert len(tpos) == len(spos) == len(suffix) - 1
    assert torch.equal(batch.teacher_ids[tb, tpos + 1], batch.student_ids[sb, spos + 1])  # same next tokens
    assert torch.equal(batch.teacher_ids[tb, tpos + 1], batch.labels)
    assert (tpos - spos).unique().tolist() == [at]  # the teacher's rows are the student's, shifted by the prefix
    assert "founded in 1702" in tokenizer.decode(pair.teacher_ids[:pair.teacher_prompt_len])
    assert "1702" not in tokenizer.decode(pair.student_ids)


def test_split_pair_fits_the_window_by_dropping_the_oldest_prefix_tokens():
    ids = list(range(100, 200))
    pair = split_pair(ids, at=80, window=32, max_suffix=10)
    assert pair.student_ids == ids[80:90] and len(pair.teacher_ids) == 32
    assert pair.teacher_ids == ids[58:90]
    assert split_pair(ids, at=10, window=32).student_ids == ids[10:26]  # suffix capped at half the window


def test_splits_of_one_document_share_one_teacher_row(tokenizer):
    doc = tokenize_document(tokenizer, "d", DOC)
    pairs = [split_pair(doc.ids, b, 1024) for b in doc.boundaries]
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    assert batch.teacher_ids.shape[0] == 1 and batch.student_ids.shape[0] == 4
    assert batch.teacher_rows[0].unique().tolist() == [0]


def test_whole_text_windows_predict_every_token_but_the_first():
    ids = list(range(50))
    pairs = whole_text_pairs(ids, window=20)
    predicted = [t for p in pairs for t in p.completion]
    assert predicted == ids[1:] and all(p.teacher_ids == p.student_ids for p in pairs)


def test_documents_from_jsonl_json_folder_and_text(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"id": "a", "text": "One. Two."}) + "\n" +
                                      json.dumps({"text": "Three."}) + "\n")
    assert [(d.id, d.text) for d in read_documents(tmp_path / "d.jsonl")] == [("a", "One. Two."), ("doc2", "Three.")]
    qa = [{"q": "Which?", "a": ["One"]}]
    (tmp_path / "d.json").write_text(json.dumps({"docs": [{"id": "x", "text": "One.", "qa": qa}]}))
    assert read_documents(tmp_path / "d.json")[0].qa == qa
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "b.md").write_text("Bee.")
    (folder / "a.txt").write_text("Ay.")
    (folder / "skip.pdf").write_text("%PDF")
    assert [d.id for d in read_documents(folder)] == ["a", "b"]
    assert read_documents(folder / "a.txt")[0].text == "Ay."


@pytest.mark.parametrize("content, message", [
    ('{"docs": [{"id": "a", "text": ""}]}', "empty 'text'"),
    ('{"docs": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}', "unique"),
    ('{"docs": [{"id": "a"}]}', "string 'text'"),
    ('{"docs": [{"text": "x", "qa": [{"q": "?"}]}]}', "'qa'"),
    ('{"documents": 3}', "list of documents"),
])
def test_bad_documents_are_refused_with_the_fix(tmp_path, content, message):
    (tmp_path / "d.json").write_text(content)
    with pytest.raises(CtxDistillError, match=message):
        read_documents(tmp_path / "d.json")
    with pytest.raises(CtxDistillError, match="not found"):
        read_documents(tmp_path / "missing.jsonl")


@pytest.fixture(scope="module")
def docs_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs")
    docs = [{"id": "bay", "text": DOC, "qa": [{"q": "Who founded Glimmer Bay?", "a": ["Ada Voss"]}]},
            {"id": "stub", "text": "Too short to split."},
            {"id": "mill", "text": "Harrow Mill grinds oats. It stands on the river Tam. Its miller is Ona Pell."}]
    (d / "docs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in docs))
    return d / "docs.jsonl"


TINY = {"epochs": 2, "eval_max_new_tokens": 4}


def tiny_config(recipe: str, model_dir, **sets):
    return load_config(recipe, sets=[f"{k}={v}" for k, v in {**TINY, **sets}.items()], model=str(model_dir))


def test_disc_default_is_the_hybrid_and_the_paper_preset_is_its_kl_alone_on_lora():
    default = load_config("disc")
    assert default.objective_terms() == {"forward_kl": 0.25, "sft": 1.0} and default.finetune == "full"
    preset = Path(__file__).resolve().parent.parent / "configs" / "presets" / "disc-paper.yaml"
    paper = load_config("disc", str(preset))
    assert paper.objective_terms() == {"forward_kl": 1.0} and paper.finetune == "lora" and paper.lr == 1e-3


def test_disc_streams_documents_skips_short_ones_and_writes_a_curve(tiny_model_dir, docs_file, tmp_path):
    out = tmp_path / "disc"
    cfg = tiny_config("disc", tiny_model_dir, splits_per_doc=2, finetune="lora", objective="forward_kl", lr=1e-3)
    with pytest.warns(UserWarning, match="too short to split.*stub"):
        result = RECIPES["disc"].run(cfg, str(out), docs=str(docs_file), stream=True)
    assert result.artifacts == ["adapter", "manifest.json", "curve.jsonl", "report.md"]
    assert all((out / name).exists() for name in result.artifacts)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"] == "disc" and manifest["skipped_documents"] == ["stub"]
    curve = manifest["metrics"]["curve"]
    assert [p["docs_seen"] for p in curve] == [0, 1, 2]
    assert [p["steps"] for p in curve] == [0, 2, 4]  # one optimizer step per document per epoch
    assert curve[1]["questions"] == 1 and curve[0]["kl_to_initial"] == 0.0 and curve[2]["kl_to_initial"] > 0
    assert manifest["config"]["temperature"] == 2.0 and manifest["config"]["t2_scaling"] is True
    assert (out / "report.png").exists() and "| disc | 2 | 4 |" in (out / "report.md").read_text()
    assert "| disc | 2 | 4 |" in result.table and result.metrics["curve"] == curve
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / "adapter")
    assert any("lora_A" in n for n, _ in model.named_parameters())

    # Resuming a finished run re-does nothing and keeps the curve.
    with pytest.warns(UserWarning, match="too short"):
        RECIPES["disc"].run(cfg, str(out), resume=True, docs=str(docs_file), stream=True)
    assert json.loads((out / "manifest.json").read_text())["metrics"]["curve"] == curve


def test_full_finetuning_baselines_save_a_transformers_model_and_compare(tiny_model_dir, docs_file, tmp_path):
    runs = []
    for recipe in ("finetune-kl", "lora-finetune"):
        out = tmp_path / recipe
        result = RECIPES[recipe].run(tiny_config(recipe, tiny_model_dir), str(out), docs=str(docs_file))
        assert result.artifacts[0] == ("model" if recipe == "finetune-kl" else "adapter")
        assert "objective" not in json.loads((out / "manifest.json").read_text())["config"]
        runs.append(str(out))
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "finetune-kl" / "model")
    assert model.config.model_type == "llama"
    manifest = json.loads((tmp_path / "finetune-kl" / "manifest.json").read_text())
    assert manifest["config"]["finetune"] == "full"
    # next-token prediction needs no split: the one-sentence document is learned too
    assert manifest["metrics"]["curve"][-1]["docs_seen"] == 3 and manifest["skipped_documents"] == []
    done = run_cli("compare", *runs, "--out", str(tmp_path / "cmp"))
    assert done.returncode == 0, done.stderr[-2000:]
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| finetune-kl | 3 |" in table and "| lora-finetune | 3 |" in table
    assert (tmp_path / "cmp" / "compare.png").exists()


@pytest.mark.parametrize("recipe, terms, temperature, teacher", [
    ("finetune", {"sft": 1.0}, 1.0, False),
    ("finetune-kl", {"sft": 1.0, "forward_kl": 0.5}, 2.0, True),
    ("lora-finetune", {"sft": 1.0}, 1.0, False),
])
def test_baseline_manifest_has_no_objective_and_its_loss_is_the_one_it_names(tiny_model_dir, docs_file, tmp_path,
                                                                             recipe, terms, temperature, teacher):
    """The baselines build their own loss; their manifest's config must not claim another (it once said
    objective=forward_kl for a run that trained next-token prediction)."""
    sets = {"kl_weight": 0.5, "temperature": 2.0} if recipe == "finetune-kl" else {}
    cfg = tiny_config(recipe, tiny_model_dir, **sets)
    assert "objective" not in cfg.to_dict()  # what the manifest records as "config"
    inputs = read_inputs(recipe, str(docs_file), None, None, False)
    run = set_up(cfg, baselines.method(recipe, cfg), tmp_path / "out", False, inputs, time.time())
    make_learner(run)
    assert dict(run.loss_module.objective.terms) == terms and run.loss_module.objective.temperature == temperature
    assert (run.loss_module.teacher is not None) == teacher
    manifest = stream_manifest(run, metrics={})
    assert "objective" not in manifest["config"] and manifest["recipe"] == recipe


def test_doc_recipes_refuse_missing_docs_before_loading_anything_on_the_command_line_too(tmp_path):
    for name in ("disc", "finetune", "finetune-kl", "lora-finetune"):
        cfg = RECIPES[name].config(model=str(tmp_path / "no-model"))
        with pytest.raises(CtxDistillError, match=f"The {name} recipe learns from documents: pass --docs "
                                                  "FILE_OR_FOLDER."):
            RECIPES[name].run(cfg, str(tmp_path / name), docs=None)
        assert not (tmp_path / name).exists()
    done = run_cli("distill", "finetune", "--out", str(tmp_path / "cli"))
    assert done.returncode == 2 and "The finetune recipe learns from documents: pass --docs" in done.stderr


def test_disc_refuses_documents_that_are_all_too_short(tiny_model_dir, tmp_path):
    (tmp_path / "short.txt").write_text("Only one sentence here")
    cfg = tiny_config("disc", tiny_model_dir)
    inputs = read_inputs("disc", str(tmp_path / "short.txt"), None, None, False)
    run = set_up(cfg, disc.method(cfg), tmp_path / "out", False, inputs, time.time())
    with pytest.warns(UserWarning, match="short"), pytest.raises(CtxDistillError, match="at least two sentences"):
        choose_documents(run)
