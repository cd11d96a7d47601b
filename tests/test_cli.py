"""The command line's fast paths: help that teaches, and a bad config that is an ERROR naming file and key."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def test_run_help_explains_verdicts_and_exit_codes():
    out = cli("run", "--help").stdout
    for word in ("PASS", "FAIL", "ERROR", "exit codes", "--output", "cache"):
        assert word in out


def test_keys_lists_every_key():
    out = cli("keys").stdout
    assert "host.accel" in out and "capture.settle_window_ms" in out


def test_bad_config_is_an_error_naming_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: 3\nguest:\n  memroy_mb: 512\n")
    proc = cli("run", str(bad), "--output", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "guest.memroy_mb" in proc.stderr and "memory_mb" in proc.stderr
    assert not (tmp_path / "out").exists(), "nothing was started for a config that does not validate"
