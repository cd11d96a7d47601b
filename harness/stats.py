"""How often a scenario failed over repeated runs (--repeat, --duration, --until-fail), with 95% intervals: the
figures a claim such as "the old frontend misses an update every few minutes" needs.

- detection rate: FAIL runs among the runs that were judged (PASS or FAIL; an ERROR says nothing about the
  frontend), with a Wilson score interval;
- misses (rounds with missed updates, and missed pages) and race hits (the frontend module's counter, summed over
  the rounds) per minute of stress (the time the rounds of the judged runs took), with exact Poisson (Garwood)
  intervals;
- time to the first FAIL: the runs' own time up to the end of that run (the scenario's first run includes its
  build and the host's start), and the stress time up to the end of its first missed round;
- the cross-check with our module's race-hit counter: rounds that missed while the module had counted no race
  hit (Result.unexplained_misses), and rounds that missed more pages than they counted race hits where that
  cannot be (Result.pages_beyond_hits).
A series stopped at its first FAIL (--until-fail) is not a sample of fixed size: its rates lean high, and its time
to the first FAIL is the figure to quote; the summary says so.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from scipy.stats import binomtest, chi2

from .result import ERROR, FAIL, PASS, Result

CONFIDENCE = 0.95


def wilson(k: int, n: int) -> tuple[float, float] | None:
    """The 95% Wilson score interval of a proportion k/n; None without a single trial."""
    if n == 0:
        return None
    ci = binomtest(k, n).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return ci.low, ci.high


def poisson_rate(count: int, exposure: float) -> tuple[float, float] | None:
    """The exact 95% (Garwood) interval of a Poisson rate: `count` events in `exposure` units of time; None when
    nothing was exposed."""
    if exposure <= 0:
        return None
    alpha = 1 - CONFIDENCE
    low = chi2.ppf(alpha / 2, 2 * count) / 2 if count else 0.0
    high = chi2.ppf(1 - alpha / 2, 2 * count + 2) / 2
    return low / exposure, high / exposure


@dataclass
class Rate:
    """`count` events in `minutes` of stress."""
    count: int
    minutes: float

    @property
    def per_minute(self) -> float | None:
        return self.count / self.minutes if self.minutes > 0 else None

    @property
    def ci95(self) -> tuple[float, float] | None:
        return poisson_rate(self.count, self.minutes)

    def as_dict(self) -> dict:
        return {"count": self.count, "per_minute": self.per_minute, "ci95": self.ci95}


@dataclass
class RepeatStats:
    config: str
    runs: int
    verdicts: dict  # PASS/FAIL/ERROR -> count
    stress_minutes: float
    wall_minutes: float
    missed_rounds: Rate
    missed_pages: Rate
    race_hits: Rate | None  # None: the frontend has no race-hit counter
    first_fail: dict | None  # {"run", "wall_s", "stress_s"}
    unexplained_rounds: list = field(default_factory=list)  # (run number, round) missed with no race hit counted
    # (run number, round, missed pages, race hits): Result.pages_beyond_hits of each run
    pages_beyond_hits: list = field(default_factory=list)
    stopped_at_fail: bool = False  # --until-fail: the series ended at its first FAIL, so its rates lean high

    @property
    def judged(self) -> int:
        return self.verdicts[PASS] + self.verdicts[FAIL]

    @property
    def detection_rate(self) -> float | None:
        return self.verdicts[FAIL] / self.judged if self.judged else None

    @property
    def detection_ci95(self) -> tuple[float, float] | None:
        return wilson(self.verdicts[FAIL], self.judged)

    def as_dict(self) -> dict:
        return {
            "config": self.config, "runs": self.runs, "verdicts": self.verdicts,
            "detection": {"fail": self.verdicts[FAIL], "judged": self.judged, "rate": self.detection_rate,
                          "ci95": self.detection_ci95},
            "stress_minutes": round(self.stress_minutes, 3), "wall_minutes": round(self.wall_minutes, 3),
            "missed_rounds": self.missed_rounds.as_dict(), "missed_pages": self.missed_pages.as_dict(),
            "race_hits": self.race_hits.as_dict() if self.race_hits else None,
            "first_fail": self.first_fail, "stopped_at_first_fail": self.stopped_at_fail,
            "unexplained_rounds": [{"run": run, "round": rnd} for run, rnd in self.unexplained_rounds],
            "pages_beyond_hits": [{"run": run, "round": rnd, "missed_pages": pages, "race_hits": hits}
                                  for run, rnd, pages, hits in self.pages_beyond_hits],
        }


def repeat_stats(config: str, results: list[Result], until_fail: bool = False) -> RepeatStats:
    """The figures for one scenario's runs, in the order they ran. Rates count the judged runs only (PASS or FAIL:
    an ERROR run's rounds say nothing about the frontend). `until_fail`: the series stopped at its first FAIL."""
    verdicts = {v: sum(r.verdict == v for r in results) for v in (PASS, FAIL, ERROR)}
    judged = [r for r in results if r.verdict in (PASS, FAIL)]
    missed = [rr for r in judged for rr in r.rounds if rr.missed]
    counted = [r for r in judged if any("race_hits" in rr.counters for rr in r.rounds)]
    race_hits = Rate(sum(rr.counters.get("race_hits", 0) for r in counted for rr in r.rounds),
                     sum(r.timings.get("rounds", 0.0) for r in counted) / 60) if counted else None
    first_fail, wall_s, stress_s, unexplained, beyond = None, 0.0, 0.0, [], []
    for n, r in enumerate(results, 1):
        wall_s += r.timings.get("total", 0.0)
        if r.verdict not in (PASS, FAIL):
            continue
        unexplained += [(n, rnd) for rnd in r.unexplained_misses()]
        beyond += [(n, *b) for b in r.pages_beyond_hits()]
        if first_fail is None and r.verdict == FAIL:
            first_missed = next(rr for rr in r.rounds if rr.missed)
            first_fail = {"run": n, "wall_s": round(wall_s, 1), "stress_s": round(stress_s + first_missed.at_s, 1)}
        stress_s += r.timings.get("rounds", 0.0)
    stress = stress_s / 60  # the judged runs' rounds
    return RepeatStats(
        config=config, runs=len(results), verdicts=verdicts, stress_minutes=stress, wall_minutes=wall_s / 60,
        missed_rounds=Rate(len(missed), stress), missed_pages=Rate(sum(len(rr.pages) for rr in missed), stress),
        race_hits=race_hits, first_fail=first_fail, unexplained_rounds=unexplained, pages_beyond_hits=beyond,
        stopped_at_fail=until_fail)


