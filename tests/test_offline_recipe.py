"""The offline recipe end to end through the CLI on a tiny model: data, outputs, and what the student learns.

What the student learns is checked by the recipe's own steps (set_up, make_pairs, make_teacher) applied to the data
a finished run wrote."""

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from ctxdistill.config import load_config
from ctxdistill.core.losses import DistillLoss, collate_pairs
from ctxdistill.core.pairs import Context, render_prompt
from ctxdistill.recipes import offline

RUN = ["samples_per_query=2", "max_new_tokens=10", "eval_max_new_tokens=4", "max_steps=3", "batch_size=4",
       "micro_batch_size=4"]


def distill(model_dir, persona_files, out, sets):
    """`ctxdistill distill offline` on the persona files, as a user runs it."""
    return run_cli("distill", "offline", "--model", str(model_dir), "--context", str(persona_files["context"]),
                   "--prompts", str(persona_files["prompts"]), "--out", str(out),
                   *[arg for s in sets for arg in ("--set", s)])


def read_rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def set_up_again(model_dir, persona_files, out, sets):
    """The recipe's set-up step over the same inputs and settings as a CLI run, in a fresh folder."""
    cfg = load_config("offline", sets=sets, model=str(model_dir))
    inputs = offline.read_inputs(cfg, [str(persona_files["context"])], str(persona_files["prompts"]), None, None)
    return offline.set_up(cfg, inputs, out, False, None)


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, persona_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("offline") / "run"
    done = distill(tiny_model_dir, persona_files, out, RUN)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_run_writes_adapter_manifest_and_report(finished_run, persona_files):
    out, done = finished_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"] == "offline" and manifest["data"]["queries"] == 4
    assert manifest["data"]["samples"] == 8 and manifest["data"]["pairs"] == 8
    assert manifest["metrics"]["train_steps"] == 3 and len(manifest["metrics"]["loss_history"]) == 3
    assert set(manifest["versions"]) >= {"torch", "transformers", "peft", "ctxdistill"}
    import hashlib

    ctx = json.loads(persona_files["context"].read_text())["context"]
    assert manifest["context_sha256"] == [hashlib.sha256(ctx.encode()).hexdigest()]
    report = (out / "report.md").read_text()
    assert "| base | no |" in report and "| student (distilled) | no |" in report and "retention" in report
    assert (out / "report.png").exists()
    assert "| student (distilled) | no |" in done.stdout


def test_adapter_loads_with_plain_peft_from_its_base_model_name(finished_run):
    from peft import AutoPeftModelForCausalLM, PeftConfig

    out, _ = finished_run
    base = PeftConfig.from_pretrained(out / "adapter").base_model_name_or_path
    assert json.loads((Path(base) / "config.json").read_text())["model_type"] == "llama"
    model = AutoPeftModelForCausalLM.from_pretrained(out / "adapter")
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_student_learns_teacher_samples_without_the_context(finished_run, tiny_model_dir, persona_files, tokenizer,
                                                            tmp_path):
    """The data that reaches the student: teacher samples made with the context, scored after the bare query."""
    out, _ = finished_run
    samples = read_rows(out / "data" / "samples.jsonl")
    queries = [row["prompt"] for row in read_rows(out / "data" / "queries.jsonl")]
    assert {s["query"] for s in samples} == set(queries) and all(s["completion_ids"] for s in samples)
    context = json.loads(persona_files["context"].read_text())["context"]
    assert all(s["contexts"] == [context] for s in samples)  # sampled with the context
    run = set_up_again(tiny_model_dir, persona_files, tmp_path / "steps", RUN)
    pairs, _, _ = offline.make_pairs(run, samples)
    assert len(pairs) == len(samples)
    for pair, s in zip(pairs, samples):
        y = s["completion_ids"]
        bare = render_prompt(tokenizer, s["query"])
        assert pair.student_ids == bare + y and pair.student_prompt_len == len(bare)
        assert "Gullrock" not in tokenizer.decode(bare)  # the student never reads the context
        with_context = render_prompt(tokenizer, s["query"], Context(context, run.cfg.context_kind))
        assert pair.teacher_ids == with_context + y and pair.teacher_prompt_len == len(with_context)
        assert context in tokenizer.decode(with_context)


def test_chat_answers_one_prompt_with_the_adapter(finished_run, tiny_model_dir, tmp_path):
    from peft import PeftModel

    from ctxdistill.core.models import load_model
    from ctxdistill.eval.evaluation import answers

    out, _ = finished_run
    model, tok, _ = load_model(str(tiny_model_dir))
    adapter = PeftModel.from_pretrained(model, out / "adapter")
    expected = {out / "adapter": answers(adapter, tok, ["Who are you?"], None, True, 5)[0]}
    # Three steps leave the random model's greedy answer as it was (blank lines), so a copy of the adapter with
    # random B matrices is asked too: its answer is words, and not the base's.
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    adapter.save_pretrained(tmp_path / "changed")
    changed = expected[tmp_path / "changed"] = answers(adapter, tok, ["Who are you?"], None, True, 5)[0]
    assert changed.strip() and changed != answers(adapter, tok, ["Who are you?"], None, False, 5)[0]
    for path, answer in expected.items():
        done = run_cli("chat", "--adapter", str(path), "--prompt", "Who are you?", "--max-new-tokens", "5")
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert done.stdout == answer + "\n"


def test_eval_command_writes_a_table(finished_run, persona_files, tmp_path):
    out, _ = finished_run
    done = run_cli("eval", "--adapter", str(out / "adapter"), "--context", str(persona_files["context"]),
                   "--qa", str(persona_files["context"]), "--max-new-tokens", "4", "--out", str(tmp_path / "ev"))
    assert done.returncode == 0, done.stderr[-2000:]
    table = (tmp_path / "ev.md").read_text()
    assert "| teacher (base + context) | yes |" in table
    result = json.loads((tmp_path / "ev.json").read_text())
    assert result["n"] == 2 and result["kl_to_teacher"]["student"] >= 0


def test_sft_objective_trains_on_hard_labels(tiny_model_dir, persona_files, tokenizer, tmp_path):
    sets = ["objective=sft", "samples_per_query=1", "max_new_tokens=6", "max_steps=2", "eval_max_new_tokens=2",
            "batch_size=4", "micro_batch_size=4"]
    done = distill(tiny_model_dir, persona_files, tmp_path / "sft", sets)
    assert done.returncode == 0, done.stderr[-2000:]
    m = json.loads((tmp_path / "sft" / "manifest.json").read_text())
    assert m["config"]["objective"] == "sft" and m["metrics"]["final_loss"] > 0
    # The loss the stages train with: no teacher at all, and the student's cross-entropy on the sampled tokens.
    run = set_up_again(tiny_model_dir, persona_files, tmp_path / "steps", sets)
    pairs, _, _ = offline.make_pairs(run, read_rows(tmp_path / "sft" / "data" / "samples.jsonl"))
    objective = run.cfg.build_objective()
    assert offline.make_teacher(run.cfg, objective, run.model, None, pairs, tokenizer.pad_token_id, run.out,
                                run.accelerator) is None
    pair = pairs[0]
    with torch.no_grad():
        loss = DistillLoss(run.model, None, objective)(collate_pairs([pair], tokenizer.pad_token_id))[0]
        logits = run.model(input_ids=torch.tensor([pair.student_ids])).logits[0, pair.student_prompt_len - 1:-1]
    cross_entropy = torch.nn.functional.cross_entropy(logits.float(), torch.tensor(pair.completion), reduction="sum")
    torch.testing.assert_close(loss.float(), cross_entropy, rtol=1e-3, atol=1e-3)
