"""The default run boots the real stack and must PASS with the upstream frontend, with every artefact a user
needs to trust that verdict."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from xenfb_harness import pattern
from xenfb_harness.compare import compare
from xenfb_harness.geometry import Channel, Geometry, Rect
from xenfb_harness.images import load_png
from xenfb_harness.result import Result, RoundResult

pytestmark = pytest.mark.e2e


def geometry_of(result: dict) -> Geometry:
    g = dict(result["geometry"])
    for ch in ("red", "green", "blue"):
        g[ch] = Channel(*g[ch])
    return Geometry(**g)


def test_default_run_passes(default_run):
    assert default_run.rc == 0, default_run.stderr[-3000:]
    assert "verdict: PASS" in default_run.stdout
    res = default_run.result
    assert res["verdict"] == "PASS" and res["exit_code"] == 0
    assert res["frontend"] == "upstream"
    assert len(res["rounds"]) == res["rounds_planned"] + 1 == 11
    for r in res["rounds"]:
        assert r["missed_pixels"] == 0
        assert r["compared_pixels"] > 0
        assert r["guest_memory_ok"]
    # The geometry came from the guest, not from an assumption.
    assert res["geometry"]["width"] > 0 and res["geometry"]["stride"] >= res["geometry"]["width"]
    assert "TCG" in res["host"] or "KVM" in res["host"]
    for key in ("xen-hypervisor-4.17-amd64", "guest_kernel", "qemu-system-xen", "qemu_outer"):
        assert res["versions"].get(key)
    for stage in ("upload guest payload", "start guest", "rounds", "total"):
        assert stage in res["timings"]
    # Booted (and a snapshot saved), or restored from one: the result says which.
    restored = res["versions"]["host_start"].startswith("restored from snapshot")
    assert ("restore Xen and dom0" if restored else "boot Xen and dom0") in res["timings"], res["timings"]
    cfg = res["effective_config"]
    assert cfg["schema_version"] >= 2 and cfg["frontend"] == "upstream" and cfg["rounds"] == 10


def test_default_run_keeps_logs_and_junit(default_run):
    d = default_run.dir
    if "-incoming" not in (d / "host" / "qemu-command.txt").read_text():  # a restored dom0 said READY before
        assert "XFB-DOM0-READY" in (d / "host" / "serial.log").read_text(errors="replace")
    assert "XFB READY" in (d / "guest-console.log").read_text(errors="replace")
    assert any((d / "dom0-logs").glob("*qemu-dm*")), "the device model's log from dom0"
    suite = ET.parse(d / "junit.xml").getroot()
    cases = suite.findall("testcase")
    assert len(cases) == 11 and not suite.findall(".//failure") and not suite.findall(".//error")


def test_oracle_fails_on_a_real_frame_with_a_region_altered(default_run):
    """Feed the comparison the real captured VNC frame, altered where we choose: it must report exactly that."""
    res = default_run.result
    geo = geometry_of(res)
    seen = load_png(default_run.dir / "final-seen-vnc.png")
    expected = pattern.expected_rgb(geo, res["seed"], res["rounds_planned"] + 1)
    exclude = []
    assert compare(expected, seen, geo, exclude).ok, "the captured frame itself matches"

    altered = seen.copy()
    x, y, w, h = 101, 203, 37, 11
    altered[y:y + h, x:x + w] ^= 0x80  # flip the top bit of every channel: a colour change in any format
    out = compare(expected, altered, geo, exclude)
    assert not out.ok
    assert out.missed_pixels == w * h
    assert out.rects == [Rect(x, y, w, h)]
    ys, xs = np.mgrid[y:y + h, x:x + w]
    assert out.pages == sorted(set(((ys * geo.stride + xs * geo.bytes_per_pixel) // 4096).ravel().tolist()))

    # ...and a run holding that round is a FAIL, not a PASS.
    result = Result(config="x", frontend="upstream", seed=1, rounds_planned=0)
    result.rounds.append(RoundResult(0, out.compared_pixels, out.missed_pixels, [r.as_dict() for r in out.rects]))
    result.decide()
    assert result.verdict == "FAIL"

    # A change inside an excluded area alone is not a miss.
    assert compare(expected, altered, geo, [Rect(x, y, w, h)]).ok
