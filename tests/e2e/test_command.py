"""Any workload, no expected frame (writer.kind command): the harness freezes someone else's programs (and the X
server) at seeded points, takes guest memory as the expected frame and waits for the backend's view to equal it.
Real X clients from Debian's packages PASS with the upstream frontend and FAIL with the old design's widened race;
a workload that exits, one that draws nothing, and one that escapes the freezer are ERRORs, never a PASS."""
from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import run_scenario, run_shipped, verdict_of

pytestmark = pytest.mark.e2e


def _check_compared(res: dict, drawn_in: int) -> None:
    """Every round compared at a quiet guest, and the workload drew between freezes in at least `drawn_in`
    rounds: the comparisons were of a changing screen."""
    assert res["effective_config"]["writer"]["kind"] == "command"
    assert len(res["rounds"]) == res["rounds_planned"] + 1
    assert all(r["guest_quiet"] for r in res["rounds"])
    assert sum(1 for r in res["rounds"] if r["drawn_pixels"]) >= drawn_in, res["rounds"]


@pytest.mark.parametrize("name, xorg, program", [
    ("command-x11perf-upstream", True, "x11perf"),  # a real X benchmark
    ("command-xclock-upstream", True, None),  # an idle desktop's clocks, the workload the legacy race fails
    ("command-shell-loop", False, None),  # no X: a busybox loop writing /dev/fb0 with dd
])
def test_workloads_pass_with_upstream(name, xorg, program, tmp_path_factory, shared_host):
    run = run_shipped(tmp_path_factory, name, shared_host)
    res = verdict_of(run, "PASS")
    _check_compared(res, drawn_in=res["rounds_planned"] // 2)
    assert res["workload_log"] == "workload.log" and (run.dir / "workload.log").is_file()
    if program:
        assert program in (run.dir / "workload.log").read_text()
    assert (res["xorg"].get("shadowfb") == "off") if xorg else not res["xorg"]


def test_the_same_clocks_fail_with_the_widened_legacy_race(tmp_path_factory, shared_host):
    run = run_shipped(tmp_path_factory, "command-xclock-legacy-race", shared_host)
    res = verdict_of(run, "FAIL")
    _check_compared(res, drawn_in=1)  # X pays the widened window on every page it touches: it draws slowly
    missed = [r for r in res["rounds"] if r["missed_pixels"]]
    for r in missed:  # where, when and which pages, with the evidence beside it
        assert r["rects"] and r["pages"] and r["at_s"] > 0
        assert (run.dir / r["images"]["diff"]).is_file()
    assert "WARNING" not in res["reason"]  # the module counted the races that explain the misses
    assert res["counters"]["race_hits"] > 0


def _run_command(tmp_path: Path, shared_host: Path, command: str, rounds: int = 3):
    config = tmp_path / "workload.yaml"
    config.write_text(f"rounds: {rounds}\nwriter:\n  kind: command\ncommand:\n  xorg: false\n  interval_ms: 1500\n"
                      f"  run: '{command}'\n")
    return run_scenario(config, tmp_path / "run", shared_host)


def test_a_workload_that_exits_is_an_error(tmp_path, shared_host):
    run = _run_command(tmp_path, shared_host, "echo started; sleep 2; exit 7")
    res = run.result
    assert run.rc == 2 and res["verdict"] == "ERROR", res["reason"]
    assert "the workload exited with status 7" in res["reason"]
    assert "started" in (run.dir / "workload.log").read_text()


def test_a_workload_that_draws_nothing_is_an_error(tmp_path, shared_host):
    run = _run_command(tmp_path, shared_host, "exec sleep 100000")
    res = run.result
    assert run.rc == 2 and res["verdict"] == "ERROR", res["reason"]
    assert "drew nothing" in res["reason"]


def test_a_guest_that_never_goes_quiet_is_an_error(tmp_path, shared_host):
    # The loop moves itself out of the workload's cgroup, so the freezer never stops it: guest memory keeps
    # changing while the harness waits, and no verdict can be drawn from it.
    escape = ("echo $$ > /sys/fs/cgroup/cgroup.procs; i=0; while :; do i=$(( (i + 37) % 468 )); "
              "dd if=/dev/urandom of=/dev/fb0 bs=4096 count=1 seek=$i conv=notrunc 2>/dev/null; done")
    run = _run_command(tmp_path, shared_host, escape)
    res = run.result
    assert run.rc == 2 and res["verdict"] == "ERROR", res["reason"]
    assert "never became quiet" in res["reason"]
    bad = [r for r in res["rounds"] if not r["guest_quiet"]]
    assert bad and bad[0]["guest_changed_pixels"] > 0
    assert (run.dir / f"round-{bad[0]['round']:03d}-guest-memory-changed.png").is_file()
