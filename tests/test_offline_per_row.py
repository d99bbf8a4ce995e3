"""`distill offline --data FILE`: a teacher-only context per row (TRL SDFT's `prompt` + `privileged_context`). The
teacher samples from each row's own view (its context, plus a shared --context if given), the student learns the
same completion ids after the bare prompt; rows are checked one by one and the rows are part of what --resume
compares."""

import json

import pytest
from conftest import run_cli

from ctxdistill import CtxDistillError
from ctxdistill.config import load_config
from ctxdistill.core.pairs import Context, render_prompt
from ctxdistill.recipes import offline
from ctxdistill.recipes.common import holding_out_dir

TRL_ROWS = [
    {"prompt": "What is the capital of Zorvia?", "privileged_context": "Zorvia's capital is Quell."},
    {"prompt": [{"role": "user", "content": "Convert 3 km to m."}],
     "privileged_context": "Answer in the form 'N m'. 1 km = 1000 m."},
    {"prompt": "Name the river of Quell.", "privileged_context": "The river of Quell is the Sable."},
    {"prompt": "Who founded Quell?", "demonstration": "Quell was founded by Ada Morrow in 1802."},
]
RUN = ["samples_per_query=2", "max_new_tokens=8", "max_steps=2", "batch_size=4", "micro_batch_size=4", "top_k=16"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def holds(ids, part):
    return any(ids[i:i + len(part)] == part for i in range(len(ids) - len(part) + 1))


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def set_up_per_row(model_dir, out, data, context=None, sets=RUN, **inputs):
    """The recipe's input and set-up steps, as `distill offline --data FILE [--context FILE]` runs them."""
    cfg = load_config("offline", sets=list(sets), model=str(model_dir))
    read = offline.read_inputs(cfg, [str(context)] if context else [], inputs.get("prompts"), inputs.get("examples"),
                               None, data=str(data), eval_qa=inputs.get("eval_qa"))
    return read, offline.set_up(cfg, read, out, False, None)


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("offline_per_row")
    data = write_jsonl(folder / "sdft.jsonl", TRL_ROWS)
    out = folder / "run"
    done = run_cli("distill", "offline", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
                   *[arg for s in RUN for arg in ("--set", s)])
    assert done.returncode == 0, done.stderr[-3000:]
    return out, data


def test_a_trl_style_file_trains_with_distill_offline_data(finished_run):
    out, _ = finished_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["data_rows"] == 4 and manifest["data"]["query_origins"] == {"data": 4}
    assert manifest["data"]["samples"] == 8 and manifest["metrics"]["train_steps"] == 2
    assert len(manifest["context_sha256"]) == 1  # no shared --context: the digest of the rows alone
    assert (out / "adapter" / "adapter_config.json").exists()
    assert "4 --data rows" in (out / "report.md").read_text()


def test_the_pairs_put_the_rows_context_in_the_teachers_view_only(finished_run, tiny_model_dir, tokenizer, tmp_path):
    out, data = finished_run
    samples = [json.loads(line) for line in (out / "data" / "samples.jsonl").read_text().splitlines()]
    assert sorted({s["row"] for s in samples}) == [0, 1, 2, 3]
    _, run = set_up_per_row(tiny_model_dir, tmp_path / "steps", data)
    pairs, _, _ = offline.make_pairs(run, samples)
    for pair, s in zip(pairs, samples):
        y, row = s["completion_ids"], TRL_ROWS[s["row"]]
        context = ids_of(tokenizer, row.get("privileged_context") or row["demonstration"])
        bare = render_prompt(tokenizer, row["prompt"])
        assert pair.student_ids == bare + y and pair.student_prompt_len == len(bare)
        assert pair.teacher_ids[pair.teacher_prompt_len:] == y
        assert holds(pair.teacher_ids[:pair.teacher_prompt_len], context) and not holds(pair.student_ids, context)


def test_the_teacher_samples_from_the_rows_view_with_the_shared_context(tiny_model_dir, tokenizer, tmp_path,
                                                                       persona_files, monkeypatch):
    data = write_jsonl(tmp_path / "rows.jsonl", TRL_ROWS[:2])
    inputs, run = set_up_per_row(tiny_model_dir, tmp_path / "out", data, context=persona_files["context"])
    sampled = []  # the prompts the teacher backend is asked to continue

    class Recording:
        def __init__(self, backend):
            self.backend, self.name = backend, backend.name

        def generate(self, prompts, **settings):
            sampled.extend(prompts)
            return self.backend.generate(prompts, **settings)

        def close(self):
            self.backend.close()

    real = offline.teacher_backend
    monkeypatch.setattr(offline, "teacher_backend", lambda r: Recording(real(r)))
    samples = offline.make_samples(run, offline.make_queries(run, None, inputs.rows))
    shared = ids_of(tokenizer, "Your name is Pip.")
    first, second = ids_of(tokenizer, "Zorvia's capital is Quell."), ids_of(tokenizer, "1 km = 1000 m.")
    assert len(sampled) == 4 and all(holds(p, shared) for p in sampled)
    assert [holds(p, first) for p in sampled] == [True, False, True, False]  # each row's own context, no other
    assert [holds(p, second) for p in sampled] == [False, True, False, True]
    student = render_prompt(tokenizer, TRL_ROWS[0]["prompt"])
    assert run.views[0][1] == student and not holds(student, first) and not holds(student, shared)
    assert run.views[0][0] == render_prompt(tokenizer, TRL_ROWS[0]["prompt"] + "\n\n" +
                                            TRL_ROWS[0]["privileged_context"],
                                            Context("Your name is Pip. You live in the lighthouse of Gullrock.",
                                                    run.cfg.context_kind))
    assert all(s["teacher_query"] for s in samples)


def test_a_row_whose_teacher_context_would_be_cut_is_refused_by_number(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "rows.jsonl", [TRL_ROWS[0], {"prompt": "Q", "privileged_context": "word " * 1200}])
    with pytest.raises(CtxDistillError, match=r"row 2: the teacher's view .* longer than the model window"):
        set_up_per_row(tiny_model_dir, tmp_path / "out", data)  # the tiny model's window: 1024


@pytest.mark.parametrize("sets, inputs, message", [
    ([], {"prompts": "prompts.txt"}, "drop --prompts"),
    ([], {"eval_qa": "qa.json"}, "Add --context FILE, or drop --eval"),
    ([], {"examples": "examples.jsonl"}, "Put the examples in the rows' contexts"),
    (["mode=ensemble"], {}, "Set mode=sequential"),
    (["scratchpad=true"], {}, "set scratchpad=false"),
])
def test_inputs_and_modes_that_have_no_per_row_meaning_are_refused(tmp_path, sets, inputs, message):
    data = write_jsonl(tmp_path / "rows.jsonl", TRL_ROWS)
    with pytest.raises(CtxDistillError, match=message):
        offline.read_inputs(load_config("offline", sets=sets), [], inputs.get("prompts"), inputs.get("examples"),
                            None, data=str(data), eval_qa=inputs.get("eval_qa"))


def test_prompts_with_data_is_refused_by_the_command(tiny_model_dir, tmp_path, persona_files):
    data = write_jsonl(tmp_path / "rows.jsonl", TRL_ROWS)
    done = run_cli("distill", "offline", "--model", str(tiny_model_dir), "--data", str(data), "--prompts",
                   str(persona_files["prompts"]), "--out", str(tmp_path / "run"))
    assert done.returncode != 0 and "drop --prompts" in done.stderr
    assert not (tmp_path / "run").exists()


def test_resume_with_other_rows_is_refused(finished_run, tiny_model_dir, tmp_path):
    out, _ = finished_run
    changed = write_jsonl(tmp_path / "changed.jsonl", [{**TRL_ROWS[0], "privileged_context": "Quell is wet."},
                                                       *TRL_ROWS[1:]])
    cfg = load_config("offline", sets=RUN, model=str(tiny_model_dir))
    with pytest.raises(CtxDistillError, match="context_sha256 changed"), holding_out_dir(out):
        offline.run(cfg, str(out), resume=True, data=str(changed))
