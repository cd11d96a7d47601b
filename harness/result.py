"""A scenario's result: the facts a run collects, the one place that turns them into a verdict, and its writers
(result.json, junit.xml, the summary printed at the end).

Verdicts: PASS (every round compared, nothing missed), FAIL (missed updates: where, when, which pages), ERROR
(the stack or the harness broke, or the guest itself drew the wrong thing). Never PASS when nothing was compared.
"""
from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

PASS, FAIL, ERROR = "PASS", "FAIL", "ERROR"
EXIT_CODES = {PASS: 0, FAIL: 1, ERROR: 2}
# `git bisect run` reads 0 as good, 1 as bad and 125 as "cannot test this one, skip it".
GIT_BISECT_GOOD, GIT_BISECT_BAD, GIT_BISECT_SKIP = 0, 1, 125


def git_bisect_code(verdicts: list[str]) -> int:
    """One step's answer from its runs' verdicts: any FAIL is bad (a miss seen once is a miss); else all PASS is
    good; else (an ERROR and no FAIL) the step cannot be judged, and git skips it."""
    if FAIL in verdicts:
        return GIT_BISECT_BAD
    if verdicts and all(v == PASS for v in verdicts):
        return GIT_BISECT_GOOD
    return GIT_BISECT_SKIP


@dataclass
class RoundResult:
    round: int
    compared_pixels: int
    missed_pixels: int
    rects: list = field(default_factory=list)
    pages: list = field(default_factory=list)
    settle: str = ""
    settle_s: float = 0.0
    duration_s: float = 0.0
    at_s: float = 0.0  # when the round was judged: seconds since the first round began
    guest_memory_ok: bool = True  # the screendump (guest memory) matched the expected frame
    guest_memory_missed: int = 0  # pixels of guest memory that differ from the expected frame
    guest_memory_rects: list = field(default_factory=list)
    images: dict = field(default_factory=dict)
    counters: dict = field(default_factory=dict)  # the frontend module's counters during this round
    # writer.kind command, whose expected frame is guest memory when frozen: did that memory stay the same until
    # the round was judged? If not, something outside the frozen workload draws, and the comparison means nothing.
    guest_quiet: bool = True
    guest_changed_pixels: int = 0
    guest_changed_rects: list = field(default_factory=list)
    drawn_pixels: int | None = None  # writer.kind command: pixels the workload changed since the previous freeze

    @property
    def missed(self) -> bool:
        return self.missed_pixels > 0


