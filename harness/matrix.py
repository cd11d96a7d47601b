"""A matrix: one base scenario, axes whose values change some of its keys, exclusions, and the verdict each cell
is expected to give. A cell is green when its verdict is the expected one (the legacy frontend with a widened
window is expected to FAIL), red otherwise; a CI gate is green when every cell is.

The file (see configs/matrix.yaml):

    base: default.yaml                 # a scenario file, relative to the matrix (optional: the defaults)
    set: {rounds: 5}                   # keys every cell sets (optional)
    axes:
      frontend: [upstream, legacy]     # a list: the axis is a config key, each value a value of it
      writer:                          # a mapping: each value is a label and the keys it sets
        mmap: {writer.kind: mmap}
        xorg: {writer.kind: xorg, guest.memory_mb: 384}
    exclude:                           # cells left out: each entry matches axis labels (a label or a list)
      - {frontend: legacy, writer: xorg}
    expect:                            # the first rule that matches a cell gives its expected verdict
      - when: {frontend: legacy}
        verdict: FAIL
      - verdict: PASS

Cells are named by their labels, "frontend=legacy,writer=mmap": CI tools follow a test's history by its name,
so the name depends on nothing but the matrix.
"""
from __future__ import annotations

import copy
import itertools
import json
import os
import re
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import config
from .config import ConfigError, Overrides
from .result import ERROR, FAIL, PASS, missed_message, xml_text

SUMMARY_SCHEMA = 1
VERDICTS = (PASS, FAIL, ERROR)


@dataclass(frozen=True)
class Cell:
    index: int  # its place in the matrix (the order of every listing and report)
    values: dict  # axis -> label
    settings: dict  # dotted key -> value: what the cell changes in the base scenario
    expected: str
    cfg: config.Config = field(repr=False, compare=False)

    @property
    def id(self) -> str:
        return cell_id(self.values)

    @property
    def slug(self) -> str:
        """The cell's directory name."""
        return "__".join(re.sub(r"[^A-Za-z0-9._-]", "-", f"{a}-{v}") for a, v in self.values.items())

    def meta(self) -> dict:
        """What summary.json says of the cell whether or not it ran."""
        return {"id": self.id, "index": self.index, "slug": self.slug, "values": dict(self.values),
                "expected": self.expected}

    def host_key(self) -> str:
        """Cells with the same host settings share one host."""
        return json.dumps({s: self.cfg.data[s] for s in ("host", "apt")}, sort_keys=True, default=str)


@dataclass(frozen=True)
class Matrix:
    source: str
    name: str
    axes: dict  # axis -> {label: {dotted key: value}}
    cells: list[Cell]


def cell_id(values: dict) -> str:
    """A cell's name: its axes' labels, "frontend=legacy,writer=mmap"."""
    return ",".join(f"{axis}={label}" for axis, label in values.items())


