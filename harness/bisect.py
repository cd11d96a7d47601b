"""`xenfb-harness bisect`: over an ordered patch series on a kernel built from source, the first patch that turns
PASS into FAIL.

Step k is the config's kernel with the series' first k patches applied on top of its own guest.kernel_patches.
Each step runs --runs-per-step fresh guests, all steps on one host. The policy, as OSSTest's: a race shows only
sometimes, so one FAIL is evidence and makes a step bad; a step is good only when every run PASSed; anything
else (an ERROR: a kernel that did not build or boot) makes it a skip, as exit code 125 does for `git bisect run`.
Step 0 must be good and step n bad, or there is nothing to bisect. Every step's kernel is a cache entry of its
own, and every run keeps its result directory.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from . import signals
from .config import Config, ConfigError
from .result import ERROR, FAIL, PASS, Result
from .run import HOST_BROKE

GOOD, BAD, SKIP = "good", "bad", "skip"


def step_mark(verdicts: list[str]) -> str:
    """A step's verdicts -> good, bad or skip (any FAIL is bad; good needs every run to PASS)."""
    if FAIL in verdicts:
        return BAD
    if verdicts and all(v == PASS for v in verdicts):
        return GOOD
    return SKIP


def next_step(n: int, marks: dict[int, str]) -> int | None:
    """The step to test next, given the marks so far; None when the search is over. The endpoints first (0 must be
    good, n bad); then the untested step nearest the middle of the last good and the first bad, so a skipped step
    is stepped around as git does."""
    for end, wanted in ((0, GOOD), (n, BAD)):
        if end not in marks:
            return end
        if marks[end] != wanted:
            return None
    good, bad = bounds(marks)
    untested = [k for k in range(good + 1, bad) if k not in marks]
    if not untested:
        return None
    middle = (good + bad) / 2
    return min(untested, key=lambda k: (abs(k - middle), k))


def bounds(marks: dict[int, str]) -> tuple[int, int]:
    """The first bad step and the last good step below it."""
    bad = min(k for k, mark in marks.items() if mark == BAD)
    good = max(k for k, mark in marks.items() if mark == GOOD and k < bad)
    return good, bad


@dataclass
class Step:
    k: int  # patches of the series applied
    mark: str
    runs: list[dict] = field(default_factory=list)  # verdict, reason (first line), run directory


@dataclass
class Bisection:
    series: list[str]
    runs_per_step: int
    steps: list[Step] = field(default_factory=list)

    @property
    def marks(self) -> dict[int, str]:
        return {s.k: s.mark for s in self.steps}

    def conclusion(self) -> tuple[int, str]:
        """(exit code, what was found): 0 one patch named; 1 no single patch (the series' base already fails, the
        whole series passes, or skipped steps leave several); 2 the host broke before the search ended."""
        marks, n = self.marks, len(self.series)
        if marks.get(0) != GOOD:
            why = {BAD: "already FAILs", SKIP: "did not give a verdict (ERROR)"}.get(marks.get(0), "was not run")
            return 1 if marks.get(0) == BAD else 2, f"cannot bisect: step 0 (no patch of the series) {why}"
        if marks.get(n) != BAD:
            why = {GOOD: "PASSes", SKIP: "did not give a verdict (ERROR)"}.get(marks.get(n), "was not run")
            return 1 if marks.get(n) == GOOD else 2, f"cannot bisect: step {n} (the whole series) {why}"
        good, bad = bounds(marks)
        if next_step(n, marks) is not None:
            return 2, "the search stopped before it ended"
        if bad == good + 1:
            return 0, f"first bad patch: {self.series[bad - 1]} (patch {bad} of {n})"
        names = ", ".join(Path(p).name for p in self.series[good:bad])
        return 1, (f"the first bad patch is one of patches {good + 1}..{bad} (steps between were skipped: no "
                   f"verdict): {names}")

    def to_json(self) -> dict:
        code, text = self.conclusion()
        return {"series": self.series, "runs_per_step": self.runs_per_step,
                "policy": "any FAIL: bad; every run PASS: good; else skip",
                "steps": [vars(s) for s in self.steps], "conclusion": text, "exit_code": code}


def step_config(base: Config, series: list[str], k: int) -> Config:
    """The config of step k: the base's own patches, then the series' first k."""
    data = json.loads(json.dumps(base.data))  # a deep copy of plain data
    data["guest"]["kernel_patches"] = list(base["guest.kernel_patches"]) + list(series[:k])
    return replace(base, data=data)


def check_base(base: Config) -> None:
    if not base["guest.kernel_source"]:
        raise ConfigError(base.source, "guest.kernel_source", "expected a kernel built from source: bisect applies "
                          "the series to it")


def bisect(base: Config, series: list[str], runs_per_step: int, out: Path,
           run_step: Callable[[Config, list[Path]], list[Result]], say: Callable[[str], None]) -> Bisection:
    """Search the series; run_step(config, run directories) runs one step's guests and returns their results."""
    check_base(base)
    found = Bisection([str(p) for p in series], runs_per_step)
    n = len(series)
    while (k := next_step(n, found.marks)) is not None:
        applied = f"patches 1..{k} applied" if k else "no patch applied"
        say(f"step {k} of 0..{n} ({applied}): {runs_per_step} runs")
        dirs = [out / f"step-{k:02d}" / f"run-{i + 1:03d}" for i in range(runs_per_step)]
        results = run_step(step_config(base, series, k), dirs)
        step = Step(k, step_mark([r.verdict for r in results]),
                    [{"verdict": r.verdict, "reason": r.reason.splitlines()[0] if r.reason else "",
                      "run_dir": str(d)} for r, d in zip(results, dirs)])
        found.steps.append(step)
        say(f"step {k}: {step.mark} ({', '.join(r['verdict'] for r in step.runs)})")
        (out / "bisect.json").write_text(json.dumps(found.to_json(), indent=2) + "\n")
        if signals.received or any(r.verdict == ERROR and (r.error or "").startswith(HOST_BROKE) for r in results):
            break  # we were stopped, or the host broke: later steps cannot run either
    return found


def report(found: Bisection) -> str:
    """The table a person reads: every step, its runs, the conclusion."""
    lines = [f"{'step':>4}  {'mark':<4}  verdicts  (patches applied)"]
    for s in sorted(found.steps, key=lambda s: s.k):
        last = Path(found.series[s.k - 1]).name if s.k else "none"
        lines.append(f"{s.k:>4}  {s.mark:<4}  {' '.join(r['verdict'] for r in s.runs):<8}  (up to {last})")
    lines.append(found.conclusion()[1])
    return "\n".join(lines)