@dataclass
class Result:
    config: str
    frontend: str
    seed: int
    rounds_planned: int
    verdict: str = ERROR
    reason: str = ""
    error: str = ""  # what broke (an exception, an interrupt): the run is an ERROR whatever the rounds show
    rounds: list[RoundResult] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    packages: dict = field(default_factory=dict)  # what the run was built from: {"host"/"guest": {name: version}}
    host: str = ""
    geometry: dict = field(default_factory=dict)
    counters: dict = field(default_factory=dict)  # the frontend module's counters at the end (legacy only)
    checks: list = field(default_factory=list)  # mapping checks passed before the rounds: {name, detail}
    unloaded: str = ""  # the frontend module unloaded after the last round (legacy.unload_at_end)
    xorg: dict = field(default_factory=dict)  # writer.kind xorg: the X configuration files kept, ShadowFB state
    workload_log: str = ""  # writer.kind command: the workload's output, kept in the run directory
    effective_config: dict = field(default_factory=dict)  # every key's value, with the schema version
    guest: dict = field(default_factory=dict)  # the guest's name and domain on its host, the payload's key
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def decide(self) -> None:
        """The verdict, from the facts alone; the only place one is made. Safe to call again."""
        compared = [r for r in self.rounds if r.compared_pixels > 0]
        missed = [r for r in self.rounds if r.missed]
        wrong_guest = [r for r in self.rounds if not r.guest_memory_ok]
        restless = [r for r in self.rounds if not r.guest_quiet]
        if self.error:
            self.verdict, self.reason = ERROR, self.error
        elif restless:
            r = restless[0]
            self.verdict = ERROR
            self.reason = (f"round {r.round}: the guest never became quiet: its framebuffer memory changed in "
                           f"{r.guest_changed_pixels} pixels (e.g. {r.guest_changed_rects[:1]}) while the workload "
                           f"was frozen, so something outside it draws (a process that left the workload's cgroup? "
                           f"the console?); no verdict can be drawn from such a screen")
        elif wrong_guest:
            # Guest memory itself is not what the writer should have drawn: the writer or the guest is wrong,
            # which says nothing about the backend.
            r = wrong_guest[0]
            self.verdict = ERROR
            self.reason = (f"round {r.round}: the guest framebuffer memory (screendump) differs from the expected "
                           f"frame in {r.guest_memory_missed} pixels, e.g. {r.guest_memory_rects[:1]}; the writer "
                           f"or guest is wrong, not the backend")
        elif missed:
            self.verdict = FAIL
            first = missed[0]
            self.reason = (f"{len(missed)} of {len(self.rounds)} rounds show missed updates; first in round "
                           f"{first.round}: {first.missed_pixels} pixels in pages {first.pages[:8]}, e.g. "
                           f"{first.rects[:1]}")
            unexplained = self.unexplained_misses()
            if unexplained:  # the module disagrees with the oracle: say so loudly
                self.reason += (f"; WARNING: rounds {unexplained} missed with no race hit counted by the module "
                                f"up to then")
            if beyond := self.pages_beyond_hits():
                self.reason += (f"; WARNING: rounds {[b[0] for b in beyond]} missed more pages than the module "
                                f"counted race hits in them")
        elif self._drew_nothing():
            measured = [r for r in self.rounds if r.drawn_pixels is not None]
            self.verdict = ERROR
            self.reason = (f"the workload drew nothing in any of its {len(measured)} rounds (guest memory was the "
                           f"same at every freeze), so nothing was tested; is it drawing on the framebuffer?")
        elif len(compared) != self.rounds_planned + 1 or not compared:
            self.verdict = ERROR
            self.reason = f"only {len(compared)} of {self.rounds_planned + 1} rounds were compared"
        else:
            self.verdict = PASS
            self.reason = f"all {len(compared)} rounds matched ({sum(r.compared_pixels for r in compared)} pixels)"

    def unexplained_misses(self) -> list[int]:
        """Rounds that missed while our module had counted nothing that explains a miss. Its own ground truth: race
        hits, or (negative controls) updates it held back on purpose. A page a race left untracked stays so, and a
        later round's writes to it are missed too: everything counted up to the missed round explains it. Rounds
        without counters (another frontend) are never unexplained."""
        unexplained, explained = [], 0
        for r in self.rounds:
            explained += r.counters.get("race_hits", 0) + r.counters.get("held", 0)
            if r.missed and r.counters and not explained:
                unexplained.append(r.round)
        return unexplained

    def pages_beyond_hits(self) -> list[tuple[int, int, int]]:
        """(round, missed pages, race hits) of rounds that missed more pages than they counted race hits, where
        that is a contradiction: each page mapped on its own (writer.mappings 0), so a zap can leave at most one
        PTE untracked, and mapped anew each round (writer.lifecycle per-round), so none outlives its round. Any
        other writer gets no such check (an empty list)."""
        writer = self.effective_config.get("writer", {})
        if writer.get("mappings") != 0 or writer.get("lifecycle") != "per-round":
            return []
        return [(r.round, len(r.pages), r.counters["race_hits"]) for r in self.rounds
                if r.missed and "race_hits" in r.counters and len(r.pages) > r.counters["race_hits"]]

    def _drew_nothing(self) -> bool:
        measured = [r.drawn_pixels for r in self.rounds if r.drawn_pixels is not None]
        return bool(measured) and not any(measured)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["exit_code"] = EXIT_CODES[self.verdict]
        return d


