"""The one training loop: Accelerate, AdamW, warm-up + schedule, accumulation, checkpoints, resume, a budget.

A recipe hands over a `loss_module` (an nn.Module whose forward(batch) returns the summed loss of a micro-batch
and its token count: the student forward *and* the teacher targets, so everything runs inside the DDP forward) and
a list of examples with a `collate` function. The data order is a pure function of (seed, step), so resuming is
exact and every process agrees on which examples make up a step without a sampler.

When the accelerator has trackers (`report_to`, core.tracking), every step's loss, its terms (a loss module with
`term_names` sums them into `term_sums` as it computes them), learning rate, tokens/s and time are logged at the
run's global step; without trackers the loop does nothing more.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ctxdistill import CtxDistillError
from ctxdistill.core.files import atomic_torch_save
from ctxdistill.core.tracking import RunLog, run_log


@dataclass
class TrainSettings:
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    schedule: str = "cosine"  # cosine | linear | constant
    grad_clip: float = 1.0
    epochs: float = 3.0
    max_steps: int = 0  # 0: derived from epochs
    batch_size: int = 8  # examples per optimizer step, over all processes
    micro_batch_size: int = 8  # examples per forward on one process
    seed: int = 0
    checkpoint_every: int = 25
    deadline: float | None = None  # time.time() after which training stops and checkpoints


@dataclass
class TrainResult:
    steps_done: int
    total_steps: int  # the schedule that ran: the planned steps, or fewer when fitted to the deadline
    stopped_by_budget: bool  # the safety net: the deadline came before the (fitted) schedule ended
    seconds: float
    tokens_per_second: float
    loss_history: list[float] = field(default_factory=list)
    planned_steps: int = 0  # what the epochs / max_steps asked for

    @property
    def fitted_to_budget(self) -> bool:
        return self.total_steps < self.planned_steps

    @property
    def final_loss(self) -> float:
        tail = self.loss_history[-5:]
        return sum(tail) / len(tail) if tail else float("nan")


def total_steps_for(n_examples: int, s: TrainSettings) -> int:
    if s.max_steps > 0:
        return s.max_steps
    return max(1, math.ceil(s.epochs * n_examples / s.batch_size))


@lru_cache(maxsize=4)
def _epoch_order(n_examples: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n_examples, generator=g).tolist()


def step_examples(step: int, n_examples: int, batch_size: int, seed: int) -> list[int]:
    """Indices of the examples in optimizer step `step`: a stream of per-epoch shuffles, cut into batches."""
    return [_epoch_order(n_examples, seed, pos // n_examples)[pos % n_examples]
            for pos in range(step * batch_size, (step + 1) * batch_size)]


class Schedule:
    """Warm-up then decay over `total` steps; `total` may be cut once the loop knows its speed (fit_to_deadline),
    so the whole schedule, warm-up and decay, ends inside the budget. A callable object, so the scheduler's state
    dict (the checkpoint) keeps the fitted `total`."""

    def __init__(self, s: TrainSettings, total: int):
        self.warmup_ratio, self.kind, self.total = s.warmup_ratio, s.schedule, total

    def __call__(self, step: int) -> float:
        warmup = int(round(self.warmup_ratio * self.total))
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, self.total - warmup)
        if self.kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if self.kind == "linear":
            return max(0.0, 1 - progress)
        return 1.0


def make_scheduler(optimizer, s: TrainSettings, total_steps: int):
    if s.schedule not in ("cosine", "linear", "constant"):
        raise CtxDistillError(f"Unknown schedule '{s.schedule}'. Use cosine, linear or constant.")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, Schedule(s, total_steps))


PROBE_STEPS = 3  # steps timed before the schedule is fitted to the deadline (the first one also warms caches up)
FIT_MARGIN = 0.95  # share of the time left that the fitted schedule plans to use


def fit_to_deadline(step_times: list[float], steps_done: int, total: int, deadline: float) -> int:
    """The number of steps whose whole schedule ends before `deadline`, from the speed measured so far (never more
    than `total`, never fewer than the steps done + 1). The first step's time (caches, allocation) is left out when
    there are later ones."""
    timed = step_times[1:] if len(step_times) > 1 else step_times
    per_step = sum(timed) / len(timed)
    left = max(0.0, deadline - time.time()) * FIT_MARGIN
    return max(steps_done + 1, min(total, steps_done + int(left / max(per_step, 1e-9))))


def _micro_batches(accelerator, s: TrainSettings) -> int:
    world = accelerator.num_processes
    if s.batch_size % world:
        raise CtxDistillError(f"batch_size {s.batch_size} must be a multiple of the number of processes ({world}).")
    per_process = s.batch_size // world
    micro = min(s.micro_batch_size, per_process)
    if per_process % micro:
        raise CtxDistillError(f"batch_size / processes = {per_process} must be a multiple of micro_batch_size "
                              f"({micro}). Change --set batch_size=... or micro_batch_size=....")
    return micro


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in module.named_parameters() if p.requires_grad}


def _load_checkpoint(path: Path, fingerprint: str, loss_module, optimizer, scheduler,
                     follower=None) -> tuple[int, list[float]]:
    """Restore the trainable weights, optimizer, schedule, RNG (and the follower's state) of a checkpoint; (its
    step, its loss history)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != fingerprint:
        raise CtxDistillError(f"The checkpoint {path} was written by a run with another config or "
                              "data. Resume with the same settings, or use a new --out directory.")
    named = dict(loss_module.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            named[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if follower is not None:
        if "follower" not in state:
            raise CtxDistillError(f"The checkpoint {path} has no state for {type(follower).__name__} (it was written "
                                  "by a run without it). Resume with the same settings, or use a new --out directory.")
        follower.load_state_dict(state["follower"])
    return state["step"], state["loss_history"]


def _forward_backward(accelerator, model, batches: list) -> tuple[float, int, int]:
    """Accumulate the gradients of one step's micro-batches; (the step's mean loss per row, input tokens here, the
    step's loss rows over all processes)."""
    world = accelerator.num_processes
    local = torch.tensor(float(sum(len(b.labels) for b in batches)), device=accelerator.device)
    step_tokens = max(1, int(accelerator.reduce(local, reduction="sum")))
    loss_sum, tokens = torch.zeros((), device=accelerator.device), 0
    for j, batch in enumerate(batches):
        sync = accelerator.no_sync(model) if j < len(batches) - 1 else nullcontext()
        with sync, accelerator.autocast():
            batch_loss, n_input_tokens = model(batch)
            # Token average over the whole step; DDP averages gradients over processes, hence × world.
            accelerator.backward(batch_loss / step_tokens * world)
        loss_sum += batch_loss.detach().float()
        tokens += int(n_input_tokens)
    return float(accelerator.reduce(loss_sum, reduction="sum")) / step_tokens, tokens, step_tokens


def _log_step(accelerator, log: RunLog, step: int, values: dict, loss_module, terms: list[str], tokens: int,
              rows: int) -> None:
    """One optimizer step's scalars (only with a tracker): `values`, tokens/s over all processes, and each loss
    term's share of the step's loss (the terms the loss module recorded as it computed them, summed over
    processes, per loss row as the loss is)."""
    sums = (loss_module.term_sums or {}) if terms else {}  # a process may have had no rows for a term
    local = torch.tensor([float(tokens)] + [float(sums.get(name, 0.0)) for name in terms], device=accelerator.device)
    total = accelerator.reduce(local, reduction="sum").tolist()
    values["train/tokens_per_second"] = total[0] / max(values["train/step_seconds"], 1e-9)
    values.update({f"train/loss_{name}": value / rows for name, value in zip(terms, total[1:])})
    log.log(values, log.global_step(step))


def _check_finite(step_loss: float, step: int, checkpoint_path: Path, bar) -> None:
    if math.isfinite(step_loss):
        return
    bar.close()
    kept = (f"The last checkpoint ({checkpoint_path}) is intact" if checkpoint_path.exists()
            else "No checkpoint was written yet")
    raise CtxDistillError(f"The loss became {step_loss} at step {step}: training diverged. {kept}; lower "
                          "the learning rate (--set lr=...) or check the data, then run again with --resume.")


def _refit(accelerator, scheduler, step_times: list[float], steps_done: int, deadline: float, bar) -> None:
    """Cut the schedule when the steps left would overrun the deadline at the speed measured so far (the next
    learning rate already follows the cut); every process takes the main process's number, so they agree."""
    from accelerate.utils import broadcast

    schedule = scheduler.lr_lambdas[0]
    per_step = sum(step_times[1:]) / len(step_times[1:])
    late = time.time() + (schedule.total - steps_done) * per_step > deadline
    fitted = fit_to_deadline(step_times, steps_done, schedule.total, deadline) if late else schedule.total
    fitted = int(broadcast(torch.tensor([fitted], device=accelerator.device), from_process=0).item())
    if fitted >= schedule.total:
        return
    accelerator.print(f"Fitting the schedule to the time budget: {fitted} steps instead of {schedule.total} "
                      f"({per_step:.1f}s per step).")
    schedule.total = bar.total = fitted
    for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base_lr * schedule(scheduler.last_epoch)
    bar.refresh()


def _update(accelerator, optimizer, scheduler, params, grad_clip: float, follower=None) -> None:
    """The optimizer step after the gradients of a step's micro-batches are in; the schedule moves once per step."""
    if grad_clip > 0:
        accelerator.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if follower is not None:
        follower.update()


def _past_deadline(accelerator, deadline: float | None) -> bool:
    """Whether any process is past the deadline: all stop at the same step."""
    late = torch.tensor(float(deadline is not None and time.time() > deadline), device=accelerator.device)
    return bool(accelerator.reduce(late, reduction="sum") > 0)


def _save_checkpoint(accelerator, path: Path, state: dict, model, optimizer, scheduler) -> None:
    """`state` plus the trainable weights, optimizer, schedule and RNG, written by the main process atomically."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_torch_save({**state, "trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()}, path)
    accelerator.wait_for_everyone()


def _open_log(accelerator, loss_module, resumed_at: int | None, total: int):
    """The run's tracker log (off, doing no work, without a tracker) and the loss terms it records. A resumed run
    logs on from its checkpoint's step."""
    log = run_log(accelerator)
    if resumed_at is not None and resumed_at < total:
        log.restart_at(resumed_at)
    return log, list(getattr(loss_module, "term_names", [])) if log.on else []


def train(accelerator, loss_module: torch.nn.Module, examples: Sequence, collate: Callable, s: TrainSettings,
          checkpoint_path: Path, resume: bool = False, fingerprint: str = "", follower=None) -> TrainResult:
    """Optimize `loss_module` on `examples`, averaging the loss over every loss row of a step.

    A step collates all its micro-batches first (on-policy recipes sample inside `collate`, so the rows are only
    known then) and sums their loss rows (`len(batch.labels)`) over processes. `follower` (e.g. an EMA of the
    weights) has `update()` called after every optimizer step, and its `state_dict()` goes into each checkpoint."""
    if not examples:
        raise CtxDistillError("No training examples: nothing to learn from. Check the prompts and the samples.")
    micro = _micro_batches(accelerator, s)
    total = planned = total_steps_for(len(examples), s)
    torch.manual_seed(s.seed)
    params = [p for p in loss_module.parameters() if p.requires_grad]
    if not params:
        raise CtxDistillError("The model has no trainable parameters.")
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    scheduler = make_scheduler(optimizer, s, total)

    start_step, history = 0, []
    if resume and checkpoint_path.exists():
        start_step, history = _load_checkpoint(checkpoint_path, fingerprint, loss_module, optimizer, scheduler,
                                               follower)
        accelerator.print(f"Resuming from step {start_step}/{scheduler.lr_lambdas[0].total} ({checkpoint_path}).")
    log, terms = _open_log(accelerator, loss_module, start_step if resume else None, scheduler.lr_lambdas[0].total)

    model, optimizer = accelerator.prepare(loss_module, optimizer)  # the scheduler is ours: one step per update
    unwrapped = accelerator.unwrap_model(model)

    def save_checkpoint(step: int):
        state = {"step": step, "loss_history": history, "fingerprint": fingerprint,
                 **({"follower": follower.state_dict()} if follower is not None else {})}
        _save_checkpoint(accelerator, checkpoint_path, state, unwrapped, optimizer, scheduler)

    world, rank = accelerator.num_processes, accelerator.process_index
    schedule = scheduler.lr_lambdas[0]  # its `total` is the checkpoint's after a resume
    bar = tqdm(total=schedule.total, initial=start_step, desc="training", unit="step", dynamic_ncols=True,
               disable=not accelerator.is_local_main_process)
    model.train()
    t0, tokens_seen, stopped, step, step_times = time.time(), 0, False, start_step, []
    t_step = time.time()  # each step's time runs from the end of the one before: checkpoints are counted too
    while step < schedule.total:
        ids = step_examples(step, len(examples), s.batch_size, s.seed)
        mine = [ids[j:j + micro] for j in range(0, len(ids), micro)][rank::world]  # this process's micro-batches
        if terms:
            loss_module.term_sums = {}
        lr = optimizer.param_groups[0]["lr"]  # this step's learning rate (the scheduler moves it after the step)
        step_loss, n_input_tokens, rows = _forward_backward(accelerator, model, [collate([examples[i] for i in b])
                                                                                 for b in mine])
        tokens_seen += n_input_tokens
        _check_finite(step_loss, step, checkpoint_path, bar)
        _update(accelerator, optimizer, scheduler, params, s.grad_clip, follower)
        history.append(step_loss)
        step += 1
        step_times.append(time.time() - t_step)
        t_step = time.time()
        if s.deadline is not None and len(step_times) >= PROBE_STEPS:
            _refit(accelerator, scheduler, step_times, step, s.deadline, bar)
        bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tokens_seen * world / max(time.time() - t0, 1e-9):.0f}",
                        lr=f"{scheduler.get_last_lr()[0]:.2e}")
        bar.update(1)
        if log.on:
            _log_step(accelerator, log, step, {"train/loss": step_loss, "train/lr": lr,
                                               "train/step_seconds": step_times[-1]},
                      loss_module, terms, n_input_tokens, rows)
        stopped = _past_deadline(accelerator, s.deadline) and step < schedule.total
        if stopped or (s.checkpoint_every and step % s.checkpoint_every == 0):
            save_checkpoint(step)
        if stopped:
            accelerator.print(f"Time budget reached after {step}/{schedule.total} steps; checkpoint saved.")
            break
    bar.close()
    steps_done, total = step, schedule.total
    if terms:
        loss_module.term_sums = None
    log.advance(steps_done)  # the run's next train() call logs after these steps
    if not stopped:
        save_checkpoint(steps_done)
    seconds = time.time() - t0
    return TrainResult(steps_done, total, stopped, seconds, tokens_seen * world / max(seconds, 1e-9), history,
                       planned_steps=planned)
