"""Run configuration: one class per recipe, defaults in one place, friendly errors for every bad key or value, and
keys of another recipe refused with that recipe's name."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_bad_inputs import cli_error, has_word

from ctxdistill import CtxDistillError
from ctxdistill.config import CONFIGS, config_yaml, load_config, parse_set

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def test_set_without_equals_sign():
    with pytest.raises(CtxDistillError) as e:
        parse_set(["lr0.001"])
    msg = str(e.value)
    assert "key=value" in msg and "'lr0.001'" in msg


def test_set_without_equals_sign_via_cli(tmp_path, capsys, persona_files):
    err = cli_error(capsys, ["distill", "offline", "--context", str(persona_files["context"]),
                             "--out", str(tmp_path / "run"), "--set", "batch_size"])
    assert "--set expects key=value" in err and "'batch_size'" in err


def test_unknown_config_key_suggests_close_match():
    with pytest.raises(CtxDistillError) as e:
        load_config(sets=["batchsize=4"])
    msg = str(e.value)
    assert "Unknown config key 'batchsize'" in msg and "--set" in msg
    assert "Did you mean" in msg and has_word(msg, "batch_size")


def test_unknown_config_key_lists_valid_keys_including_lr(tmp_path, capsys, persona_files):
    err = cli_error(capsys, ["distill", "offline", "--context", str(persona_files["context"]),
                             "--out", str(tmp_path / "run"), "--set", "lr_rate=0.01"])
    assert "Unknown config key 'lr_rate'" in err
    assert has_word(err, "lr")  # the key the user meant is named (as a suggestion or in the valid-key list)
    assert not (tmp_path / "run").exists()


def yaml_error(tmp_path, text: str) -> tuple[str, Path]:
    """(the error message, the file) of loading a YAML config holding `text`."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(CtxDistillError) as e:
        load_config(config_file=str(cfg))
    return str(e.value), cfg


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    msg, cfg = yaml_error(tmp_path, "epoch: 2\n")
    assert "'epoch'" in msg and str(cfg) in msg and has_word(msg, "epochs")


@pytest.mark.parametrize("item,key,typ", [("batch_size=abc", "batch_size", "int"), ("lr=fast", "lr", "float"),
                                          ("epochs=[1, 2]", "epochs", "float"), ("max_steps=2.5", "max_steps", "int"),
                                          ("seed=true", "seed", "int")])
def test_wrong_type_for_config_key(item, key, typ):
    with pytest.raises(CtxDistillError) as e:
        load_config(sets=[item])
    msg = str(e.value)
    assert msg.startswith(f"{key} must be of type {typ}")
    assert repr(parse_set([item])[key]) in msg  # shows the bad value


@pytest.mark.parametrize("item,key", [("finetune=qlora", "finetune"), ("top_k_support=both", "top_k_support"),
                                      ("top_k_tail=drop", "top_k_tail"),
                                      ("context_kind=footer", "context_kind"), ("schedule=step", "schedule")])
def test_invalid_choice(item, key):
    with pytest.raises(CtxDistillError) as e:
        load_config(sets=[item])
    msg = str(e.value)
    bad = item.split("=", 1)[1]
    assert f"{key}={bad!r} is not valid" in msg and "use one of" in msg


@pytest.mark.parametrize("value", ["foo", "forward_kl+foo", "{forward_kl: 1, foo: 2}"])
def test_invalid_objective_lists_the_valid_ones(value):
    with pytest.raises(CtxDistillError) as e:
        load_config(sets=[f"objective={value}"])
    assert "'foo'" in str(e.value) and "forward_kl" in str(e.value) and "reverse_kl" in str(e.value)


@pytest.mark.parametrize("sets,needle", [(["objective={forward_kl: -1}"], ">= 0"),
                                         (["objective={forward_kl: abc}"], "numbers"),
                                         (["jsd_beta=2"], "jsd_beta"), (["hidden_layers=first"], "hidden_layers"),
                                         (["hidden_layers=[1, x]"], "integers"), (["skip_first=-1"], "skip_first"),
                                         (["teacher_cache=true"], "top_k > 0"),
                                         (["teacher_cache=true", "top_k=8", "objective=sampled_kl"], "live teacher")])
def test_invalid_objective_settings_are_refused(sets, needle):
    with pytest.raises(CtxDistillError, match=needle):
        load_config(sets=sets)


def test_objective_forms_give_weighted_terms():
    assert load_config(sets=["objective=forward_kl+sft"]).build_objective().terms == {"forward_kl": 1.0, "sft": 1.0}
    obj = load_config(sets=["objective={reverse_kl: 1.0, sft: 0.1}", "top_k=16", "top_k_support=student",
                            "hidden_weight=0.5", "hidden_layers=[0, -1]"]).build_objective()
    assert obj.terms == {"reverse_kl": 1.0, "sft": 0.1} and obj.top_k == 16 and obj.support == "student"
    assert obj.hidden_weight == 0.5 and obj.hidden_layers == (0, -1)


@pytest.mark.parametrize("item,key,bound", [("batch_size=0", "batch_size", "> 0"), ("lr=-0.1", "lr", ">= 0"),
                                            ("temperature=0", "temperature", "> 0"),
                                            ("warmup_ratio=-1", "warmup_ratio", ">= 0")])