def write(result: Result, run_dir: Path) -> None:
    """result.json, junit.xml and report.html (the page a person reads: harness/report_html.py)."""
    from .report_html import write_run_page
    (run_dir / "result.json").write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    write_junit(result, run_dir / "junit.xml")
    try:
        write_run_page(run_dir)
    except Exception as e:  # the page is for people; the verdict is in result.json whatever happens to it
        (run_dir / "report-error.txt").write_text(f"report.html could not be written: {type(e).__name__}: {e}\n")


def xml_text(s: str) -> str:
    """XML 1.0 forbids most control characters; tool output (colour codes) carries them."""
    return re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", lambda m: f"\\x{ord(m.group()):02x}", s)


def missed_message(r: dict, run_dir: str) -> str:
    """A JUnit failure's message for a round that missed (a round of result.json): how much, where, and the paths
    of its images (relative to where the report is, through run_dir), not whole logs."""
    images = [f"{run_dir}/{f}" if run_dir else f for _, f in sorted(r.get("images", {}).items())]
    return xml_text(f"{r['missed_pixels']} missed pixels in pages {r.get('pages', [])[:8]}, e.g. "
                    f"{r.get('rects', [])[:1]}; images: {', '.join(images) or 'none'}")


def write_junit(result: Result, path: Path) -> None:
    """One test case per round, so CI shows where a miss happened; an ERROR is its own failing case."""
    suite = ET.Element("testsuite", name=f"xenfb-harness.{Path(result.config).stem}",
                       tests=str(len(result.rounds) + (result.verdict == ERROR)),
                       failures=str(sum(r.missed for r in result.rounds)),
                       errors=str(int(result.verdict == ERROR)),
                       time=str(result.timings.get("total", 0)))
    for r in result.rounds:
        case = ET.SubElement(suite, "testcase", classname=f"{result.frontend}.seed{result.seed}",
                             name=f"round_{r.round:03d}", time=str(r.duration_s))
        if r.missed:
            f = ET.SubElement(case, "failure", message=missed_message(asdict(r), ""))
            f.text = json.dumps({"rects": r.rects, "pages": r.pages, "images": r.images}, indent=1)
    if result.verdict == ERROR:
        case = ET.SubElement(suite, "testcase", classname=result.frontend, name="stack")
        reason = xml_text(result.reason)
        ET.SubElement(case, "error", message=reason.splitlines()[0] if reason else "error").text = reason
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def summary(result: Result, run_dir: Path) -> str:
    lines = [f"verdict: {result.verdict}  ({result.reason.splitlines()[0] if result.reason else ''})",
             f"frontend: {result.frontend}  seed: {result.seed}  host: {result.host}"]
    if result.rounds:
        lines.append("round  missed  pages  race hits  settle          rects (WxH+X+Y)")
        for r in result.rounds:
            rects = ", ".join(f"{x['w']}x{x['h']}+{x['x']}+{x['y']}" for x in r.rects[:3])
            hits = str(r.counters.get("race_hits", "-")) if r.counters else "-"
            lines.append(f"{r.round:5d}  {r.missed_pixels:6d}  {len(r.pages):5d}  {hits:>9s}  {r.settle:7s}"
                         f"{r.settle_s:5.2f}s  {rects}")
    if result.counters:
        lines.append("frontend counters: " + ", ".join(f"{k}={v}" for k, v in sorted(result.counters.items())))
    elif result.guest.get("counters"):
        lines.append(f"frontend counters: {result.guest['counters']}")
    if result.checks:
        lines.append("mapping checks passed: " + ", ".join(c["name"] for c in result.checks))
    if result.unloaded:
        lines.append(f"module {result.unloaded} unbound and unloaded after the last round")
    t = result.timings
    if t:
        lines.append("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))
    lines.append(f"run directory: {run_dir}")
    return "\n".join(lines)
