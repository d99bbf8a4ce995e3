"""What every recipe does around its method: the accelerator, the output folder, data made once by the main process."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import time
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator

from ctxdistill import CtxDistillError
from ctxdistill.core import tracking
from ctxdistill.core.files import atomic_write_json, read_jsonl, write_jsonl
from ctxdistill.core.models import (add_lora, bf16_supported, default_device, enable_gradient_checkpointing,
                                    load_adapter, load_model)
from ctxdistill.core.pairs import render_prompt
from ctxdistill.core.training import TrainSettings


def _placed_on(accelerator: Accelerator, device: torch.device) -> bool:
    got = accelerator.device
    if got.type != device.type:
        return False
    if device.type != "cuda" or device.index is None:
        return True
    index = torch.cuda.current_device() if got.index is None else got.index
    return index == device.index and accelerator.num_processes == 1


def make_accelerator(cfg, out: Path | None = None) -> Accelerator:
    """bf16 autocast where the hardware has it (dtype=auto), on the configured or the best device; with `out`, the
    trackers of `report_to` (OUT/logs), started by start_tracking.

    Accelerate only takes cpu=True/False, and the manifest records `device`: a device named in the config must be the
    one the run really gets, so a CUDA index becomes the current device first and the placement is checked."""
    device = torch.device(cfg.device) if cfg.device else default_device()
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # one process runs on the current CUDA device
    mixed = "bf16" if cfg.dtype in ("auto", "bf16", "bfloat16") and bf16_supported(device) else "no"
    trackers = tracking.make_trackers(cfg.report_to, Path(out) / tracking.LOGS, run_name(cfg, out)) \
        if out is not None else []
    accelerator = Accelerator(mixed_precision=mixed, cpu=device.type == "cpu", log_with=trackers or None,
                              project_dir=str(Path(out) / tracking.LOGS) if trackers else None)
    if cfg.device and not _placed_on(accelerator, device):
        several = (" (it runs {} processes, one GPU each: name no index, device=cuda)"
                   .format(accelerator.num_processes) if accelerator.num_processes > 1 else "")
        raise CtxDistillError(f"device={cfg.device!r} was asked for, but accelerate put this run on "
                              f"{accelerator.device}{several}. Check ACCELERATE_TORCH_DEVICE and your accelerate "
                              "config, or set device=\"\" to run where accelerate puts it. Nothing was run.")
    return accelerator


def open_run(cfg, out: Path, resume: bool):
    """(accelerator, model, tokenizer, resolved model path) of a training run whose output folder is checked first.

    Full fine-tuning keeps fp32 master weights (bf16 comes from autocast); LoRA freezes the base, so bf16 is sound."""
    accelerator = make_accelerator(cfg, out)
    prepare_out_dir(accelerator, out, resume)
    dtype = "float32" if cfg.finetune == "full" and accelerator.mixed_precision == "bf16" else cfg.dtype
    model, tokenizer, path = load_model(cfg.model, dtype, accelerator.device)
    start_tracking(accelerator, cfg, out)
    return accelerator, model, tokenizer, path


def run_name(cfg, out) -> str:
    """The run's name for the trackers: `run_name`, else the name of its --out folder."""
    return cfg.run_name or Path(out).resolve().name


def start_tracking(accelerator: Accelerator, cfg, out) -> None:
    """Start the trackers of `report_to` (none: nothing) with the run's config; tracking.end_trackers closes them."""
    from ctxdistill.config import CONFIGS

    recipe = next((name for name, cls in CONFIGS.items() if type(cfg) is cls), type(cfg).__name__)
    tracking.start_trackers(accelerator, run_name(cfg, out), {"recipe": recipe, **cfg.to_dict()})


def prepare_out_dir(accelerator: Accelerator, out: Path, resume: bool) -> None:
    """Check --out before any model is loaded, then hold it (OUT/.lock) until the run ends: the main process only."""
    if accelerator.is_main_process:
        created = make_out_dir(Path(out))
        try:
            take_out_lock(Path(out), created)
            check_out_contents(Path(out), resume)
            if resume:
                remove_partial_writes(Path(out))
        except BaseException:
            release_out_dir(out, failed=True)
            raise
    accelerator.wait_for_everyone()


# What an atomic write leaves only when it is killed halfway: a temporary folder (core.files.atomic_write_dir) or a
# temporary file `.NAME.XXXXXXXX` (mkstemp) beside the file it was writing.
PARTIAL_WRITE = re.compile(r"^\.(tmp|adapter|model)-|^\..+\.[a-z0-9_]{8}$")


