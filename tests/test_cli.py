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
    assert "host.accel" in out and "capture.quiet_ms" in out and "writer.lifecycle" in out


def test_bad_config_is_an_error_naming_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: 3\nguest:\n  memroy_mb: 512\n")
    proc = cli("run", str(bad), "--output", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "guest.memroy_mb" in proc.stderr and "memory_mb" in proc.stderr
    assert not (tmp_path / "out").exists(), "nothing was started for a config that does not validate"


def test_cache_list_on_an_empty_cache(tmp_path):
    proc = cli("cache", "list", "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    assert "total" in proc.stdout and "0 entries" in proc.stdout


def test_host_help_teaches_up_down_and_clean():
    out = cli("host", "--help").stdout
    for word in ("host up", "host down", "host clean", "host.yaml", "idle"):
        assert word in out


def test_scenarios_of_one_run_must_agree_on_their_host(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("rounds: 2\n")
    b.write_text("host:\n  dom0_memory_mb: 512\n")
    proc = cli("run", str(a), str(b), "--output", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert str(b) in proc.stderr and "host.dom0_memory_mb" in proc.stderr and "--host" in proc.stderr
    assert not (tmp_path / "out").exists(), "nothing was started"


def test_a_host_file_holds_only_a_host_section(tmp_path):
    host = tmp_path / "host.yaml"
    host.write_text("host:\n  kind: ssh\n  address: 127.0.0.1\nrounds: 3\n")
    proc = cli("run", "configs/default.yaml", "--host", str(host), "--output", str(tmp_path / "out"))
    assert proc.returncode == 2 and str(host) in proc.stderr and "only a 'host' section" in proc.stderr


def test_an_ssh_host_needs_an_address(tmp_path):
    host = tmp_path / "host.yaml"
    host.write_text("host:\n  kind: ssh\n")
    proc = cli("run", "--host", str(host), "--output", str(tmp_path / "out"))
    assert proc.returncode == 2 and "host.address" in proc.stderr


def test_git_bisect_codes_skip_what_cannot_be_judged(tmp_path):
    missing = str(tmp_path / "no-such.yaml")
    plain, bisect = cli("run", missing), cli("run", missing, "--git-bisect-codes")
    assert plain.returncode == 2 and "bad config" in plain.stderr  # ERROR
    assert bisect.returncode == 125  # git bisect: skip this step
