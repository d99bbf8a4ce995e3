"""`ctxdistill export`: a trained adapter as a GGUF LoRA adapter (llama.cpp `--lora`, Ollama `ADAPTER`), as a GGUF
model with the adapter merged in, or as a plain transformers folder with the adapter merged in.

GGUF stores llama attention differently from transformers: llama.cpp rotates adjacent pairs of each head's rows,
transformers rotates the first half against the second half. Converters therefore permute the rows of the q and k
projections (convert_hf_to_gguf.py; transformers' GGUF reader undoes it, which is how the default model was
converted). A LoRA delta on q or k is a row-space update B·A, so only B's rows are permuted, exactly like the base
weight's. llama.cpp applies `scale · B·(A·x)` with scale = adapter.lora.alpha / rank, rank read from each tensor.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ctxdistill import CtxDistillError, __version__
from ctxdistill.core.files import atomic_write_dir, atomic_write_json
from ctxdistill.core.models import (DEFAULT_MODEL, adapter_loading, cache_dir, check_adapter, default_gguf_file,
                                    default_model_path, load_adapter, load_tokenizer, peft_quietly, resolve_model)

FORMATS = ("gguf-lora", "gguf", "merged")
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
DEFAULT_OUTTYPE = {"gguf-lora": "f32", "gguf": "f16", "merged": "f32"}  # adapters are small: keep them exact
MERGED_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
# The default model's GGUF: the package and file that ctxdistill.core.models converts the default model from.
SUPPORTED = {"llama": "llama"}  # transformers model_type -> GGUF architecture (SmolLM2, Llama 2/3, ...)
EXPORT_RECORD = "ctxdistill_export.json"  # marks a merged folder as ours: --overwrite replaces only such a folder
MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
GGUF_MAGIC = b"GGUF"
# A LoRA weight as PEFT saves it: <prefix>.<module>.lora_A.weight / lora_B.weight
LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


@dataclass
class Source:
    """What is exported: a LoRA adapter folder, or the model folder of a full fine-tune; and its base model."""
    path: Path
    kind: str  # "adapter" | "model"
    base: str | None  # as --model takes it: hub id, folder, .gguf file or 'default'
    config: dict  # adapter_config.json ({} for a model folder)


@dataclass
class ExportResult:
    out: Path
    base: str | None
    origin_gguf: Path | None  # the GGUF the base model came from, when it came from one


# ---------------------------------------------------------------------------------------------------- entry point

def export(source, to: str, out, outtype: str | None = None, model: str | None = None,
           overwrite: bool = False) -> ExportResult:
    """Write `source` (a PEFT LoRA adapter folder, or a full fine-tune's model folder) to `out` as `to`."""
    if to not in FORMATS:
        raise CtxDistillError(f"--to must be one of {', '.join(FORMATS)}, got {to!r}.")
    outtype = outtype or DEFAULT_OUTTYPE[to]
    if outtype not in OUTTYPES:
        raise CtxDistillError(f"--outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}.")
    if to == "merged" and outtype not in MERGED_DTYPES:
        raise CtxDistillError(f"--outtype {outtype} is a GGUF quantization; --to merged writes f32, f16 or bf16 "
                              "weights. Use --to gguf --outtype q8_0 for a quantized model.")
    out = Path(out).expanduser()
    src = read_source(source, model)
    check_out(out, to, overwrite, protected=[src.path])
    if to == "gguf-lora" and src.kind == "model":
        raise CtxDistillError(f"{src.path} is a full fine-tune's model folder, not a LoRA adapter: there is no "
                              "adapter to export. Use --to gguf (a GGUF model) or --to merged.")
    if src.base is None and (src.kind == "adapter" or to == "gguf"):
        raise CtxDistillError(f"{src.path} does not say which model it was trained from (no base model in its "
                              "adapter_config.json or in a manifest.json next to it); pass --model with the base "
                              "model.")
    if to == "merged":
        return ExportResult(export_merged(src, out, outtype), src.base, None)
    config = base_config(src.base)
    arch = gguf_arch(config, src.base)
    if to == "gguf-lora":
        written = export_gguf_lora(src, config, arch, out, outtype)
        with contextlib.suppress(CtxDistillError):  # only a hint for the user: which GGUF to load it onto
            return ExportResult(written, src.base, gguf_origin(src.base))
        return ExportResult(written, src.base, None)
    origin = gguf_origin(src.base)
    if origin is None:
        raise CtxDistillError(
            f"--to gguf copies the tokenizer, chat template and settings from the GGUF file the base model came "
            f"from, and the base model {src.base} is a transformers folder or hub id, not a GGUF. Export it with "
            "--to merged and convert that folder with llama.cpp's convert_hf_to_gguf.py, or use --to gguf-lora "
            "with a GGUF of the base model; GGUF bases ('default', --model FILE.gguf) export directly.")
    if out.resolve() == origin.resolve():
        raise CtxDistillError(f"--out {out} is the base model's own GGUF file; write the export to another file.")
    return ExportResult(export_gguf_model(src, arch, origin, out, outtype), src.base, origin)


# ------------------------------------------------------------------------------------------- inputs and the output

def read_source(path, model: str | None) -> Source:
    """The adapter or model folder, checked, with its base model: --model, else what the run recorded."""
    p = Path(path).expanduser()
    if (p / "adapter_config.json").is_file():
        config = check_adapter(p)
        if config.get("peft_type") != "LORA":
            raise CtxDistillError(f"{p} is a {config.get('peft_type')} adapter; export takes LoRA adapters "
                                  "(what ctxdistill trains).")
        return Source(p, "adapter", model or recorded_base(p, config), config)
    if (p / "config.json").is_file() and any((p / name).is_file() for name in MODEL_WEIGHTS):
        return Source(p, "model", model or recorded_base(p, {}), {})
    what = "does not exist" if not p.exists() else "is neither a PEFT adapter folder (adapter_config.json) nor a " \
        "model folder (config.json and weights)"
    raise CtxDistillError(f"--adapter {p} {what}. Pass OUT/adapter of a distill run, OUT/modules/NAME of a knowledge "
                          "run, or OUT/model of a full fine-tune.")


def recorded_base(path: Path, adapter_config: dict) -> str | None:
    """The base model a run recorded. The run's manifest keeps what the user passed to --model ('default', a .gguf
    file), which tells the GGUF the base came from; the adapter's own config keeps only the folder transformers
    loaded, which other tools read too."""
    recorded = None
    for manifest in (path / "module.json", path.parent / "manifest.json"):
        try:
            base = json.loads(manifest.read_text(encoding="utf-8")).get("base_model")
        except (OSError, ValueError, AttributeError):
            continue
        if base == DEFAULT_MODEL or (isinstance(base, str) and base.endswith(".gguf") and Path(base).is_file()):
            return base
        recorded = recorded or (base if isinstance(base, str) and base else None)
    base = adapter_config.get("base_model_name_or_path")
    return base if isinstance(base, str) and base else recorded


def check_out(out: Path, to: str, overwrite: bool, protected: list[Path]) -> None:
    """Refuse, before any model is loaded, an --out that would replace something export did not write."""
    if any(out.resolve() == p.resolve() for p in protected):
        raise CtxDistillError(f"--out {out} is the folder being exported; write the export somewhere else.")
    if to == "merged":
        if out.exists() and not out.is_dir():
            raise CtxDistillError(f"--out {out} is a file; --to merged writes a folder. Pass a new folder.")
        if not out.is_dir() or not any(out.iterdir()):
            return
        if not (out / EXPORT_RECORD).is_file():
            raise CtxDistillError(f"--out {out} already exists and holds files ctxdistill export did not write; "
                                  "nothing in it is touched. Pass a new or empty folder.")
        if not overwrite:
            raise CtxDistillError(f"--out {out} already holds an export; pass --overwrite to replace it, or a new "
                                  "folder.")
        return
    if out.is_dir():
        raise CtxDistillError(f"--out {out} is a folder; --to {to} writes one file. Pass a file path such as "
                              f"{out / 'model.gguf'}.")
    if not out.exists():
        return
    if not overwrite:
        raise CtxDistillError(f"--out {out} already exists; pass --overwrite to replace it, or another file name.")
    with open(out, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise CtxDistillError(f"--out {out} exists and is not a GGUF file; it is left as it is. Pass another "
                                  "file name.")


def base_config(base: str):
    """The base model's transformers config (no weights are loaded)."""
    from transformers import AutoConfig

    path, kwargs = resolve_model(base)
    try:
        return AutoConfig.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise CtxDistillError(f"Could not read the config of the base model '{base}': {e}. Pass --model with the "
                              "model the adapter was trained on (a folder, a .gguf file or 'default').") from e


def gguf_arch(config, base: str) -> str:
    arch = SUPPORTED.get(config.model_type)
    if arch is None:
        raise CtxDistillError(f"GGUF export supports the llama architecture (SmolLM2, Llama 2/3 and their "
                              f"fine-tunes); the base model {base} is '{config.model_type}'. --to merged writes a "
                              "transformers folder for any architecture.")
    return arch


def gguf_origin(base: str | None) -> Path | None:
    """The GGUF file a base model was read from: the default model's, or a .gguf passed as the model."""
    if base is None:
        return None
    if base == DEFAULT_MODEL:
        return default_gguf_file()
    if base.endswith(".gguf"):
        return Path(base).expanduser()
    path = Path(base).expanduser().resolve()
    # Only a folder in ctxdistill's model cache can be the converted default (checked first: no conversion).
    if path.parent == (cache_dir() / "models").resolve() and path == default_model_path().resolve():
        return default_gguf_file()
    return None


# ----------------------------------------------------------------------------------------- tensor names and layout

def permute_for_gguf(rows: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a q/k projection (or of its LoRA B) from transformers' rotary layout to llama.cpp's: in each head
    of d rows, row i and row i + d/2 form a rotary pair, and GGUF stores them next to each other
    (d = 4: rows 0, 2, 1, 3)."""
    head_dim = rows.shape[0] // n_head
    return rows.reshape(n_head, 2, head_dim // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def rotary_heads(gguf_name: str, config) -> int | None:
    """How many heads the rows of this tensor hold when it is a q or k projection (else None)."""
    if re.search(r"\.attn_q\.(weight|bias)$", gguf_name):
        return config.num_attention_heads
    if re.search(r"\.attn_k\.(weight|bias)$", gguf_name):
        return getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return None


def tensor_name_map(config, arch: str):
    import gguf

    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    return gguf.get_tensor_name_map(arch_id, config.num_hidden_layers)


def gguf_name(name_map, hf_name: str) -> str | None:
    return name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))


def gguf_tensors(state_dict: dict, config, arch: str) -> dict[str, np.ndarray]:
    """A transformers state dict as GGUF tensors: GGUF names, q/k rows permuted, float32."""
    name_map = tensor_name_map(config, arch)
    tensors = {}
    for hf_name, value in state_dict.items():
        if hf_name == "lm_head.weight" and getattr(config, "tie_word_embeddings", False):
            continue  # tied: llama.cpp reads the output projection from token_embd
        name = gguf_name(name_map, hf_name)
        if name is None:
            raise CtxDistillError(f"The model's weight {hf_name} has no GGUF name in the {arch} architecture; this "
                                  "model cannot be exported to GGUF.")
        data = value.detach().to(torch.float32).cpu().numpy()
        heads = rotary_heads(name, config)
        tensors[name] = permute_for_gguf(data, heads) if heads else data
    return tensors


# ------------------------------------------------------------------------------------------------- GGUF writing

def encode(data: np.ndarray, outtype: str):
    """(array, GGML type or None for plain float arrays). Vectors (norms, biases) stay f32, as llama.cpp's own
    converter keeps them; a matrix whose rows are not whole quantization blocks falls back to f16."""
    import gguf

    data = np.ascontiguousarray(data, dtype=np.float32)
    if outtype == "f32" or data.ndim < 2:
        return data, None
    if outtype == "f16":
        return data.astype(np.float16), None
    qtype = {"bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[outtype]
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.quants.QuantError:
        return data.astype(np.float16), None


def file_type(outtype: str) -> int:
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]


def write_gguf(out: Path, arch: str, kvs: dict, tensors: dict[str, np.ndarray], outtype: str) -> Path:
    """A GGUF file of `kvs` (key -> gguf GGUFValue) and `tensors` (GGUF name -> float array, in file order),
    written to a temporary file next to `out` and renamed over it."""
    import gguf

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(tmp, arch)
        for key, v in kvs.items():
            writer.add_key_value(key, v.value, v.type, v.sub_type)
        writer.add_file_type(file_type(outtype))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for name, data in tensors.items():
            array, raw_type = encode(data, outtype)
            writer.add_tensor(name, array, raw_dtype=raw_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    write_file_atomically(out, write)
    return out


def write_file_atomically(out: Path, write) -> None:
    """`write(tmp_path)` fills a temporary file in out's folder, which then replaces `out` in one rename (GGUFWriter
    opens its file by path, so core.files' file-object helpers do not fit)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the file gets what a plain open() would give
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_kvs(reader) -> dict:
    """Every key-value of a GGUF file as gguf GGUFValues, strings kept as raw bytes so they copy unchanged."""
    import gguf
    from gguf.gguf_writer import GGUFValue

    T = gguf.GGUFValueType
    kvs = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):  # the header's counts, which GGUFReader lists as fields
            continue
        kind = field.types[0]
        if kind == T.ARRAY:
            sub = field.types[-1]
            if len(field.types) > 2:
                raise CtxDistillError(f"The GGUF key {key} holds nested arrays, which export cannot copy.")
            items = [bytes(field.parts[i]) for i in field.data] if sub == T.STRING else field.contents()
            kvs[key] = GGUFValue(items, T.ARRAY, sub)
        elif kind == T.STRING:
            kvs[key] = GGUFValue(bytes(field.parts[-1]), T.STRING)
        else:
            kvs[key] = GGUFValue(field.contents(), kind)
    return kvs


def llama_hparams(config, arch: str = "llama") -> dict:
    """The hyper-parameter key-values llama.cpp reads for a llama model with this transformers config."""
    import gguf
    from gguf.gguf_writer import GGUFValue

    T, K = gguf.GGUFValueType, gguf.Keys
    rope = getattr(config, "rope_parameters", None) or {}
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    ints = {K.LLM.CONTEXT_LENGTH: config.max_position_embeddings, K.LLM.EMBEDDING_LENGTH: config.hidden_size,
            K.LLM.BLOCK_COUNT: config.num_hidden_layers, K.LLM.FEED_FORWARD_LENGTH: config.intermediate_size,
            K.Attention.HEAD_COUNT: config.num_attention_heads,
            K.Attention.HEAD_COUNT_KV: config.num_key_value_heads or config.num_attention_heads,
            K.LLM.VOCAB_SIZE: config.vocab_size, K.Rope.DIMENSION_COUNT: head_dim}
    floats = {K.Rope.FREQ_BASE: rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)),
              K.Attention.LAYERNORM_RMS_EPS: config.rms_norm_eps}
    return {**{k.format(arch=arch): GGUFValue(int(v), T.UINT32) for k, v in ints.items()},
            **{k.format(arch=arch): GGUFValue(float(v), T.FLOAT32) for k, v in floats.items()}}


