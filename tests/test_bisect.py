"""`xenfb-harness bisect` (harness/bisect.py): a step's mark, the search order against simulated series, the
conclusion in every outcome, each step's config, the loop with a stand-in for the runs, and the report."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import yaml

from xenfb_harness import config
from xenfb_harness.bisect import (BAD, GOOD, SKIP, Bisection, Step, bisect, check_base, next_step, report, step_config,
                            step_mark)
from xenfb_harness.config import ConfigError
from xenfb_harness.result import ERROR, FAIL, PASS, Result, RoundResult
from xenfb_harness.run import HOST_BROKE
from xenfb_harness.scenario import new_result


def names(n: int) -> list[str]:
    return [f"/series/{i:04d}-change-{i}.patch" for i in range(1, n + 1)]


def search(n: int, mark_of) -> tuple[Bisection, list[int]]:
    """Run the search as bisect() does, with mark_of(k) standing for step k's runs."""
    found = Bisection(names(n), 1)
    order = []
    while (k := next_step(n, found.marks)) is not None:
        assert k not in found.marks and 0 <= k <= n, (k, found.marks)  # each step once, and only real steps
        order.append(k)
        found.steps.append(Step(k, mark_of(k)))
        assert len(order) <= n + 1
    return found, order


# --- a step's mark ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("verdicts, mark", [
    ([PASS], GOOD), ([PASS, PASS, PASS], GOOD),
    ([FAIL], BAD), ([PASS, FAIL, PASS], BAD), ([ERROR, FAIL], BAD), ([FAIL, ERROR, PASS], BAD),
    ([ERROR], SKIP), ([PASS, ERROR], SKIP), ([ERROR, ERROR], SKIP), ([], SKIP),
])
def test_step_mark(verdicts, mark):
    assert step_mark(verdicts) == mark


# --- the search ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", range(1, 10))
def test_every_first_bad_patch_is_found_in_logarithmic_steps(n):
    for b in range(1, n + 1):
        found, order = search(n, lambda k: BAD if k >= b else GOOD)
        assert found.conclusion() == (0, f"first bad patch: {names(n)[b - 1]} (patch {b} of {n})"), (n, b, order)
        assert order[:2] == [0, n]  # the endpoints first
        assert len(order) <= 2 + math.ceil(math.log2(n)), (n, b, order)


@pytest.mark.parametrize("n", range(2, 8))
def test_skipped_steps_are_stepped_around_and_leave_a_range(n):
    """For every first bad patch b and every set of skipped steps: the search ends, and it names patch b when
    the steps on both sides of it gave a verdict, else the patches between the nearest steps that did."""
    for b in range(1, n + 1):
        for count in range(1, n):
            for skipped in itertools.combinations(range(1, n), count):
                found, order = search(n, lambda k: SKIP if k in skipped else BAD if k >= b else GOOD)
                good = max(k for k in range(b) if k not in skipped)
                bad = min(k for k in range(b, n + 1) if k not in skipped)
                code, text = found.conclusion()
                if bad == good + 1:
                    assert (code, text) == (0, f"first bad patch: {names(n)[b - 1]} (patch {b} of {n})")
                else:
                    listed = ", ".join(Path(p).name for p in names(n)[good:bad])
                    assert code == 1, (n, b, skipped, order, text)
                    assert text == (f"the first bad patch is one of patches {good + 1}..{bad} (steps between were "
                                    f"skipped: no verdict): {listed}")
                    assert Path(names(n)[b - 1]).name in listed


def test_a_skip_next_to_the_first_bad_patch_gives_the_two_candidates():
    found, order = search(4, lambda k: SKIP if k == 2 else BAD if k >= 2 else GOOD)
    assert order == [0, 4, 2, 1, 3]
    assert found.conclusion() == (1, "the first bad patch is one of patches 2..3 (steps between were skipped: no "
                                     "verdict): 0002-change-2.patch, 0003-change-3.patch")


