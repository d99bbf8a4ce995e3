"""The Python API, for notebooks and scripts: `distill`, `load`, `chat`, `evaluate`, `combine_modules`.

Each function runs what the matching command runs, so a call is checked as the command is and fails with the same
`CtxDistillError` message: `distill` goes through `ctxdistill distill`'s own checks (`cli.run_distill`), `chat`
renders the conversation with the model's chat template and stops at the same tokens as `ctxdistill chat`, which
streams through it. Heavy libraries (torch, transformers) are imported by the functions, not by this module, so
`import ctxdistill` stays cheap.
"""

from __future__ import annotations

import difflib
import json
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ctxdistill import CtxDistillError

__all__ = ["DistillResult", "Evaluation", "chat", "combine_modules", "distill", "evaluate", "load", "trim_history"]

CONTEXT_FILE_SUFFIXES = (".txt", ".md", ".json")  # what a context file is called (see data.inputs.read_context)


# ---------------------------------------------------------------------------------------------------- distill


@dataclass
class DistillResult:
    """A finished run: where it is, what it trained, its metrics (manifest.json) and its before/after table."""

    recipe: str
    out: Path
    adapter: Path | None  # the PEFT adapter (OUT/adapter; experience: OUT/consolidated/adapter); None otherwise
    model_dir: Path | None  # full fine-tuning: OUT/model, a plain transformers model
    modules: list[Path]  # knowledge with per_document=True: one adapter per document, under OUT/modules
    metrics: dict  # manifest.json's "metrics"
    table: str  # the table `ctxdistill distill` prints; "" when the run had no eval questions
    inputs: dict  # the inputs the run was given, by keyword (context text given as a string: OUT/inputs/*.txt)
    _loaded: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def load(self):
        """(model, tokenizer) with what the run trained on; loaded once, then the same pair is returned."""
        if self._loaded is None:
            if self.adapter is not None:
                self._loaded = load(self.adapter)
            elif self.model_dir is not None:
                self._loaded = load(model=str(self.model_dir))
            elif self.modules:
                self._loaded = load(self.modules)  # every module active: their deltas add up
            else:
                raise CtxDistillError(f"{self.out} holds no adapter, model or modules to load.")
        return self._loaded


def distill(recipe: str, *, out, config=None, resume: bool = False, columns: dict | None = None,
            **keys) -> DistillResult | None:
    """Run a recipe as `ctxdistill distill RECIPE` does and return what it made.

    Inputs are the command's flags as keywords: `context` (a path, a list of paths, or the context's text itself),
    `prompts`, `examples`, `init_adapter`, `eval`, `retention`, `docs`, `qa`, `stream`, `per_document`, `tasks`,
    `checker`; `columns` maps the columns of inputs given as datasets ({"prompt": ..., "split": ...}: the
    --KEY-column flags and --split). `config` is a YAML file (--config). Every other keyword is a config key, as
    with --set, given as a Python value: `distill("offline", out="runs/p", context="persona.json", lora_r=8)`.
    Returns None in the processes of a multi-process run other than the main one."""
    from ctxdistill.cli import CONFIG_FLAGS, INPUT_FLAGS, run_distill

    if not isinstance(out, (str, os.PathLike)):
        raise CtxDistillError(f"out must be a folder path (str or Path), got {out!r}.")
    by_keyword = {_keyword(flag): name for name, (flag, _) in INPUT_FLAGS.items()}
    _refuse_misspelt_inputs(keys, by_keyword)
    given = {by_keyword[k]: keys.pop(k) for k in list(keys) if k in by_keyword}
    inputs = {name: _input_value(name, value, INPUT_FLAGS) for name, value in given.items()}
    flags = {k: _plain(k, keys.pop(k)) for k in list(keys) if k in CONFIG_FLAGS}
    sets = [_set_item(key, value) for key, value in keys.items()]
    with tempfile.TemporaryDirectory(prefix="ctxdistill-context-") as tmp:  # context text, until the run ends
        texts = {}
        if inputs.get("context"):
            inputs["context"], texts = _context_files(inputs["context"], Path(tmp))
        run = run_distill(recipe, os.fspath(out), inputs=inputs, config_file=_path_or_none(config, "config"),
                          sets=sets, flags=flags, resume=bool(resume), **({"columns": columns} if columns else {}))
        if run is None:
            return None
        if texts:
            inputs["context"] = _keep_context_texts(Path(out), inputs["context"], texts)
    return _distill_result(recipe, run, {k: inputs[n] for k, n in by_keyword.items() if n in inputs})


