from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from xenfb_harness.result import ERROR, EXIT_CODES, FAIL, PASS, Result, RoundResult, summary, write, write_junit

PIXELS = 640 * 480


def make(rounds_planned: int = 2, missed: dict[int, int] | None = None, compared: int | None = None,
         count: int | None = None) -> Result:
    """A result with `count` rounds (default: all planned + baseline), `missed[r]` pixels missed in round r."""
    missed = missed or {}
    n = rounds_planned + 1 if count is None else count
    res = Result(config="configs/default.yaml", frontend="upstream", seed=7, rounds_planned=rounds_planned)
    for r in range(n):
        m = missed.get(r, 0)
        rects = [{"x": 10 + r, "y": 20, "w": 30, "h": 2}] if m else []
        res.rounds.append(RoundResult(round=r, compared_pixels=PIXELS if compared is None else compared,
                                      missed_pixels=m, rects=rects, pages=[3, 4] if m else [],
                                      settle="window" if not m else "timeout", settle_s=0.25 * r,
                                      duration_s=1.5 + r))
    return res


# --- decide ---------------------------------------------------------------------------------------------------------


def test_new_result_is_error():
    assert Result(config="c", frontend="upstream", seed=1, rounds_planned=1).verdict == ERROR


def test_pass_when_all_rounds_compared_clean():
    res = make(rounds_planned=2)
    res.decide()
    assert res.verdict == PASS
    assert "3" in res.reason and str(3 * PIXELS) in res.reason


def test_fail_names_first_missed_round():
    res = make(rounds_planned=4, missed={2: 17, 4: 99})
    res.decide()
    assert res.verdict == FAIL
    assert "round 2" in res.reason and "17 pixels" in res.reason
    assert "2 of 5" in res.reason
    assert "round 4" not in res.reason


def test_fail_in_baseline_round():
    res = make(rounds_planned=1, missed={0: 1})
    res.decide()
    assert res.verdict == FAIL and "round 0" in res.reason and "1 pixels" in res.reason


def test_fail_even_if_run_stopped_early():
    res = make(rounds_planned=5, missed={1: 8}, count=2)
    res.decide()
    assert res.verdict == FAIL and "round 1" in res.reason


@pytest.mark.parametrize("count", [0, 1, 2])
def test_error_when_fewer_rounds_compared(count):
    res = make(rounds_planned=2, count=count)
    res.decide()
    assert res.verdict == ERROR
    assert f"only {count} of 3" in res.reason


def test_error_when_more_rounds_than_planned():
    res = make(rounds_planned=2, count=4)
    res.decide()
    assert res.verdict == ERROR


def test_rounds_that_compared_nothing_do_not_count():
    res = make(rounds_planned=2)
    res.rounds[1].compared_pixels = 0
    res.decide()
    assert res.verdict == ERROR and "only 2 of 3" in res.reason


@pytest.mark.parametrize("planned", [0, -1])
def test_never_pass_when_nothing_compared(planned):
    res = Result(config="c", frontend="upstream", seed=1, rounds_planned=planned)
    res.decide()
    assert res.verdict == ERROR and res.reason


def test_never_pass_when_all_rounds_compared_zero_pixels():
    res = make(rounds_planned=1, compared=0)
    res.decide()
    assert res.verdict == ERROR


def test_earlier_error_with_reason_stays():
    res = make(rounds_planned=2)
    res.error = "round 1: the guest framebuffer memory differs"
    res.decide()
    assert res.verdict == ERROR and res.reason == "round 1: the guest framebuffer memory differs"


def test_earlier_error_stays_even_with_missed_rounds():
    res = make(rounds_planned=2, missed={1: 5})
    res.error = "interrupted"
    res.decide()
    assert res.verdict == ERROR and res.reason == "interrupted"


def test_wrong_guest_memory_is_an_error_not_a_fail():
    res = make(rounds_planned=2, missed={1: 5, 2: 9})
    res.rounds[2].guest_memory_ok = False
    res.rounds[2].guest_memory_missed = 40
    res.decide()
    assert res.verdict == ERROR and "round 2" in res.reason and "40 pixels" in res.reason
    assert "not the backend" in res.reason


