"""🤗 datasets as inputs: prompts, documents, QA, examples and tasks from parquet/csv/arrow files, dataset folders and
dataset ids in the local cache (read offline), with their columns mapped; ctxdistill's own files read as before."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from ctxdistill import CtxDistillError
from ctxdistill.cli import main
from ctxdistill.data.documents import read_documents
from ctxdistill.data.inputs import read_examples, read_prompts, read_qa
from ctxdistill.recipes.experience import read_tasks

datasets = pytest.importorskip("datasets", reason="the datasets extra: pip install 'ctxdistill[datasets]'")

PROMPTS = ["Who are you?", "Where is your home?", "Say hello.", "What do you do all day?"]
DOCS = [{"id": "mill", "text": "The mill of Glimmerfen was built by Ada Lark in 1820."},
        {"id": "bay", "text": "Gullrock Bay freezes over every January."}]
QA = [{"q": "Who built the mill?", "a": ["Ada Lark"]}, {"q": "When does the bay freeze?", "a": ["January"]}]


def write(rows: list[dict], path, how: str):
    """`rows` as a dataset on disk, the way a user would have it: a parquet or csv file, or a save_to_disk folder."""
    table = datasets.Dataset.from_list(rows)
    if how == "parquet":
        table.to_parquet(str(path) + ".parquet")
        return str(path) + ".parquet"
    if how == "csv":
        table.to_csv(str(path) + ".csv", index=False)
        return str(path) + ".csv"
    table.save_to_disk(str(path))
    return str(path)


# ---------------------------------------------------------------- the same rows as ctxdistill's own files

FORMATS = ["parquet", "csv", "save_to_disk"]


@pytest.mark.parametrize("how", FORMATS)
def test_prompts_from_a_dataset_equal_those_of_a_text_file(tmp_path, how):
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    source = write([{"prompt": p} for p in PROMPTS], tmp_path / "prompts", how)
    assert read_prompts(source) == read_prompts(tmp_path / "prompts.txt") == PROMPTS


@pytest.mark.parametrize("how", FORMATS)
def test_documents_from_a_dataset_equal_those_of_a_jsonl_file(tmp_path, how):
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    source = write(DOCS, tmp_path / "docs", how)
    assert read_documents(source) == read_documents(tmp_path / "docs.jsonl")
    assert [(d.id, d.text) for d in read_documents(source)] == [(d["id"], d["text"]) for d in DOCS]


@pytest.mark.parametrize("how", FORMATS)
def test_qa_from_a_dataset_equals_that_of_a_json_file(tmp_path, how):
    (tmp_path / "qa.json").write_text(json.dumps(QA))
    source = write([{"question": x["q"], "answer": x["a"][0]} for x in QA], tmp_path / "qa", how)
    assert read_qa(source, "--eval") == read_qa(tmp_path / "qa.json", "--eval") == QA


def test_documents_without_an_id_column_are_numbered_as_in_a_jsonl_file(tmp_path):
    source = write([{"content": d["text"]} for d in DOCS], tmp_path / "docs", "parquet")
    assert [(d.id, d.text) for d in read_documents(source)] == [("doc1", DOCS[0]["text"]), ("doc2", DOCS[1]["text"])]


def test_own_formats_still_win_a_jsonl_in_the_project_shape_keeps_its_errors(tmp_path):
    """A .jsonl whose rows use the project's keys is read as ctxdistill's own, with its own checks."""
    p = tmp_path / "prompts.jsonl"
    p.write_text('{"prompt": "Who are you?"}\n{"question": "Where?"}\n')
    with pytest.raises(CtxDistillError, match=r'line\(s\) \[2\] lack a string "prompt"'):
        read_prompts(p)


# ---------------------------------------------------------------- column mapping


def test_columns_are_mapped_by_name_and_the_usual_names_are_tried(tmp_path):
    rows = [{"instruction": p, "other": p.upper()} for p in PROMPTS]
    source = write(rows, tmp_path / "alpaca", "parquet")
    assert read_prompts(source) == PROMPTS  # "instruction" is one of the usual names
    assert read_prompts(source, {"prompt": "other"}) == [p.upper() for p in PROMPTS]
    qa = write([{"Question": x["q"], "answers": {"text": x["a"], "answer_start": [0]}} for x in QA],
               tmp_path / "squad", "parquet")
    assert read_qa(qa) == QA  # names in any case; SQuAD's {"text": [...]} answers
    docs = write([{"body": d["text"], "slug": d["id"]} for d in DOCS], tmp_path / "wiki", "csv")
    assert [d.id for d in read_documents(docs, {"id": "slug"})] == ["mill", "bay"]


def test_chat_columns_give_the_last_user_turn_as_prompt_and_the_reply_as_output(tmp_path):
    chats = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": p},
              {"role": "assistant", "content": p[::-1]}] for p in PROMPTS]
    source = write([{"messages": c} for c in chats], tmp_path / "chats", "parquet")
    assert read_prompts(source) == PROMPTS
    assert read_examples(source) == [{"input": p, "output": p[::-1]} for p in PROMPTS]
    sharegpt = tmp_path / "sharegpt.jsonl"  # .jsonl rows in another shape are mapped the same way
    sharegpt.write_text("".join(json.dumps({"conversations": [{"from": "human", "value": p},
                                                              {"from": "gpt", "value": "ok"}]}) + "\n"
                                for p in PROMPTS))
    assert read_prompts(sharegpt) == PROMPTS


def test_examples_and_tasks_from_csv_with_mapped_columns(tmp_path):
    rows = [{"question": f"{n} + {n}?", "answer": 2 * n, "solution": f"{n} and {n} make {2 * n}"} for n in range(8)]
    source = write(rows, tmp_path / "sums", "csv")
    tasks = read_tasks(source)
    assert tasks[3] == {"prompt": "3 + 3?", "answer": "6"} and len(tasks) == 8  # numbers become the answer's text
    examples = read_examples(source, {"input": "question", "output": "solution"})
    assert examples[1] == {"input": "1 + 1?", "output": "1 and 1 make 2"}


def test_a_missing_column_names_the_columns_there_and_the_flag(tmp_path):
    source = write([{"title": "x", "body": "y"}], tmp_path / "t", "parquet")
    with pytest.raises(CtxDistillError) as caught:
        read_prompts(source)
    message = str(caught.value)
    assert "no column for the prompt" in message and "its columns: title, body" in message
    assert "--prompt-column NAME" in message and source in message
    with pytest.raises(CtxDistillError) as caught:
        read_documents(source, {"text": "content"})
    assert "no column 'content' (given to --text-column); its columns: title, body" in str(caught.value)


def test_a_cell_that_is_not_text_names_the_row_and_column(tmp_path):
    source = write([{"prompt": "fine"}, {"prompt": None}], tmp_path / "gaps", "parquet")
    with pytest.raises(CtxDistillError, match=r"row 2, column 'prompt': an empty value is not text"):
        read_prompts(source)


def test_a_split_is_chosen_by_flag_or_suffix_and_several_need_a_choice(tmp_path):
    folder = tmp_path / "splits"
    folder.mkdir()
    datasets.Dataset.from_list([{"prompt": p} for p in PROMPTS[:2]]).to_parquet(str(folder / "train.parquet"))
    datasets.Dataset.from_list([{"prompt": p} for p in PROMPTS[2:]]).to_parquet(str(folder / "test.parquet"))
    with pytest.raises(CtxDistillError, match=r"several splits \(train, test\): choose one with --split NAME"):
        read_prompts(folder)
    assert read_prompts(folder, {"split": "test"}) == PROMPTS[2:]
    assert read_prompts(f"{folder}:train") == PROMPTS[:2]
    with pytest.raises(CtxDistillError, match="has no split 'dev'; its splits: train, test"):
        read_prompts(f"{folder}:dev")


# ---------------------------------------------------------------- dataset ids, offline from the local cache


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp_path. `datasets` reads HF_DATASETS_CACHE when it is imported, so its
    config is pointed there too (the hub client's cache likewise)."""
    import huggingface_hub.constants as hub

    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(home / "datasets"))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(home / "hub"))
    return home


