"""How real programs use the framebuffer: a new process per round that draws and exits at once, and a second
process opening, querying and closing the device while the writer draws; with our mmap writer and with X. On
today's kernel the upstream frontend must show every round of each."""
from __future__ import annotations

import pytest

from .conftest import run_shipped, verdict_of

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("name, kind, lifecycle", [
    ("upstream-per-round", "mmap", "per-round"),
    ("upstream-second-opener", "mmap", "second-opener"),
    ("xorg-per-round", "xorg", "per-round"),
    ("xorg-second-opener", "xorg", "second-opener"),
])
def test_lifecycle_passes_on_todays_kernel(name, kind, lifecycle, tmp_path_factory, shared_host):
    run = run_shipped(tmp_path_factory, name, shared_host)
    res = verdict_of(run, "PASS")
    cfg = res["effective_config"]["writer"]
    assert (cfg["kind"], cfg["lifecycle"]) == (kind, lifecycle)
    assert len(res["rounds"]) == res["rounds_planned"] + 1