def test_decide_is_idempotent():
    for res in (make(), make(missed={1: 3}), make(count=1)):
        res.decide()
        verdict, reason = res.verdict, res.reason
        res.decide()
        assert (res.verdict, res.reason) == (verdict, reason)


# --- write ----------------------------------------------------------------------------------------------------------


def written(tmp_path: Path, res: Result) -> tuple[dict, ET.Element]:
    res.decide()
    write(res, tmp_path)
    data = json.loads((tmp_path / "result.json").read_text())
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    return data, suite


@pytest.mark.parametrize("res, verdict, code", [
    (make(), PASS, 0),
    (make(missed={1: 12}), FAIL, 1),
    (make(count=1), ERROR, 2),
])
def test_result_json(tmp_path, res, verdict, code):
    data, _ = written(tmp_path, res)
    assert data["verdict"] == verdict and data["exit_code"] == code == EXIT_CODES[verdict]
    assert data["reason"] == res.reason
    assert data["seed"] == 7 and data["frontend"] == "upstream" and data["rounds_planned"] == 2
    assert [r["round"] for r in data["rounds"]] == [r.round for r in res.rounds]
    assert all("missed_pixels" in r and "compared_pixels" in r for r in data["rounds"])
    assert (tmp_path / "result.json").read_text().endswith("\n")


def test_junit_pass(tmp_path):
    _, suite = written(tmp_path, make(rounds_planned=3))
    assert suite.tag == "testsuite"
    assert suite.get("name") == "xenfb-harness.default"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["round_000", "round_001", "round_002", "round_003"]
    assert all(c.get("classname") == "upstream.seed7" for c in cases)
    assert [float(c.get("time")) for c in cases] == [1.5, 2.5, 3.5, 4.5]
    assert suite.findall(".//failure") == [] and suite.findall(".//error") == []
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "0", "0")


def test_junit_failures(tmp_path):
    _, suite = written(tmp_path, make(rounds_planned=3, missed={1: 12, 3: 40}))
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert len(cases) == 4
    assert cases["round_000"].find("failure") is None and cases["round_002"].find("failure") is None
    f1, f3 = cases["round_001"].find("failure"), cases["round_003"].find("failure")
    assert "12" in f1.get("message") and "40" in f3.get("message")
    assert f1.get("message").startswith("12 missed pixels in pages [3, 4], e.g. [{'x': 11")  # where, in CI's list
    detail = json.loads(f1.text)
    assert detail["rects"] == [{"x": 11, "y": 20, "w": 30, "h": 2}] and detail["pages"] == [3, 4]
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "2", "0")
    assert suite.findall(".//error") == []


def test_junit_error(tmp_path):
    res = make(rounds_planned=3, count=2)
    res.error = "CommandError: command failed with exit code 1: xl create\nline two"
    _, suite = written(tmp_path, res)
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["round_000", "round_001", "stack"]
    err = cases[-1].find("error")
    assert err is not None
    assert err.get("message") == "CommandError: command failed with exit code 1: xl create"
    assert err.text == res.reason
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "0", "1")


def test_junit_error_without_rounds(tmp_path):
    res = Result(config="/x/configs/nightly.yaml", frontend="upstream", seed=1, rounds_planned=10)
    data, suite = written(tmp_path, res)
    assert data["verdict"] == ERROR and data["exit_code"] == 2
    assert suite.get("name") == "xenfb-harness.nightly"
    cases = suite.findall("testcase")
    assert len(cases) == 1 and cases[0].find("error") is not None


def test_junit_special_characters_are_escaped(tmp_path):
    res = make()
    res.error = "ValueError: <bad> & \"quoted\" 'x'"
    _, suite = written(tmp_path, res)
    assert suite.find("testcase[@name='stack']/error").text == res.reason


def test_junit_parses_with_control_characters_in_reason(tmp_path):
    res = make()
    res.error = "CommandError: command failed with exit code 1: qemu\n\x1b[31merror\x1b[0m: no KVM\x07"
    _, suite = written(tmp_path, res)
    assert "no KVM" in suite.find("testcase[@name='stack']/error").text


