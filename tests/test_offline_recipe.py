"""The offline recipe end to end through the CLI on a tiny model: data, outputs, and what the student learns."""

import json

import pytest
from conftest import run_cli


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, persona_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("offline") / "run"
    done = run_cli("distill", "offline", "--model", str(tiny_model_dir), "--context", str(persona_files["context"]),
                   "--prompts", str(persona_files["prompts"]), "--out", str(out), "--set", "samples_per_query=2",
                   "--set", "max_new_tokens=10", "--set", "eval_max_new_tokens=4", "--set", "max_steps=3",
                   "--set", "batch_size=4", "--set", "micro_batch_size=4")
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
    assert (json.loads(open(f"{base}/config.json").read())["model_type"]) == "llama"
    model = AutoPeftModelForCausalLM.from_pretrained(out / "adapter")
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_student_learns_teacher_samples_without_the_context(finished_run, tokenizer):
    """The data that reaches the student: teacher samples made with the context, scored after the bare query."""
    out, _ = finished_run
    samples = [json.loads(x) for x in (out / "data" / "samples.jsonl").read_text().splitlines()]
    queries = [json.loads(x)["prompt"] for x in (out / "data" / "queries.jsonl").read_text().splitlines()]
    assert {s["query"] for s in samples} == set(queries) and all(s["completion_ids"] for s in samples)


def test_chat_answers_one_prompt_with_the_adapter(finished_run):
    out, _ = finished_run
    done = run_cli("chat", "--adapter", str(out / "adapter"), "--prompt", "Who are you?", "--max-new-tokens", "5")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]


def test_eval_command_writes_a_table(finished_run, persona_files, tmp_path):
    out, _ = finished_run
    done = run_cli("eval", "--adapter", str(out / "adapter"), "--context", str(persona_files["context"]),
                   "--qa", str(persona_files["context"]), "--max-new-tokens", "4", "--out", str(tmp_path / "ev"))
    assert done.returncode == 0, done.stderr[-2000:]
    table = (tmp_path / "ev.md").read_text()
    assert "| teacher (base + context) | yes |" in table
    result = json.loads((tmp_path / "ev.json").read_text())
    assert result["n"] == 2 and result["kl_to_teacher"]["student"] >= 0


def test_sft_objective_trains_on_hard_labels(tiny_model_dir, persona_files, tmp_path):
    done = run_cli("distill", "offline", "--model", str(tiny_model_dir), "--context", str(persona_files["context"]),
                   "--prompts", str(persona_files["prompts"]), "--out", str(tmp_path / "sft"), "--set",
                   "objective=sft", "--set", "samples_per_query=1", "--set", "max_new_tokens=6", "--set", "max_steps=2",
                   "--set", "eval_max_new_tokens=2", "--set", "batch_size=4", "--set", "micro_batch_size=4")
    assert done.returncode == 0, done.stderr[-2000:]
    m = json.loads((tmp_path / "sft" / "manifest.json").read_text())
    assert m["config"]["objective"] == "sft" and m["metrics"]["final_loss"] > 0