# Hyper-parameters that must agree between the model and the GGUF whose metadata is copied: the tensor shapes
# check the rest, and these decide how q/k are permuted.
MUST_AGREE = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count",
              "attention.head_count_kv")


# --------------------------------------------------------------------------------------------------- gguf-lora

def export_gguf_lora(src: Source, config, arch: str, out: Path, outtype: str) -> Path:
    """A GGUF LoRA adapter: general.type adapter, adapter.type lora, adapter.lora.alpha, and for each adapted
    weight W (GGUF name N) the tensors N.lora_a (A, [r, in]) and N.lora_b (B, [out, r]; rows permuted for q/k)."""
    import gguf
    from gguf.gguf_writer import GGUFValue

    pairs = lora_pairs(src)
    shapes = base_shapes(config)
    name_map = tensor_name_map(config, arch)
    alpha = float(src.config.get("lora_alpha", 8))  # PEFT's default
    if alpha <= 0:  # llama.cpp reads alpha 0 as "no scaling", not as a zero delta
        raise CtxDistillError(f"{src.path}/adapter_config.json has lora_alpha {alpha}; the adapter changes nothing.")
    tensors = {}
    for module, (a, b) in pairs.items():
        check_fits(src, module, a, b, shapes)
        name = gguf_name(name_map, module + ".weight")
        if module == "lm_head" and getattr(config, "tie_word_embeddings", False):
            raise CtxDistillError(f"The adapter adapts lm_head, which {src.base} shares with its embeddings: a GGUF "
                                  "of it has no output weight to put a LoRA on. Use --to gguf or --to merged.")
        if name is None:
            raise CtxDistillError(f"The adapter adapts {module}, which has no GGUF tensor in the {arch} architecture; "
                                  "use --to gguf or --to merged.")
        b = b * lora_scale_fix(src.config, module, a.shape[0], alpha)
        heads = rotary_heads(name, config)
        tensors[name + ".lora_a"] = a
        tensors[name + ".lora_b"] = permute_for_gguf(b, heads) if heads else b
    T = gguf.GGUFValueType
    kvs = {gguf.Keys.General.TYPE: GGUFValue(gguf.GGUFType.ADAPTER, T.STRING),
           gguf.Keys.General.NAME: GGUFValue(src.path.resolve().name, T.STRING),
           gguf.Keys.Adapter.TYPE: GGUFValue("lora", T.STRING),
           gguf.Keys.Adapter.LORA_ALPHA: GGUFValue(alpha, T.FLOAT32)}
    return write_gguf(out, arch, kvs, tensors, outtype)


