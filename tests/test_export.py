"""`ctxdistill export`: a LoRA adapter as a GGUF LoRA (llama.cpp / Ollama), as a merged GGUF model, or as a merged
transformers folder. Every GGUF written here is read back, with gguf's reader and with transformers' GGUF loader
(an independent implementation of the q/k row layout), and compared with the PEFT model it came from."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ctxdistill import CtxDistillError
from ctxdistill.cli import main
from ctxdistill.core.models import add_lora, load_adapter, peft_quietly
from ctxdistill.core.export import (export, gguf_tensors, lora_scale_fix, llama_hparams,
                               permute_for_gguf, read_kvs, write_gguf)

gguf = pytest.importorskip("gguf")
from gguf.gguf_writer import GGUFValue  # noqa: E402

PROMPT = "Hello there, how are you today? Tell me about the sea."
LAYER_WEIGHTS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def save_random_lora(model_dir, out, seed=0, **lora):
    """A LoRA on the model in `model_dir` whose B is random, so that its delta is not zero; saved to `out`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = add_lora(model, **{"r": 4, "alpha": 8, **lora})
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    peft_model.save_pretrained(out)
    return out


def logits_of(model, ids):
    with torch.no_grad():
        return model(ids).logits[0].float()


def hf_logits(model_dir, ids, adapter=None):
    """The logits of a transformers folder, with a PEFT adapter on it when one is given."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return logits_of((load_adapter(model, str(adapter)) if adapter else model).eval(), ids)


def gguf_logits(path, ids):
    """The logits of a GGUF model file as transformers' GGUF loader reads it."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return logits_of(model.eval(), ids)


def tensors_of(path) -> dict:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def field(reader, key):
    return reader.fields[key].contents()


def text_kv(value):
    return GGUFValue(value, gguf.GGUFValueType.STRING)


@pytest.fixture(scope="module")
def ids(tokenizer):
    return tokenizer(PROMPT, return_tensors="pt").input_ids


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model_dir):
    return save_random_lora(tiny_model_dir, tmp_path_factory.mktemp("run") / "adapter")


