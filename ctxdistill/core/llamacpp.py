"""The llama.cpp generation backend (`generation_backend: llamacpp`; `pip install 'ctxdistill[llamacpp]'`).

The torch model's own weights are written once as a GGUF (ctxdistill.core.export; cached under
core.models.cache_dir()/gguf), and llama.cpp decodes many sequences at once through its low-level API: one
llama_batch per step holds one token of every unfinished sequence, each with its own seq_id. The tokens every
prompt of a batch starts with (chat template, context) are decoded once with all the batch's seq_ids, so the KV
cache holds them once. The next token is drawn here from llama.cpp's logits with the same code as the torch loop
(generation.sample_next, the stop-token mask of min_new_tokens, context-amplified logits), so both backends sample
the same distribution. A LoRA student is handed over as a GGUF LoRA (`use_lora`) and applied by llama.cpp on top of
the base weights. Only token ids go in and out: the torch model still scores every sampled token for the loss.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ctxdistill import CtxDistillError
from ctxdistill.core.generation import sample_next, stop_token_ids
from ctxdistill.core.objectives import amplified_logprobs

GGUF_OUTTYPES = ("f32", "f16", "bf16")
_LOG_CALLBACK = None  # kept referenced: llama.cpp calls it for as long as the library is loaded
GGML_LOG_LEVEL_ERROR = 4  # ggml.h (NONE, DEBUG, INFO, WARN, ERROR, CONT); the binding does not export them


# Sequences decoded together at most. In a unified KV cache every sequence's attention spans the cells of all
# of them, so the cost per token grows with the batch: on the default model (2 CPU threads, 96 new tokens) f16
# decoding gave 121, 156 and 59 tok/s at batch 8, 16 and 64 (benchmarks/generation.py).
MAX_SEQUENCES = 16


def llama_cpp_module():
    """The llama_cpp binding, or an error that says how to install it."""
    try:
        import llama_cpp
    except ImportError as e:
        raise CtxDistillError("generation_backend: llamacpp needs llama-cpp-python. Install it with "
                              "`pip install 'ctxdistill[llamacpp]'` (builds llama.cpp from source: several minutes), "
                              "or set generation_backend: torch.") from e
    return llama_cpp


def _quiet(llama_cpp) -> None:
    """llama.cpp logs every model load and context creation to stderr; keep only its errors."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        @llama_cpp.llama_log_callback
        def callback(level, text, user_data):
            if level == GGML_LOG_LEVEL_ERROR:
                print(text.decode("utf-8", "replace"), end="", flush=True)

        _LOG_CALLBACK = callback
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()


# ----------------------------------------------------------------------------------------------- the base GGUF

def base_state_dict(model) -> dict[str, torch.Tensor]:
    """The base weights of `model` under transformers' names: a PEFT model's LoRA layers are left out (the LoRA
    goes to llama.cpp separately), so this is the base model however many adapters it carries."""
    from ctxdistill.core.forward import base_model

    plain = {}
    for name, value in base_model(model).state_dict().items():
        if ".lora_" in name or "lora_embedding" in name:
            continue
        plain[name.replace(".base_layer.", ".")] = value
    return plain


def gguf_cache_file(base: str, model, outtype: str) -> Path:
    """Where the base model's GGUF is kept: one file per base model (by resolved path), weight dtype and GGUF type."""
    from ctxdistill.core.forward import base_model
    from ctxdistill.core.models import DEFAULT_MODEL, cache_dir, default_model_path

    dtype = str(next(base_model(model).parameters()).dtype).removeprefix("torch.")
    # 'default' is keyed by the folder it converts to: an adapter names its base by that folder, and the same
    # weights must not be exported twice under two names.
    path = default_model_path() if base == DEFAULT_MODEL else Path(base).expanduser()
    where = str(path.resolve()) if path.exists() else base
    key = hashlib.sha256(f"{where}\n{dtype}".encode()).hexdigest()[:12]
    return cache_dir() / "gguf" / f"{Path(where).name or 'model'}-{key}-{dtype}-{outtype}.gguf"


