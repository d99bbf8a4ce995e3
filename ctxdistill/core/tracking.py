"""Experiment tracking: `report_to` sends a run's scalars to TensorBoard (event files in OUT/logs) and/or Weights &
Biases, through Accelerate's trackers, so that only the main process writes.

What is logged: every optimizer step's loss, its terms, learning rate, tokens/s and step time (core.training), and
the evaluation rows (log_evaluation), at a global step that runs on over a recipe's stages, modules and document
batches, and across --resume. With report_to=none no tracker exists and the loop does no extra work.
"""

from __future__ import annotations

import importlib.util
import json
import os
import uuid
import weakref
from pathlib import Path

from accelerate.tracking import TensorBoardTracker, WandBTracker

from ctxdistill.core.files import atomic_write_text

BACKENDS = {"none": (), "tensorboard": ("tensorboard",), "wandb": ("wandb",), "all": ("tensorboard", "wandb")}
LOGS = "logs"  # OUT/logs: TensorBoard's event files, W&B's local files and the W&B run id
WANDB_RUN_ID = "wandb-run-id"  # in OUT/logs: --resume continues the same W&B run
DEFAULT_WANDB_PROJECT = "ctxdistill"  # unless WANDB_PROJECT says otherwise


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def missing_extra(report_to: str) -> str | None:
    """Why `report_to` cannot run on this machine (a backend's package is missing, and the pip extra that brings
    it), or None when it can."""
    missing = [name for name in BACKENDS[report_to] if not installed(name)]
    if not missing:
        return None
    return (f"report_to={report_to} needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            f"installed. Install {'it' if len(missing) == 1 else 'them'} with: pip install "
            f"'ctxdistill[{','.join(missing)}]' (or set report_to=none).")


class ResumableWandBTracker(WandBTracker):
    """Accelerate's W&B tracker, with its run id kept in OUT/logs so that --resume continues the same W&B run."""

    def __init__(self, logs: Path, run_name: str):
        project = os.environ.get("WANDB_PROJECT") or DEFAULT_WANDB_PROJECT
        super().__init__(project, name=run_name, dir=str(logs), resume="allow")
        self.id_file = Path(logs) / WANDB_RUN_ID

    def start(self):  # Accelerator.init_trackers calls it on the main process only
        if not self.id_file.exists():
            atomic_write_text(self.id_file, uuid.uuid4().hex[:16])
        self.init_kwargs["id"] = self.id_file.read_text(encoding="utf-8").strip()
        super().start()


def make_trackers(report_to: str, logs: Path, run_name: str) -> list:
    """The trackers of `report_to`, for Accelerator(log_with=...); Accelerator.init_trackers starts them.
    TensorBoard writes its events straight into `logs`; W&B names the run `run_name`."""
    backends = BACKENDS[report_to]
    return ([TensorBoardTracker("", str(logs))] if "tensorboard" in backends else []) + \
        ([ResumableWandBTracker(logs, run_name)] if "wandb" in backends else [])


def plain_values(config: dict) -> dict:
    """A config as the hyper-parameters trackers take: scalars and strings as they are, anything else as JSON."""
    return {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in config.items()}


def start_trackers(accelerator, run_name: str, config: dict) -> None:
    """Start the accelerator's trackers (main process), with the run's config as hyper-parameters."""
    if accelerator.log_with:
        accelerator.init_trackers(run_name, config=plain_values(config))


def end_trackers(accelerator) -> None:
    """Close the trackers at the end of a run, however training ended (finished or stopped by its budget)."""
    if accelerator.log_with:
        accelerator.end_training()


class RunLog:
    """One run's scalars at its global step: the optimizer steps of every train() call of the run so far, so a
    recipe's stages, modules and document batches follow on, and a resumed run continues where it stopped. Off
    (every method returns at once) when the accelerator has no trackers."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.on = bool(accelerator.log_with)  # true on every process: per-step sums are reduced over all of them
        self.steps_before = 0  # optimizer steps of the run's earlier train() calls

    def global_step(self, step: int = 0) -> int:
        return self.steps_before + step

    def log(self, values: dict, step: int) -> None:
        if self.on:
            self.accelerator.log(values, step=step)

    def advance(self, steps: int) -> None:
        """After a train() call (or a part of the run trained before a resume, e.g. a finished knowledge module):
        what the run logs next comes after these steps."""
        self.steps_before += steps

    def restart_at(self, step: int) -> None:
        """A resumed train() call runs again from its step `step` + 1: what the killed run logged from there on is
        hidden (TensorBoard purges events at and after the step of a session start). W&B drops the steps it has
        already passed, so there it keeps the killed run's values for them."""
        if not (self.on and self.accelerator.is_main_process):
            return
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        for tracker in self.accelerator.trackers:
            if isinstance(tracker, TensorBoardTracker):
                tracker.writer.file_writer.add_event(Event(step=self.global_step(step + 1),
                                                           session_log=SessionLog(status=SessionLog.START)))


_RUN_LOGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def run_log(accelerator) -> RunLog:
    """The RunLog of this accelerator's run, made on first use: the training loop and the recipe share it."""
    if accelerator not in _RUN_LOGS:
        _RUN_LOGS[accelerator] = RunLog(accelerator)
    return _RUN_LOGS[accelerator]


def evaluation_scalars(result: dict) -> dict[str, float]:
    """An evaluation's rows as scalars: eval/accuracy/ROW (share of the questions right), eval/kl_to_teacher/ROW,
    eval/retention/ROW (share of the general questions right) and eval/retention_kl/ROW (KL to the base).

    `result` is {"n", "accuracy": {row: right}, "kl_to_teacher"?: {row: kl}, "retention"?: retention}, where
    retention is {"n", "accuracy": {row: right}, "kl_to_base": {row: kl}} (eval.evaluation.evaluate) or
    {row: {"accuracy", "n", "kl_to_base"}} (eval.knowledge_eval.retention_rows)."""
    values = {}
    if result.get("n"):
        values.update({f"eval/accuracy/{row}": right / result["n"] for row, right in result["accuracy"].items()})
    values.update({f"eval/kl_to_teacher/{row}": kl for row, kl in result.get("kl_to_teacher", {}).items()})
    retention = result.get("retention") or {}
    if "accuracy" in retention:  # one block of rows
        rows = {row: {"accuracy": right, "n": retention["n"], "kl_to_base": retention.get("kl_to_base", {}).get(row)}
                for row, right in retention["accuracy"].items()}
    else:  # a block per row
        rows = retention
    for row, kept in rows.items():
        if kept["n"]:
            values[f"eval/retention/{row}"] = kept["accuracy"] / kept["n"]
        if kept.get("kl_to_base") is not None:
            values[f"eval/retention_kl/{row}"] = kept["kl_to_base"]
    return values


def log_evaluation(accelerator, result: dict | None, step: int | None = None) -> None:
    """Log an evaluation's rows (see evaluation_scalars) at `step`, by default the run's global step so far."""
    log = run_log(accelerator)
    if log.on and result:
        log.log(evaluation_scalars(result), log.global_step() if step is None else step)
