"""The natural race on screen: with the race window at 0 (nothing widened), configs/legacy-natural.yaml's stress
makes the old design miss updates that stay on screen, each round's misses within that round's race hits; the same
stress on the fixed module misses nothing, while its fix is seen deferring zaps the old design would have raced.
Both scenarios are cut to 2 rounds a run to keep CI short; the rates are for benchmarks/race_stats.sh."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from xenfb_harness import pattern

from .conftest import ROOT, Run, run_cli
from .test_default_run import geometry_of

pytestmark = pytest.mark.e2e

ROUNDS = 2


def shortened(name: str, where: Path) -> Path:
    """configs/NAME.yaml with ROUNDS rounds, under its own name (the statistics name the scenario by it)."""
    data = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    data["rounds"] = ROUNDS
    path = where / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def natural(tmp_path_factory, shared_host) -> Run:
    # A natural race is chance: --until-fail with a budget instead of a fixed count (every round of every run
    # measured so far missed; the budget only bounds a bad day).
    tmp = tmp_path_factory.mktemp("natural")
    out = tmp / "run"
    proc = run_cli("run", str(shortened("legacy-natural", tmp)), "--until-fail", "10m", "--output", str(out),
                   "--host", str(shared_host))
    return Run(proc.returncode, out, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def fixed(tmp_path_factory, shared_host) -> Run:
    tmp = tmp_path_factory.mktemp("fixed-natural")
    out = tmp / "run"
    proc = run_cli("run", str(shortened("legacy-fixed-natural", tmp)), "--output", str(out), "--host",
                   str(shared_host))
    return Run(proc.returncode, out, proc.stdout, proc.stderr)


def test_the_natural_race_shows_on_screen(natural):
    assert natural.rc == 1, natural.stdout[-3000:] + natural.stderr[-3000:]
    [scenario] = json.loads((natural.dir / "summary.json").read_text())["scenarios"]
    assert scenario["verdicts"]["FAIL"] == 1 and scenario["verdicts"]["ERROR"] == 0
    assert scenario["runs"] == scenario["verdicts"]["PASS"] + 1  # stopped at the first FAIL
    assert scenario["first_fail"]["run"] == scenario["runs"] and scenario["first_fail"]["stress_s"] > 0
    assert scenario["unexplained_rounds"] == [] and scenario["pages_beyond_hits"] == []
    assert scenario["missed_rounds"]["count"] >= 1 and scenario["race_hits"]["count"] >= 1
    low, high = scenario["detection"]["ci95"]
    assert 0 < low <= scenario["detection"]["rate"] <= high <= 1
    assert "detection rate" in natural.stdout and "first FAIL: run" in natural.stdout

    res = json.loads((natural.dir / f"run-{scenario['runs']:03d}" / "result.json").read_text())
    assert res["verdict"] == "FAIL" and "WARNING" not in res["reason"]
    assert res["counters"]["race_window_ms"] == 0  # nothing widened
    step = pattern.final_step(geometry_of(res))
    missed = [r for r in res["rounds"] if r["missed_pixels"]]
    for r in res["rounds"]:
        assert r["guest_memory_ok"], "guest memory always holds what the writer drew"
    for r in missed:
        # Each page missed needs a race of its own in its round (one mapping per page, mapped anew each round).
        assert r["pages"] and len(r["pages"]) <= r["counters"]["race_hits"], r
        assert (natural.dir / f"run-{scenario['runs']:03d}" / r["images"]["diff"]).is_file()
    # What stays wrong is the final pass's pages (a burst's last write to another page could, rarely, too).
    pages = [p for r in missed for p in r["pages"]]
    assert sum(p % step == 0 for p in pages) > len(pages) / 2, pages


def test_the_fix_under_the_same_stress_misses_nothing(fixed):
    assert fixed.rc == 0, fixed.stdout[-3000:] + fixed.stderr[-3000:]
    res = fixed.result
    assert res["verdict"] == "PASS" and res["frontend"] == "legacy-fixed"
    assert len(res["rounds"]) == ROUNDS + 1
    assert res["counters"]["race_hits"] == 0
    # The stress reached the window: the fix held back zaps that would have raced a fault.
    assert res["counters"]["deferred"] > 0, res["counters"]
