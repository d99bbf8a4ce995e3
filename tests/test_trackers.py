"""Experiment tracking (`report_to`): TensorBoard event files in OUT/logs with every optimizer step's scalars and the
evaluation rows; nothing at all with none; a global step that runs on over train() calls and --resume; a bad value
or a missing extra refused before anything runs."""

import json
import re
import warnings

import pytest
import torch
from accelerate import Accelerator
from test_bad_inputs import cli_error
from test_teacher_sources import make_pairs

from ctxdistill import CtxDistillError
from ctxdistill.cli import main
from ctxdistill.config import load_config
from ctxdistill.core import tracking
from ctxdistill.core.losses import DistillLoss, collate_pairs
from ctxdistill.core.models import add_lora
from ctxdistill.core.objectives import Objective
from ctxdistill.core.teacher import Teacher
from ctxdistill.core.tracking import evaluation_scalars
from ctxdistill.core.training import TrainSettings, train

RUN = ["samples_per_query=2", "max_new_tokens=10", "eval_max_new_tokens=4", "max_steps=3", "batch_size=4",
       "micro_batch_size=4"]


def distill(model_dir, persona_files, out, *args: str) -> list[warnings.WarningMessage]:
    """`ctxdistill distill offline` on the persona files, in this process; every warning it gave, as a user with
    `-W always` would see them."""
    argv = ["distill", "offline", "--model", str(model_dir), "--context", str(persona_files["context"]),
            "--prompts", str(persona_files["prompts"]), "--out", str(out), *[a for s in RUN for a in ("--set", s)],
            *args]
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert main(argv) == 0
    return shown