def test_write_junit_alone(tmp_path):
    res = make(missed={0: 1})
    res.decide()
    write_junit(res, tmp_path / "other.xml")
    root = ET.parse(tmp_path / "other.xml").getroot()
    assert len(root.findall("testcase")) == 3 and len(root.findall(".//failure")) == 1
    assert (tmp_path / "other.xml").read_bytes().startswith(b"<?xml")


# --- summary --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("res", [make(), make(missed={2: 5}), make(count=0)], ids=["pass", "fail", "error"])
def test_summary(tmp_path, res):
    res.decide()
    res.host = "nested QEMU/TCG"
    run_dir = tmp_path / "run-1"
    text = summary(res, run_dir)
    first = text.splitlines()[0]
    assert res.verdict in first and res.reason.splitlines()[0] in first
    assert f"run directory: {run_dir}" in text
    assert "seed: 7" in text and "nested QEMU/TCG" in text
    round_lines = [line for line in text.splitlines() if line[:5].strip().isdigit()]
    assert len(round_lines) == len(res.rounds)


def test_summary_shows_missed_rects_and_timings(tmp_path):
    res = make(missed={1: 60})
    res.timings = {"build": 12.34, "total": 99.0}
    res.decide()
    text = summary(res, tmp_path)
    line = next(line for line in text.splitlines() if line.split()[:1] == ["1"])
    assert "60" in line and "30x2+11+20" in line and "timeout" in line
    assert "build 12.3 s" in text and "total 99.0 s" in text


def test_summary_multiline_reason_first_line_only(tmp_path):
    res = make(count=0)
    res.error = "RuntimeError: boom\ntraceback line"
    res.decide()
    text = summary(res, tmp_path)
    assert "boom" in text and "traceback line" not in text


# --- writer.kind command: a quiet guest, a workload that draws, race hits up to a miss ------------------------------


def command_result(rounds_planned: int = 3, drawn: dict[int, int] | None = None, **kw) -> Result:
    """As make(), with drawn_pixels as writer.kind command measures them: none in round 0 (nothing before it)."""
    res = make(rounds_planned=rounds_planned, **kw)
    drawn = {r: 100 for r in range(1, len(res.rounds))} if drawn is None else drawn
    for r in res.rounds[1:]:
        r.drawn_pixels = drawn.get(r.round, 0)
    return res


def test_a_restless_guest_is_an_error_naming_the_round():
    res = command_result(rounds_planned=4)
    r = res.rounds[3]
    r.guest_quiet, r.guest_changed_pixels = False, 12
    r.guest_changed_rects = [{"x": 1, "y": 2, "w": 3, "h": 4}, {"x": 9, "y": 9, "w": 1, "h": 1}]
    res.decide()
    assert res.verdict == ERROR
    assert "round 3" in res.reason and "12 pixels" in res.reason and "never became quiet" in res.reason
    assert "{'x': 1, 'y': 2, 'w': 3, 'h': 4}" in res.reason and "'x': 9" not in res.reason


def test_a_restless_guest_is_an_error_even_with_misses_and_names_the_first():
    res = command_result(rounds_planned=4, missed={1: 5})
    for r in (2, 4):
        res.rounds[r].guest_quiet = False
    res.decide()
    assert res.verdict == ERROR and "round 2" in res.reason and "round 4" not in res.reason


def test_an_earlier_error_outranks_a_restless_guest():
    res = command_result()
    res.rounds[1].guest_quiet = False
    res.error = "interrupted"
    res.decide()
    assert (res.verdict, res.reason) == (ERROR, "interrupted")


def test_a_workload_that_drew_nothing_is_an_error():
    res = command_result(rounds_planned=3, drawn={})
    res.decide()
    assert res.verdict == ERROR and "drew nothing" in res.reason
    assert "3 rounds" in res.reason  # the measured ones: round 0 measures nothing


