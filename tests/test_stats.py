"""harness/stats.py: the figures of a scenario's repeated runs (--repeat, --duration, --until-fail), checked against
intervals worked out by hand or published (Wilson score, Garwood), on Result objects built here; and
Result.unexplained_misses, which those figures share with Result.decide."""
from __future__ import annotations

import json

import pytest

from xenfb_harness.result import ERROR, FAIL, PASS, Result, RoundResult
from xenfb_harness.stats import CONFIDENCE, Rate, describe, poisson_rate, repeat_stats, wilson, write_summary

CONFIG = "configs/legacy-race.yaml"


def run_result(missed: dict[int, float] | None = None, rounds: int = 3, rounds_s: float = 120.0,
               total_s: float = 150.0, error: str = "", counters: dict | None = None,
               round_counters: dict[int, dict] | None = None, pages: int = 2) -> Result:
    """One run: rounds 0..`rounds`, round r missed (7 pixels in `pages` pages) and judged at missed[r] seconds when
    r is in `missed`; `rounds_s` of rounds (stress) in `total_s` of wall time; `error` makes it an ERROR."""
    missed = missed or {}
    round_counters = round_counters or {}
    res = Result(config=CONFIG, frontend="legacy", seed=1, rounds_planned=rounds)
    for r in range(rounds + 1):
        m = r in missed
        res.rounds.append(RoundResult(r, 100, 7 if m else 0, pages=list(range(10 * r, 10 * r + pages)) if m else [],
                                      at_s=missed.get(r, rounds_s * r / (rounds + 1)),
                                      counters=round_counters.get(r, {})))
    res.timings = {"rounds": rounds_s, "total": total_s}
    res.counters = counters or {}
    res.error = error
    res.decide()
    return res


# --- wilson, poisson_rate ---------------------------------------------------------------------------------------------


