"""The module library and the commands that read adapters and runs: nothing a user wrote is replaced, every document
gets a module folder of its own inside OUT/modules, and a damaged adapter, module.json or run manifest, or a bad
number on the command line, is one clear error (or, for `modules list`, a warning) instead of a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import tiny_llama
from test_bad_inputs import cli_error

from ctxdistill import CtxDistillError
from ctxdistill.cli import main
from ctxdistill.data.documents import Document
from ctxdistill.recipes.knowledge import module_name, plan_modules, write_report


def _save_adapter(model_dir: Path, path: Path, manifest: dict | None = None) -> Path:
    """A LoRA adapter on the saved tiny model (its base_model_name_or_path), with a module.json when given."""
    from transformers import AutoModelForCausalLM

    from ctxdistill.core.models import add_lora

    add_lora(AutoModelForCausalLM.from_pretrained(model_dir), r=2, alpha=4).save_pretrained(path)
    if manifest is not None:
        (path / "module.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory) -> Path:
    return _save_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapters") / "good",
                         {"recipe": "knowledge", "objective": "dcd", "documents": [{"id": "mill"}]})


def _copy(adapter: Path, to: Path) -> Path:
    return Path(shutil.copytree(adapter, to))


def _argparse_error(capsys, argv: list[str]) -> str:
    """A flag refused by its argparse type: exit code 2 and argparse's `error:` line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


# 1. combine --out replaces only a module folder it wrote, and only with --overwrite.

def test_combine_leaves_a_users_folder_alone(adapter, tiny_model_dir, tmp_path, capsys):
    b = _copy(adapter, tmp_path / "b")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    argv = ["modules", "combine", str(adapter), str(b), "--model", str(tiny_model_dir), "--out", str(mine)]
    err = cli_error(capsys, argv)
    assert f"--out {mine} already exists and holds notes.txt; nothing in it is touched" in err
    err = cli_error(capsys, [*argv, "--overwrite"])  # --overwrite is for module folders only
    assert "notes.txt" in err and "nothing in it is touched" in err
    assert (mine / "notes.txt").read_text() == "my notes" and [p.name for p in mine.iterdir()] == ["notes.txt"]

    # A module folder with a file of the user's in it is the user's folder too.
    extra = _copy(adapter, tmp_path / "extra")
    (extra / "notes.txt").write_text("mine")
    assert "holds notes.txt" in cli_error(capsys, [*argv[:-1], str(extra), "--overwrite"])
    assert (extra / "notes.txt").read_text() == "mine"
    # The result may not replace one of its own sources.
    assert "is one of the modules being combined" in cli_error(capsys, [*argv[:-1], str(b), "--overwrite"])


def test_combine_replaces_a_module_only_with_overwrite(adapter, tiny_model_dir, tmp_path, capsys):
    b = _copy(adapter, tmp_path / "b")
    out = _copy(adapter, tmp_path / "out")  # a module folder ctxdistill wrote
    argv = ["modules", "combine", str(adapter), str(b), "--model", str(tiny_model_dir), "--out", str(out)]
    err = cli_error(capsys, argv)
    assert "already holds a module; it is left as it is. Pass --overwrite to replace it" in err
    assert json.loads((out / "module.json").read_text())["recipe"] == "knowledge"
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads((out / "module.json").read_text())["recipe"] == "combine"


# 2. Document ids become module folders that are safe and distinct.

def test_every_document_id_gets_its_own_folder_inside_modules(tmp_path):
    ids = ["a/b", "a b", "a_b", ".", "..", "../../x", "", "/etc", "a_b-1234abcd", "Mill", "mill", "é", "x" * 300]
    modules = plan_modules([Document(i, "text") for i in ids], tmp_path, per_document=True)
    names = [m.name for m in modules]
    assert len({n.casefold() for n in names}) == len(ids)  # distinct, even on a case-insensitive file system
    root = (tmp_path / "modules").resolve()
    for m in modules:
        assert m.target == tmp_path / "modules" / m.name and m.target.resolve().parent == root, m.name
        assert m.name not in ("", ".", "..") and not m.name.startswith((".", "-")) and len(m.name) <= 64
    assert module_name("mill") == "mill" and module_name("doc-7") == "doc-7"  # plain ids keep their name
    assert module_name("a/b").startswith("a_b-") and module_name("a/b") != module_name("a b")
    assert module_name("a/b") == module_name("a/b")  # the same id, the same folder (resume finds it)


def test_the_run_manifest_maps_each_document_to_its_module_folder(tmp_path):
    from ctxdistill.config import load_config

    docs = [Document(i, "text") for i in ("a/b", "a b", ".", "mill")]
    modules = plan_modules(docs, tmp_path, per_document=True)
    state = SimpleNamespace(cfg=load_config("knowledge"), out=tmp_path, module_reports=[], qs=None, t_start=0.0,
                            generation_seconds=0.0, train_seconds=0.0, eval_seconds=0.0, rows=[], chunks=[],
                            objective_name="dcd", uses_synthetic=False, base_path="base", per_document=True,
                            inputs=SimpleNamespace(docs=docs))
    write_report(state)
    mapping = json.loads((tmp_path / "manifest.json").read_text())["modules"]
    assert mapping == {m.group[0].id: f"modules/{m.name}" for m in modules}
    assert mapping["mill"] == "modules/mill" and len(set(mapping.values())) == 4