def lora_pairs(src: Source) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """module name -> (A, B) as float32 arrays, from the adapter's weights. What a GGUF LoRA cannot hold (DoRA
    magnitudes, LoRA biases, embedding LoRA, fully trained modules) is refused with the formats that can."""
    from peft.utils import load_peft_weights

    cfg = src.config
    other = "; --to gguf or --to merged merge it into the weights instead."
    if cfg.get("use_dora"):
        raise CtxDistillError(f"{src.path} is a DoRA adapter, which llama.cpp's LoRA format cannot express{other}")
    if cfg.get("lora_bias"):
        raise CtxDistillError(f"{src.path} trains LoRA biases, which llama.cpp's LoRA format cannot express{other}")
    with adapter_loading(src.path, None):  # a damaged weights file: one error that names the adapter
        weights = load_peft_weights(str(src.path), device="cpu")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        match = LORA_KEY.match(key)
        if not match:
            raise CtxDistillError(f"{src.path} holds the weight {key}, which is not a LoRA A/B matrix of a linear "
                                  f"layer (e.g. modules_to_save or an embedding LoRA); a GGUF LoRA cannot hold "
                                  f"it{other}")
        parts.setdefault(match["module"], {})[match["part"]] = value
    if not parts:
        raise CtxDistillError(f"{src.path} holds no LoRA weights. Pass an adapter written by a distill run.")
    for module, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise CtxDistillError(f"{src.path}: the LoRA of {module} lacks its lora_{'B' if 'A' in ab else 'A'} "
                                  "weight; the adapter is damaged. Write it again.")
    return {m: (ab["A"].to(torch.float32).numpy(), ab["B"].to(torch.float32).numpy()) for m, ab in parts.items()}