def test_wilson_matches_known_intervals():
    low, high = wilson(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(3, 10) == pytest.approx((0.1078, 0.6032), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson(1, 2) == pytest.approx((0.0945, 0.9055), abs=1e-4)


def test_wilson_is_symmetric_and_needs_a_trial():
    low, high = wilson(3, 10)
    assert wilson(7, 10) == pytest.approx((1 - high, 1 - low))
    assert wilson(0, 0) is None


def test_wilson_interval_narrows_with_more_trials():
    small, big = wilson(5, 10), wilson(50, 100)
    assert big[0] > small[0] and big[1] < small[1]
    assert big[0] < 0.5 < big[1]


def test_garwood_interval_matches_known_values():
    low, high = poisson_rate(0, 1)
    assert low == 0.0 and high == pytest.approx(3.6889, abs=1e-4)
    assert poisson_rate(10, 1) == pytest.approx((4.7954, 18.3904), abs=1e-4)
    assert poisson_rate(1, 1) == pytest.approx((0.02532, 5.5716), abs=1e-4)
    assert poisson_rate(2, 1) == pytest.approx((0.2422, 7.2247), abs=1e-4)


def test_garwood_interval_scales_with_exposure():
    one = poisson_rate(10, 1)
    assert poisson_rate(10, 2) == pytest.approx((one[0] / 2, one[1] / 2))
    assert poisson_rate(0, 4) == pytest.approx((0.0, 3.6889 / 4), abs=1e-4)


def test_garwood_interval_needs_exposure():
    assert poisson_rate(3, 0) is None
    assert poisson_rate(0, 0.0) is None


def test_rate_per_minute_and_interval():
    rate = Rate(count=10, minutes=2.0)
    assert rate.per_minute == 5.0
    assert rate.ci95 == pytest.approx((4.7954 / 2, 18.3904 / 2), abs=1e-4)
    d = rate.as_dict()
    assert d["count"] == 10 and d["per_minute"] == 5.0 and d["ci95"] == pytest.approx(rate.ci95)
    empty = Rate(count=3, minutes=0.0)
    assert empty.per_minute is None and empty.ci95 is None


# --- repeat_stats -----------------------------------------------------------------------------------------------------


def test_verdicts_and_stress_time_are_counted():
    results = [run_result(), run_result(missed={1: 30.0}), run_result(error="boom")]
    assert [r.verdict for r in results] == [PASS, FAIL, ERROR]
    s = repeat_stats(CONFIG, results)
    assert s.config == CONFIG and s.runs == 3
    assert s.verdicts == {PASS: 1, FAIL: 1, ERROR: 1}
    assert s.stress_minutes == pytest.approx(2 * 120 / 60)  # the judged runs' rounds: an ERROR says nothing
    assert s.wall_minutes == pytest.approx(3 * 150 / 60)  # every run's time


def test_error_runs_are_left_out_of_the_detection_rate():
    results = [run_result(), run_result(missed={1: 30.0}), run_result(error="boom"), run_result(error="boom")]
    s = repeat_stats(CONFIG, results)
    assert s.judged == 2
    assert s.detection_rate == 0.5  # 1 of 2 judged, not 1 of 4 runs
    assert s.detection_ci95 == pytest.approx((0.0945, 0.9055), abs=1e-4)  # Wilson, k=1, n=2


def test_detection_rate_over_ten_runs_has_the_wilson_interval():
    results = [run_result(missed={2: 50.0}) for _ in range(3)] + [run_result() for _ in range(7)]
    s = repeat_stats(CONFIG, results)
    assert s.detection_rate == pytest.approx(0.3)
    assert s.detection_ci95 == pytest.approx((0.1078, 0.6032), abs=1e-4)


def test_no_detection_rate_when_nothing_was_judged():
    s = repeat_stats(CONFIG, [run_result(error="host gone"), run_result(error="host gone")])
    assert s.judged == 0 and s.detection_rate is None and s.detection_ci95 is None
    assert s.first_fail is None


def test_misses_are_counted_per_minute_of_stress():
    # 3 runs of 2 minutes of rounds each (200 s in all): 6 minutes of stress; per 10 minutes of wall time is wrong
    results = [run_result(rounds_s=120, total_s=200),
               run_result(missed={1: 20.0, 3: 100.0}, rounds_s=120, total_s=200, pages=3),
               run_result(missed={2: 70.0}, rounds_s=120, total_s=200, pages=1)]
    s = repeat_stats(CONFIG, results)
    assert s.stress_minutes == pytest.approx(6.0) and s.wall_minutes == pytest.approx(10.0)
    assert s.missed_rounds.count == 3 and s.missed_rounds.minutes == pytest.approx(6.0)
    assert s.missed_rounds.per_minute == pytest.approx(0.5)
    assert s.missed_pages.count == 3 + 3 + 1
    assert s.missed_pages.per_minute == pytest.approx(7 / 6)
    # Garwood for 3 events (0.6187, 8.7673), per 6 minutes
    assert s.missed_rounds.ci95 == pytest.approx((0.6187 / 6, 8.7673 / 6), abs=1e-4)


def test_race_hits_per_minute_only_from_runs_that_counted_them():
    # per-round counters are what the rounds counted; the run's own (end of run) also counts round 0 and before
    results = [run_result(counters={"race_hits": 9}, round_counters={1: {"race_hits": 4}, 2: {"race_hits": 0}},
                          rounds_s=60),
               run_result(counters={"race_hits": 9}, round_counters={1: {"race_hits": 2}}, rounds_s=60),
               run_result(counters={}, rounds_s=60)]
    s = repeat_stats(CONFIG, results)
    assert s.race_hits is not None and s.race_hits.count == 6
    assert s.race_hits.per_minute == pytest.approx(6 / 2)  # stress of the two runs that counted
    assert s.race_hits.ci95 == poisson_rate(6, 2.0)


def test_no_race_hit_rate_for_a_frontend_without_the_counter():
    s = repeat_stats(CONFIG, [run_result(), run_result(missed={1: 10.0})])
    assert s.race_hits is None
    assert s.as_dict()["race_hits"] is None


def test_zero_misses_still_have_an_upper_bound():
    s = repeat_stats(CONFIG, [run_result(rounds_s=300) for _ in range(2)])  # 10 minutes, nothing missed
    assert s.missed_rounds.count == 0 and s.missed_rounds.per_minute == 0.0
    assert s.missed_rounds.ci95 == pytest.approx((0.0, 3.6889 / 10), abs=1e-4)


def test_first_fail_counts_time_of_earlier_runs_and_the_first_missed_round():
    results = [run_result(rounds_s=120, total_s=150),
               run_result(rounds_s=100, total_s=130, error="guest did not boot"),
               run_result(missed={2: 25.0, 3: 40.0}, rounds_s=50, total_s=60),
               run_result(missed={1: 5.0}, rounds_s=50, total_s=60)]
    s = repeat_stats(CONFIG, results)
    assert s.first_fail == {"run": 3, "wall_s": 150 + 130 + 60, "stress_s": 120 + 25}  # not the ERROR run's


def test_first_fail_in_the_first_run():
    s = repeat_stats(CONFIG, [run_result(missed={1: 33.3}, rounds_s=80, total_s=95), run_result()])
    assert s.first_fail == {"run": 1, "wall_s": 95.0, "stress_s": 33.3}


def test_first_fail_ignores_a_miss_in_an_error_run():
    # a round missed, then the stack broke: an ERROR says nothing about the frontend, so not the first FAIL
    broken = run_result(missed={1: 10.0}, rounds_s=40, total_s=50, error="guest crashed")
    assert broken.verdict == ERROR
    s = repeat_stats(CONFIG, [broken, run_result(missed={2: 12.0}, rounds_s=40, total_s=45)])
    assert s.first_fail == {"run": 2, "wall_s": 95.0, "stress_s": 12.0}


def test_no_first_fail_when_every_run_passed():
    assert repeat_stats(CONFIG, [run_result(), run_result()]).first_fail is None


def test_unexplained_rounds_name_the_run_and_round():
    # run 1: round 1 missed before any race hit (unexplained), round 3 after one (explained)
    first = run_result(missed={1: 10.0, 3: 30.0}, round_counters={1: {"race_hits": 0}, 2: {"race_hits": 1},
                                                                  3: {"race_hits": 0}})
    # run 2: a held update (negative control) explains its miss; run 3: no counters, another frontend
    second = run_result(missed={2: 10.0}, round_counters={1: {"held": 1}, 2: {"race_hits": 0}})
    third = run_result(missed={1: 10.0})
    fourth = run_result(missed={2: 10.0}, round_counters={2: {"race_hits": 0}})
    assert first.unexplained_misses() == [1]
    assert second.unexplained_misses() == [] and third.unexplained_misses() == []
    s = repeat_stats(CONFIG, [first, second, third, fourth])
    assert s.unexplained_rounds == [(1, 1), (4, 2)]
    assert s.as_dict()["unexplained_rounds"] == [{"run": 1, "round": 1}, {"run": 4, "round": 2}]


def test_an_empty_series_has_no_figures():
    s = repeat_stats(CONFIG, [])
    assert s.runs == 0 and s.verdicts == {PASS: 0, FAIL: 0, ERROR: 0}
    assert s.detection_rate is None and s.first_fail is None
    assert s.missed_rounds.per_minute is None and s.missed_rounds.ci95 is None
    describe(s)  # does not raise


# --- Result.unexplained_misses ------------------------------------------------------------------------------------


def test_unexplained_misses_counts_everything_up_to_the_missed_round():
    res = run_result(missed={2: 1.0, 3: 2.0}, round_counters={0: {"race_hits": 0}, 1: {"race_hits": 0},
                                                              2: {"race_hits": 0}, 3: {"race_hits": 2}})
    assert res.unexplained_misses() == [2]
    res = run_result(missed={3: 2.0}, round_counters={0: {"race_hits": 1}, 3: {"race_hits": 0}})
    assert res.unexplained_misses() == []  # a hit in round 0 explains a page missed later


def test_decide_warns_about_the_same_rounds():
    res = run_result(missed={1: 1.0, 2: 2.0}, round_counters={1: {"race_hits": 0}, 2: {"race_hits": 0}})
    assert res.verdict == FAIL
    assert res.unexplained_misses() == [1, 2]
    assert "WARNING: rounds [1, 2] missed with no race hit" in res.reason
    quiet = run_result(missed={1: 1.0}, round_counters={1: {"race_hits": 1}})
    assert quiet.verdict == FAIL and "WARNING" not in quiet.reason


def test_unexplained_misses_are_none_without_misses():
    assert run_result(round_counters={1: {"race_hits": 0}}).unexplained_misses() == []


# --- describe, write_summary ------------------------------------------------------------------------------------------


def figures():
    return repeat_stats(CONFIG, [
        run_result(rounds_s=120, total_s=150, counters={"race_hits": 1}, round_counters={1: {"race_hits": 1}}),
        run_result(missed={2: 25.0}, rounds_s=120, total_s=190, counters={"race_hits": 2},
                   round_counters={2: {"race_hits": 0}}),
        run_result(rounds_s=120, total_s=150, error="the host: gone", counters={"race_hits": 0})])


def test_describe_mentions_every_figure():
    text = describe(figures())
    assert text.startswith(CONFIG + ": 3 runs: 1 FAIL, 1 PASS, 1 ERROR")
    assert "4.0 min of stress in 8.2 min" in text
    assert "detection rate: 1/2 = 50% (95% CI 9%-91%)" in text
    assert "rounds with misses: 1, 0.25/min (95% CI" in text  # per minute of the judged runs' rounds
    assert "missed pages: 2, 0.5/min" in text
    assert "race hits counted by the frontend: 1, 0.25/min" in text  # the rounds' own counts
    assert "first FAIL: run 2, its first missed round after 2.4 min of stress (the runs up to its end took 5.7 min)" in text
    assert "WARNING: 1 missed rounds with no race hit" in text and "[(2, 2)]" in text


def test_describe_without_fails_or_judged_runs():
    clean = describe(repeat_stats(CONFIG, [run_result(rounds_s=90), run_result(rounds_s=90)]))
    assert "detection rate: 0/2 = 0% (95% CI 0%-66%)" in clean
    assert "no FAIL in 3.0 min of stress" in clean and "first FAIL" not in clean
    assert "race hits" not in clean and "WARNING" not in clean
    broken = describe(repeat_stats(CONFIG, [run_result(error="x", rounds_s=0, total_s=5)]))
    assert "detection rate: none (no run was judged)" in broken
    assert "no stress time" in broken and "no FAIL" not in broken


def test_describe_says_seconds_for_a_quick_first_fail():
    text = describe(repeat_stats(CONFIG, [run_result(missed={1: 12.0}, rounds_s=30, total_s=45)]))
    assert "first FAIL: run 1, its first missed round after 12 s of stress (the runs up to its end took 45 s)" in text


def test_write_summary_holds_every_scenario(tmp_path):
    other = repeat_stats("configs/default.yaml", [run_result(rounds_s=60, total_s=70)])
    path = tmp_path / "summary.json"
    write_summary(path, [figures(), other])
    saved = json.loads(path.read_text())
    assert saved["schema"] == 1 and saved["kind"] == "repeated runs" and saved["confidence"] == CONFIDENCE
    first, second = saved["scenarios"]
    assert first["config"] == CONFIG and first["runs"] == 3
    assert first["verdicts"] == {PASS: 1, FAIL: 1, ERROR: 1}
    assert first["detection"]["fail"] == 1 and first["detection"]["judged"] == 2
    assert first["detection"]["rate"] == 0.5
    assert first["detection"]["ci95"] == pytest.approx([0.0945, 0.9055], abs=1e-4)
    assert first["stress_minutes"] == 4.0 and first["wall_minutes"] == pytest.approx(8.167, abs=1e-3)
    assert first["missed_rounds"] == {"count": 1, "per_minute": pytest.approx(1 / 4),
                                      "ci95": pytest.approx(list(poisson_rate(1, 4.0)))}
    assert first["missed_pages"]["count"] == 2
    assert first["race_hits"]["count"] == 1 and first["race_hits"]["per_minute"] == pytest.approx(0.25)
    assert first["stopped_at_first_fail"] is False and first["pages_beyond_hits"] == []
    assert first["first_fail"] == {"run": 2, "wall_s": 340.0, "stress_s": 145.0}
    assert first["unexplained_rounds"] == [{"run": 2, "round": 2}]
    assert second["config"] == "configs/default.yaml" and second["detection"]["rate"] == 0.0
    assert second["first_fail"] is None and second["race_hits"] is None
    assert path.read_text().endswith("}\n")


def natural_run(pages: int, hits: int, **writer) -> Result:
    """A FAIL run of round 1 missing `pages` pages with `hits` race hits counted in it, by a writer as given."""
    res = run_result(missed={1: 10.0}, pages=pages, round_counters={1: {"race_hits": hits}})
    res.effective_config = {"writer": {"mappings": 0, "lifecycle": "per-round", **writer}}
    res.decide()
    return res


def test_more_missed_pages_than_race_hits_is_flagged_only_where_it_cannot_be():
    assert natural_run(2, 2).pages_beyond_hits() == [] and natural_run(1, 5).pages_beyond_hits() == []
    beyond = natural_run(3, 2)
    assert beyond.pages_beyond_hits() == [(1, 3, 2)] and "more pages than the module" in beyond.reason
    # one mapping (a zap untracks several PTEs) or a persistent writer (untracked pages outlive their round)
    assert natural_run(3, 1, mappings=1).pages_beyond_hits() == []
    assert natural_run(3, 1, lifecycle="persistent").pages_beyond_hits() == []
    s = repeat_stats(CONFIG, [natural_run(2, 2), natural_run(3, 2)])
    assert s.pages_beyond_hits == [(2, 1, 3, 2)]
    text = describe(s)
    assert "rounds that missed more pages than their race hits: 1" in text
    assert "WARNING: 1 rounds missed more pages than they counted race hits" in text and "(2, 1, 3, 2)" in text
    assert s.as_dict()["pages_beyond_hits"] == [{"run": 2, "round": 1, "missed_pages": 3, "race_hits": 2}]


def test_a_series_stopped_at_its_first_fail_says_its_rates_lean_high():
    results = [run_result(), run_result(missed={1: 10.0})]
    assert "lean high" not in describe(repeat_stats(CONFIG, results))
    s = repeat_stats(CONFIG, results, until_fail=True)
    assert s.as_dict()["stopped_at_first_fail"] is True and "lean high" in describe(s)