def scalars(logs) -> dict[str, list[tuple[int, float]]]:
    """Every scalar logged in the folder's event files: tag -> [(step, value)], as TensorBoard shows them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # after the runs import it

    events = EventAccumulator(str(logs))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def steps(logged, tag) -> list[int]:
    return [step for step, _ in logged[tag]]


@pytest.fixture(scope="module")
def stopped_and_resumed(tiny_model_dir, persona_files, tmp_path_factory):
    """A tracked run stopped by its time budget after its first step, then resumed without a budget: (its folder,
    the warnings of both runs)."""
    out = tmp_path_factory.mktemp("tracked") / "run"
    shown = distill(tiny_model_dir, persona_files, out, "--set", "report_to=tensorboard", "--max-minutes", "0.001")
    assert json.loads((out / "manifest.json").read_text())["metrics"]["stopped_by_budget"]
    shown += distill(tiny_model_dir, persona_files, out, "--set", "report_to=tensorboard", "--resume")
    return out, shown


def test_a_tensorboard_run_logs_each_step_and_the_evaluation_rows_in_out_logs(stopped_and_resumed):
    out, _ = stopped_and_resumed
    logged = scalars(out / "logs")
    for tag in ("train/loss", "train/lr", "train/tokens_per_second", "train/step_seconds", "train/loss_forward_kl"):
        assert steps(logged, tag) == [1, 2, 3], tag
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert [v for _, v in logged["train/loss"]] == pytest.approx(metrics["loss_history"], rel=1e-5)
    only_term = [v for _, v in logged["train/loss_forward_kl"]]  # the objective's only term is the whole loss
    assert only_term == pytest.approx([v for _, v in logged["train/loss"]])
    assert all(lr > 0 for _, lr in logged["train/lr"]) and logged["train/lr"][-1][1] < logged["train/lr"][0][1]

    evaluation = metrics["evaluation"]  # the resumed run's rows, logged at its last step
    for row in ("base", "teacher", "student"):
        assert logged[f"eval/accuracy/{row}"][-1] == (3, pytest.approx(evaluation["accuracy"][row] / evaluation["n"]))
    assert logged["eval/kl_to_teacher/student"][-1] == (3, pytest.approx(evaluation["kl_to_teacher"]["student"]))
    retention = evaluation["retention"]
    for row in ("base", "student"):
        assert logged[f"eval/retention/{row}"][-1] == (3, pytest.approx(retention["accuracy"][row] / retention["n"]))
        assert logged[f"eval/retention_kl/{row}"][-1] == (3, pytest.approx(retention["kl_to_base"][row]))


def test_a_resumed_run_logs_to_the_same_folder_and_its_steps_continue(stopped_and_resumed):
    out, _ = stopped_and_resumed
    logged = scalars(out / "logs")
    assert len(list((out / "logs").glob("events.out.tfevents.*"))) == 2  # one event file per run, in one folder
    assert steps(logged, "train/loss") == [1, 2, 3]  # the stopped run's step 1, then the resumed run's 2 and 3
    assert steps(logged, "eval/accuracy/student") == [1, 3]  # each run evaluated where it stopped


def test_tracking_shows_no_deprecation_warning(stopped_and_resumed):
    _, shown = stopped_and_resumed
    theirs = [f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}" for w in shown
              if re.search(r"tensorboard|protobuf|tracking", w.filename)]
    assert not theirs, theirs


def test_report_to_none_writes_no_logs(tiny_model_dir, persona_files, tmp_path):
    distill(tiny_model_dir, persona_files, tmp_path / "run")
    assert (tmp_path / "run" / "manifest.json").exists() and not (tmp_path / "run" / "logs").exists()


def test_a_bad_report_to_is_refused_by_the_config():
    with pytest.raises(CtxDistillError, match="report_to='tensorbord' is not valid; use one of none, tensorboard, "
                                              "wandb, all"):
        load_config("offline", sets=["report_to=tensorbord"])


@pytest.mark.parametrize("report_to,missing,extra", [
    ("wandb", {"wandb"}, "ctxdistill[wandb]"), ("tensorboard", {"tensorboard"}, "ctxdistill[tensorboard]"),
    ("all", {"wandb"}, "ctxdistill[wandb]"), ("all", {"tensorboard", "wandb"}, "ctxdistill[tensorboard,wandb]")])
def test_a_tracker_that_is_not_installed_asks_for_its_pip_extra(monkeypatch, report_to, missing, extra):
    monkeypatch.setattr(tracking, "installed", lambda package: package not in missing)
    with pytest.raises(CtxDistillError, match=re.escape(f"pip install '{extra}'")):
        load_config("disc", sets=[f"report_to={report_to}"])


def test_the_missing_extra_is_refused_before_the_run_starts(monkeypatch, capsys, persona_files, tmp_path):
    monkeypatch.setattr(tracking, "installed", lambda package: package != "wandb")
    err = cli_error(capsys, ["distill", "offline", "--context", str(persona_files["context"]),
                             "--out", str(tmp_path / "run"), "--set", "report_to=wandb"])
    assert "pip install 'ctxdistill[wandb]'" in err and "report_to=none" in err
    assert not (tmp_path / "run").exists()  # nothing was made, no model loaded


class Quadratic(torch.nn.Module):
    """scale·|w|² per loss row, 5 input tokens per micro-batch; call `nan_at` (from 1) gives NaN, as a diverging run
    that dies after its last checkpoint."""

    def __init__(self, scale: float = 1.0, nan_at: int | None = None):
        super().__init__()
        self.w, self.scale, self.nan_at, self.calls = torch.nn.Parameter(torch.ones(3)), scale, nan_at, 0

    def forward(self, batch):
        self.calls += 1
        loss = self.scale * (self.w ** 2).sum() * len(batch.labels)
        return (loss * float("nan") if self.calls == self.nan_at else loss), 5


class Rows:
    def __init__(self, n: int):
        self.labels = [0] * n


def tracked(logs) -> Accelerator:
    """An accelerator logging to TensorBoard in `logs`, as open_run makes it for report_to=tensorboard."""
    accelerator = Accelerator(cpu=True, log_with=tracking.make_trackers("tensorboard", logs, "test"),
                              project_dir=str(logs))
    tracking.start_trackers(accelerator, "test", {"lr": 0.1, "objective": {"forward_kl": 1.0}})
    return accelerator


def quadratic_steps(accelerator, loss, tmp_path, max_steps: int, resume: bool = False, name: str = "state.pt"):
    settings = TrainSettings(lr=0.1, max_steps=max_steps, batch_size=2, micro_batch_size=2, checkpoint_every=2)
    return train(accelerator, loss, list(range(8)), lambda xs: Rows(len(xs)), settings, tmp_path / name,
                 resume=resume)


def test_steps_run_on_over_train_calls_and_a_resume_hides_what_a_dead_run_logged_after_its_checkpoint(tmp_path):
    logs = tmp_path / "logs"
    dying = tracked(logs)
    with pytest.raises(CtxDistillError, match="diverged"):
        quadratic_steps(dying, Quadratic(nan_at=4), tmp_path, max_steps=5)  # logs steps 1-3, checkpoint at 2
    tracking.end_trackers(dying)
    dead_step_3 = scalars(logs)["train/loss"][2]

    resumed = tracked(logs)  # a new process: the same folder, a fresh count of steps
    quadratic_steps(resumed, Quadratic(scale=2.0), tmp_path, max_steps=5, resume=True)  # steps 3-5 again
    quadratic_steps(resumed, Quadratic(), tmp_path, max_steps=2, name="stage2.pt")  # the run's next stage: 6-7
    tracking.log_evaluation(resumed, {"n": 4, "accuracy": {"student": 3}})
    tracking.end_trackers(resumed)

    logged = scalars(logs)
    assert steps(logged, "train/loss") == [1, 2, 3, 4, 5, 6, 7]
    assert logged["train/loss"][2] == (3, pytest.approx(2 * dead_step_3[1]))  # the resumed run's, not the dead one's
    assert logged["eval/accuracy/student"] == [(7, 0.75)]


def test_the_logged_loss_terms_add_up_to_the_logged_loss(tokenizer, tiny_model, tmp_path):
    student = add_lora(tiny_model, r=4, alpha=8)
    objective = Objective({"forward_kl": 1.0, "sft": 0.1}, hidden_weight=0.5)
    accelerator = tracked(tmp_path / "logs")
    train(accelerator, DistillLoss(student, Teacher(student), objective), make_pairs(tokenizer, n=8),
          lambda b: collate_pairs(b, tokenizer.pad_token_id),
          TrainSettings(lr=0.05, max_steps=3, batch_size=4, micro_batch_size=2), tmp_path / "state.pt")
    tracking.end_trackers(accelerator)
    logged = scalars(tmp_path / "logs")
    for n, (step, loss) in enumerate(logged["train/loss"]):
        terms = [logged[f"train/loss_{name}"][n] for name in ("forward_kl", "sft", "hidden")]
        assert all(at == step for at, _ in terms)
        assert sum(value for _, value in terms) == pytest.approx(loss, rel=1e-4)
    assert logged["train/loss_hidden"][-1][1] > 0  # the adapter has moved away from the teacher (adapter off)


def test_without_a_tracker_the_loop_does_no_logging_work(tokenizer, tiny_model, tmp_path):
    class Watched(DistillLoss):
        def forward(self, batch):
            assert self.term_sums is None  # no term is summed for a log that nobody reads
            return super().forward(batch)

    student = add_lora(tiny_model, r=4, alpha=8)
    accelerator = Accelerator(cpu=True)
    train(accelerator, Watched(student, Teacher(student)), make_pairs(tokenizer, n=4),
          lambda b: collate_pairs(b, tokenizer.pad_token_id), TrainSettings(max_steps=2, batch_size=2),
          tmp_path / "s.pt")
    assert not tracking.run_log(accelerator).on and not accelerator.trackers
    assert [p.name for p in tmp_path.iterdir()] == ["s.pt"]


def test_evaluation_rows_become_shares_of_questions_right_and_kls():
    offline_like = {"n": 4, "accuracy": {"base": 0, "teacher": 4, "student": 3},
                    "kl_to_teacher": {"teacher": 0.0, "base": 0.5, "student": 0.1},
                    "retention": {"n": 10, "accuracy": {"base": 9, "student": 8},
                                  "kl_to_base": {"base": 0.0, "student": 0.02}}}
    assert evaluation_scalars(offline_like) == {
        "eval/accuracy/base": 0.0, "eval/accuracy/teacher": 1.0, "eval/accuracy/student": 0.75,
        "eval/kl_to_teacher/teacher": 0.0, "eval/kl_to_teacher/base": 0.5, "eval/kl_to_teacher/student": 0.1,
        "eval/retention/base": 0.9, "eval/retention_kl/base": 0.0,
        "eval/retention/student": 0.8, "eval/retention_kl/student": 0.02}
    knowledge_like = {"n": 2, "accuracy": {"closed_book": 0, "module": 1},  # retention: a block per row
                      "retention": {"closed_book": {"accuracy": 5, "n": 10, "kl_to_base": 0.0},
                                    "module": {"accuracy": 4.5, "n": 10, "kl_to_base": 0.03}}}
    assert evaluation_scalars(knowledge_like) == {
        "eval/accuracy/closed_book": 0.0, "eval/accuracy/module": 0.5,
        "eval/retention/closed_book": 0.5, "eval/retention_kl/closed_book": 0.0,
        "eval/retention/module": 0.45, "eval/retention_kl/module": 0.03}
