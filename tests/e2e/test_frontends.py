"""The three frontends under the same sparse writer and seed, told apart by their verdicts: the old design with a
widened race window misses updates (and its own race-hit counter explains each miss), the backported fix and
the upstream driver do not."""
from __future__ import annotations

import pytest

from xenfb_harness import pattern
from xenfb_harness.geometry import PAGE_SIZE

from .conftest import Run, run_shipped
from .test_default_run import geometry_of

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def legacy(host_pair) -> Run:
    return host_pair[1]  # legacy-race, run after the default scenario on the same host


@pytest.fixture(scope="module")
def legacy_fixed(tmp_path_factory, shared_host) -> Run:
    return run_shipped(tmp_path_factory, "legacy-fixed-race", shared_host)


@pytest.fixture(scope="module")
def upstream_sparse(tmp_path_factory, shared_host) -> Run:
    return run_shipped(tmp_path_factory, "upstream-sparse", shared_host)


def test_legacy_with_a_widened_window_fails(legacy):
    assert legacy.rc == 1, legacy.stderr[-3000:]
    res = legacy.result
    assert res["verdict"] == "FAIL" and "WARNING" not in res["reason"]
    assert res["frontend"] == "legacy"
    missed = [r for r in res["rounds"] if r["missed_pixels"]]
    assert missed
    for r in res["rounds"]:
        assert r["guest_memory_ok"], "the guest memory always holds what the writer drew"
    for r in missed:
        # The module's ground truth agrees: a round with misses had zaps inside the fault window.
        assert r["counters"]["race_hits"] > 0, r
        for name in ("expected", "seen-vnc", "diff"):
            assert (legacy.dir / r["images"][name]).is_file()
    assert res["counters"]["race_hits"] > 0 and res["counters"]["faults"] > 0


def test_legacy_misses_are_localised_to_pages_the_writer_touched(legacy):
    res = legacy.result
    geo = geometry_of(res)
    params = pattern.WriterParams(mode="sparse", pages=8, touches=1)
    written: set[int] = set()
    for r in res["rounds"]:
        if r["round"] > 0:
            written |= {page for page, _ in pattern.sparse_entries(geo, res["seed"], r["round"], params)}
        assert set(r["pages"]) <= written, f"round {r['round']} missed pages nobody wrote"
        for rect in r["rects"]:  # whole rows of a page: the old design tracks pages, the backend repaints rows
            first = (rect["y"] * geo.stride) // PAGE_SIZE
            last = ((rect["y"] + rect["h"]) * geo.stride - 1) // PAGE_SIZE
            assert set(range(first, last + 1)) & written


def test_legacy_fixed_passes_with_the_same_window(legacy_fixed):
    assert legacy_fixed.rc == 0, legacy_fixed.stderr[-3000:]
    res = legacy_fixed.result
    assert res["verdict"] == "PASS" and res["frontend"] == "legacy-fixed"
    c = res["counters"]
    # The module really was the frontend (faults and zaps happened), and the fix kept every zap out of the window.
    assert c["faults"] > 0 and c["zaps"] > 0 and c["race_hits"] == 0
    assert c["race_window_ms"] == 300


def test_upstream_passes_with_the_same_writer(upstream_sparse):
    assert upstream_sparse.rc == 0, upstream_sparse.stderr[-3000:]
    res = upstream_sparse.result
    assert res["verdict"] == "PASS" and res["frontend"] == "upstream" and res["counters"] == {}