# 3. A damaged adapter is one error naming the folder and what is wrong.

def test_a_malformed_adapter_config_is_named(adapter, tmp_path, capsys):
    broken = _copy(adapter, tmp_path / "broken")
    (broken / "adapter_config.json").write_text("{oops")
    err = cli_error(capsys, ["chat", "--adapter", str(broken), "--prompt", "hi"])
    assert f"{broken / 'adapter_config.json'} is not valid JSON" in err and "Write the adapter again" in err
    (broken / "adapter_config.json").write_text("[1, 2]")
    err = cli_error(capsys, ["chat", "--adapter", str(broken), "--prompt", "hi"])
    assert "is not a PEFT adapter config" in err and str(broken) in err


def test_a_truncated_weights_file_is_named(adapter, tmp_path, capsys):
    from ctxdistill.core.models import load_adapter

    broken = _copy(adapter, tmp_path / "cut")
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"id": "d", "text": "Text.", "qa": [{"q": "Q?", "a": ["A"]}]}) + "\n")
    err = cli_error(capsys, ["eval", "--docs", str(docs), "--adapter", str(broken)])
    assert f"{weights} is damaged" in err and "Write the adapter again" in err
    with pytest.raises(CtxDistillError, match="is damaged"):  # --init-adapter and resume load through it too
        load_adapter(None, str(broken))
    weights.unlink()
    err = cli_error(capsys, ["chat", "--adapter", str(broken), "--prompt", "hi"])
    assert f"{broken} has no adapter weights (adapter_model.safetensors or adapter_model.bin)" in err


