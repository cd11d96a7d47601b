"""A verdict at a true quiet point: after a round's DONE nothing in the guest draws until the round is judged,
so nothing the scenario did not ask for can carry a lost update to the screen.

Negative controls: broken builds of our module (compile-time switches, built from a copy of its source through
legacy.source, never selectable as a frontend), each leaving the last update of a burst undelivered or unsent.
Any later drawing would heal them; at a quiet point each must FAIL. The sound module and the upstream frontend,
under the same writer and seed, must PASS."""
from __future__ import annotations

import pytest

from tests.negative_controls import NAMES, make_variant

from .conftest import ROOT, Run, run_scenario, run_shipped, verdict_of

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=NAMES)
def broken(request, tmp_path_factory, shared_host) -> tuple[str, Run]:
    tmp = tmp_path_factory.mktemp(f"broken-{request.param}")
    source = make_variant(tmp, request.param)
    config = tmp / "scenario.yaml"
    config.write_text((ROOT / "configs" / "quiet-point.yaml").read_text() + f"legacy:\n  source: {source}\n")
    return request.param, run_scenario(config, tmp / "run", shared_host)


def test_each_negative_control_fails(broken):
    name, run = broken
    res = verdict_of(run, "FAIL")
    console = (run.dir / "guest-console.log").read_text(errors="replace")
    assert f"negative control: {name}" in console, "the broken build was the one loaded"
    missed = [r for r in res["rounds"] if r["missed_pixels"]]
    assert missed and all(r["settle"] == "quiet" for r in missed), "a miss is judged after the full quiet time"
    assert all(r["guest_memory_ok"] for r in res["rounds"]), "the guest drew the frame; the backend was not told"
    assert res["counters"]["held"] > 0, "the module held updates back"


@pytest.mark.parametrize("name", ["quiet-point", "upstream-quiet-point"])
def test_sound_frontends_pass_with_the_same_writer(name, tmp_path_factory, shared_host):
    run = run_shipped(tmp_path_factory, name, shared_host)
    res = verdict_of(run, "PASS")
    assert all(r["settle"] == "match" for r in res["rounds"])