def remove_partial_writes(out: Path) -> list[str]:
    """On --resume, the half-written files of the killed run go (the finished ones were renamed into place)."""
    removed = []
    for path in sorted(out.rglob(".*"), key=lambda p: len(p.parts), reverse=True):
        if path.name != LOCK and PARTIAL_WRITE.match(path.name) and path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append(str(path.relative_to(out)))
    return removed


LOCK = ".lock"  # OUT/.lock: {"pid", "host", "started"} of the run that holds the folder
_held: dict[Path, Path | None] = {}  # the folders this process holds -> the topmost folder it created for them


def make_out_dir(out: Path) -> Path | None:
    """Create --out (and missing parents); returns the topmost folder created here, None if --out existed."""
    if out.exists() and not out.is_dir():
        raise CtxDistillError(f"--out {out} is a file, not a folder. Choose a folder path for --out (the file was "
                              "not touched).")
    missing = [p for p in [out, *out.parents] if not p.exists()]
    try:
        out.mkdir(parents=True)
    except FileExistsError:
        return None
    except OSError as e:
        raise CtxDistillError(f"Cannot create --out {out}: {e.strerror}. Choose a folder you can write to.") from None
    return missing[-1] if missing else out


def _lock_owner() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _write_lock(path: Path) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)  # atomic: of two runs, one creates it
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(_lock_owner(), f)


def take_out_lock(out: Path, created: Path | None) -> None:
    """OUT/.lock for this process; a lock left by a dead run on this host is taken over, any other is refused."""
    path = out / LOCK
    try:
        try:
            _write_lock(path)
        except FileExistsError:
            check_lock_holder(out)
            path.unlink(missing_ok=True)
            _write_lock(path)
    except FileExistsError:
        raise CtxDistillError(f"{out} was just taken by another run. Choose another --out.") from None
    except OSError as e:
        raise CtxDistillError(f"--out {out} is not writable ({e.strerror}). Choose a folder you can write to.") \
            from None
    _held[out.resolve()] = created


def check_lock_holder(out: Path) -> None:
    """Refuse a folder whose lock names a live run, or one on another host (it cannot be checked from here)."""
    path, here = out / LOCK, socket.gethostname()
    holder = read_out_lock(out)
    pid, since = holder.get("pid"), f" (started {holder.get('started', '?')})"
    if holder.get("host") != here or not isinstance(pid, int):
        raise CtxDistillError(f"{out} is in use by pid {pid} on host {holder.get('host')}{since}: its lock {path} "
                              f"cannot be checked from here. If that run is no longer running, delete {path} and run "
                              "again; else choose another --out.")
    if pid != os.getpid() and _pid_alive(pid):
        raise CtxDistillError(f"{out} is in use by pid {pid} on host {here}{since}. Wait for that run to end, or "
                              "choose another --out.")
    if pid != os.getpid():  # this same process may open its folder again (one run after another)
        warnings.warn(f"{out}: taking over the lock of pid {pid}{since}, which is no longer running.", stacklevel=4)


