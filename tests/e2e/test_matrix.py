"""`xenfb-harness matrix` on the real stack: the shipped frontend x writer matrix is green (the known-bad
frontend FAILs as expected, the others PASS), its two shards together run every cell once and merge into the
same verdicts as the unsharded run, and a cell expected to give another verdict turns the gate red. With --jobs,
two hosts run side by side, and SIGTERM stops both."""
from __future__ import annotations

import json
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from .conftest import ROOT, harness_cmd, nested_tmpdirs, pid_alive, run_cli

pytestmark = pytest.mark.e2e

MATRIX = ROOT / "configs" / "matrix.yaml"


def matrix(out: Path, host: Path, *args: str, file: Path = MATRIX):
    proc = run_cli("matrix", str(file), "--host", str(host), "--output", str(out), *args)
    return proc, json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else None


def verdicts(summary: dict) -> list[tuple]:
    """What must not depend on how the cells were split: which cells, expected and given verdicts, in order."""
    return [(c["id"], c["expected"], c["verdict"], c["ok"]) for c in summary["cells"]]


@pytest.fixture(scope="module")
def whole(shared_host, tmp_path_factory):
    out = tmp_path_factory.mktemp("matrix") / "whole"
    return out, *matrix(out, shared_host)


def test_shipped_matrix_is_green(whole):
    out, proc, summary = whole
    assert summary is not None, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    ids = run_cli("matrix", str(MATRIX), "--list").stdout.split()
    assert [c["id"] for c in summary["cells"]] == ids and len(ids) == 6
    for c in summary["cells"]:
        assert c["ok"] and c["verdict"] == ("FAIL" if "legacy-race" in c["id"] else "PASS"), c
        run = out / c["run_dir"]
        assert json.loads((run / "result.json").read_text())["verdict"] == c["verdict"]
        assert (run / "report.html").is_file() and (run / "scenario.yaml").is_file()
    assert summary["totals"] == {"cells": 6, "green": 6, "red": 0, "PASS": 4, "FAIL": 2, "ERROR": 0}
    # JUnit: a suite per cell named after the matrix and the cell; green cells (the FAILs too) have no failure.
    suites = ET.parse(out / "junit.xml").getroot().findall("testsuite")
    assert [s.get("name") for s in suites] == [f"matrix.{i}" for i in ids]
    assert not ET.parse(out / "junit.xml").getroot().findall(".//failure")
    assert (out / "report.html").is_file()


def test_shards_cover_the_matrix_once_and_merge_to_the_same_verdicts(whole, shared_host, tmp_path):
    _, _, unsharded = whole
    one, s1 = matrix(tmp_path / "s1", shared_host, "--shard", "1/2")
    two, s2 = matrix(tmp_path / "s2", shared_host, "--shard", "2/2")
    assert s1 and s2, one.stderr[-2000:] + two.stderr[-2000:]
    ids1, ids2 = [c["id"] for c in s1["cells"]], [c["id"] for c in s2["cells"]]
    assert not set(ids1) & set(ids2) and sorted(ids1 + ids2) == sorted(c["id"] for c in unsharded["cells"])
    merged = run_cli("merge", "--output", str(tmp_path / "all"), str(tmp_path / "s1"), str(tmp_path / "s2"))
    assert merged.returncode == 0, merged.stdout + merged.stderr
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert verdicts(summary) == verdicts(unsharded)
    for c in summary["cells"]:  # the merged summary's links reach the shards' run directories
        assert (tmp_path / "all" / c["run_dir"] / "result.json").is_file()


def test_a_cell_that_does_not_give_its_expected_verdict_is_red(shared_host, tmp_path):
    """The gate's positive control: upstream is expected to FAIL here, and PASSes, so the matrix must be red."""
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(f"base: {ROOT / 'configs' / 'default.yaml'}\nset: {{rounds: 1}}\n"
                     "axes: {frontend: [upstream]}\nexpect: [{verdict: FAIL}]\n")
    proc, summary = matrix(tmp_path / "out", shared_host, file=wrong)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    (cell,) = summary["cells"]
    assert (cell["verdict"], cell["ok"]) == ("PASS", False)
    assert cell["why_red"].startswith("expected FAIL, got PASS")
    failures = ET.parse(tmp_path / "out" / "junit.xml").getroot().findall(".//failure")
    assert [f.get("message")[:24] for f in failures] == ["expected FAIL, got PASS:"]


def two_hosts(tmp_path: Path) -> Path:
    """Two cells whose host settings differ: a host each."""
    path = tmp_path / "two-hosts.yaml"
    path.write_text(f"base: {ROOT / 'configs' / 'default.yaml'}\nset: {{rounds: 1}}\n"
                    "axes: {host.dom0_memory_mb: [1024, 960]}\nexpect: [{verdict: PASS}]\n")
    return path


def test_jobs_run_hosts_side_by_side(tmp_path):
    before = nested_tmpdirs()
    out = tmp_path / "out"
    proc = run_cli("matrix", str(two_hosts(tmp_path)), "--jobs", "2", "--output", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "host group 2 of 2 started" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [c["verdict"] for c in summary["cells"]] == ["PASS", "PASS"]
    assert {p.name for p in (out / "hosts").iterdir()} == {"1", "2"}
    for pid in (out / "hosts").glob("*/qemu.pid"):
        assert not pid_alive(int(pid.read_text()))
    assert nested_tmpdirs() <= before


def test_sigterm_stops_every_host_of_jobs(tmp_path):
    """SIGTERM (what CI sends on a timeout) to a matrix running hosts side by side: each child stops its host,
    and the summary still says what happened to every cell."""
    before = nested_tmpdirs()
    out = tmp_path / "out"
    proc = subprocess.Popen(harness_cmd("matrix", str(two_hosts(tmp_path)), "--jobs", "2", "--output", str(out)),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = [out / "hosts" / k / "qemu.pid" for k in ("1", "2")]
    deadline = time.monotonic() + 300
    while not all(p.is_file() for p in pids) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert all(p.is_file() for p in pids), "both hosts should have started"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stdout + stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert all(c["verdict"] == "ERROR" and not c["ok"] for c in summary["cells"]), summary["cells"]
    for pid in pids:
        assert not pid_alive(int(pid.read_text()))
    assert nested_tmpdirs() <= before