def base_shapes(config) -> dict[str, tuple]:
    """The shape of every weight of the base model, from its config alone (built on the meta device)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}


def check_fits(src: Source, module: str, a: np.ndarray, b: np.ndarray, shapes: dict) -> None:
    weight = shapes.get(module + ".weight")
    if weight is None or len(weight) != 2:
        raise CtxDistillError(f"The adapter {src.path} adapts {module}, which the base model {src.base} does not "
                              "have as a linear layer. Pass --model with the model the adapter was trained on.")
    if a.shape[0] != b.shape[1] or a.shape[1] != weight[1] or b.shape[0] != weight[0]:
        raise CtxDistillError(f"The adapter {src.path} does not fit the base model {src.base}: {module} is "
                              f"{list(weight)} there, and its LoRA is B{list(b.shape)}·A{list(a.shape)}. Pass "
                              "--model with the model the adapter was trained on.")


def lora_scale_fix(cfg: dict, module: str, rank: int, alpha: float) -> float:
    """The factor to fold into B so that llama.cpp's scale (alpha / rank, with one alpha for the whole file) equals
    PEFT's for this module (its own alpha from alpha_pattern; divided by sqrt(rank) with rsLoRA). 1 for a plain
    LoRA."""
    from peft.utils.other import get_pattern_key

    alpha_pattern = cfg.get("alpha_pattern") or {}
    module_alpha = float(alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), alpha))
    peft_scale = module_alpha / (rank ** 0.5 if cfg.get("use_rslora") else rank)
    llama_cpp_scale = alpha / rank
    return 1.0 if peft_scale == llama_cpp_scale else peft_scale / llama_cpp_scale


# ------------------------------------------------------------------------------------------- merged models

def merged_model(src: Source):
    """The base with the adapter merged into its weights (PEFT merge_and_unload), in float32 on the CPU; a full
    fine-tune's folder as it is. No tokenizer: a GGUF export copies it from the base's GGUF file."""
    from transformers import AutoModelForCausalLM

    path, kwargs = (str(src.path), {}) if src.kind == "model" else resolve_model(src.base)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs).eval()
    except (OSError, ValueError) as e:
        raise CtxDistillError(f"Could not load the model {path}: {e}. Without internet only local paths, cached "
                              "hub ids and 'default' work.") from e
    if src.kind == "model":
        return model
    with peft_quietly():
        return load_adapter(model, str(src.path)).merge_and_unload().eval()


def plain_model(model):
    """A model loaded from a GGUF keeps GGUF bookkeeping in its config that save_pretrained rejects: rebuild it
    from its config and weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = model.config.to_dict()
    if "quantization_config" not in config:
        return model
    config.pop("quantization_config")
    config.pop("_name_or_path", None)
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and plain.config.tie_word_embeddings)]
    if missing or unexpected:
        raise CtxDistillError(f"Could not rebuild the GGUF-loaded model as a transformers model: missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]}.")
    return plain.eval()


