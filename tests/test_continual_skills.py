"""benchmarks/continual_skills.py: the skills' generator and checkers, and --quick, every phase of the continual
benchmark on a tiny model with its cache and its machine-readable last line. (The real numbers come from
`make bench-continual`; see docs/per_row_contexts.md.)"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from pathlib import Path

import pytest

from ctxdistill.config import OnpolicyConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import continual_skills as continual  # noqa: E402

TIMER, DATE = continual.SKILLS


def test_the_task_generator_is_deterministic():
    for skill in continual.SKILLS:
        assert continual.skill_split(skill, 48, 24) == continual.skill_split(skill, 48, 24)
    train, _ = continual.skill_split(TIMER, 48, 24)
    assert train[0].answer == json.dumps({"tool": "timer", "minutes": int(re.search(r"\d+", train[0].prompt)[0])})
    train, _ = continual.skill_split(DATE, 48, 24)
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", x.answer) for x in train)


def test_train_and_test_items_do_not_overlap():
    for skill in continual.SKILLS:
        train, test = continual.skill_split(skill, 48, 24)
        assert len(train) == 48 and len(test) == 24
        assert not {x.prompt for x in train} & {x.prompt for x in test}
        assert not {x.answer for x in train} & {x.answer for x in test}  # not even a value is shared
        assert len({x.answer for x in train + test}) == 72


def test_the_tool_call_checker_accepts_the_call_and_nothing_near_it():
    answer = '{"tool": "timer", "minutes": 15}'
    assert TIMER.check(answer, answer) and TIMER.check(' {"minutes": 15, "tool": "timer"}\n', answer)
    for near_miss in ['{"tool": "timer", "minutes": "15"}',  # a string, not a number
                      '{"tool": "timer", "minutes": 16}', '{"tool": "alarm", "minutes": 15}',
                      '{"tool": "timer", "minutes": 15, "label": "tea"}', '{"tool": "timer"}',
                      'Sure! {"tool": "timer", "minutes": 15}', '```json\n{"tool": "timer", "minutes": 15}\n```',
                      '{"tool": "timer", "minutes": 15}\nDone.', '{"tool": "timer", "minutes": 15.0}',
                      "I have set a timer for 15 minutes.", ""]:
        assert not TIMER.check(near_miss, answer), near_miss


def test_the_date_checker_wants_the_iso_date_alone():
    assert DATE.check("2026-03-14", "2026-03-14") and DATE.check(" 2026-03-14\n", "2026-03-14")
    for near_miss in ["2026-3-14", "14-03-2026", "2026/03/14", "2026-03-14.", "2026-03-15",
                      "The ISO date is 2026-03-14", "14 March 2026"]:
        assert not DATE.check(near_miss, "2026-03-14"), near_miss


def test_the_teacher_reads_the_items_demonstration_the_same_way_on_every_side():
    item = continual.Item("Start a 15-minute timer." + continual.TIMER_ONLY, '{"tool": "timer", "minutes": 15}')
    for chosen in ([], ["--teacher-template", "The answer to the request below: {demonstration}\n\n{prompt}"]):
        for quick in ([], ["--quick"]):
            settings = continual.phase_settings(continual.parse_args(chosen + quick))
            teacher = continual.teacher_prompt(item, settings["template"])  # the teacher row of the table
            assert item.prompt in teacher and item.answer in teacher
            assert chosen or settings["template"] == OnpolicyConfig().demonstration_template  # the project's
            trl = continual.trl_template(settings["template"])
            assert trl.format(prompt=item.prompt, privileged_context=item.answer) == teacher
            for method in ("onpolicy", "offline"):  # ours reads the rows with the same prompt
                ours = settings[method]["demonstration_template"]
                assert ours.format(prompt=item.prompt, demonstration=item.answer) == teacher


def test_a_teacher_template_without_its_fields_is_refused(capsys):
    with pytest.raises(SystemExit):
        continual.parse_args(["--teacher-template", "{prompt} and nothing else"])
    assert "lacks {demonstration}" in capsys.readouterr().err


@pytest.fixture(scope="module")
def quick_run(tiny_model_dir, tmp_path_factory):
    """--quick on a tiny model, as if TRL were not installed; (OUT, results, what it printed)."""
    out = tmp_path_factory.mktemp("continual") / "b"
    args = continual.parse_args(["--quick", "--model", str(tiny_model_dir), "--out", str(out)])
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(continual, "trl_installed", lambda: False)
        results = continual.run(args)
        first_timings = json.loads((out / "timings.json").read_text())
        again = continual.run(args)  # every phase and row is read back from OUT: nothing trains or generates again
    assert again == results and json.loads((out / "timings.json").read_text()) == first_timings
    return out, results, printed.getvalue()


def test_quick_benchmark_prints_the_table_and_the_continual_line_without_trl(quick_run):
    out, results, printed = quick_run
    last = printed.strip().splitlines()[-1]
    assert re.fullmatch(r"CONTINUAL sft=\d+\.\d/\d+ ours=\d+\.\d/\d+ trl=none/none", last)
    assert continual.TRL_MISSING in printed and "| ours, offline (offline --data) |" in printed
    assert set(results) == {"base", "teacher", "sft_1", "sft_2", "onpolicy_1", "onpolicy_2", "offline_1", "offline_2"}
    assert all(set(r["skills"]) == {"timer", "date"} and r["skills"]["date"]["n"] == 2 for r in results.values())
    assert results["sft_2"]["retention"]["n"] == 10 and "retention" not in results["teacher"]
    assert (out / "table.md").read_text().strip().endswith(last)
    assert json.loads((out / "results.json").read_text())["continual"] == last
    for method in ("sft", "onpolicy", "offline"):  # stage 2 continues the stage-1 adapter
        manifest = json.loads((out / method / "stage2" / "manifest.json").read_text())
        assert manifest["init_adapter"] == str(out / method / "stage1" / "adapter")
    rows = [json.loads(line) for line in (out / "data" / "date" / "rows.jsonl").read_text().splitlines()]
    assert set(rows[0]) == {"prompt", "demonstration"} and not (out / "trl").exists()


def test_probe_answers_as_the_base_without_and_with_the_demonstration(tiny_model_dir, tmp_path, capsys):
    args = continual.parse_args(["--quick", "--probe", "--model", str(tiny_model_dir), "--out", str(tmp_path)])
    results = continual.run(args)
    assert set(results) == {"base", "teacher"} and set(results["base"]["skills"]) == {"timer", "date"}
    teacher = results["teacher"]["skills"]["timer"]["answers"][0]
    assert teacher["expected"] == continual.skill_split(TIMER, 4, 2)[1][0].answer
    assert "timer: base" in capsys.readouterr().out and (tmp_path / "probe.json").exists()
    assert not (tmp_path / "sft").exists()  # nothing trained


def test_trl_stages_train_in_their_own_process_and_continue_the_first_adapter(tiny_model_dir, tmp_path):
    pytest.importorskip("trl")  # the benchmark runs without TRL (its row says so); this checks the TRL side itself
    args = continual.parse_args(["--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path)])
    data, timings = continual.make_data(tmp_path, continual.SIZES["quick"]), {}
    settings = continual.phase_settings(args)
    adapters = continual.train_method("trl", tmp_path, data, settings, timings)
    assert adapters == {1: tmp_path / "trl" / "stage1" / "adapter", 2: tmp_path / "trl" / "stage2" / "adapter"}
    for stage in (1, 2):
        assert (adapters[stage] / "adapter_model.safetensors").exists()
        record = json.loads((tmp_path / "trl" / f"stage{stage}" / "stage.json").read_text())
        assert record["steps"] == 2 and not record["stopped_by_budget"]
    spec = json.loads((tmp_path / "trl" / "stage2" / "spec.json").read_text())
    assert spec["init_adapter"] == str(adapters[1]) and spec["template"] == continual.trl_template(settings["template"])
    assert set(timings) == {"trl/stage1", "trl/stage2"}