def test_an_adapter_without_a_base_model_asks_for_model(adapter, tmp_path, capsys):
    broken = _copy(adapter, tmp_path / "nobase")
    config = json.loads((broken / "adapter_config.json").read_text())
    (broken / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    err = cli_error(capsys, ["chat", "--adapter", str(broken), "--prompt", "hi"])
    assert f"{broken / 'adapter_config.json'} does not name its base model (base_model_name_or_path is null)" in err
    assert "Pass --model" in err


def test_an_adapter_for_another_model_names_both_and_the_first_weight(adapter, tokenizer, tiny_model_dir, tmp_path,
                                                                      capsys):
    from transformers import AutoModelForCausalLM

    from ctxdistill.core.models import load_adapter

    narrow = tmp_path / "narrow"
    tiny_llama(tokenizer, hidden=32).save_pretrained(narrow)
    tokenizer.save_pretrained(narrow)
    err = cli_error(capsys, ["chat", "--adapter", str(adapter), "--model", str(narrow), "--prompt", "hi"])
    assert f"The adapter {adapter} does not fit the model {narrow}: it was trained on {tiny_model_dir}" in err
    assert "(first mismatching weight: base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in err
    assert "is [2, 64] in the adapter, [2, 32] in the model)" in err and "size mismatch" not in err
    with pytest.raises(CtxDistillError, match="does not fit the model"):
        load_adapter(AutoModelForCausalLM.from_pretrained(narrow), str(adapter))


# 4. A broken module.json: `show` says what is wrong, `list` lists the others and warns.

def test_list_shows_the_readable_modules_and_warns_about_the_broken_ones(adapter, tmp_path, capsys):
    _copy(adapter, tmp_path / "good")
    (_copy(adapter, tmp_path / "bad") / "module.json").write_text("{not json")
    (_copy(adapter, tmp_path / "list") / "module.json").write_text("[1]")
    (_copy(adapter, tmp_path / "docs") / "module.json").write_text(json.dumps({"documents": [{"name": "x"}]}))
    capsys.readouterr()
    assert main(["modules", "list", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert str(tmp_path / "good") in out and "knowledge / dcd" in out
    assert all(str(tmp_path / n) not in out for n in ("bad", "list", "docs"))
    warnings = err.strip().splitlines()
    assert len(warnings) == 3 and all(w.startswith("warning: skipped a module that cannot be read: ") for w in warnings)
    assert f"{tmp_path / 'bad' / 'module.json'} is not valid JSON" in err
    assert f"{tmp_path / 'list' / 'module.json'} must hold a JSON object, got list" in err
    assert f'{tmp_path / "docs" / "module.json"}: "documents" must be a list of objects with an "id"' in err


def test_show_names_a_broken_module_json(adapter, tmp_path, capsys):
    broken = _copy(adapter, tmp_path / "bad")
    (broken / "module.json").write_text('{"recipe": "knowledge",')
    err = cli_error(capsys, ["modules", "show", str(broken)])
    assert f"{broken / 'module.json'} is not valid JSON" in err and "the adapter loads without it" in err
    (broken / "module.json").write_text(json.dumps({"metrics": [1]}))
    assert '"metrics" must be an object' in cli_error(capsys, ["modules", "show", str(broken)])


# 5. Numbers on the command line are checked where they are read.

@pytest.mark.parametrize("argv, flag, value", [
    (["modules", "combine", "a", "b", "--out", "c", "--rank", "-3"], "--rank", "-3"),
    (["modules", "combine", "a", "b", "--out", "c", "--rank", "0"], "--rank", "0"),
    (["chat", "--prompt", "hi", "--max-new-tokens", "-1"], "--max-new-tokens", "-1"),
    (["eval", "--docs", "d", "--adapter", "a", "--max-new-tokens", "0"], "--max-new-tokens", "0"),
    (["eval", "--docs", "d", "--adapter", "a", "--top-k", "0"], "--top-k", "0"),
    (["eval", "--docs", "d", "--adapter", "a", "--chunk-tokens", "-5"], "--chunk-tokens", "-5"),
    (["eval", "--docs", "d", "--adapter", "a", "--top-k", "two"], "--top-k", "two"),
])
def test_counts_and_sizes_must_be_positive(capsys, argv, flag, value):
    assert _argparse_error(capsys, argv).endswith(f"argument {flag}: must be a whole number >= 1, got '{value}'")


def test_chunk_overlap_may_be_zero_but_not_negative(capsys):
    err = _argparse_error(capsys, ["eval", "--docs", "d", "--adapter", "a", "--chunk-overlap", "-1"])
    assert err.endswith("argument --chunk-overlap: must be a whole number >= 0, got '-1'")


def test_combine_weights_must_be_one_finite_number_per_module(adapter, tmp_path, capsys):
    argv = ["modules", "combine", str(adapter), str(adapter), "--out", str(tmp_path / "out"), "--weights"]
    assert "--weights must be finite numbers, got 'nan,1'" in cli_error(capsys, [*argv, "nan,1"])
    assert "--weights must be finite numbers" in cli_error(capsys, [*argv, "1,inf"])
    assert "1 weights for 2 modules: give one weight per module" in cli_error(capsys, [*argv, "1"])
    assert "--weights must be comma-separated numbers" in cli_error(capsys, [*argv, "1,,2"])
    assert not (tmp_path / "out").exists()


# 6. compare names the run whose manifest or curve it cannot read.

POINT = {"docs_seen": 1, "steps": 2, "knowledge": 1, "questions": 2, "retention": 3, "retention_n": 4,
         "kl_to_initial": 0.01}


def _run(folder: Path, manifest) -> str:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    return str(folder)


def test_compare_names_a_run_with_a_malformed_manifest(tmp_path, capsys):
    good = _run(tmp_path / "good", {"recipe": "disc", "metrics": {"curve": [POINT]}})
    bad = _run(tmp_path / "bad", '{"recipe": "disc", "metrics": {"curve": [')
    err = cli_error(capsys, ["compare", good, bad])
    assert f"{Path(bad) / 'manifest.json'} is not valid JSON" in err and f"the run {bad} cannot be compared" in err
    for i, manifest in enumerate(([], {"recipe": "disc"}, {"metrics": {"curve": [POINT]}})):
        run = _run(tmp_path / f"fields{i}", manifest)
        err = cli_error(capsys, ["compare", good, run])
        assert 'has no "recipe" and "metrics"' in err and f"so {run} cannot be compared" in err


def test_compare_names_an_incomplete_curve(tmp_path, capsys):
    good = _run(tmp_path / "good", {"recipe": "disc", "metrics": {"curve": [POINT]}})
    cases = {"short": [POINT, {"docs_seen": 2, "steps": 4}], "empty": [], "none": [{**POINT, "kl_to_initial": None}],
             "zero": [{**POINT, "retention_n": 0}]}
    expected = {"short": "point 1 of metrics.curve is incomplete (no number for knowledge, questions, retention, "
                         "retention_n, kl_to_initial)",
                "empty": "metrics.curve is empty",
                "none": "point 0 of metrics.curve is incomplete (no number for kl_to_initial)",
                "zero": "point 0 of metrics.curve is incomplete (retention_n is 0)"}
    for name, curve in cases.items():
        run = _run(tmp_path / name, {"recipe": "finetune", "metrics": {"curve": curve}})
        err = cli_error(capsys, ["compare", good, run])
        assert expected[name] in err and f"so {run} cannot be compared" in err, err


def test_compare_keeps_every_run_of_the_same_recipe(tmp_path, capsys):
    runs = [_run(tmp_path / d / "run", {"recipe": "disc", "metrics": {"curve": [{**POINT, "steps": n}]}})
            for n, d in enumerate(("x", "y", "z"))]
    capsys.readouterr()
    assert main(["compare", *runs]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| disc")]
    assert len(rows) == 3 and len({r.split("|")[1] for r in rows}) == 3
    assert "is given twice" in cli_error(capsys, ["compare", *runs, runs[0]])


def test_an_adapter_whose_base_model_is_gone_says_where_the_name_came_from(adapter, tmp_path, capsys):
    moved = _copy(adapter, tmp_path / "moved")
    config = json.loads((moved / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "no")}))
    err = cli_error(capsys, ["chat", "--adapter", str(moved), "--prompt", "hi"])
    assert str(tmp_path / "no") in err
    assert f"It is the base model named in {moved}/adapter_config.json; pass --model" in err