def export_merged(src: Source, out: Path, outtype: str) -> Path:
    """A plain transformers folder (save_pretrained + tokenizer) of the merged model, plus a record of the export."""
    tokenizer = load_tokenizer(str(src.path) if src.kind == "model" else src.base)
    model = plain_model(merged_model(src)).to(MERGED_DTYPES[outtype])
    record = {"format": "merged", "source": str(src.path.resolve()), "base_model": src.base, "outtype": outtype,
              "ctxdistill": __version__}

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / EXPORT_RECORD, record)

    return atomic_write_dir(out, fill, ".export-")


def export_gguf_model(src: Source, arch: str, origin: Path, out: Path, outtype: str) -> Path:
    """The merged model as a GGUF file whose metadata (tokenizer, chat template, hyper-parameters) is copied from
    the GGUF the base came from; tensors follow that file's order."""
    import gguf

    try:
        reader = gguf.GGUFReader(origin)
    except (OSError, ValueError) as e:
        raise CtxDistillError(f"Could not read the base model's GGUF file {origin}: {e}.") from e
    kvs = read_kvs(reader)
    origin_arch = kvs.get(gguf.Keys.General.ARCHITECTURE)
    if origin_arch is None or origin_arch.value.decode() != arch:
        raise CtxDistillError(f"{origin} is not a GGUF of a {arch} model (general.architecture is "
                              f"{origin_arch.value.decode() if origin_arch else 'missing'}).")
    model = merged_model(src)
    check_hparams(kvs, model.config, arch, origin)
    ours = gguf_tensors(model.state_dict(), model.config, arch)
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        if t.name not in ours:  # e.g. rope_freqs: not a transformers weight, copied as the base has it
            tensors[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
            continue
        if ours[t.name].shape != shape:
            raise CtxDistillError(f"{origin} does not hold this model's base: {t.name} is {list(shape)} there and "
                                  f"{list(ours[t.name].shape)} in the model. Pass --model with the GGUF it came from.")
        tensors[t.name] = ours.pop(t.name)
    if ours:
        raise CtxDistillError(f"{origin} does not hold this model's base: it has no {', '.join(sorted(ours)[:3])}. "
                              "Pass --model with the GGUF the model came from.")
    keep = {k: v for k, v in kvs.items() if k not in (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE,
                                                          gguf.Keys.General.QUANTIZATION_VERSION)}
    return write_gguf(out, arch, keep, tensors, outtype)


def export_state_dict_gguf(state_dict: dict, config, vocab_from: Path, out: Path, outtype: str) -> Path:
    """A transformers state dict (llama architecture) as a GGUF model that llama.cpp loads, with the tokenizer
    (vocabulary, merges, special ids, chat template) copied from the GGUF `vocab_from` and the hyper-parameters
    from `config`. Unlike --to gguf, the model need not have the shapes of `vocab_from`'s model, only its
    tokenizer: this is how the generation backend hands the torch model's own weights to llama.cpp."""
    import gguf
    from gguf.gguf_writer import GGUFValue

    arch = gguf_arch(config, getattr(config, "_name_or_path", "the model"))
    try:
        kvs = read_kvs(gguf.GGUFReader(vocab_from))
    except (OSError, ValueError) as e:
        raise CtxDistillError(f"Could not read the tokenizer GGUF file {vocab_from}: {e}.") from e
    tokens = kvs.get(gguf.Keys.Tokenizer.LIST)
    if tokens is None or len(tokens.value) != config.vocab_size:
        raise CtxDistillError(f"{vocab_from} does not hold this model's tokenizer: "
                              f"{len(tokens.value) if tokens else 0} tokens there, {config.vocab_size} in the model.")
    keep = {k: v for k, v in kvs.items() if k.startswith("tokenizer.")}
    name = {gguf.Keys.General.NAME: GGUFValue(str(getattr(config, "_name_or_path", "") or "model"),
                                              gguf.GGUFValueType.STRING)}
    return write_gguf(out, arch, {**name, **llama_hparams(config, arch), **keep},
                      gguf_tensors(state_dict, config, arch), outtype)


def export_lora_dir_gguf(adapter_dir: Path, base: str | None, config, out: Path, outtype: str = "f32") -> Path:
    """A saved PEFT LoRA folder as a GGUF LoRA for the model with transformers `config` (see export_gguf_lora)."""
    src = Source(Path(adapter_dir), "adapter", base, check_adapter(Path(adapter_dir)))
    return export_gguf_lora(src, config, gguf_arch(config, str(base)), out, outtype)


def check_hparams(kvs: dict, config, arch: str, origin: Path) -> None:
    expected = llama_hparams(config, arch)
    for key in (f"{arch}.{k}" for k in MUST_AGREE):
        theirs = kvs.get(key)
        if theirs is not None and theirs.value != expected[key].value:
            raise CtxDistillError(f"{origin} does not hold this model's base: {key} is {theirs.value} there and "
                                  f"{expected[key].value} in the model. Pass --model with the GGUF it came from.")