def _interval(ci: tuple[float, float] | None, fmt: str) -> str:
    return f" (95% CI {fmt.format(ci[0])}-{fmt.format(ci[1])})" if ci else ""


def _rate(rate: Rate) -> str:
    if rate.per_minute is None:
        return f"{rate.count} (no stress time)"
    return f"{rate.count}, {rate.per_minute:.3g}/min{_interval(rate.ci95, '{:.3g}')}"


def describe(s: RepeatStats) -> str:
    """The console's lines for one scenario."""
    v = s.verdicts
    lines = [f"{s.config}: {s.runs} runs: {v[FAIL]} FAIL, {v[PASS]} PASS, {v[ERROR]} ERROR; "
             f"{s.stress_minutes:.1f} min of stress in {s.wall_minutes:.1f} min"]
    if s.detection_rate is not None:
        lines.append(f"  detection rate: {v[FAIL]}/{s.judged} = {s.detection_rate:.0%}"
                     f"{_interval(s.detection_ci95, '{:.0%}')}")
    else:
        lines.append("  detection rate: none (no run was judged)")
    lines.append(f"  rounds with misses: {_rate(s.missed_rounds)}; missed pages: {_rate(s.missed_pages)}")
    if s.race_hits:
        lines.append(f"  race hits counted by the frontend: {_rate(s.race_hits)}")
    if s.first_fail:
        f = s.first_fail
        lines.append(f"  first FAIL: run {f['run']}, its first missed round after {_minutes(f['stress_s'])} of stress "
                     f"(the runs up to its end took {_minutes(f['wall_s'])})")
    elif s.judged:
        lines.append(f"  no FAIL in {s.stress_minutes:.1f} min of stress")
    if s.race_hits and s.missed_rounds.count:
        lines.append(f"  cross-check: {s.missed_rounds.count - len(s.unexplained_rounds)} of "
                     f"{s.missed_rounds.count} missed rounds had race hits counted by then; rounds that missed more "
                     f"pages than their race hits: {len(s.pages_beyond_hits)}")
    if s.stopped_at_fail and s.first_fail:
        lines.append("  (the series stopped at its first FAIL: the rates above lean high; quote the time to it)")
    if s.unexplained_rounds:
        lines.append(f"  WARNING: {len(s.unexplained_rounds)} missed rounds with no race hit counted up to then "
                     f"(run, round): {s.unexplained_rounds[:8]}")
    if s.pages_beyond_hits:
        lines.append(f"  WARNING: {len(s.pages_beyond_hits)} rounds missed more pages than they counted race hits "
                     f"(run, round, pages, hits): {s.pages_beyond_hits[:8]}")
    return "\n".join(lines)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def write_summary(path, figures: list[RepeatStats]) -> None:
    """summary.json of repeated runs: one entry per scenario."""
    path.write_text(json.dumps({"schema": 1, "kind": "repeated runs", "confidence": CONFIDENCE,
                                "scenarios": [f.as_dict() for f in figures]}, indent=2) + "\n")
