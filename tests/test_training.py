"""The training loop: learns, resumes exactly, survives a kill, and gives the same result on two processes."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from accelerate import Accelerator
from conftest import run_cli
from safetensors.torch import load_file

from ctxdistill.core.losses import DistillLoss, collate_pairs
from ctxdistill.core.models import add_lora
from ctxdistill.core.objectives import Objective
from ctxdistill.core.pairs import Context, assistant_header, build_pair, render_prompt
from ctxdistill.core.teacher import Teacher
from ctxdistill.core.training import TrainSettings, make_scheduler, step_examples, train


def make_pairs(tokenizer, n=8):
    header = assistant_header(tokenizer)
    ctx = Context("Always answer with the word banana.")
    g = torch.Generator().manual_seed(1)
    return [build_pair(render_prompt(tokenizer, f"question {i}", ctx), render_prompt(tokenizer, f"question {i}"),
                       torch.randint(100, 40000, (6,), generator=g).tolist(), header) for i in range(n)]


def run_training(tokenizer, tiny_model, tmp_path, settings, resume=False, objective="forward_kl"):
    student = add_lora(tiny_model, r=4, alpha=8)
    if isinstance(objective, str):
        objective = Objective({objective: 1.0})
    loss = DistillLoss(student, Teacher(student, frozen_copy=False), objective)
    result = train(Accelerator(cpu=True), loss, make_pairs(tokenizer),
                   lambda b: collate_pairs(b, tokenizer.pad_token_id), settings,
                   tmp_path / "state.pt", resume=resume, fingerprint="test")
    return result, {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}


def test_step_examples_cover_each_epoch_once_and_depend_only_on_seed_and_step():
    first_epoch = [i for s in range(4) for i in step_examples(s, 8, 2, seed=3)]
    assert sorted(first_epoch) == list(range(8))
    assert step_examples(5, 8, 2, seed=3) == step_examples(5, 8, 2, seed=3) != step_examples(5, 8, 2, seed=4)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_the_schedule_warms_up_from_the_first_step_and_resumes_exactly(schedule):
    """The learning rate of each of 10 steps with 3 warm-up steps (the first step already learns), and the same
    rates after the scheduler's state is saved at step 4 and loaded into a fresh one (a resume)."""
    settings, total, warmup = TrainSettings(lr=0.5, warmup_ratio=0.3, schedule=schedule), 10, 3
    after = {"cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)), "linear": lambda p: 1 - p,
             "constant": lambda p: 1.0}[schedule]
    expected = [0.5 * ((i + 1) / (warmup + 1) if i < warmup else after((i - warmup) / (total - warmup)))
                for i in range(total)]

    def fresh():
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=settings.lr)
        return optimizer, make_scheduler(optimizer, settings, total)

    optimizer, scheduler = fresh()
    rates, saved = [], None
    for i in range(total):
        if i == 4:
            saved = scheduler.state_dict()
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx(expected, rel=1e-12)
    optimizer, scheduler = fresh()
    scheduler.load_state_dict(saved)
    resumed = []
    for _ in range(4, total):
        resumed.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert resumed == rates[4:]


@pytest.mark.parametrize("objective", ["forward_kl", "sft", "reverse_kl",
                                       Objective({"jsd": 1.0}, top_k=32, support="union", tail="bucket"),
                                       Objective({"forward_kl": 1.0}, hidden_weight=1.0)],
                         ids=["forward_kl", "sft", "reverse_kl", "jsd-union-top32", "dcd-hidden"])
def test_lora_training_lowers_the_loss(tokenizer, tiny_model, tmp_path, objective):
    settings = TrainSettings(lr=1e-2, batch_size=4, micro_batch_size=2, max_steps=30, warmup_ratio=0.0)
    result, _ = run_training(tokenizer, tiny_model, tmp_path, settings, objective=objective)
    assert result.steps_done == 30 and not result.stopped_by_budget
    assert sum(result.loss_history[-3:]) < 0.95 * sum(result.loss_history[:3])


