"""A guest kernel built here from source: Debian's linux-source-6.1, with and without a revert of upstream's
"fbdev: flush deferred IO before closing" (6.1.75), the ERRORs a patch or a build can end in, and `bisect` naming
the revert among harmless patches (guest-kernels/fbdev-lastclose). The kernels are cached per source, config,
patches and compiler, so the bisect's steps 0 and 2 are the PASS and FAIL scenarios' kernels."""
from __future__ import annotations

import json
import os

import pytest

from xenfb_harness.artifacts.cache import default_cache_dir

from .conftest import ROOT, Run, run_cli, run_scenario, run_shipped, verdict_of

pytestmark = pytest.mark.e2e
SERIES = ROOT / "guest-kernels/fbdev-lastclose"
REVERT = "0002-Revert-fbdev-flush-deferred-IO-before-closing.patch"


def half_built() -> list[str]:
    """What a build in progress (or one that failed and was not cleaned up) leaves in the cache."""
    cache = default_cache_dir()
    return sorted(p.name for p in cache.glob(".tmp-kernel-source-*")) if cache.is_dir() else []


def test_the_kernel_from_source_passes(tmp_path_factory, shared_host):
    run = run_shipped(tmp_path_factory, "source-6.1-upstream", shared_host)
    res = verdict_of(run, "PASS")
    assert res["versions"]["kernel_source"] == "linux-source-6.1"
    assert res["versions"]["guest_kernel"].startswith("6.1.")
    assert len(res["rounds"]) == res["rounds_planned"] + 1


def test_the_same_kernel_with_the_fix_reverted_fails(tmp_path_factory, shared_host):
    # Each round's program closes /dev/fb0 within the 50 ms deferral: the cancelled work never sends its frame.
    run = run_shipped(tmp_path_factory, "source-6.1-lastclose-revert", shared_host)
    res = verdict_of(run, "FAIL")
    assert res["versions"]["kernel_source"] == "linux-source-6.1 + 2 patches"
    missed = [r for r in res["rounds"] if r["missed_pixels"]]
    assert len(missed) >= res["rounds_planned"] // 2, res["reason"]


def scenario_with_patches(tmp_path, patches: list[str]) -> Run:
    config = tmp_path / "patched.yaml"
    config.write_text("frontend: upstream\nrounds: 2\nguest:\n  kernel_source: linux-source-6.1\n"
                      f"  kernel_patches: {json.dumps(patches)}\n")
    return run_scenario(config, tmp_path / "run")  # no --host: a build that fails must not need one


def test_a_patch_that_does_not_apply_is_an_error_that_names_it(tmp_path):
    revert = str(SERIES / REVERT)
    run = scenario_with_patches(tmp_path, [revert, revert])  # the second time, it is already applied
    res = run.result
    assert run.rc == 2 and res["verdict"] == "ERROR"
    assert f"patch 2 of 2, {revert}, does not apply" in res["reason"], res["reason"]
    assert "previously applied" in res["reason"]  # patch's own words, for the user
    assert "boot Xen" not in run.stderr  # no host was booted for a guest that could not be built
    assert not half_built()


def test_a_build_that_fails_is_an_error_with_the_compilers_lines(tmp_path):
    run = scenario_with_patches(tmp_path, [str(ROOT / "tests/e2e/data/break-the-build.patch")])
    res = run.result
    assert run.rc == 2 and res["verdict"] == "ERROR"
    assert "did not build" in res["reason"]
    assert "drivers/video/fbdev/xen-fbfront.c" in res["reason"] and "error:" in res["reason"], res["reason"]
    assert "boot Xen" not in run.stderr
    assert not half_built()


def test_bisect_names_the_revert(tmp_path, shared_host):
    out = tmp_path / "bisect"
    proc = run_cli("bisect", "configs/source-6.1-upstream.yaml", "--patches", str(SERIES), "--runs-per-step", "1",
                   "--host", str(shared_host), "--output", str(out), timeout=3600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert f"first bad patch: {SERIES / REVERT} (patch 2 of 4)" in proc.stdout
    found = json.loads((out / "bisect.json").read_text())
    marks = {step["k"]: step["mark"] for step in found["steps"]}
    assert marks == {0: "good", 4: "bad", 2: "bad", 1: "good"}, found
    for step in found["steps"]:  # every run has its own result
        for run in step["runs"]:
            assert os.path.isfile(os.path.join(run["run_dir"], "result.json"))