def base_gguf(model, base: str, outtype: str = "f16", out: Path | None = None,
              vocab_from: Path | None = None) -> Path:
    """The GGUF of `model`'s base weights (written on first use, then reused). `base` is the model as --model
    names it; the tokenizer is copied from the GGUF the base came from ('default', a .gguf file) or `vocab_from`."""
    from ctxdistill.core.forward import base_model
    from ctxdistill.core.export import export_state_dict_gguf, gguf_origin

    if outtype not in GGUF_OUTTYPES:
        raise CtxDistillError(f"llamacpp_outtype must be one of {', '.join(GGUF_OUTTYPES)}, got {outtype!r}.")
    out = Path(out) if out is not None else gguf_cache_file(base, model, outtype)
    if out.is_file():
        return out
    vocab_from = vocab_from or gguf_origin(base)
    if vocab_from is None:
        raise CtxDistillError(f"generation_backend: llamacpp hands the model to llama.cpp as a GGUF, with the "
                              f"tokenizer of the GGUF the model came from; the model {base} is a transformers "
                              "folder or hub id, not a GGUF. Use --model default or --model FILE.gguf, or "
                              "generation_backend: torch.")
    return export_state_dict_gguf(base_state_dict(model), base_model(model).config, Path(vocab_from), out, outtype)


# ---------------------------------------------------------------------------------------------------- the engine