@pytest.mark.parametrize("n", [1, 4])
def test_a_base_that_already_fails_cannot_be_bisected(n):
    found, order = search(n, lambda k: BAD)
    assert order == [0]
    assert found.conclusion() == (1, "cannot bisect: step 0 (no patch of the series) already FAILs")


@pytest.mark.parametrize("n", [1, 4])
def test_a_series_that_passes_cannot_be_bisected(n):
    found, order = search(n, lambda k: GOOD)
    assert order == [0, n]
    assert found.conclusion() == (1, f"cannot bisect: step {n} (the whole series) PASSes")


def test_an_endpoint_without_a_verdict_stops_the_search():
    found, order = search(4, lambda k: SKIP if k == 0 else BAD)
    assert order == [0]
    assert found.conclusion() == (2, "cannot bisect: step 0 (no patch of the series) did not give a verdict (ERROR)")
    found, order = search(4, lambda k: GOOD if k == 0 else SKIP)
    assert order == [0, 4]
    assert found.conclusion() == (2, "cannot bisect: step 4 (the whole series) did not give a verdict (ERROR)")


def test_a_search_cut_short_says_so():
    assert Bisection(names(3), 1).conclusion() == (2, "cannot bisect: step 0 (no patch of the series) was not run")
    assert Bisection(names(3), 1, [Step(0, GOOD)]).conclusion() == \
        (2, "cannot bisect: step 3 (the whole series) was not run")
    assert Bisection(names(8), 1, [Step(0, GOOD), Step(8, BAD)]).conclusion() == \
        (2, "the search stopped before it ended")


# --- each step's config ----------------------------------------------------------------------------------------------

def fake_kernel_tree(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "Makefile").write_text("VERSION = 6\n")
    (root / "Kconfig").write_text("mainmenu \"Linux\"\n")
    return root


def write_base(tmp_path: Path, guest: dict | None = None, **more) -> Path:
    (tmp_path / "test.sources").write_text("deb http://mirror.invalid/debian bookworm main\n")
    data = {"frontend": "upstream", "rounds": 2, "apt": {"sources": "test.sources"}, **more}
    if guest is not None:
        data["guest"] = guest
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def base(tmp_path) -> config.Config:
    fake_kernel_tree(tmp_path / "linux")
    (tmp_path / "own.patch").write_text("--- a/x\n+++ b/x\n")
    return config.load(write_base(tmp_path, {"kernel_source": "linux", "kernel_patches": ["own.patch"],
                                             "memory_mb": 300}))


@pytest.fixture
def series(tmp_path) -> list[str]:
    paths = []
    for i in range(1, 4):
        p = tmp_path / "series" / f"000{i}-p{i}.patch"
        p.parent.mkdir(exist_ok=True)
        p.write_text(f"patch {i}\n")
        paths.append(str(p))
    return paths


def test_step_config_appends_the_first_k_patches_to_the_bases_own(tmp_path, base, series):
    own = str(tmp_path / "own.patch")
    before = json.dumps(base.data, sort_keys=True)
    for k in range(4):
        step = step_config(base, series, k)
        assert step["guest.kernel_patches"] == [own] + series[:k]
        assert step.source == base.source
        others = {key: value for key, value in step.data["guest"].items() if key != "kernel_patches"}
        assert others == {key: value for key, value in base.data["guest"].items() if key != "kernel_patches"}
        assert {key: value for key, value in step.data.items() if key != "guest"} == \
            {key: value for key, value in base.data.items() if key != "guest"}
    assert json.dumps(base.data, sort_keys=True) == before  # the base is never changed
    assert base["guest.kernel_patches"] == [own]
    assert step_config(base, series, 3).data["guest"] is not base.data["guest"]


def test_check_base_wants_a_kernel_built_from_source(tmp_path, base):
    check_base(base)
    (tmp_path / "plain").mkdir()
    plain = config.load(write_base(tmp_path / "plain"))
    with pytest.raises(ConfigError) as info:
        check_base(plain)
    assert info.value.key == "guest.kernel_source" and info.value.source == plain.source
    assert "built from source" in str(info.value)


# --- the loop --------------------------------------------------------------------------------------------------------