def test_a_miss_is_a_fail_even_if_the_workload_drew_nothing():
    res = command_result(rounds_planned=3, drawn={}, missed={2: 7})
    res.decide()
    assert res.verdict == FAIL and "round 2" in res.reason


def test_a_workload_that_drew_in_one_round_passes():
    res = command_result(rounds_planned=3, drawn={2: 1})
    res.decide()
    assert res.verdict == PASS, res.reason


def test_drawn_pixels_unmeasured_is_no_error():
    # Our own writers (mmap, xorg) measure nothing: None everywhere, decided as before.
    res = make(rounds_planned=2)
    assert all(r.drawn_pixels is None for r in res.rounds)
    res.decide()
    assert res.verdict == PASS


def test_too_few_rounds_is_still_an_error_when_the_workload_drew():
    res = command_result(rounds_planned=4, count=3)
    res.decide()
    assert res.verdict == ERROR and "only 3 of 5" in res.reason


def test_command_round_fields_reach_result_json(tmp_path):
    res = command_result(rounds_planned=2)
    res.rounds[2].at_s = 4.25
    res.workload_log = "workload.log"
    data, _ = written(tmp_path, res)
    assert data["workload_log"] == "workload.log"
    assert [r["drawn_pixels"] for r in data["rounds"]] == [None, 100, 100]
    assert data["rounds"][2]["at_s"] == 4.25
    assert all(r["guest_quiet"] and r["guest_changed_pixels"] == 0 for r in data["rounds"])


def with_counters(res: Result, hits: dict[int, dict]) -> Result:
    """Every round has the module's counters (a counting frontend): zeros unless `hits` says otherwise."""
    for r in res.rounds:
        r.counters = {"race_hits": 0, "faults": 3, **hits.get(r.round, {})}
    return res


def test_a_miss_explained_by_an_earlier_rounds_race_hit_is_no_warning():
    res = with_counters(make(rounds_planned=4, missed={3: 20}), {1: {"race_hits": 2}})
    res.decide()
    assert res.verdict == FAIL and "round 3" in res.reason
    assert "WARNING" not in res.reason


def test_a_miss_with_no_race_hit_up_to_it_is_a_warning():
    res = with_counters(make(rounds_planned=4, missed={2: 20, 3: 5}), {})
    res.decide()
    assert res.verdict == FAIL
    assert "WARNING: rounds [2, 3] missed with no race hit counted by the module up to then" in res.reason


def test_race_hits_after_a_miss_do_not_explain_it():
    res = with_counters(make(rounds_planned=4, missed={1: 20, 3: 5}), {2: {"race_hits": 1}})
    res.decide()
    assert "WARNING: rounds [1] missed" in res.reason  # round 3's miss is explained by round 2's hit


def test_a_miss_in_the_round_with_the_hit_is_explained():
    res = with_counters(make(rounds_planned=2, missed={2: 20}), {2: {"race_hits": 1}})
    res.decide()
    assert res.verdict == FAIL and "WARNING" not in res.reason


def test_held_updates_explain_misses_like_race_hits():
    res = with_counters(make(rounds_planned=3, missed={3: 20}), {0: {"held": 4}})
    res.decide()
    assert "WARNING" not in res.reason


def test_misses_without_the_modules_counters_are_no_warning():
    res = make(rounds_planned=3, missed={1: 20})  # the built-in frontend: no counters at all
    res.decide()
    assert res.verdict == FAIL and "WARNING" not in res.reason


# --- git bisect run codes ---------------------------------------------------------------------------------------------

from xenfb_harness.result import git_bisect_code  # noqa: E402


@pytest.mark.parametrize("verdicts, code", [
    ([PASS], 0), ([PASS, PASS, PASS], 0),
    ([FAIL], 1), ([PASS, FAIL, PASS], 1), ([ERROR, FAIL], 1),  # any FAIL is bad: a miss seen once is a miss
    ([ERROR], 125), ([PASS, ERROR], 125), ([], 125),  # cannot be judged: skipped
])
def test_git_bisect_codes(verdicts, code):
    assert git_bisect_code(verdicts) == code
