"""The command line's fast paths: help that teaches, and a bad config that is an ERROR naming file and key."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from xenfb_harness import cli as harness_cli
from xenfb_harness.artifacts.cache import Cache
from xenfb_harness.result import FAIL, PASS
from xenfb_harness.run import Repeat
from tests.test_run import FakeDom0, building, clock, events, scenario, scripted  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "xenfb_harness", *args], cwd=cwd, capture_output=True, text=True,
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


# --- repeated runs: --repeat, --duration, --until-fail --------------------------------------------------------------


def run_args(*argv):
    """The options as main() parses them."""
    return harness_cli.parser().parse_args(harness_cli._bare_until_fail_last(["run", *argv]))


def test_positive_int():
    assert harness_cli.positive_int("1") == 1 and harness_cli.positive_int("12") == 12
    for bad in ("0", "-3", "x", "1.5", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="at least 1"):
            harness_cli.positive_int(bad)


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("2h", 7200), ("1.5h", 5400),
                                           ("0.5m", 30), ("1s", 1)])
def test_duration_in_seconds(text, seconds):
    assert harness_cli.duration(text) == seconds


@pytest.mark.parametrize("text", ["0s", "0m", "0.0h", "90", "1.5", "5d", "10ms", "m", "", "-5m", "2 h", "1e3s",
                                  "30min"])
def test_duration_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match="90s, 30m or 2h"):
        harness_cli.duration(text)


@pytest.mark.parametrize("argv, policy", [
    ([], Repeat(count=1, budget_s=None, until_fail=False)),
    (["--repeat", "5"], Repeat(count=5)),
    (["--repeat", "1"], Repeat(count=1)),
    (["--duration", "30m"], Repeat(count=None, budget_s=1800)),
    (["--repeat", "4", "--duration", "2h"], Repeat(count=4, budget_s=7200)),
    (["--until-fail"], Repeat(count=1, until_fail=True)),
    (["--until-fail", "30m"], Repeat(count=None, budget_s=1800, until_fail=True)),
    (["--repeat", "10", "--until-fail"], Repeat(count=10, until_fail=True)),
    (["--repeat", "10", "--until-fail", "1h"], Repeat(count=10, budget_s=3600, until_fail=True)),
    (["--duration", "30m", "--until-fail"], Repeat(count=None, budget_s=1800, until_fail=True)),
])
def test_repeat_policy_from_the_options(argv, policy):
    assert harness_cli._repeat(run_args(*argv)) == policy


def test_until_fail_alone_is_not_numbered_and_a_budget_is():
    assert not harness_cli._repeat(run_args("--until-fail")).numbered
    assert harness_cli._repeat(run_args("--until-fail", "90s")).numbered
    assert harness_cli._repeat(run_args("--duration", "90s")).numbered


def test_duration_and_until_fail_time_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        harness_cli._repeat(run_args("--duration", "30m", "--until-fail", "1h"))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--duration" in err and "--until-fail" in err


@pytest.mark.parametrize("argv, words", [(["--repeat", "0"], "--repeat"), (["--repeat", "two"], "--repeat"),
                                         (["--duration", "0s"], "--duration"), (["--duration", "90"], "--duration"),
                                         (["--until-fail", "5d"], "--until-fail")])
def test_bad_repeat_options_are_usage_errors(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        run_args(*argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert words in err and "expected" in err


def test_until_fail_without_time_before_a_config():
    """`run --until-fail my.yaml` worked while --until-fail took no value; it must not eat the config as a TIME."""
    args = run_args("--until-fail", "configs/default.yaml")
    assert args.config == ["configs/default.yaml"] and args.until_fail == 0.0
    args = run_args("--until-fail", "configs/a.yaml", "configs/b.yaml", "--repeat", "2")
    assert args.config == ["configs/a.yaml", "configs/b.yaml"] and args.until_fail == 0.0 and args.repeat == 2
    args = run_args("configs/a.yaml", "--until-fail", "90s", "--repeat", "3")
    assert args.config == ["configs/a.yaml"] and args.until_fail == 90.0 and args.repeat == 3


def test_duration_with_until_fail_time_is_a_usage_error_not_a_fail(tmp_path):
    """Exit 1 means FAIL (a missed update): a refused combination of options must not say so."""
    proc = cli("run", "configs/default.yaml", "--duration", "30m", "--until-fail", "1h",
               "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"))
    assert "--duration" in proc.stderr and "--until-fail" in proc.stderr
    assert not (tmp_path / "out").exists(), "nothing was started"
    assert proc.returncode == 2


def test_run_help_explains_the_repeat_options():
    out = cli("run", "--help").stdout
    for word in ("--repeat", "--duration", "--until-fail", "90s", "30m"):
        assert word in out


def test_run_with_repeat_prints_and_writes_the_statistics(tmp_path, monkeypatch, events, capsys):
    building(monkeypatch, events)
    scripted(monkeypatch, events, outcomes={2: FAIL})
    a, b = scenario(tmp_path, "a.yaml"), scenario(tmp_path, "b.yaml", seed=2)
    out = tmp_path / "out"
    code = harness_cli._run(run_args(a.source, b.source, "--repeat", "3", "--output", str(out)), [a, b],
                            Cache(tmp_path / "cache"))
    assert code == 1  # the worst verdict: a FAIL
    for name in ("01-a", "02-b"):
        for k in (1, 2, 3):
            assert (out / name / f"run-{k:03d}" / "result.json").is_file()
    saved = json.loads((out / "summary.json").read_text())
    first, second = saved["scenarios"]
    assert first["config"] == a.source and first["runs"] == 3
    assert first["verdicts"] == {PASS: 2, FAIL: 1, "ERROR": 0}
    assert first["stress_minutes"] == pytest.approx(2.0)  # 3 runs of 40 s of rounds
    assert first["first_fail"]["run"] == 2 and first["first_fail"]["stress_s"] == 40 + 10
    assert second["config"] == b.source and second["verdicts"] == {PASS: 3, FAIL: 0, "ERROR": 0}
    printed = capsys.readouterr().out
    assert f"{a.source}: 3 runs: 1 FAIL, 2 PASS, 0 ERROR" in printed
    assert f"{b.source}: 3 runs: 0 FAIL, 3 PASS, 0 ERROR" in printed
    assert "detection rate: 1/3 = 33%" in printed and f"statistics: {out / 'summary.json'}" in printed


def test_run_with_repeat_puts_a_failed_build_into_its_own_scenario(tmp_path, monkeypatch, events, capsys):
    building(monkeypatch, events, broken=("01-a",))
    scripted(monkeypatch, events)
    a, b = scenario(tmp_path, "a.yaml"), scenario(tmp_path, "b.yaml", seed=2)
    out = tmp_path / "out"
    code = harness_cli._run(run_args(a.source, b.source, "--repeat", "2", "--output", str(out)), [a, b],
                            Cache(tmp_path / "cache"))
    assert code == 2
    first, second = json.loads((out / "summary.json").read_text())["scenarios"]
    assert first["runs"] == 1 and first["verdicts"]["ERROR"] == 1 and first["detection"]["rate"] is None
    assert second["runs"] == 2 and second["verdicts"][PASS] == 2


def test_run_until_fail_with_a_time_runs_until_the_fail(tmp_path, monkeypatch, events, clock, capsys):
    building(monkeypatch, events)
    scripted(monkeypatch, events, outcomes={3: FAIL}, clock=clock, run_s=600)
    cfg = scenario(tmp_path)
    out = tmp_path / "out"
    code = harness_cli._run(run_args(cfg.source, "--until-fail", "1h", "--output", str(out)), [cfg],
                            Cache(tmp_path / "cache"))
    assert code == 1
    assert [e[1] for e in events if e[0] == "scenario"] == ["out/run-001", "out/run-002", "out/run-003"]
    [figures] = json.loads((out / "summary.json").read_text())["scenarios"]
    assert figures["runs"] == 3 and figures["first_fail"] == {"run": 3, "wall_s": 1800.0, "stress_s": 1210.0}
    assert "first FAIL: run 3, its first missed round after 20.2 min of stress (the runs up to its end took 30.0 min)" in capsys.readouterr().out


def test_run_once_writes_no_statistics(tmp_path, monkeypatch, events, capsys):
    building(monkeypatch, events)
    scripted(monkeypatch, events)
    cfg = scenario(tmp_path)
    out = tmp_path / "out"
    assert harness_cli._run(run_args(cfg.source, "--output", str(out)), [cfg], Cache(tmp_path / "cache")) == 0
    assert (out / "result.json").is_file() and not (out / "run-001").exists()
    assert not (out / "summary.json").exists() and "statistics" not in capsys.readouterr().out