def result_of(cfg: config.Config, verdict: str, error: str = "") -> Result:
    """A real Result whose facts give `verdict` (decide() makes it, as for a real run)."""
    result = new_result(cfg)
    rounds = cfg["rounds"] + 1
    if verdict == PASS:
        result.rounds = [RoundResult(i, 1000, 0) for i in range(rounds)]
    elif verdict == FAIL:
        result.rounds = [RoundResult(i, 1000, 64 if i == 1 else 0, pages=[3] if i == 1 else []) for i in range(rounds)]
    else:
        result.error = error or "RuntimeError: the guest did not boot\nTraceback..."
    result.decide()
    assert result.verdict == verdict
    return result


class Steps:
    """A stand-in for run_step: patch b of the series breaks the kernel; `verdicts` overrides a step's runs."""

    def __init__(self, base: config.Config, series: list[str], b: int, verdicts: dict | None = None):
        self.own = len(base["guest.kernel_patches"])
        self.series, self.b, self.verdicts = series, b, verdicts or {}
        self.calls: list[tuple[int, list[Path]]] = []

    def __call__(self, cfg: config.Config, dirs: list[Path]) -> list[Result]:
        patches = cfg["guest.kernel_patches"]
        k = len(patches) - self.own
        assert patches[self.own:] == self.series[:k]
        self.calls.append((k, dirs))
        wanted = self.verdicts.get(k, [FAIL if k >= self.b else PASS] * len(dirs))
        return [result_of(cfg, v) if not v.startswith(HOST_BROKE) else result_of(cfg, ERROR, v) for v in wanted]


def test_bisect_runs_the_steps_and_writes_every_one(tmp_path, base, series):
    out = tmp_path / "out"
    out.mkdir()
    said: list[str] = []
    steps = Steps(base, series, b=2, verdicts={1: [PASS, ERROR]})
    found = bisect(base, series, 2, out, steps, said.append)
    assert [k for k, _ in steps.calls] == [0, 3, 1, 2]
    assert steps.calls[1][1] == [out / "step-03" / "run-001", out / "step-03" / "run-002"]
    # Step 1 had an ERROR: a skip, so with step 2 bad, patches 1 and 2 stay candidates.
    assert found.conclusion() == (1, "the first bad patch is one of patches 1..2 (steps between were skipped: no "
                                     "verdict): 0001-p1.patch, 0002-p2.patch")
    saved = json.loads((out / "bisect.json").read_text())
    assert saved["series"] == series and saved["runs_per_step"] == 2
    assert saved["exit_code"] == 1 and saved["conclusion"] == found.conclusion()[1]
    assert [(s["k"], s["mark"]) for s in saved["steps"]] == [(0, GOOD), (3, BAD), (1, SKIP), (2, BAD)]
    assert saved["steps"][2]["runs"] == [
        {"verdict": PASS, "reason": "all 3 rounds matched (3000 pixels)", "run_dir": str(out / "step-01/run-001")},
        {"verdict": ERROR, "reason": "RuntimeError: the guest did not boot", "run_dir": str(out / "step-01/run-002")},
    ]
    assert said[0] == "step 0 of 0..3 (no patch applied): 2 runs"
    assert "step 3 of 0..3 (patches 1..3 applied): 2 runs" in said
    assert "step 1: skip (PASS, ERROR)" in said


def test_bisect_names_the_first_bad_patch(tmp_path, base, series):
    out = tmp_path / "out"
    out.mkdir()
    found = bisect(base, series, 1, out, Steps(base, series, b=3), lambda line: None)
    assert found.conclusion() == (0, f"first bad patch: {series[2]} (patch 3 of 3)")
    saved = json.loads((out / "bisect.json").read_text())
    assert saved["exit_code"] == 0 and len(saved["steps"]) == len(found.steps) == 4
    assert {s["k"] for s in saved["steps"]} == {0, 1, 2, 3}


