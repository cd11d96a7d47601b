"""The HTML reports of a real FAIL run, rendered by a real browser (headless Chromium): the run page shows its
images with the missed regions outlined, and a matrix page over that run shows its verdict grid. The screenshots
are kept: the run's as report.png in its run directory, beside the page."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from xenfb_harness.report_html import write_matrix_page
from tests import browser

from .conftest import Run

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def legacy(host_pair) -> Run:
    return host_pair[1]  # configs/legacy-race.yaml: FAILs, with round images


def matrix_over(run_dir: Path, out: Path) -> Path:
    """A matrix output directory whose two cells are copies of one FAIL run: one expected to FAIL (green), one
    expected to PASS (red); a third combination was not run. Returns the matrix page."""
    result = json.loads((run_dir / "result.json").read_text())
    cells = []
    for frontend, expected in (("legacy", "FAIL"), ("upstream", "PASS")):
        slug = f"frontend-{frontend}__writer.kind-mmap"
        shutil.copytree(run_dir, out / "cells" / slug, ignore=shutil.ignore_patterns("report.html", "report.png"))
        cells.append({"id": f"frontend={frontend},writer.kind=mmap", "slug": slug,
                      "values": {"frontend": frontend, "writer.kind": "mmap"}, "expected": expected,
                      "verdict": result["verdict"], "ok": result["verdict"] == expected, "reason": result["reason"],
                      "timings": result["timings"], "run_dir": f"cells/{slug}"})
    green = sum(c["ok"] for c in cells)
    summary = {"schema_version": 1, "kind": "xenfb-harness matrix", "matrix": "configs/matrix.yaml", "name": "matrix",
               "axes": {"frontend": ["upstream", "legacy"], "writer.kind": ["mmap", "xorg"]}, "shard": None,
               "started": result["started"], "cells": cells,
               "totals": {"cells": 2, "green": green, "red": 2 - green, "PASS": 0, "FAIL": 2, "ERROR": 0},
               "timings": {"total": 2 * result["timings"].get("total", 0)}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return write_matrix_page(out)


def test_run_page_renders_a_real_fail(legacy):
    assert legacy.result["verdict"] == "FAIL", legacy.stderr[-3000:]
    page = legacy.dir / "report.html"  # every run writes its page
    assert page.is_file()
    seen = browser.check_run_page(page, legacy.dir / "report.png")
    assert (legacy.dir / "report.png").is_file(), seen


def test_matrix_page_renders_its_grid(legacy, tmp_path):
    page = matrix_over(legacy.dir, tmp_path / "matrix")
    browser.check_matrix_page(page, tmp_path / "matrix" / "report.png")
    # the red cell leads to its run page, which renders too
    cell = tmp_path / "matrix" / "cells" / "frontend-upstream__writer.kind-mmap"
    assert 'href="cells/frontend-upstream__writer.kind-mmap/report.html"' in page.read_text()
    browser.check_run_page(cell / "report.html", cell / "report.png")