def _label(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _dotted(keys: dict, prefix: str = "") -> dict:
    """Keys as a scenario file nests them, or dotted, all dotted: {"writer": {"kind": "xorg"}} -> {"writer.kind":
    "xorg"}. So an axis overrides one key of a section `set` gives, and two axes setting one key are seen."""
    out = {}
    for key, value in keys.items():
        if isinstance(value, dict) and value:
            out.update(_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _axes(source: str, raw: Any) -> dict:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(source, "axes", "expected a mapping of at least one axis to its values")
    axes: dict = {}
    for axis, values in raw.items():
        if not isinstance(axis, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", axis):
            raise ConfigError(source, f"axes.{axis}", "expected an axis name of [A-Za-z0-9_.-]")
        if isinstance(values, list) and values:
            labelled = {}
            for v in values:
                if isinstance(v, (dict, list)):
                    raise ConfigError(source, f"axes.{axis}", f"expected values of the key {axis}, got {v!r} "
                                      "(for several keys per value, give a mapping of label to keys)")
                labelled[_label(v)] = {axis: v}
        elif isinstance(values, dict) and values:
            labelled = {}
            for label, keys in values.items():
                if not isinstance(keys, dict) or not keys:
                    raise ConfigError(source, f"axes.{axis}.{label}", "expected a mapping of config keys "
                                      "(dotted, e.g. writer.kind) to values")
                labelled[_label(label)] = _dotted(keys)
        else:
            raise ConfigError(source, f"axes.{axis}", "expected a non-empty list of values, or a mapping of label "
                              "to the config keys it sets")
        if len(labelled) != len(values):
            raise ConfigError(source, f"axes.{axis}", "expected distinct values")
        axes[axis] = labelled
    return axes


def _matcher(source: str, key: str, raw: Any, axes: dict) -> dict:
    """{axis: set of labels} from an exclude entry or an expect rule's `when`."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(source, key, "expected a mapping of axis to a label or a list of labels")
    out = {}
    for axis, labels in raw.items():
        if axis not in axes:
            raise ConfigError(source, f"{key}.{axis}", f"unknown axis; expected one of {', '.join(axes)}")
        labels = [_label(x) for x in (labels if isinstance(labels, list) else [labels])]
        for label in labels:
            if label not in axes[axis]:
                raise ConfigError(source, f"{key}.{axis}", f"unknown value {label!r}; expected one of "
                                  f"{', '.join(axes[axis])}")
        out[axis] = set(labels)
    return out


def _matches(matcher: dict, values: dict) -> bool:
    return all(values[axis] in labels for axis, labels in matcher.items())


def load_matrix(path: str | Path, host_file: str | Path | None = None) -> Matrix:
    """The matrix and its cells, each cell's config loaded and checked: a bad key fails here, before anything
    is built or booted, naming the matrix file, the cell and the key."""
    source, raw, here = config.read_yaml(path, "matrix file")
    p = Path(path)
    if not isinstance(raw, dict) or not raw:  # an empty file too
        raise ConfigError(source, "", "expected a mapping with axes, expect and optionally base, set, exclude")
    unknown = set(raw) - {"base", "set", "axes", "exclude", "expect"}
    if unknown:
        raise ConfigError(source, sorted(unknown)[0], "unknown key; expected base, set, axes, exclude, expect")
    base = raw.get("base")
    if base is not None:
        if not isinstance(base, str) or not (here / base).is_file():
            raise ConfigError(source, "base", f"expected a scenario file relative to the matrix, got {base!r}")
        base = str(here / base)
    common = raw.get("set") or {}
    if not isinstance(common, dict):
        raise ConfigError(source, "set", "expected a mapping of config keys to values")
    common = _dotted(common)
    axes = _axes(source, raw.get("axes"))
    excludes = raw.get("exclude") or []
    if not isinstance(excludes, list):
        raise ConfigError(source, "exclude", "expected a list of mappings of axis to labels")
    excludes = [_matcher(source, f"exclude[{i}]", e, axes) for i, e in enumerate(excludes)]
    rules = raw.get("expect")
    if not isinstance(rules, list) or not rules:
        raise ConfigError(source, "expect", "expected a list of rules: {when: {axis: label}, verdict: PASS|FAIL|"
                          "ERROR}, the last usually without `when`")
    expect = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict) or set(rule) - {"when", "verdict"} or rule.get("verdict") not in VERDICTS:
            raise ConfigError(source, f"expect[{i}]", "expected {when: {axis: label}, verdict: PASS|FAIL|ERROR}")
        when = _matcher(source, f"expect[{i}].when", rule["when"], axes) if "when" in rule else {}
        expect.append((when, rule["verdict"]))

    cells: list[Cell] = []
    for combo in itertools.product(*(axes[a].items() for a in axes)):
        values = {axis: label for axis, (label, _) in zip(axes, combo)}
        if any(_matches(e, values) for e in excludes):
            continue
        name = cell_id(values)
        settings, by_axis = dict(common), {}
        for axis, (label, keys) in zip(axes, combo):
            for key in keys:
                if key in by_axis:
                    raise ConfigError(source, f"axes.{axis}.{label}", f"sets {key}, which axis {by_axis[key]} sets "
                                      f"too (cell {name})")
                by_axis[key] = axis
            settings.update(keys)
        expected = next((verdict for when, verdict in expect if _matches(when, values)), None)
        if expected is None:
            raise ConfigError(source, "expect", f"no rule gives cell {name} an expected verdict; end with a "
                              "rule without `when`")
        try:
            nested = config.nest(copy.deepcopy(settings))  # nest shares values: no cell's may reach another
        except ValueError as e:
            raise ConfigError(source, f"cell {name}", str(e)) from None
        if host_file is not None and (key := next((k for k in settings if k.startswith("host.")), None)):
            raise ConfigError(source, key, f"set by cell {name}, but --host gives every cell its host: run "
                              "this matrix without --host, or leave the host's keys out of it")
        cfg = config.load(base, host_file, Overrides(nested, f"{source}, cell {name}", here))
        cells.append(Cell(len(cells), values, settings, expected, cfg))
    if not cells:
        raise ConfigError(source, "exclude", "excludes every cell")
    named: dict = {}
    for c in cells:  # a name is CI's handle on a cell's history, a slug its directory: each one cell's alone
        for what, name in (("name", c.id), ("directory", c.slug)):
            if (what, name) in named:
                other = named[what, name]
                both = (f"{other.id} and {c.id} would share the directory cells/{name}" if what == "directory"
                        else f"{other.values} and {c.values} would both be named {name}")
                raise ConfigError(source, "axes", f"cells {both}: give labels that differ in [A-Za-z0-9._-], "
                                  "without ',' or '='")
            named[what, name] = c
        if len(c.slug) > 255:
            raise ConfigError(source, "axes", f"cell {c.id}: its directory name would be {len(c.slug)} characters, "
                              "more than a file system takes (255): give shorter labels")
    return Matrix(source, p.stem, axes, cells)


def parse_shard(text: str) -> tuple[int, int]:
    """"I/N" -> (I, N), 1 <= I <= N."""
    m = re.fullmatch(r"(\d+)/(\d+)", text)
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise ValueError(f"expected I/N with 1 <= I <= N, e.g. 1/2, got {text!r}")
    return int(m[1]), int(m[2])


def shard(cells: list[Cell], i: int, n: int, times: dict[str, float] | None = None) -> list[Cell]:
    """Shard i of n: the same cells for the same inputs on every runner. With measured times (seconds per cell
    id), the longest cells go first, each to the shard with the least work so far; without them (or for a cell
    never measured: the median of those that were), every cell counts the same, which deals them out in turn.
    Returned in matrix order."""
    times = times or {}
    known = sorted(times[c.id] for c in cells if c.id in times)
    typical = known[len(known) // 2] if known else 1.0
    cost = {c.id: times.get(c.id, typical) for c in cells}
    load = [0.0] * n
    mine = []
    for c in sorted(cells, key=lambda c: (-cost[c.id], c.index)):
        k = min(range(n), key=lambda k: (load[k], k))
        load[k] += cost[c.id]
        if k == i - 1:
            mine.append(c)
    return sorted(mine, key=lambda c: c.index)


def times_from(summary_path: Path) -> dict[str, float]:
    """Each cell's measured time (seconds) from an earlier summary.json, for --shard."""
    data = json.loads(Path(summary_path).read_text())
    return {c["id"]: float(c["timings"]["total"]) for c in data.get("cells", []) if c.get("timings", {}).get("total")}


# --- running and reporting --------------------------------------------------------------------------------------

def host_groups(cells: list[Cell]) -> list[list[Cell]]:
    """Cells that share host settings, each group for one host (booted, or restored, once), in matrix order."""
    groups: dict[str, list[Cell]] = {}
    for c in cells:
        groups.setdefault(c.host_key(), []).append(c)
    return list(groups.values())


def cell_entry(cell: Cell | dict, result: dict | None, run_dir: str, missing: str = "") -> dict:
    """A cell's line in summary.json, from its result.json. None: the cell did not run to its end (`missing` says
    why), which is red whatever was expected: an expected ERROR is one the cell gave, never one made up for it."""
    meta = cell.meta() if isinstance(cell, Cell) else cell
    if result is None:
        verdict, reason = ERROR, missing or "no result.json: the run of this cell did not end"
        ok, why = False, f"did not run to its end: {reason}"
    else:
        verdict = result.get("verdict", ERROR)
        reason = result.get("reason", "result.json holds no verdict")
        ok = verdict == meta["expected"]
        why = "" if ok else f"expected {meta['expected']}, got {verdict}: {reason.splitlines()[0] if reason else ''}"
    return {**meta, "verdict": verdict, "ok": ok, "reason": reason, "why_red": why,
            "timings": (result or {}).get("timings", {}), "run_dir": run_dir}


def totals(cells: list[dict]) -> dict:
    t = {"cells": len(cells), "green": sum(c["ok"] for c in cells), "red": sum(not c["ok"] for c in cells)}
    t.update({v: sum(c["verdict"] == v for c in cells) for v in VERDICTS})
    return t


def new_summary(matrix: Matrix, shard_label: str | None, entries: list[dict], started: str, seconds: float) -> dict:
    return {"schema_version": SUMMARY_SCHEMA, "kind": "xenfb-harness matrix", "matrix": matrix.source,
            "name": matrix.name, "axes": {a: list(v) for a, v in matrix.axes.items()}, "shard": shard_label,
            "all_cells": [c.meta() for c in matrix.cells],  # every shard's, so a merge knows what none ran
            "started": started, "cells": entries, "totals": totals(entries), "timings": {"total": round(seconds, 1)}}


def exit_code(summary: dict) -> int:
    """0: every cell gave its expected verdict; 1: some did not. A shard may hold no cell (more shards than
    cells): its merge is what gates, and it says what no shard ran."""
    return 0 if all(c["ok"] for c in summary["cells"]) else 1


def run_matrix(matrix: Matrix, cells: list[Cell], out: Path, cache, accept_new_host_key: bool = False,
               shard_label: str | None = None, on_result=None, jobs: int = 1, child_cmd: list[str] | None = None
               ) -> dict:
    """Run the cells (one host per group of cells sharing host settings, a fresh guest per cell), then write
    summary.json, junit.xml and report.html into `out`. Every cell gets an entry, whatever breaks. With jobs > 1
    and several host groups, up to `jobs` groups run side by side, each in a process of its own: `child_cmd`
    plus `--group K` (this same command, limited to group K)."""
    from . import signals
    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    for c in cells:  # an earlier run's verdicts in the same --output must not pass for this run's
        for name in ("result.json", "junit.xml", "report.html"):
            (out / "cells" / c.slug / name).unlink(missing_ok=True)
    groups = host_groups(cells)
    broke = ""
    try:
        if jobs > 1 and len(groups) > 1 and child_cmd:
            run_side_by_side(child_cmd, len(groups), jobs, out)
        else:
            for k in range(1, len(groups) + 1):
                if signals.received:
                    break
                run_group(matrix, groups, k, out, cache, accept_new_host_key, on_result)
    except KeyboardInterrupt:
        pass  # every host and child has stopped; the cells that did not end are red below
    except Exception as e:  # the reports still say what happened to every cell; then the error goes on
        broke = f"{type(e).__name__}: {e}"
        raise
    finally:
        why = (f"interrupted by {signals.received} before this cell ended" if signals.received else
               f"the matrix run broke: {broke}" if broke else "")
        entries = [cell_entry(c, _result(out / "cells" / c.slug), f"cells/{c.slug}", why) for c in cells]
        summary = new_summary(matrix, shard_label, entries, started, time.monotonic() - t0)
        write_reports(out, summary)
    return summary


def run_group(matrix: Matrix, groups: list[list[Cell]], k: int, out: Path, cache, accept_new_host_key: bool,
              on_result=None) -> None:
    """Host group k (1-based): its cells on one host, each in a fresh guest, into out/cells/<slug>."""
    from .run import Job, run_jobs
    jobs = []
    for c in groups[k - 1]:
        run_dir = out / "cells" / c.slug
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "scenario.yaml").write_text(
            f"# cell {c.id} of {matrix.source}, as a scenario of its own: xenfb-harness run THIS_FILE\n"
            + yaml.safe_dump(c.cfg.data, sort_keys=False))
        jobs.append(Job(c.cfg, run_dir))
    run_jobs(jobs, cache, out / "hosts" / str(k), accept_new_host_key, on_result=on_result)


def run_side_by_side(child_cmd: list[str], groups: int, jobs: int, out: Path) -> None:
    """Groups 1..groups in child processes, at most `jobs` at once. Each child's progress goes to
    hosts/K/progress.log (its one-line cell verdicts to our stdout). An interrupt or SIGTERM reaches every child
    (Ctrl-C from the terminal reaches them itself; SIGTERM is passed on), and we wait for each to clean up."""
    import signal
    import subprocess
    from .progress import say
    waiting, running = list(range(1, groups + 1)), {}
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                k = waiting.pop(0)
                log = out / "hosts" / str(k) / "progress.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                with open(log, "wb") as f:
                    running[k] = subprocess.Popen([*child_cmd, "--group", str(k)], stderr=f)
                say(f"host group {k} of {groups} started (progress: {log})")
            for k, proc in list(running.items()):
                if proc.poll() is not None:
                    del running[k]
                    say(f"host group {k} of {groups} ended" + (f" (exit code {proc.returncode})"
                                                                if proc.returncode else ""))
            time.sleep(0.5)
    finally:
        for proc in running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in running.values():
            try:
                proc.wait(timeout=300)  # a child stops its guests and host first
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def default_jobs() -> int:
    """Host groups side by side by default: one per 4 cores. A nested host is QEMU with host.cpus (2) TCG
    threads; on this project's 2-core machine two at once took 113 s against 70 s one after the other."""
    return max(1, len(os.sched_getaffinity(0)) // 4)  # the cores this process may use, not the machine's


def _result(run_dir: Path) -> dict | None:
    try:
        result = json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def write_reports(out: Path, summary: dict) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_junit(out, summary)
    from .report_html import write_matrix_page
    write_matrix_page(out)


def write_junit(out: Path, summary: dict) -> None:
    """One test suite per cell, one test case per round plus one for the cell's verdict; names depend only on
    the matrix. A green cell passes, even one expected to FAIL (its misses are in system-out); a red one fails
    its verdict case, and an unexpected miss fails its round, with the reason and the diff images' paths."""
    suites = ET.Element("testsuites", name=f"xenfb-harness.{summary['name']}")
    for c in summary["cells"]:
        name = f"{summary['name']}.{c['id']}"
        classname = f"{summary['name']}.{c['id'].replace('.', '_')}"  # tools split a class name at its last dot
        result = (_result(out / c["run_dir"]) if c["run_dir"] else None) or {}
        suite = ET.SubElement(suites, "testsuite", name=name, time=str(c["timings"].get("total", 0)))
        failures = 0
        for r in result.get("rounds", []):
            case = ET.SubElement(suite, "testcase", classname=classname, name=f"round_{r['round']:03d}",
                                 time=str(r.get("duration_s", 0)))
            if r.get("missed_pixels"):
                text = missed_message(r, c["run_dir"])
                if c["verdict"] == FAIL and not c["ok"]:
                    ET.SubElement(case, "failure", message=text)
                    failures += 1
                else:
                    ET.SubElement(case, "system-out").text = xml_text(
                        f"{text} (expected: this cell should {c['expected']})")
        case = ET.SubElement(suite, "testcase", classname=classname, name="verdict",
                             time=str(c["timings"].get("total", 0)))
        if not c["ok"]:
            why = xml_text(c["why_red"])
            ET.SubElement(case, "failure", message=why[:500]).text = f"{why}\nrun directory: {c['run_dir']}"
            failures += 1
        suite.set("tests", str(len(suite)))
        suite.set("failures", str(failures))
        suite.set("errors", "0")
    ET.ElementTree(suites).write(out / "junit.xml", encoding="utf-8", xml_declaration=True)


def merge(dirs: list[Path], out: Path) -> dict:
    """One summary (and its reports) from the outputs of the shards of one matrix. A cell in two shards is an
    error; a cell of the matrix in none (every shard's summary lists them all) is red: "not run by any shard"."""
    parts = []
    for d in dirs:
        try:
            parts.append((d, json.loads((d / "summary.json").read_text())))
        except (OSError, ValueError) as e:
            raise ValueError(f"{d}: expected a matrix output directory with summary.json ({e})") from None
    first = parts[0][1]
    seen: dict[str, Path] = {}
    entries = []
    out.mkdir(parents=True, exist_ok=True)
    for d, s in parts:
        if (s["name"], s["axes"]) != (first["name"], first["axes"]):
            raise ValueError(f"{d}: a shard of matrix {s['name']!r} with other axes than {parts[0][0]}'s")
        for c in s["cells"]:
            if c["id"] in seen:
                raise ValueError(f"cell {c['id']} is in both {seen[c['id']]} and {d}")
            seen[c["id"]] = d
            entries.append({**c, "run_dir": os.path.relpath(d / c["run_dir"], out) if c["run_dir"] else ""})
        if s.get("all_cells") != first.get("all_cells"):
            raise ValueError(f"{d}: a shard of another version of matrix {s['name']!r} than {parts[0][0]}'s")
    if "all_cells" not in first:
        raise ValueError(f"{parts[0][0]}: its summary.json does not list the matrix's cells (written by an older "
                         "xenfb-harness?), so a cell no shard ran could not be told")
    for meta in first["all_cells"]:
        if meta["id"] not in seen:
            entries.append(cell_entry(meta, None, "", "not run by any shard"))
    entries.sort(key=lambda c: c["index"])
    summary = {**first, "shard": None, "merged_from": [str(d) for d in dirs], "cells": entries,
               "totals": totals(entries),
               "timings": {"total": round(sum(s["timings"]["total"] for _, s in parts), 1)}}
    write_reports(out, summary)
    return summary
