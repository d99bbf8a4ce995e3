"""Runs planned to their budget: the loop times its first steps and fits the whole schedule (warm-up and decay)
inside the deadline, instead of being cut by it."""

import time

import pytest
import torch
from accelerate import Accelerator

from ctxdistill.core.training import Schedule, TrainSettings, fit_to_deadline, train


class SlowLoss(torch.nn.Module):
    """A loss whose every micro-batch takes `seconds`: a stand-in for a model of known speed."""

    def __init__(self, seconds: float):
        super().__init__()
        self.w, self.seconds = torch.nn.Parameter(torch.ones(3)), seconds

    def forward(self, batch):
        time.sleep(self.seconds)
        return (self.w ** 2).sum() * len(batch.labels), 3


class Rows:
    def __init__(self, n):
        self.labels = [0] * n


def run(tmp_path, seconds, budget, resume=False, **settings):
    loss = SlowLoss(seconds)
    s = TrainSettings(**{"epochs": 50, "batch_size": 4, "micro_batch_size": 4, "warmup_ratio": 0.1,
                         "deadline": time.time() + budget, **settings})
    return train(Accelerator(cpu=True), loss, list(range(16)), lambda xs: Rows(len(xs)), s, tmp_path / "state.pt",
                 resume=resume)


def test_fit_to_deadline_counts_the_steps_that_fit_leaving_out_the_first_steps_time():
    now = time.time()
    assert fit_to_deadline([5.0, 1.0, 1.0], 3, 1000, now + 100) in range(96, 99)  # 3 done + ~95 of 1 s
    assert fit_to_deadline([1.0, 1.0, 1.0], 3, 20, now + 100) == 20  # never more than planned
    assert fit_to_deadline([1.0, 1.0, 1.0], 3, 20, now - 5) == 4  # past the deadline: one more step ends it


def test_a_budget_too_short_for_the_epochs_fits_the_schedule_and_finishes_it(tmp_path):
    result = run(tmp_path, seconds=0.1, budget=6)
    assert result.planned_steps == 200 and result.fitted_to_budget
    assert not result.stopped_by_budget and result.steps_done == result.total_steps < 200
    assert result.seconds < 6


def test_a_fitted_schedule_decays_to_zero_at_its_last_step():
    schedule = Schedule(TrainSettings(warmup_ratio=0.1, schedule="cosine"), 200)
    schedule.total = 20  # what fitting does
    assert schedule(1) == pytest.approx(2 / 3)  # warm-up of round(0.1 * 20) = 2 steps
    assert schedule(20) == pytest.approx(0.0, abs=1e-12)


def test_without_a_deadline_or_with_time_to_spare_the_plan_is_kept(tmp_path):
    result = run(tmp_path / "a", seconds=0.0, budget=60, epochs=2)
    assert result.total_steps == result.planned_steps == 8 and not result.fitted_to_budget


def test_a_resumed_run_keeps_the_fitted_schedule(tmp_path):
    first = run(tmp_path, seconds=0.1, budget=5, checkpoint_every=1)
    again = run(tmp_path, seconds=0.0, budget=60, resume=True)  # resumes at the end: nothing left to do
    assert again.total_steps == first.total_steps < again.planned_steps
    assert again.steps_done == first.steps_done


def test_offline_sampling_stops_at_a_round_when_the_next_would_pass_the_generation_share(
        monkeypatch, tiny_model_dir, persona_files, tmp_path):
    """Every query keeps the same number of samples: the budget cuts whole rounds, never a round halfway."""
    from ctxdistill.config import load_config
    from ctxdistill.recipes import offline

    cfg = load_config("offline", sets=["samples_per_query=4", "max_new_tokens=4", "dtype=float32"],
                      model=str(tiny_model_dir), max_minutes=10)
    inputs = offline.read_inputs(cfg, [persona_files["context"]], persona_files["prompts"], None, None)
    run = offline.set_up(cfg, inputs, tmp_path / "run", False, None)
    queries = offline.make_queries(run, inputs.prompts)
    clock = iter(range(0, 10_000, 100))  # each look at the clock: 100 s later
    monkeypatch.setattr(offline.time, "time", lambda: run.t_start + next(clock))
    samples = offline.make_samples(run, queries)  # 40% of 600 s: round 1 ends at ~200 s, a 2nd would end at ~400 s
    per_query = {q["prompt"]: sum(s["query"] == q["prompt"] for s in samples) for q in queries}
    assert set(per_query.values()) == {1}


def test_offline_stops_a_first_round_longer_than_the_generation_share_keeping_the_queries_sampled_so_far(
        monkeypatch, capsys, tiny_model_dir, tmp_path):
    """Many prompts, one sample each: the single round would take the whole budget, so it is cut in chunks."""
    from ctxdistill.config import load_config
    from ctxdistill.recipes import offline

    (tmp_path / "context.txt").write_text("Your name is Pip.")
    (tmp_path / "prompts.txt").write_text("\n".join(f"What is {i} plus one?" for i in range(150)))
    cfg = load_config("offline", sets=["samples_per_query=1", "samples_per_other_query=1", "max_new_tokens=2",
                                       "dtype=float32", "anchor_fraction=0"], model=str(tiny_model_dir),
                      max_minutes=10)
    inputs = offline.read_inputs(cfg, [tmp_path / "context.txt"], tmp_path / "prompts.txt", None, None)
    run = offline.set_up(cfg, inputs, tmp_path / "run", False, None)
    queries = offline.make_queries(run, inputs.prompts)
    assert len(queries) >= 150
    clock = iter(range(0, 10_000, 100))  # each look at the clock: 100 s later
    monkeypatch.setattr(offline.time, "time", lambda: run.t_start + next(clock))
    samples = offline.make_samples(run, queries)  # 40% of 600 s: a second chunk of 64 would end at ~300 s
    sampled = {s["query"] for s in samples}
    assert 0 < len(sampled) <= cfg.gen_batch_size < len(queries)
    assert f"of {len(queries)} queries sampled" in capsys.readouterr().out