def _keyword(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _refuse_misspelt_inputs(keys: dict, by_keyword: dict) -> None:
    """A keyword that is no config key and is closest to an input's name is a misspelt input: say so, rather than
    let it be refused as an unknown config key."""
    from ctxdistill.config import CONFIGS

    config_keys = {k for cls in CONFIGS.values() for k in cls.model_fields}
    for key in keys:
        if key in by_keyword or key in config_keys:
            continue
        close = difflib.get_close_matches(key, [*by_keyword, *config_keys], n=1)
        if close and close[0] in by_keyword:
            raise CtxDistillError(f"Unknown argument '{key}'. Did you mean {close[0]}? The inputs are: "
                                  f"{', '.join(by_keyword)}; other keywords are config keys.")


def _input_value(name: str, value, input_flags: dict):
    """An input as the command line would hand it to the recipe: paths as strings, switches as booleans."""
    flag, settings = input_flags[name]
    keyword = _keyword(flag)
    if value is None:
        return [] if name == "context" else None
    if settings.get("action") == "store_true":
        if not isinstance(value, bool):
            raise CtxDistillError(f"{keyword} must be True or False (the {flag} switch), got {value!r}.")
        return value
    if name == "context":
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        return [_path_or_text(item, keyword) for item in items]
    if "type" in settings:  # a flag argparse parses: its text is parsed the same way, a parsed value passes
        return _parsed(settings["type"], value, flag) if isinstance(value, str) else value
    return _path_or_none(value, keyword)


def _parsed(parse, text: str, flag: str):
    import argparse

    try:
        return parse(text)
    except (argparse.ArgumentTypeError, ValueError) as e:
        raise CtxDistillError(f"{flag} {text!r}: {e}") from e


def _path_or_none(value, keyword: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise CtxDistillError(f"{keyword} must be a file path (str or Path), got {type(value).__name__} {value!r}.")
    return os.fspath(value)


def _path_or_text(value, keyword: str):
    """A context given as a Path, or as a string that names a file, stays a path; any other string is the text."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if not isinstance(value, str):
        raise CtxDistillError(f"{keyword} takes paths (str or Path) or the context's text, got "
                              f"{type(value).__name__} {value!r}.")
    if not value.strip():
        raise CtxDistillError(f"{keyword} is empty: pass a path to a context file, or the context's text.")
    return value if names_a_file(value) else ContextText(value)


class ContextText(str):
    """A context given as its text: written to a file for the recipe, which reads contexts from files."""


def names_a_file(text: str) -> bool:
    """Whether a string given as a context is a path: it names an existing file, or looks like a file name (one line
    ending in .txt/.md/.json, or one line without spaces holding a '/'); so a missing file is reported as missing
    instead of being distilled as text. Pass a `Path` to make a string a path whatever it looks like."""
    if "\n" in text or not text.strip():
        return False
    try:
        if Path(text).expanduser().is_file():
            return True
    except OSError:  # e.g. a name too long for the file system: text
        return False
    return Path(text).suffix.lower() in CONTEXT_FILE_SUFFIXES or (" " not in text and os.sep in text)


def _context_files(items: list, folder: Path) -> tuple[list[str], dict[str, str]]:
    """Context text written as `context-N.txt` into a temporary folder (never the user's): the paths for the recipe,
    and which of them hold text given as a string."""
    from ctxdistill.core.files import atomic_write_text

    paths, texts = [], {}
    for n, item in enumerate(items, 1):
        if isinstance(item, ContextText):
            path = folder / f"context-{n}.txt"
            atomic_write_text(path, str(item))
            texts[str(path)] = str(item)
            item = str(path)
        paths.append(item)
    return paths, texts


def _keep_context_texts(out: Path, paths: list[str], texts: dict[str, str]) -> list[str]:
    """After the run, context text given as a string is kept in OUT/inputs/, with the name the run knew it by, so
    the run folder says what it was made from (and `evaluate` can read it back)."""
    from ctxdistill.core.files import atomic_write_text

    kept = []
    for path in paths:
        if path in texts:
            target = out / "inputs" / Path(path).name
            atomic_write_text(target, texts[path])
            path = str(target)
        kept.append(path)
    return kept


def _set_item(key: str, value) -> str:
    """A config key given in Python as the `key=value` --set would have: the value as YAML, which --set reads back
    into the same value, so it is checked, and refused, exactly as on the command line."""
    import yaml

    return f"{key}={yaml.safe_dump(_plain(key, value), default_flow_style=True, width=float('inf'))}"


def _plain(key: str, value):
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(key, v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(key, v) for k, v in value.items()}
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise CtxDistillError(f"{key}={value!r}: a config value must be a str, number, bool, None, list or dict "
                          f"(got {type(value).__name__}).")


def _distill_result(recipe: str, run, inputs: dict) -> DistillResult:
    out = Path(run.out)
    manifest_file = out / "manifest.json"
    manifest = json.loads(manifest_file.read_text(encoding="utf-8")) if manifest_file.is_file() else {}
    adapter, model_dir, modules = _trained(out, run.artifacts)
    return DistillResult(recipe, out, adapter, model_dir, modules, manifest.get("metrics", run.metrics),
                         run.table, inputs)


def _trained(out: Path, artifacts: list[str]) -> tuple[Path | None, Path | None, list[Path]]:
    """What a run trained, found among its artifacts: an adapter, a full model, or a folder of modules."""
    from ctxdistill.recipes.module_library import find_modules, is_adapter

    adapter, model_dir, modules = None, None, []
    for name in artifacts:
        path = out / name
        if is_adapter(path):
            adapter = path
        elif is_adapter(path / "adapter"):  # a run inside the run (experience's consolidation)
            adapter = path / "adapter"
        elif name == "model" and path.is_dir():
            model_dir = path
        elif name == "modules" and path.is_dir():
            modules = [Path(m["path"]) for m in find_modules(path)[0]]
    return adapter, model_dir, modules


# ---------------------------------------------------------------------------------------------------- models


def load(adapter=None, *, model: str | None = None, dtype: str = "auto", device: str | None = None):
    """(model, tokenizer): the base model (`model`, else the one the adapters name) with every adapter given on it
    and active (several modules: their deltas add up); without an adapter, the model alone ("default" if none)."""
    from ctxdistill.core.models import load_model
    from ctxdistill.recipes.module_library import base_of, load_adapters, read_module

    adapters = [_path_or_none(a, "adapter") for a in _as_list(adapter)]
    if not adapters:
        loaded, tokenizer, _ = load_model(model or "default", dtype, device)
        return loaded, tokenizer
    for a in adapters:
        read_module(a)  # a clear error for a folder that is not an adapter or is damaged, before any model loads
    base = base_of(adapters, model)
    try:
        loaded, tokenizer, _ = load_model(base, dtype, device)
    except CtxDistillError as e:
        if model:
            raise
        raise CtxDistillError(f"{e} (It is the base model named in {adapters[0]}/adapter_config.json; pass --model "
                              "(in Python: model=) to load the adapter onto that model from elsewhere.)") from e
    return load_adapters(loaded, adapters), tokenizer


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _model_and_tokenizer(model_or_result):
    if isinstance(model_or_result, DistillResult):
        return model_or_result.load()
    if isinstance(model_or_result, (tuple, list)) and len(model_or_result) == 2:
        return tuple(model_or_result)
    raise CtxDistillError("Pass a DistillResult (from distill) or a (model, tokenizer) pair (from load), got "
                          f"{type(model_or_result).__name__}.")


def combine_modules(modules, out, *, weights: list[float] | None = None, how: str = "cat", rank: int | None = None,
                    model: str | None = None, overwrite: bool = False) -> Path:
    """One plain PEFT adapter at `out` from several modules, as `ctxdistill modules combine` makes it. `modules`:
    adapter folders, or DistillResults (a per-document knowledge run gives all of its modules)."""
    from ctxdistill.recipes.module_library import combine

    paths = []
    for item in _as_list(modules):
        if isinstance(item, DistillResult):
            paths += [str(p) for p in (item.modules or [item.adapter]) if p is not None]
        else:
            paths.append(_path_or_none(item, "modules"))
    return combine(paths, _path_or_none(out, "out"), weights, how, rank, model, overwrite)


# ---------------------------------------------------------------------------------------------------- chat


def chat(model_or_result, prompt: str, history: list | None = None, stream: bool = False, *, context=None,
         context_kind: str = "system", max_new_tokens: int = 128):
    """The model's greedy reply to `prompt`, through its chat template.

    `history`: a list of {"role", "content"} messages of the conversation so far; it is updated in place (the prompt
    and the reply are appended; the oldest turns are dropped, with a warning, when it outgrows the model's window).
    `stream=True` returns an iterator of text pieces as they are generated (the history is updated when it ends).
    `context`: shown to the model as the teacher sees it (a path, or the text); `context_kind` says where."""
    model, tokenizer = _model_and_tokenizer(model_or_result)
    if not isinstance(prompt, str) or not prompt.strip():
        raise CtxDistillError(f"chat needs a prompt: a non-empty string, got {prompt!r}.")
    shown = _shown_context(context, context_kind)
    notice = trim_history(model, tokenizer, history, prompt, context=shown, max_new_tokens=max_new_tokens)
    if notice:
        warnings.warn(notice, stacklevel=2)
    messages = [*_checked_history(history), {"role": "user", "content": prompt}]
    ids = _render(tokenizer, messages, shown)

    def remember(reply: str) -> None:
        if history is not None:
            history.extend([messages[-1], {"role": "assistant", "content": reply}])

    if stream:
        return _remembered(_stream_reply(model, tokenizer, ids, max_new_tokens), remember)
    reply = tokenizer.decode(_generate(model, tokenizer, ids, max_new_tokens), skip_special_tokens=True).strip()
    remember(reply)
    return reply


def trim_history(model, tokenizer, history: list | None, prompt: str, *, context=None,
                 max_new_tokens: int = 128) -> str | None:
    """Drop the oldest turns of `history` (in place) until it, the prompt and `max_new_tokens` fit the model's
    window; system messages at its start stay. Returns the one-line notice to show when turns were dropped."""
    from ctxdistill.recipes.common import model_window

    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise CtxDistillError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}.")
    messages = [*_checked_history(history), {"role": "user", "content": prompt}]
    window = model_window(model, None)
    room = window - max_new_tokens
    dropped = 0
    while len(_render(tokenizer, messages, context)) > room:
        first = next(i for i, m in enumerate(messages) if m["role"] != "system")
        if first == len(messages) - 1:
            raise CtxDistillError(f"The message does not fit the model's window of {window} tokens with room for "
                                  f"max_new_tokens={max_new_tokens}: shorten it, or lower max_new_tokens "
                                  "(--max-new-tokens).")
        end = next(i for i in range(first + 1, len(messages)) if messages[i]["role"] == "user")
        del messages[first:end]  # one exchange: a user turn and the replies after it
        dropped += end - first
    if not dropped:
        return None
    history[:] = messages[:-1]
    return (f"(the conversation outgrew the model's window of {window} tokens: its oldest {dropped} "
            f"{'messages were' if dropped > 1 else 'message was'} dropped)")


def _checked_history(history) -> list[dict]:
    if history is None:
        return []
    ok = isinstance(history, list) and all(
        isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
        for m in history)
    if not ok:
        raise CtxDistillError('history must be a list of {"role": "system" | "user" | "assistant", "content": str} '
                              "messages (it is updated in place), e.g. [] to start a conversation.")
    return [dict(m) for m in history]


def _shown_context(context, kind: str):
    from ctxdistill.core.pairs import Context
    from ctxdistill.data.inputs import read_context

    if context is None or isinstance(context, Context):
        return context
    value = _path_or_text(context, "context")
    return Context(read_context(value)["context"] if not isinstance(value, ContextText) else str(value), kind)


def _render(tokenizer, messages: list[dict], context) -> list[int]:
    from ctxdistill.core.pairs import render_prompt

    return render_prompt(tokenizer, messages, context)


def _generate(model, tokenizer, ids: list[int], max_new_tokens: int, streamer=None,
              stop: threading.Event | None = None) -> list[int]:
    """Greedy completion ids of one prompt by transformers' `generate`, with the project's stop tokens and, on CPU,
    the attention its own sampling loop decodes with, so the reply is the one `ctxdistill eval` would get."""
    import torch
    from transformers import GenerationConfig, StoppingCriteriaList

    from ctxdistill.core.generation import decode_attention, stop_token_ids

    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    settings = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False,
                                eos_token_id=stop_token_ids(model, tokenizer), pad_token_id=tokenizer.pad_token_id)
    stopping = StoppingCriteriaList([_stop_when(stop)]) if stop is not None else None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), decode_attention(model, 1, len(ids) + max_new_tokens):
            generated = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                       generation_config=settings, streamer=streamer, stopping_criteria=stopping)
    finally:
        model.train(was_training)
    return generated[0, len(ids):].tolist()


def _stop_when(event: threading.Event):
    """A stopping criterion that ends generation once `event` is set (the reader of a stream went away)."""
    import torch
    from transformers import StoppingCriteria

    class StopWhenSet(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StopWhenSet()


def _stream_reply(model, tokenizer, ids: list[int], max_new_tokens: int) -> Iterator[str]:
    """Text pieces as `generate` makes them (transformers' TextIteratorStreamer; generation runs in a thread).
    A reader that stops early (break, Ctrl-C) stops the generation; an error in it is raised to the reader."""
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    stop, failed = threading.Event(), []

    def work():
        try:
            _generate(model, tokenizer, ids, max_new_tokens, streamer, stop)
        except BaseException as e:  # noqa: BLE001 - handed to the reader, who raises it
            failed.append(e)
            streamer.end()  # else the reader would wait for text forever

    worker = threading.Thread(target=work, name="ctxdistill-chat", daemon=True)
    worker.start()
    try:
        yield from _stripped(streamer)
    finally:
        stop.set()
        worker.join()
    if failed:
        raise failed[0]


def _stripped(pieces) -> Iterator[str]:
    """The pieces without the whitespace that opens or closes the whole text: joined, they equal the non-streamed
    reply (`.strip()`ed). Whitespace inside is held back until text follows it."""
    pending, started = "", False
    for piece in pieces:
        if not started:
            piece = piece.lstrip()
            started = bool(piece)
        text = pending + piece
        body = text.rstrip()
        pending = text[len(body):]
        if body:
            yield body


def _remembered(pieces, remember) -> Iterator[str]:
    said = []
    for piece in pieces:
        said.append(piece)
        yield piece
    remember("".join(said))


# ---------------------------------------------------------------------------------------------------- evaluate


@dataclass
class Evaluation:
    """`ctxdistill eval --context`'s result: base without the context, teacher with it, student without it."""

    table: str
    accuracy: dict  # row ("base", "teacher", "student") -> questions answered right
    n: int
    details: dict  # everything measured: questions, each row's answers, KL to the teacher, retention


def evaluate(model_or_result, *, context=None, qa=None, retention=None, context_kind: str = "system",
             max_new_tokens: int = 48) -> Evaluation:
    """Before/after evaluation of a distilled context, as `ctxdistill eval --context ... --qa ...`.

    `context` and `qa` default to those of the DistillResult's run (its context and --eval, else the context file's
    own "eval" list). `qa`/`retention`: a QA JSON path, or a list of {"q": ..., "a": [accepted answers]}."""
    from ctxdistill.eval.evaluation import evaluate as before_after
    from ctxdistill.eval.evaluation import results_table

    given = model_or_result.inputs if isinstance(model_or_result, DistillResult) else {}
    shown, own_qa = _evaluated_context(context if context is not None else _only_context(given), context_kind)
    questions = _qa(qa if qa is not None else given.get("eval"), "qa") or own_qa
    if not questions:
        raise CtxDistillError("evaluate needs questions: pass qa= (a QA JSON file or a list of {\"q\", \"a\"}), or "
                              "a context JSON with an \"eval\" list.")
    kept = _qa(retention, "retention")
    model, tokenizer = _model_and_tokenizer(model_or_result)
    result = before_after(model, tokenizer, shown, questions, kept, max_new_tokens)
    return Evaluation(results_table(result), result["accuracy"], result["n"], result)


def _only_context(inputs: dict):
    contexts = inputs.get("context") or []
    if len(contexts) != 1:
        raise CtxDistillError("evaluate needs context= (the distilled context: a path or its text)"
                              + (f"; the run had {len(contexts)} contexts, so say which." if contexts else "."))
    return contexts[0]


def _evaluated_context(context, kind: str):
    """(Context, the context file's own "eval" list or None)."""
    from ctxdistill.core.pairs import Context
    from ctxdistill.data.inputs import read_context, read_qa_items

    value = _path_or_text(context, "context")
    if isinstance(value, ContextText):
        return Context(str(value), kind), None
    data = read_context(value)
    own = read_qa_items(data["eval"], f"{value}: \"eval\"") if "eval" in data else None
    return Context(data["context"], kind), own


def _qa(value, keyword: str) -> list[dict] | None:
    from ctxdistill.data.inputs import read_qa, read_qa_items

    if value is None:
        return None
    if isinstance(value, list):
        return read_qa_items(value, keyword)
    return read_qa(_path_or_none(value, keyword), f"{keyword}=")