# GGUF bases. Reading or writing a GGUF costs time per vocabulary entry (each token is a string key-value), so the
# GGUF-origin cases use a llama with a 256-token vocabulary and a small tokenizer of its own, not the default's.
SMALL_IDS = torch.tensor([[1, 5, 17, 42, 99, 200, 3, 7, 128, 255, 64, 2]])
SMALL_TOKENIZER = {
    "tokenizer.ggml.model": text_kv("gpt2"),
    "tokenizer.ggml.tokens": GGUFValue([chr(0x100 + i) for i in range(256)], gguf.GGUFValueType.ARRAY,
                                       gguf.GGUFValueType.STRING),
    "tokenizer.ggml.token_type": GGUFValue([1] * 256, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32),
    "tokenizer.ggml.merges": GGUFValue(["\u0100 \u0101"], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING),
    "tokenizer.ggml.eos_token_id": GGUFValue(2, gguf.GGUFValueType.UINT32),
    "tokenizer.chat_template": text_kv("{% for m in messages %}{{ m['content'] }}{% endfor %}"),
}


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("small-model")
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def small_adapter(tmp_path_factory, small_dir, small_gguf):
    """OUT/adapter of a run on the small GGUF base; OUT/manifest.json records that GGUF, as a run given
    `--model small.gguf` does."""
    run = tmp_path_factory.mktemp("small-run")
    (run / "manifest.json").write_text(json.dumps({"recipe": "offline", "base_model": str(small_gguf)}))
    return save_random_lora(small_dir, run / "adapter")


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory, small_dir):
    """The small model as an f32 GGUF base, written by export's own writer from its transformers weights."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(small_dir, dtype=torch.float32)
    kvs = {"general.type": text_kv("model"), **SMALL_TOKENIZER, **llama_hparams(model.config)}
    path = tmp_path_factory.mktemp("gguf-base") / "small.gguf"
    return write_gguf(path, "llama", kvs, gguf_tensors(model.state_dict(), model.config, "llama"), "f32")


def test_permute_for_gguf_puts_each_heads_rotary_pairs_side_by_side():
    # transformers pairs row i with row i + d/2 of each head; GGUF stores each pair on adjacent rows.
    rows = np.arange(8)[:, None] * np.ones((1, 3))
    assert permute_for_gguf(rows, n_head=2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert permute_for_gguf(rows, n_head=1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_permute_for_gguf_is_undone_by_transformers_gguf_reader():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = np.random.default_rng(0).normal(size=(32, 5))
    reader = LlamaTensorProcessor(config={"num_attention_heads": 4, "num_key_value_heads": 2})
    np.testing.assert_array_equal(reader._reverse_permute_weights(permute_for_gguf(w, 4), 4, 4), w)
    np.testing.assert_array_equal(reader._reverse_permute_weights(permute_for_gguf(w, 2), 4, 2), w)


def test_gguf_lora_holds_the_peft_weights_under_gguf_names(adapter, tmp_path):
    from peft.utils import load_peft_weights

    out = export(adapter, "gguf-lora", tmp_path / "lora.gguf").out
    reader = gguf.GGUFReader(out)
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "general.type") == "adapter"
    assert field(reader, "adapter.type") == "lora"
    assert field(reader, "adapter.lora.alpha") == 8.0
    tensors = tensors_of(out)
    assert set(tensors) == {f"blk.{i}.{w}.weight.lora_{ab}" for i in range(2) for w in LAYER_WEIGHTS for ab in "ab"}

    peft = load_peft_weights(str(adapter))
    hf = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
          "ffn_down": "mlp.down_proj"}
    heads = {"attn_q": 4, "attn_k": 2}  # the tiny llama: 4 attention heads, 2 key/value heads
    for i in range(2):
        for w in LAYER_WEIGHTS:
            prefix = f"base_model.model.model.layers.{i}.{hf[w]}"
            a, b = peft[prefix + ".lora_A.weight"].numpy(), peft[prefix + ".lora_B.weight"].numpy()
            lora_a, lora_b = tensors[f"blk.{i}.{w}.weight.lora_a"], tensors[f"blk.{i}.{w}.weight.lora_b"]
            # GGUF lists dimensions innermost first: A is [in, r] and B is [r, out], as llama.cpp checks them.
            assert lora_a.shape.tolist() == [a.shape[1], 4] and lora_b.shape.tolist() == [4, b.shape[0]]
            np.testing.assert_array_equal(lora_a.data, a)
            np.testing.assert_array_equal(lora_b.data, permute_for_gguf(b, heads[w]) if w in heads else b)
    assert np.abs(tensors["blk.0.attn_q.weight.lora_b"].data).max() > 0  # the delta is not zero


def test_small_gguf_base_reads_back_as_the_same_model(small_gguf, small_dir):
    # export's writer (names, q/k permutation) against transformers' GGUF reader, which undoes the permutation.
    torch.testing.assert_close(gguf_logits(small_gguf, SMALL_IDS), hf_logits(small_dir, SMALL_IDS),
                               atol=1e-5, rtol=1e-5)


def test_gguf_lora_applied_as_llama_cpp_does_gives_the_peft_models_logits(small_adapter, small_gguf, small_dir,
                                                                           tmp_path):
    # llama.cpp adds alpha / rank · B·(A·x) to each named base weight's product; here the same delta is added to
    # the base GGUF's weights, and the result is read back by transformers.
    lora = export(small_adapter, "gguf-lora", tmp_path / "lora.gguf", model=str(small_dir)).out
    alpha = field(gguf.GGUFReader(lora), "adapter.lora.alpha")
    lora_tensors = tensors_of(lora)
    base = gguf.GGUFReader(small_gguf)
    weights = {}
    for t in base.tensors:
        w = np.array(t.data, dtype=np.float32)
        if t.name + ".lora_a" in lora_tensors:
            a, b = lora_tensors[t.name + ".lora_a"].data, lora_tensors[t.name + ".lora_b"].data
            w = w + alpha / b.shape[1] * (b @ a)
        weights[t.name] = w
    kvs = {k: v for k, v in read_kvs(base).items() if k not in ("general.architecture", "general.file_type",
                                                                 "general.quantization_version")}
    applied = write_gguf(tmp_path / "applied.gguf", "llama", kvs, weights, "f32")

    expected = hf_logits(small_dir, SMALL_IDS, small_adapter)
    assert (hf_logits(small_dir, SMALL_IDS) - expected).abs().max() > 1e-2  # the adapter changes the answer
    torch.testing.assert_close(gguf_logits(applied, SMALL_IDS), expected, atol=1e-4, rtol=1e-4)


def test_gguf_export_of_a_gguf_base_is_base_plus_adapter_with_the_bases_metadata(small_adapter, small_gguf,
                                                                                  small_dir, tmp_path):
    result = export(small_adapter, "gguf", tmp_path / "merged.gguf", outtype="f32")  # base: from the manifest
    assert result.origin_gguf == small_gguf
    torch.testing.assert_close(gguf_logits(result.out, SMALL_IDS), hf_logits(small_dir, SMALL_IDS, small_adapter),
                               atol=1e-4, rtol=1e-4)
    ours, base = gguf.GGUFReader(result.out), gguf.GGUFReader(small_gguf)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template", "llama.block_count",
                "llama.attention.head_count_kv", "tokenizer.ggml.eos_token_id", "general.type"):
        assert field(ours, key) == field(base, key), key
    assert field(ours, "general.file_type") == gguf.LlamaFileType.ALL_F32
    assert [t.name for t in ours.tensors] == [t.name for t in base.tensors]


def test_gguf_export_quantizes_matrices_and_keeps_norms_f32(small_adapter, small_gguf, tmp_path):
    def exported(name, outtype=None):
        return tensors_of(export(small_adapter, "gguf", tmp_path / name, outtype, model=str(small_gguf)).out)

    f32, q8, f16 = exported("f32.gguf", "f32"), exported("q8.gguf", "q8_0"), exported("f16.gguf")  # default f16
    Q = gguf.GGMLQuantizationType
    for name, t in f32.items():
        matrix = len(t.shape) == 2
        assert q8[name].tensor_type == (Q.Q8_0 if matrix else Q.F32), name
        assert f16[name].tensor_type == (Q.F16 if matrix else Q.F32), name
        exact = np.asarray(t.data, dtype=np.float32)
        for quantized, step in ((q8[name], 1 / 127), (f16[name], 1e-3)):
            values = gguf.quants.dequantize(quantized.data, quantized.tensor_type).reshape(exact.shape)
            assert np.abs(values - exact).max() <= step * np.abs(exact).max() + 1e-6, name


def test_gguf_export_of_a_full_fine_tune_refuses_a_gguf_that_is_not_its_base(small_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(small_dir, dtype=torch.float32)
    wrong = {**SMALL_TOKENIZER, **llama_hparams(model.config)}
    wrong["llama.attention.head_count_kv"] = GGUFValue(4, gguf.GGUFValueType.UINT32)
    other = write_gguf(tmp_path / "other.gguf", "llama", wrong,
                       gguf_tensors(model.state_dict(), model.config, "llama"), "f32")
    # small_dir stands for OUT/model of a full fine-tune: its weights, the GGUF's metadata.
    with pytest.raises(CtxDistillError, match="head_count_kv is 4 there and 2 in the model"):
        export(small_dir, "gguf", tmp_path / "out.gguf", model=str(other))
    assert not (tmp_path / "out.gguf").exists()


def test_merged_folder_gives_the_logits_of_base_plus_adapter(adapter, tiny_model_dir, tokenizer, ids, tmp_path):
    from transformers import AutoTokenizer

    out = export(adapter, "merged", tmp_path / "merged").out
    assert not (out / "adapter_config.json").exists()
    torch.testing.assert_close(hf_logits(out, ids), hf_logits(tiny_model_dir, ids, adapter), atol=1e-5, rtol=1e-5)
    assert AutoTokenizer.from_pretrained(out)(PROMPT).input_ids == tokenizer(PROMPT).input_ids
    assert json.loads((out / "ctxdistill_export.json").read_text())["format"] == "merged"


def test_merged_in_bf16_saves_bf16_weights(adapter, tmp_path):
    from safetensors import safe_open

    out = export(adapter, "merged", tmp_path / "merged", outtype="bf16").out
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}


def test_a_full_fine_tunes_model_folder_exports_merged_but_not_as_a_lora(tiny_model_dir, ids, tmp_path):
    out = export(tiny_model_dir, "merged", tmp_path / "merged").out
    torch.testing.assert_close(hf_logits(out, ids), hf_logits(tiny_model_dir, ids))
    with pytest.raises(CtxDistillError, match="--to gguf"):
        export(tiny_model_dir, "gguf-lora", tmp_path / "lora.gguf", model=str(tiny_model_dir))


def test_gguf_export_of_a_transformers_folder_base_is_refused_with_the_alternatives(adapter, tmp_path):
    with pytest.raises(CtxDistillError, match="--to merged.*convert_hf_to_gguf"):
        export(adapter, "gguf", tmp_path / "model.gguf")
    assert not (tmp_path / "model.gguf").exists()


def test_rslora_scale_is_folded_into_b(tiny_model_dir, tmp_path):
    # PEFT scales rsLoRA by alpha / sqrt(r) = 8 / 2; llama.cpp by alpha / r = 8 / 4: B carries the factor 2.
    assert lora_scale_fix({"use_rslora": True}, "model.layers.0.mlp.up_proj", rank=4, alpha=8) == 2.0
    assert lora_scale_fix({"alpha_pattern": {"up_proj": 16}}, "model.layers.0.mlp.up_proj", rank=4, alpha=8) == 2.0
    assert lora_scale_fix({}, "model.layers.0.mlp.up_proj", rank=4, alpha=8) == 1.0
    from peft import LoraConfig, get_peft_model
    from peft.utils import load_peft_weights
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with peft_quietly():
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, use_rslora=True,
                                                      target_modules=["up_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    peft_model.save_pretrained(tmp_path / "rs")
    b = load_peft_weights(str(tmp_path / "rs"))["base_model.model.model.layers.0.mlp.up_proj.lora_B.weight"]
    lora_b = tensors_of(export(tmp_path / "rs", "gguf-lora", tmp_path / "rs.gguf").out)["blk.0.ffn_up.weight.lora_b"]
    np.testing.assert_allclose(lora_b.data, 2 * b.numpy(), rtol=1e-6)


def test_other_architectures_are_refused_naming_what_is_supported(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "qwen")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "qwen")
    with peft_quietly():
        get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    for to in ("gguf-lora", "gguf"):
        with pytest.raises(CtxDistillError, match="supports the llama architecture.*'qwen2'.*--to merged"):
            export(tmp_path / "adapter", to, tmp_path / "out.gguf")


def test_out_is_replaced_only_with_overwrite_and_only_when_export_wrote_it(adapter, tmp_path):
    out = tmp_path / "lora.gguf"
    export(adapter, "gguf-lora", out)
    with pytest.raises(CtxDistillError, match="--overwrite"):
        export(adapter, "gguf-lora", out)
    export(adapter, "gguf-lora", out, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["lora.gguf"]  # no temporary file left behind

    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(CtxDistillError, match="not a GGUF file"):
        export(adapter, "gguf-lora", notes, overwrite=True)
    assert notes.read_text() == "mine"

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(CtxDistillError, match="did not write"):
        export(adapter, "merged", folder, overwrite=True)
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
    with pytest.raises(CtxDistillError, match="is a folder"):
        export(adapter, "gguf-lora", folder)
    with pytest.raises(CtxDistillError, match="q8_0 is a GGUF quantization"):
        export(adapter, "merged", tmp_path / "m", outtype="q8_0")


def test_not_an_adapter_is_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CtxDistillError, match="neither a PEFT adapter folder"):
        export(tmp_path / "empty", "gguf-lora", tmp_path / "x.gguf")


def test_cli_export(adapter, tmp_path, capsys):
    assert main(["export", "--adapter", str(adapter), "--to", "gguf-lora", "--out", str(tmp_path / "a.gguf")]) == 0
    assert "--lora" in capsys.readouterr().out
    assert main(["export", "--adapter", str(adapter), "--to", "gguf-lora", "--out", str(tmp_path / "a.gguf")]) == 2
    assert "already exists" in capsys.readouterr().err