def cache_like_load_dataset(home, repo_id: str, splits: dict, tmp_path):
    """Put `splits` into the datasets cache where `load_dataset(repo_id)` leaves a hub dataset it has prepared:
    DATASETS_CACHE/owner___name/default/0.0.0/HASH/{dataset_info.json, name-SPLIT.arrow}."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    owner, name = repo_id.split("/")
    files = {}
    for split, rows in splits.items():
        files[split] = [str(tmp_path / f"{split}.parquet")]
        datasets.Dataset.from_list(rows).to_parquet(files[split][0])
    builder = Parquet(cache_dir=str(tmp_path / "build"), dataset_name=name, data_files=files)
    builder.download_and_prepare()
    shutil.copytree(builder.cache_dir, home / "datasets" / f"{owner}___{name}" / "default" / "0.0.0" / "0123abcd")


def test_a_dataset_id_is_read_offline_from_the_local_cache(hf_cache, tmp_path):
    cache_like_load_dataset(hf_cache, "acme/persona-prompts", {"train": [{"prompt": p} for p in PROMPTS[:3]],
                                                               "test": [{"prompt": PROMPTS[3]}]}, tmp_path)
    offline = os.environ.get("HF_DATASETS_OFFLINE"), datasets.config.HF_HUB_OFFLINE
    assert read_prompts("acme/persona-prompts:test") == PROMPTS[3:]
    assert read_prompts("acme/persona-prompts", {"split": "train"}) == PROMPTS[:3]
    assert (os.environ.get("HF_DATASETS_OFFLINE"), datasets.config.HF_HUB_OFFLINE) == offline  # as it was


def test_a_dataset_id_is_read_from_the_hub_cache_as_downloaded(hf_cache, tmp_path):
    """Files fetched with `huggingface-cli download --repo-type dataset` (never prepared by load_dataset)."""
    repo = hf_cache / "hub" / "datasets--acme--docs"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("c0ffee")
    (repo / "snapshots" / "c0ffee" / "data").mkdir(parents=True)
    datasets.Dataset.from_list(DOCS).to_parquet(str(repo / "snapshots" / "c0ffee" / "data" / "train.parquet"))
    assert [d.id for d in read_documents("acme/docs")] == ["mill", "bay"]


def test_a_dataset_id_not_in_the_cache_is_refused_without_downloading(hf_cache):
    with pytest.raises(CtxDistillError) as caught:
        read_qa("acme/not-cached", "--eval")
    message = str(caught.value)
    assert "--eval acme/not-cached: no such file or folder, and no dataset 'acme/not-cached' in the local" in message
    assert "ctxdistill never downloads" in message and str(hf_cache / "datasets") in message


# ---------------------------------------------------------------- the command line and the optional extra


def test_a_tiny_offline_run_takes_its_prompts_from_a_parquet_file(tmp_path, tiny_model_dir, persona_files, capsys):
    source = write([{"instruction": p, "id": n} for n, p in enumerate(PROMPTS)], tmp_path / "prompts", "parquet")
    out = tmp_path / "run"
    settings = ["samples_per_query=1", "max_new_tokens=6", "eval_max_new_tokens=2", "max_steps=1", "batch_size=4",
                "micro_batch_size=4", "dtype=float32"]
    code = main(["distill", "offline", "--model", str(tiny_model_dir), "--context", str(persona_files["context"]),
                 "--prompts", source, "--prompt-column", "instruction", "--out", str(out),
                 *[a for s in settings for a in ("--set", s)]])
    assert code == 0, capsys.readouterr().err[-2000:]
    queries = [json.loads(line)["prompt"] for line in (out / "data" / "queries.jsonl").read_text().splitlines()]
    assert queries == PROMPTS
    assert (out / "adapter" / "adapter_config.json").exists()


def test_a_column_flag_for_an_input_the_recipe_lacks_is_refused(tmp_path, capsys):
    assert main(["distill", "disc", "--docs", str(tmp_path / "d.parquet"), "--prompt-column", "instruction",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--prompt-column names a column of --prompts, --tasks; the disc recipe takes --docs" in err
    assert not (tmp_path / "run").exists()


def test_an_unknown_key_in_the_column_mapping_is_refused(tmp_path):
    source = write([{"prompt": "x"}], tmp_path / "p", "parquet")
    with pytest.raises(CtxDistillError, match="Unknown column mapping key.*'promt'.*prompt, text, id"):
        read_prompts(source, {"promt": "x"})


def test_without_the_datasets_extra_a_dataset_input_names_the_install(tmp_path, monkeypatch):
    source = write([{"prompt": p} for p in PROMPTS], tmp_path / "prompts", "parquet")
    foreign = tmp_path / "rows.jsonl"
    foreign.write_text("".join(json.dumps({"instruction": p}) + "\n" for p in PROMPTS))
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    with pytest.raises(CtxDistillError) as caught:
        read_prompts(source)
    assert f"--prompts {source} is read as a 🤗 dataset" in str(caught.value)
    assert "pip install 'ctxdistill[datasets]'" in str(caught.value)
    with pytest.raises(CtxDistillError, match="taken for a dataset id.*pip install 'ctxdistill\\[datasets\\]'"):
        read_prompts("acme/prompts")
    # ctxdistill's own files, and .jsonl rows in another shape, need no extra
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS))
    assert read_prompts(tmp_path / "prompts.txt") == read_prompts(foreign) == PROMPTS
