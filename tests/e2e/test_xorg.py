"""The X stress writer: a real X server (fbdev driver, ShadowFB off) draws the seeded pattern into the guest's
framebuffer for our X client. With the upstream frontend every round must show; with the old design and a widened
window, X's own writes are lost, and the module's race-hit counter stands beside every missed round."""
from __future__ import annotations

import pytest

from .conftest import Run, run_shipped

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def xorg_upstream(tmp_path_factory, shared_host) -> Run:
    return run_shipped(tmp_path_factory, "xorg-upstream", shared_host)


@pytest.fixture(scope="module")
def xorg_legacy(tmp_path_factory, shared_host) -> Run:
    return run_shipped(tmp_path_factory, "xorg-legacy-race", shared_host)


def assert_x_drew(run: Run) -> None:
    """The rounds were drawn by a real X server running with ShadowFB off, and its configuration was kept."""
    res = run.result
    assert res["xorg"] == {"config": "xorg.conf", "log": "Xorg.0.log", "shadowfb": "off"}
    log = (run.dir / "Xorg.0.log").read_text()
    assert "X.Org X Server" in log and 'FBDEV(0): using /dev/fb0' in log
    assert 'Option "ShadowFB" "off"' in (run.dir / "xorg.conf").read_text()


def test_x_writer_with_upstream_passes(xorg_upstream):
    run = xorg_upstream
    assert run.rc == 0, run.result["reason"] + "\n" + run.stderr[-3000:]
    res = run.result
    assert res["verdict"] == "PASS" and len(res["rounds"]) == 11
    assert all(r["compared_pixels"] > 0 and r["guest_memory_ok"] for r in res["rounds"])
    assert_x_drew(run)


def test_x_writer_with_legacy_and_a_widened_window_fails(xorg_legacy):
    run = xorg_legacy
    assert run.rc == 1, run.result["reason"] + "\n" + run.stderr[-3000:]
    res = run.result
    assert res["verdict"] == "FAIL" and "WARNING" not in res["reason"]
    missed = [r for r in res["rounds"] if r["missed_pixels"]]
    assert missed
    for r in res["rounds"]:
        assert r["guest_memory_ok"], "X drew what the pattern says: the guest memory matches in every round"
    for r in missed:
        assert r["counters"]["race_hits"] > 0 and r["pages"] and r["rects"], r
    assert res["counters"]["race_window_ms"] == 300
    assert_x_drew(run)
