"""Model loading: the bundled default, local directories, dtype choice."""

import torch
from conftest import run_cli

from ctxdistill.core.models import default_model_path, load_model, pick_dtype, resolve_model


def test_default_model_is_a_cached_safetensors_directory():
    path = default_model_path()
    assert (path / "config.json").exists() and (path / "model.safetensors").exists()
    assert "quantization_config" not in (path / "config.json").read_text()  # a plain model, not packed GGUF
    assert resolve_model("default") == (str(path), {})


def test_model_path_command_prints_the_default_directory():
    done = run_cli("model-path", "default")
    assert done.returncode == 0 and done.stdout.strip() == str(default_model_path())


def test_gguf_file_resolves_to_its_folder_and_file_name(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"")
    assert resolve_model(str(f)) == (str(tmp_path), {"gguf_file": "m.gguf"})


def test_local_directory_loads_with_requested_dtype(tiny_model_dir):
    model, tok, path = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    assert path == str(tiny_model_dir) and model.dtype == torch.float32 and not model.training
    assert tok.pad_token_id is not None and tok.chat_template


def test_auto_dtype_is_bf16_only_where_the_hardware_has_it():
    cpu = torch.device("cpu")
    from ctxdistill.core.models import bf16_supported

    assert pick_dtype("auto", cpu) == (torch.bfloat16 if bf16_supported(cpu) else torch.float32)
    assert pick_dtype("fp32", cpu) == torch.float32


def test_loading_a_model_draws_no_library_progress_bar_and_leaves_the_setting_as_it_was(tiny_model_dir, capfd):
    from transformers.utils import logging as hf_logging

    load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # the caller's own setting is restored
