"""xfb-mapcheck on this machine's kernel, with a plain file standing for the framebuffer: the mapping operations
work and read back, and the tracking check fails when the counters say no fault happened (it can fail)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from xenfb_harness import protocol

SRC = Path(__file__).resolve().parent.parent / "harness" / "writer" / "xfb-mapcheck.c"
CHECKS = ["plain", "offset", "split", "fork", "mremap", "munmap-part", "munmap-pending"]


@pytest.fixture(scope="module")
def mapcheck(tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("mapcheck") / "xfb-mapcheck"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(SRC)], check=True)
    return exe


def fb_file(tmp_path: Path, pages: int = 32) -> Path:
    fb = tmp_path / "fb"
    fb.write_bytes(bytes(pages * 4096))
    return fb


def messages(out: str) -> list:
    return [protocol.parse_line(line) for line in out.splitlines()]


def test_every_check_runs_and_reads_back_without_counters(mapcheck, tmp_path):
    proc = subprocess.run([str(mapcheck), "--fb", str(fb_file(tmp_path))], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    msgs = messages(proc.stdout)
    assert [m.name for m in msgs] == CHECKS and all(m.ok for m in msgs)


def test_tracking_check_fails_when_nothing_faults(mapcheck, tmp_path):
    stats = tmp_path / "stats"
    stats.mkdir()
    (stats / "faults").write_text("7\n")  # a frontend that never counts a fault
    (stats / "zaps").write_text("3\n")
    proc = subprocess.run([str(mapcheck), "--fb", str(fb_file(tmp_path)), "--stats-dir", str(stats)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    msg = messages(proc.stdout)[-1]
    assert msg == protocol.Check("plain", False, "a write to page 1 did not fault (faults stayed 7)")


def test_a_framebuffer_too_small_is_refused(mapcheck, tmp_path):
    proc = subprocess.run([str(mapcheck), "--fb", str(fb_file(tmp_path, pages=8))], capture_output=True,
                          text=True, timeout=10)
    assert proc.returncode == 1 and "the checks need 16" in proc.stdout