def test_out_of_range_config_value(item, key, bound):
    with pytest.raises(CtxDistillError) as e:
        load_config(sets=[item])
    assert str(e.value).startswith(f"{key} must be {bound}")


def test_yaml_config_missing_file(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(CtxDistillError) as e:
        load_config(config_file=str(missing))
    msg = str(e.value)
    assert "Config file not found" in msg and str(missing) in msg and "--config" in msg


def test_yaml_config_invalid_yaml(tmp_path):
    msg, cfg = yaml_error(tmp_path, "lr: [0.1\nepochs: 2\n")
    assert "not valid YAML" in msg and str(cfg) in msg and "line" in msg


@pytest.mark.parametrize("text", ["- lr: 0.1\n- epochs: 2\n", "just a string\n", "42\n"])
def test_yaml_config_not_a_mapping(tmp_path, text):
    msg, cfg = yaml_error(tmp_path, text)
    assert "must be a YAML mapping" in msg and "key: value" in msg and str(cfg) in msg


def test_yaml_config_not_a_mapping_via_cli(tmp_path, capsys, persona_files):
    cfg = tmp_path / "list.yaml"
    cfg.write_text("- lr: 0.1\n")
    err = cli_error(capsys, ["distill", "offline", "--context", str(persona_files["context"]),
                             "--out", str(tmp_path / "run"), "--config", str(cfg)])
    assert "YAML mapping" in err


@pytest.mark.parametrize("recipe", list(CONFIGS))
def test_config_file_of_each_recipe_is_generated_from_its_class_and_loads_to_its_defaults(recipe):
    path = CONFIG_DIR / f"{recipe}.yaml"
    assert path.read_text(encoding="utf-8") == config_yaml(recipe), "run `make configs` to regenerate configs/"
    assert load_config(recipe, config_file=str(path)).to_dict() == CONFIGS[recipe]().to_dict()


def test_each_recipe_starts_from_its_own_defaults():
    assert load_config("disc").temperature == 2.0 and load_config("disc").t2_scaling
    assert load_config("onpolicy").objective == {"reverse_kl": 1.0, "forward_kl": 1.0}
    assert load_config("onpolicy").top_k_support == "union" and load_config("onpolicy").top_k == 256
    assert load_config("experience").objective == "reverse_kl"  # its consolidation keeps the paper's loss
    assert load_config("knowledge").anchor_fraction == 0.5 and load_config("offline").anchor_fraction == 0.0
    assert load_config("finetune").finetune == "full" and load_config("lora-finetune").finetune == "lora"


def test_the_opcd_paper_preset_restores_the_papers_reverse_kl_on_the_students_top_k():
    paper = load_config("onpolicy", str(Path(__file__).resolve().parent.parent / "configs" / "presets" / "opcd-paper.yaml"))
    assert (paper.objective, paper.top_k_support, paper.batch_size, paper.max_new_tokens) == \
        ("reverse_kl", "student", 16, 64)


# Every recipe refuses a key it does not read, naming a recipe that does.
FOREIGN = [("disc", "scratchpad", "offline"), ("offline", "offline_fraction", "onpolicy"),
           ("onpolicy", "replay", "offline"), ("knowledge", "split_strategy", "disc"),
           ("finetune", "objective", "offline"), ("lora-finetune", "kl_weight", "finetune-kl"),
           ("finetune-kl", "chunk_tokens", "knowledge"), ("experience", "samples_per_query", "offline"),
           ("offline", "select_fraction", "experience"), ("disc", "teacher", "offline"),
           ("sft", "scratchpad", "offline")]


@pytest.mark.parametrize("recipe,key,owner", FOREIGN)
def test_a_key_of_another_recipe_is_refused_naming_that_recipe(recipe, key, owner):
    value = CONFIGS[owner]().to_dict()[key]
    with pytest.raises(CtxDistillError) as e:
        load_config(recipe, sets=[f"{key}={value}"])
    msg = str(e.value)
    assert f"'{key}'" in msg and has_word(msg, owner) and f"the {recipe} recipe does not use it" in msg


def test_every_recipe_has_a_foreign_key_case():
    assert {recipe for recipe, _, _ in FOREIGN} == set(CONFIGS)


@pytest.mark.parametrize("argv,needle", [
    (["distill", "disc", "--set", "scratchpad=true"], "offline"),
    (["distill", "offline", "--set", "offline_fraction=0.5"], "onpolicy"),
    (["distill", "disc", "--context", "c.txt"], "--context is an input of the offline, onpolicy recipes"),
    (["distill", "disc", "--teacher", "x"], "offline"),
    (["distill", "offline", "--objective", "dcd"], "knowledge"),
])
def test_foreign_keys_and_flags_are_refused_by_the_cli_before_anything_runs(tmp_path, capsys, argv, needle):
    err = cli_error(capsys, [*argv, "--out", str(tmp_path / "run")])
    assert needle in err
    assert not (tmp_path / "run").exists()


def test_a_live_teacher_with_full_finetuning_is_refused_by_the_config():
    with pytest.raises(CtxDistillError, match="teacher=live .* needs finetune=lora"):
        load_config("onpolicy", sets=["teacher=live", "finetune=full"])