class LlamaCppBackend:
    """`generate` as generation.TorchBackend has it, decoded by llama.cpp (see the module note)."""

    name = "llamacpp"

    def __init__(self, gguf_file: Path, stops: list[int], config, base: str | None = None,
                 n_threads: int | None = None, kv_f32: bool = False):
        self.llama_cpp = lib = llama_cpp_module()
        _quiet(lib)
        self.stops, self.config, self.base = list(stops), config, base  # config, base: for the LoRA's export
        self.n_threads = n_threads or torch.get_num_threads()
        self.kv_f32 = kv_f32
        params = lib.llama_model_default_params()
        self.model = lib.llama_model_load_from_file(str(gguf_file).encode(), params)
        if not self.model:
            raise CtxDistillError(f"llama.cpp could not load {gguf_file}; delete the file to have it written again.")
        self.n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self.model))
        self.ctx, self.n_ctx, self.n_seq = None, 0, 0
        self.lora, self.lora_dir = None, None

    @classmethod
    def for_model(cls, model, tokenizer, base: str, outtype: str = "f16", gguf_file: Path | None = None,
                  vocab_from: Path | None = None) -> "LlamaCppBackend":
        """The backend for a torch model (its base weights; a LoRA is handed over with `use_lora`)."""
        from ctxdistill.core.forward import base_model

        llama_cpp_module()  # the install hint before a GGUF is written
        path = base_gguf(model, base, outtype, gguf_file, vocab_from)
        return cls(path, stop_token_ids(model, tokenizer), base_model(model).config, base,
                   kv_f32=outtype == "f32")

    # -- context and adapter

    def _context(self, n_cells: int, n_seq: int):
        """A context with room for `n_cells` KV cells and `n_seq` sequences (a new one when it has to grow)."""
        lib = self.llama_cpp
        if self.ctx is not None and n_cells <= self.n_ctx and n_seq <= self.n_seq:
            lib.llama_memory_clear(lib.llama_get_memory(self.ctx), True)
            return self.ctx
        self.close_context()
        params = lib.llama_context_default_params()
        params.n_ctx = params.n_batch = -(-max(n_cells, 256) // 256) * 256
        params.n_seq_max = n_seq
        params.kv_unified = True  # a prompt prefix decoded once for all sequences is shared, not copied
        params.n_threads = params.n_threads_batch = self.n_threads
        params.no_perf = True
        if self.kv_f32:
            # An f32 model is the exact mode: an f32 cache, and no flash attention, whose CPU kernel rounds
            # through f16 (measured on a tiny Llama: logits 1e-3 relative off torch with it, 1e-6 without).
            params.type_k = params.type_v = lib.GGML_TYPE_F32
            params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = lib.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise CtxDistillError(f"llama.cpp could not make a context of {params.n_ctx} tokens × {n_seq} "
                                  "sequences; lower gen_batch_size or max_new_tokens.")
        self.n_ctx, self.n_seq = params.n_ctx, n_seq
        self._apply_lora()
        return self.ctx

    def _apply_lora(self) -> None:
        lib = self.llama_cpp
        if self.ctx is None:
            return
        if self.lora is None:
            lib.llama_set_adapters_lora(self.ctx, None, 0, None)
            return
        adapters = (lib.llama_adapter_lora_p_ctypes * 1)(self.lora)
        lib.llama_set_adapters_lora(self.ctx, adapters, 1, (ctypes.c_float * 1)(1.0))

    def use_lora(self, peft_model) -> None:
        """Sample from the base weights plus `peft_model`'s current LoRA (None: the base alone). The adapter is
        written as a GGUF LoRA (ctxdistill.core.export) and loaded by llama.cpp; call again after each update."""
        from ctxdistill.core.export import export_lora_dir_gguf

        lib = self.llama_cpp
        old = self.lora
        if peft_model is None:
            self.lora = None
        else:
            self.lora_dir = self.lora_dir or Path(tempfile.mkdtemp(prefix="ctxdistill-lora-"))
            name = peft_model.active_adapter  # the student's own (a teacher adapter may sit next to it)
            # embedding layers are not saved: a GGUF LoRA cannot hold them (export refuses them anyway), and
            # looking for them makes PEFT search the base model's folder and warn at every step
            peft_model.save_pretrained(self.lora_dir / "adapter", selected_adapters=[name],
                                       save_embedding_layers=False)
            saved = self.lora_dir / "adapter" / ("" if name == "default" else name)  # PEFT's layout
            path = export_lora_dir_gguf(saved, self.base, self.config, self.lora_dir / "lora.gguf")
            self.lora = lib.llama_adapter_lora_init(self.model, str(path).encode())
            if not self.lora:
                self.lora = None
                raise CtxDistillError(f"llama.cpp could not load the student's LoRA ({path}).")
        self._apply_lora()
        if old is not None:
            lib.llama_adapter_lora_free(old)

    def close_context(self) -> None:
        if self.ctx is not None:
            self.llama_cpp.llama_free(self.ctx)
            self.ctx, self.n_ctx, self.n_seq = None, 0, 0

    def close(self) -> None:
        self.close_context()
        if self.lora is not None:
            self.llama_cpp.llama_adapter_lora_free(self.lora)
            self.lora = None
        if self.model:
            self.llama_cpp.llama_model_free(self.model)
            self.model = None
        if self.lora_dir is not None:  # the folder this backend made for the student's LoRA files
            shutil.rmtree(self.lora_dir, ignore_errors=True)
            self.lora_dir = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may already be gone
            pass

    # -- decoding

    def _decode(self, entries: list[tuple[int, int, list[int], bool]]) -> np.ndarray:
        """One llama_decode of (token, position, seq_ids, wants logits) entries; the logits asked for, in order."""
        lib = self.llama_cpp
        n_seq_ids = max(len(e[2]) for e in entries)
        batch = lib.llama_batch_init(len(entries), 0, n_seq_ids)
        try:
            for i, (token, pos, seq_ids, logits) in enumerate(entries):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, len(seq_ids)
                for j, s in enumerate(seq_ids):
                    batch.seq_id[i][j] = s
                batch.logits[i] = logits
            batch.n_tokens = len(entries)
            status = lib.llama_decode(self.ctx, batch)
            if status != 0:
                raise CtxDistillError(f"llama.cpp failed to decode a batch (status {status}); lower gen_batch_size.")
        finally:
            lib.llama_batch_free(batch)
        wanted = sum(e[3] for e in entries)
        if not wanted:
            return np.zeros((0, self.n_vocab), dtype=np.float32)
        return np.ctypeslib.as_array(lib.llama_get_logits(self.ctx), shape=(wanted, self.n_vocab)).copy()

    def _prefill(self, seqs: list[list[int]]) -> np.ndarray:
        """Decode every sequence's prompt (sequence i is seq_id i); the logits after each. The tokens all prompts
        start with are decoded once, under every seq_id."""
        shared = common_prefix_length(seqs)
        all_ids = list(range(len(seqs)))
        entries = [(t, p, all_ids, False) for p, t in enumerate(seqs[0][:shared])]
        for s, ids in enumerate(seqs):
            entries += [(t, p, [s], p == len(ids) - 1) for p, t in enumerate(ids[shared:], start=shared)]
        return self._decode(entries)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], *, max_new_tokens: int = 128, temperature: float = 1.0,
                 seed: int | None = None, min_new_tokens: int = 0, batch_size: int = 64, desc: str = "generating",
                 show_progress: bool = True, prefix=None, contrast: list[list[int]] | None = None,
                 alpha: float = 0.0) -> list[list[int]]:
        """Complete each prompt (token ids), as generation.generate does: temperature 0 is greedy, the stop token
        is kept. `prefix` needs nothing here: a prefix all prompts share is found and decoded once anyway."""
        if seed is not None:
            torch.manual_seed(seed)
        if any(not p for p in prompts) or (contrast is not None and any(not c for c in contrast)):
            raise CtxDistillError("Every prompt to complete needs at least one token.")
        amplify = contrast is not None and alpha > 0
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[list[int] | None] = [None] * len(prompts)
        bar = tqdm(total=len(prompts), desc=desc, unit="seq", disable=not show_progress, dynamic_ncols=True)
        try:
            batch_size = min(batch_size, MAX_SEQUENCES)
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                rows = [prompts[i] for i in idx]
                plain = [contrast[i] for i in idx] if amplify else None
                for i, completion in zip(idx, self._generate_batch(rows, plain, alpha, max_new_tokens,
                                                                   min_new_tokens, temperature)):
                    out[i] = completion
                bar.update(len(idx))
        finally:
            bar.close()
        return out  # type: ignore[return-value]

    def _generate_batch(self, rows, plain, alpha, max_new_tokens, min_new_tokens, temperature):
        """One batch: rows are seq_ids 0..n-1, their context-free views (when amplifying) n..2n-1."""
        n = len(rows)
        seqs = rows + (plain or [])
        self._context(sum(len(s) for s in seqs) + len(seqs) * max_new_tokens, len(seqs))
        logits = torch.from_numpy(self._prefill(seqs))
        positions = [len(s) for s in seqs]
        stop_ids = torch.tensor(self.stops)
        active = list(range(n))  # rows still decoding
        completions: list[list[int]] = [[] for _ in range(n)]
        for step in range(max_new_tokens):
            # logits holds the active rows' next-token logits, then (amplifying) their plain views' in the same order
            step_logits = logits[:len(active)] if plain is None else \
                amplified_logprobs(logits[:len(active)].float(), logits[len(active):].float(), alpha)
            if step < min_new_tokens:
                step_logits = step_logits.index_fill(-1, stop_ids, float("-inf"))
            tokens = sample_next(step_logits, temperature).tolist()
            still = []
            for row, token in zip(active, tokens):
                completions[row].append(token)
                if token not in self.stops:
                    still.append(row)
            active = still
            if not active or step == max_new_tokens - 1:
                break
            feed = [(completions[r][-1], r) for r in active]
            if plain is not None:
                feed += [(completions[r][-1], n + r) for r in active]
            entries = []
            for token, s in feed:
                entries.append((token, positions[s], [s], True))
                positions[s] += 1
            logits = torch.from_numpy(self._decode(entries))
        return completions


def common_prefix_length(seqs: list[list[int]]) -> int:
    """How many leading tokens all sequences share, leaving each at least its last token (whose logits are
    needed); 0 for a single sequence, which has nothing to share."""
    if len(seqs) < 2:
        return 0
    shortest = min(len(s) for s in seqs) - 1
    first = seqs[0]
    n = 0
    while n < shortest and all(s[n] == first[n] for s in seqs):
        n += 1
    return n