def test_full_finetuning_with_a_frozen_copy_teacher_trains_every_weight(tokenizer, tiny_model, tmp_path):
    initial = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    loss = DistillLoss(tiny_model.requires_grad_(True), Teacher(tiny_model, frozen_copy=True))
    settings = TrainSettings(lr=1e-3, batch_size=4, micro_batch_size=4, max_steps=3)
    train(Accelerator(cpu=True), loss, make_pairs(tokenizer), lambda b: collate_pairs(b, tokenizer.pad_token_id),
          settings, tmp_path / "s.pt")
    changed = [n for n, p in tiny_model.named_parameters() if not torch.equal(p, initial[n])]
    assert len(changed) == len(initial)
    teacher_weights = dict(loss.teacher.copy.named_parameters())
    assert all(torch.equal(teacher_weights[n], initial[n]) for n in initial)  # the teacher stays frozen


def test_a_run_stopped_by_its_budget_resumes_to_the_same_weights(tokenizer, tokenizer_model_factory, tmp_path):
    settings = TrainSettings(lr=1e-2, batch_size=4, micro_batch_size=2, max_steps=6, checkpoint_every=2)
    full, full_weights = run_training(tokenizer, tokenizer_model_factory(), tmp_path / "a", settings)

    stopped = TrainSettings(**{**settings.__dict__, "deadline": time.time() - 1})
    first, _ = run_training(tokenizer, tokenizer_model_factory(), tmp_path / "b", stopped)
    assert first.stopped_by_budget and first.steps_done == 1
    second, resumed_weights = run_training(tokenizer, tokenizer_model_factory(), tmp_path / "b", settings, resume=True)
    assert second.steps_done == 6 and not second.stopped_by_budget
    assert second.loss_history == pytest.approx(full.loss_history, rel=1e-5)
    for name in full_weights:
        torch.testing.assert_close(resumed_weights[name], full_weights[name])


@pytest.fixture
def tokenizer_model_factory(tokenizer):
    from conftest import tiny_llama

    return lambda: tiny_llama(tokenizer)


def _distill_args(model_dir, persona_files, out, *extra):
    return ["distill", "offline", "--model", str(model_dir), "--context", str(persona_files["context"]),
            "--prompts", str(persona_files["prompts"]), "--out", str(out), "--set", "dtype=float32",
            "--set", "samples_per_query=2", "--set", "max_new_tokens=12", "--set", "eval_max_new_tokens=4", *extra]


def test_a_killed_run_resumes_from_its_checkpoint_and_finishes(tiny_model_dir, persona_files, tmp_path):
    out = tmp_path / "run"
    args = _distill_args(tiny_model_dir, persona_files, out, "--set", "max_steps=400", "--set", "checkpoint_every=5",
                         "--set", "batch_size=2", "--set", "micro_batch_size=2")
    proc = subprocess.Popen([sys.executable, "-m", "ctxdistill.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    ckpt = out / "checkpoint" / "state.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (out / "manifest.json").exists()
    killed_at = torch.load(ckpt, weights_only=False)["step"]
    assert 0 < killed_at < 400

    done = run_cli(*args, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"Resuming from step {killed_at}" in done.stdout + done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["train_steps"] == 400
    assert (out / "adapter" / "adapter_model.safetensors").exists()


def test_two_processes_match_one_process(tiny_model_dir, persona_files, tmp_path):
    common = ["--set", "max_steps=4", "--set", "batch_size=4", "--set", "micro_batch_size=2", "--set", "lr=0.01"]
    one = run_cli(*_distill_args(tiny_model_dir, persona_files, tmp_path / "one", *common))
    assert one.returncode == 0, one.stderr[-2000:]
    # Same generated data for both runs: the main process samples it with the same seed.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "ctxdistill.cli", *_distill_args(tiny_model_dir, persona_files, tmp_path / "two", *common)]
    two = subprocess.run(launch, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    assert (tmp_path / "one" / "data" / "samples.jsonl").read_text() == \
        (tmp_path / "two" / "data" / "samples.jsonl").read_text()
    w1 = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    w2 = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    assert w1.keys() == w2.keys()
    moved = 0
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-4)
        moved += not torch.allclose(w1[k], torch.zeros_like(w1[k]))
    assert moved > 0
    m1 = json.loads((tmp_path / "one" / "manifest.json").read_text())["metrics"]["loss_history"]
    m2 = json.loads((tmp_path / "two" / "manifest.json").read_text())["metrics"]["loss_history"]
    assert m1 == pytest.approx(m2, rel=1e-4)