def read_out_lock(out: Path) -> dict:
    try:
        holder = json.loads((out / LOCK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        holder = None
    return holder if isinstance(holder, dict) else {}


def release_out_dir(out, failed: bool = False) -> None:
    """End this process's hold on --out: the lock goes; after a failure, a folder that this run created and that
    holds no checkpoint yet goes too (a corrected re-run then starts clean). No-op for a folder it does not hold."""
    out = Path(out)
    if out.resolve() not in _held:
        return
    created = _held.pop(out.resolve())
    if read_out_lock(out).get("pid") == os.getpid():
        (out / LOCK).unlink(missing_ok=True)
    if failed and created is not None and not checkpoints(out):
        shutil.rmtree(out, ignore_errors=True)
        for folder in [out, *out.parents]:  # the missing parents it made, if still empty
            if folder == created.parent:
                break
            with contextlib.suppress(OSError):
                folder.rmdir()


@atexit.register
def _release_all() -> None:
    for out in list(_held):
        release_out_dir(out)


@contextlib.contextmanager
def holding_out_dir(out):
    """Around a run: the folder it holds is released when the run ends, also on an error or Ctrl-C (a folder
    it created is kept after Ctrl-C: the command can be resumed)."""
    try:
        yield
    except KeyboardInterrupt:
        release_out_dir(out)
        raise
    except BaseException:
        release_out_dir(out, failed=True)
        raise
    release_out_dir(out)


def checkpoints(out: Path) -> list[Path]:
    """The training checkpoints under a run folder (also a nested run's, e.g. experience's consolidation)."""
    return sorted(p for p in out.rglob("*") if p.is_file() and "checkpoint" in p.relative_to(out).parts[:-1])


def check_out_contents(out: Path, resume: bool) -> None:
    """A folder with anything in it is only written to with --resume; the refusal says what the folder holds."""
    found = sorted(p.name for p in out.iterdir() if p.name != LOCK)
    if resume or not found:
        return
    if "manifest.json" in found:
        what = "a finished run (manifest.json)"
    elif checkpoints(out):
        what = f"an unfinished run (last checkpoint: {checkpoints(out)[-1].relative_to(out)})"
    elif "data" in found or tracking.LOGS in found:
        kept = " and ".join(f"{name}/" for name in ("data", tracking.LOGS) if name in found)
        what = f"a run that stopped before its first checkpoint (it kept {kept})"
    else:
        raise CtxDistillError(f"--out {out} is not empty ({', '.join(found[:5])}) and holds no ctxdistill run. "
                              "Choose a new or empty folder for --out (nothing was overwritten).")
    raise CtxDistillError(f"{out} already holds a run: {what}. Pass --resume to continue it with the same inputs, "
                          "or choose a new --out (nothing was overwritten).")


def where_stopped(out) -> str:
    """What an interrupted run left in its folder, for the line that says how to resume it."""
    out = Path(out)
    if not out.is_dir():
        return f"nothing was written yet ({out} does not exist)"
    kept = checkpoints(out)
    if kept:
        return f"{out} keeps its last checkpoint ({kept[-1].relative_to(out)})"
    return f"before the first checkpoint; {out} keeps the data made so far"


def main_process_writes(accelerator: Accelerator, path: Path, make_rows) -> list:
    """Rows cached at `path`: made once by the main process (or read back on resume), then read by all."""
    if accelerator.is_main_process and not path.exists():
        write_jsonl(path, make_rows())
    accelerator.wait_for_everyone()
    return read_jsonl(path, str(path))


def train_settings(cfg, deadline: float | None = None, **overrides) -> TrainSettings:
    """The loop's settings from a run config; a recipe overrides what it counts differently (e.g. epochs)."""
    values = {"lr": cfg.learning_rate, "weight_decay": cfg.weight_decay, "warmup_ratio": cfg.warmup_ratio,
              "schedule": cfg.schedule, "grad_clip": cfg.grad_clip, "epochs": cfg.epochs, "max_steps": cfg.max_steps,
              "batch_size": cfg.batch_size, "micro_batch_size": cfg.micro_batch_size, "seed": cfg.seed,
              "checkpoint_every": cfg.checkpoint_every, "deadline": deadline}
    return TrainSettings(**{**values, **overrides})


def training_fingerprint_config(cfg) -> dict:
    """The settings a checkpoint must agree on: those that shape training, leaving out the budget, the tracking and
    the keys at their defaults (so a key added by a later version does not orphan existing checkpoints)."""
    defaults = type(cfg)().to_dict()
    return {k: v for k, v in cfg.to_dict().items()
            if k not in ("max_minutes", "checkpoint_every", "report_to", "run_name") and v != defaults[k]}


DEFAULT_WINDOW = 2048  # for a model config that does not say its context length


def model_window(model, cfg) -> int:
    """The longest sequence a run may build: the model's context length, capped by max_seq_len where set."""
    window = getattr(model.config, "max_position_embeddings", None) or DEFAULT_WINDOW
    cap = getattr(cfg, "max_seq_len", 0)
    return min(window, cap) if cap else window


def fingerprint(*parts) -> str:
    """A digest of JSON-able parts: what a checkpoint or cached data must have been made from to be reused."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def share_budget(deadline_at: float | None, planned: list[float]) -> float | None:
    """The deadline of the next stage when the time left is shared by the stages still to run (`planned`, the
    next one first) in proportion to their planned work."""
    if deadline_at is None:
        return None
    return time.time() + (deadline_at - time.time()) * planned[0] / sum(planned)


def make_student(model, cfg, init_adapter: str | None = None):
    """The trainable student: a fresh LoRA adapter on the model, a saved one to keep training (`init_adapter`), or
    the model itself for full fine-tuning.

    A fresh adapter's initial weights come from `cfg.seed`, not from whatever the run drew before (measured: a
    knowledge module started differently when its synthetic data came from the cache instead of being sampled)."""
    if init_adapter:
        if cfg.finetune != "lora":
            raise CtxDistillError("--init-adapter continues a LoRA adapter; it needs finetune=lora.")
        student = load_adapter(model, init_adapter, trainable=True)
    else:
        torch.manual_seed(cfg.seed)
        student = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets) \
            if cfg.finetune == "lora" else model.requires_grad_(True)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(student)
    return student


def budget_deadline(cfg, t_start: float) -> float | None:
    return t_start + cfg.max_minutes * 60 if cfg.max_minutes else None


GENERATION_SHARE = 0.4  # of a time budget, what data generation before training may use: training gets the rest


def generation_deadline(cfg, t_start: float) -> float | None:
    """When generation before training stops starting new work, under a budget (None without one)."""
    return t_start + GENERATION_SHARE * cfg.max_minutes * 60 if cfg.max_minutes else None


def check_data_inputs(out: Path, inputs: dict) -> None:
    """What a run reuses from OUT (OUT/data, OUT/curve.jsonl) on --resume must have been made from the same inputs:
    the first run records them in OUT/data/inputs.json, every later one compares (every recipe, the same check)."""
    path = out / "data" / "inputs.json"
    now = json.loads(json.dumps(inputs))
    if not path.exists():
        atomic_write_json(path, now)
        return
    before = json.loads(path.read_text(encoding="utf-8"))
    changed = sorted(k for k in now.keys() | before.keys() if now.get(k) != before.get(k))
    if changed:
        raise CtxDistillError(f"{out} holds data made from other inputs: {', '.join(changed)} changed since (see "
                              f"{path}). Resume with the same inputs, or choose a new --out (nothing was reused).")


def plan_context_queries(cfg, model, tokenizer, text: str, name: str, seed: int, backend=None):
    """The gated query plan for a context without prompts (data/queries.py), from the recipe's query keys; refuses
    a context for which nothing passed the gate rather than training on nothing. `backend` samples as `model`
    (None: the torch loop)."""
    from ctxdistill.data.queries import plan_queries

    plan = plan_queries(model, tokenizer, text, cfg.num_queries, everyday_fraction=cfg.everyday_fraction,
                        synthesized_fraction=cfg.synthesized_fraction, probes_per_statement=cfg.probes_per_statement,
                        temperature=cfg.query_temperature, batch_size=cfg.gen_batch_size, seed=seed,
                        backend=backend)
    if not plan.queries:
        raise CtxDistillError(f"No query for {name} passed the quality gate ({plan.gate['rejected']}). Pass --prompts, "
                              "or put a 'prompts' list in the context file.")
    return plan


def per_row_views(tokenizer, rows, shared, max_new_tokens: int, window: int, data_path) -> list[tuple[list, list]]:
    """(teacher view, student view) token ids of each --data row (data/per_row.py): render(row.teacher, with the
    shared --context if any) and render(row.student). A teacher's context is never cut: a row whose teacher view
    plus max_new_tokens passes the window is refused, by its number in the file."""
    views = []
    for n, row in enumerate(rows, 1):
        teacher, student = render_prompt(tokenizer, row.teacher, shared), render_prompt(tokenizer, row.student)
        longest = len(teacher) + max_new_tokens
        if longest > window:
            raise CtxDistillError(f"--data {data_path}, row {n}: the teacher's view (context + prompt) is "
                                  f"{len(teacher)} tokens, with max_new_tokens {max_new_tokens} that is {longest}, "
                                  f"longer than the model window ({window}). Shorten that row's context, or lower "
                                  "max_new_tokens.")
        views.append((teacher, student))
    return views


def check_per_row_inputs(recipe: str, contexts: list, prompts, eval_qa) -> None:
    """What --data (a teacher-only context per row) cannot go with, the same for every recipe that reads it."""
    if prompts:
        raise CtxDistillError("--data rows hold the prompts; drop --prompts (or drop --data and use --context).")
    if len(contexts) > 1:
        raise CtxDistillError(f"The {recipe} recipe takes at most one shared --context FILE next to --data.")
    if eval_qa and not contexts:
        raise CtxDistillError("--eval compares the model with and without a shared context; with --data alone there "
                              "is none. Add --context FILE, or drop --eval.")