def test_bisect_stops_when_the_host_broke(tmp_path, base, series):
    out = tmp_path / "out"
    out.mkdir()
    broke = f"{HOST_BROKE}ConnectionResetError: the dom0 went away"
    steps = Steps(base, series, b=2, verdicts={3: [FAIL, broke]})
    found = bisect(base, series, 2, out, steps, lambda line: None)
    assert [k for k, _ in steps.calls] == [0, 3]  # no step after the host broke
    assert found.marks == {0: GOOD, 3: BAD}
    assert found.conclusion() == (2, "the search stopped before it ended")
    assert json.loads((out / "bisect.json").read_text())["exit_code"] == 2


def test_bisect_refuses_a_base_not_built_from_source(tmp_path, series):
    plain = config.load(write_base(tmp_path))
    with pytest.raises(ConfigError, match="guest.kernel_source"):
        bisect(plain, series, 1, tmp_path, lambda cfg, dirs: pytest.fail("nothing may run"), lambda line: None)
    assert not (tmp_path / "bisect.json").exists()


def test_report_has_a_line_per_step_and_the_conclusion(tmp_path, base, series):
    out = tmp_path / "out"
    out.mkdir()
    found = bisect(base, series, 2, out, Steps(base, series, b=2, verdicts={1: [PASS, ERROR]}), lambda line: None)
    lines = report(found).splitlines()
    assert len(lines) == 1 + len(found.steps) + 1
    assert lines[0].split() == ["step", "mark", "verdicts", "(patches", "applied)"]
    assert [line.split()[:2] for line in lines[1:-1]] == [["0", "good"], ["1", "skip"], ["2", "bad"],
                                                          ["3", "bad"]]  # by step, not in the order run
    assert lines[1].split()[2:] == ["PASS", "PASS", "(up", "to", "none)"]
    assert lines[2].split()[2:] == ["PASS", "ERROR", "(up", "to", "0001-p1.patch)"]
    assert lines[4].split()[2:] == ["FAIL", "FAIL", "(up", "to", "0003-p3.patch)"]
    assert lines[-1] == found.conclusion()[1]


HOST_SOURCES = Path(config.SCHEMA["apt"]["sources"].default)
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.skipif(not HOST_SOURCES.is_file(), reason=f"the shipped configs use {HOST_SOURCES}")
def test_the_shipped_revert_config_is_step_2_of_the_shipped_series(tmp_path, monkeypatch):
    """configs/source-6.1-lastclose-revert.yaml says its kernel is the one `bisect` builds at step 2 of
    guest-kernels/fbdev-lastclose over source-6.1-upstream.yaml, so the two share a cache entry: same key."""
    from xenfb_harness.artifacts import payload
    from xenfb_harness.artifacts.kernel_build import patch_series

    class Apt:
        def version(self, package):
            return {"linux-source-6.1": "6.1.192-2"}[package]

        def uses(self, packages):  # no lock here: nothing to record or check
            assert packages == {"linux-source-6.1": "6.1.192-2"}

    entry = tmp_path / "kernel-source-0000000000000000"
    entry.mkdir()
    (entry / "version").write_text("6.1.192")

    class KeyCache:  # records what each entry is keyed by; builds nothing
        root, keys = tmp_path, []

        def entry(self, name, inputs, build):
            self.keys.append((name, inputs))
            return entry
    monkeypatch.setattr(payload, "apt_for", lambda *a: Apt())
    upstream = config.load(CONFIGS / "source-6.1-upstream.yaml")
    series = [str(p) for p in patch_series(CONFIGS.parent / "guest-kernels" / "fbdev-lastclose")]
    cache = KeyCache()
    for cfg in (step_config(upstream, series, 2), config.load(CONFIGS / "source-6.1-lastclose-revert.yaml"),
                step_config(upstream, series, 1), step_config(upstream, series, 3)):
        payload.guest_kernel(cfg, cache, tmp_path / "log")
    keys = [json.dumps(inputs, sort_keys=True) for _, inputs in cache.keys]
    assert [name for name, _ in cache.keys] == ["kernel-source"] * 4
    assert keys[0] == keys[1]
    assert len(set(keys)) == 3
