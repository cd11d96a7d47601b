"""Bring your own kernel and frontend: guest kernels from other Debian releases than the host's, and a frontend
module of the user's own built against whichever guest kernel was chosen."""
from __future__ import annotations

import pytest

from .conftest import ROOT, run_scenario, run_shipped, verdict_of

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("name, release", [
    ("debian11-upstream", "5.10."),  # bullseye
    ("debian13-upstream", "6.12."),  # trixie
])
def test_a_guest_kernel_from_another_release(name, release, tmp_path_factory, shared_host):
    run = run_shipped(tmp_path_factory, name, shared_host)
    res = verdict_of(run, "PASS")
    assert res["versions"]["guest_kernel"].startswith(release)
    assert len(res["rounds"]) == res["rounds_planned"] + 1


@pytest.mark.parametrize("name, verdict, release", [
    ("debian11-legacy-race", "FAIL", "5.10."),
    ("debian11-legacy-fixed-race", "PASS", "5.10."),
    ("debian13-legacy-race", "FAIL", "6.12."),
    ("debian13-legacy-fixed-race", "PASS", "6.12."),
])
def test_our_module_on_other_kernels(name, verdict, release, tmp_path_factory, shared_host):
    # Built against that release's headers with this machine's compiler: the race shows, the fix holds.
    run = run_shipped(tmp_path_factory, name, shared_host)
    res = verdict_of(run, verdict)
    assert res["versions"]["guest_kernel"].startswith(release)
    assert "WARNING" not in res["reason"]


def test_your_own_module_passes_and_its_counters_are_read(tmp_path_factory, shared_host):
    run = run_shipped(tmp_path_factory, "own-module", shared_host)
    res = verdict_of(run, "PASS")
    assert res["guest"]["module"] == "xenfb_legacy_fixed"
    assert res["guest"]["counters"].startswith("read from /sys/module/xenfb_legacy_fixed/parameters")
    assert res["counters"]["race_window_ms"] == 300 and res["counters"]["faults"] > 0  # module.params reached it


def test_your_own_module_with_the_race_fails(tmp_path, shared_host):
    # The same path with the tree's other module: the old design, whose widened race must show on screen.
    text = (ROOT / "configs/own-module.yaml").read_text()
    config = tmp_path / "own-module-race.yaml"
    config.write_text(text.replace("name: xenfb_legacy_fixed", "name: xenfb_legacy")
                      .replace("../guest-kernels", str(ROOT / "guest-kernels")))
    run = run_scenario(config, tmp_path / "run", shared_host)
    res = verdict_of(run, "FAIL")
    assert "WARNING" not in res["reason"] and res["counters"]["race_hits"] > 0
