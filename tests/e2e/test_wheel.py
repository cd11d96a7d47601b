"""Installed as a package, it still works: the wheel that `pip wheel .` builds, installed (not editable) into a fresh
venv, run from a directory outside the checkout. `xenfb-harness configs` lists the shipped scenarios, and one `run`
of three of them by name on one nested host (booted from the installed package's own files) gives each its verdict:
the default PASSes, legacy-race FAILs, and own-module (frontend: module, its source found through the shipped
config's ../guest-kernels path inside the installed package) PASSes.

The wheel is built from a copy of only what the build is meant to read (pyproject.toml, README.md, harness/,
configs/, guest-kernels/), so a file it needs from elsewhere fails here. The venv's dependencies come from the
package index as usual, at the dev venv's versions (pip's own cache has them); the artifact cache is the one the
rest of the e2e session uses."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xenfb_harness.artifacts.cache import default_cache_dir

from .conftest import ROOT

pytestmark = pytest.mark.e2e

BUILD_INPUTS = ("pyproject.toml", "README.md", "harness", "configs", "guest-kernels")
SCENARIOS = {"default": "PASS", "legacy-race": "FAIL", "own-module": "PASS"}


def _check(cmd: list[str], log: Path, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    log.write_text(f"$ {' '.join(map(str, cmd))}\n{proc.stdout}\n{proc.stderr}")
    assert proc.returncode == 0, f"{cmd[:4]}... failed; see {log}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict]:
    """The venv's bin directory, and the environment to run it in: nothing of the checkout on the path."""
    work = tmp_path_factory.mktemp("wheel")
    src, dist, venv = work / "src", work / "dist", work / "venv"
    src.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    _check([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, src], work / "wheel.log", env=env,
           timeout=600)
    [wheel] = dist.glob("xenfb_harness-*.whl")
    _check([sys.executable, "-m", "venv", venv], work / "venv.log", env=env, timeout=300)
    # The dev venv's versions of the dependencies: what this suite tested, and what pip's cache already holds.
    freeze = _check([sys.executable, "-m", "pip", "freeze", "--exclude-editable", "--exclude", "xenfb-harness"],
                    work / "freeze.log", env=env, timeout=120).stdout
    (work / "constraints.txt").write_text(freeze)
    _check([venv / "bin" / "python", "-m", "pip", "install", "-q", "-c", work / "constraints.txt", wheel],
           work / "install.log", env=env, timeout=900)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["XENFB_HARNESS_CACHE"] = str(default_cache_dir())  # the session's cache, whatever HOME the child sees
    return venv / "bin", env


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory) -> Path:
    """A working directory with no configs/ and no harness/ of ours."""
    return tmp_path_factory.mktemp("elsewhere")


def test_it_is_the_installed_package(installed, elsewhere):
    bin_dir, env = installed
    proc = _check([bin_dir / "python", "-c", "import xenfb_harness, xenfb_harness.resources as r; "
                   "print(xenfb_harness.__file__); print(r.CONFIGS); print(r.GUEST_KERNELS)"],
                  elsewhere / "where.log", cwd=elsewhere, env=env, timeout=60)
    package, configs, guest_kernels = (Path(line).resolve() for line in proc.stdout.split("\n")[:3])
    package, site = package.parent, (bin_dir.parent / "lib").resolve()
    assert package.is_relative_to(site) and not package.is_relative_to(ROOT), package
    assert configs == package / "configs" and guest_kernels == package / "guest-kernels"
    assert (guest_kernels / "xenfb-legacy" / "xenfb_legacy.c").is_file()
    assert (guest_kernels / "xen-pv-guest.config").is_file()


def test_configs_lists_the_shipped_scenarios(installed, elsewhere):
    bin_dir, env = installed
    out = _check([bin_dir / "xenfb-harness", "configs"], elsewhere / "configs.log", cwd=elsewhere, env=env,
                 timeout=60).stdout
    for name in (*SCENARIOS, "matrix"):
        assert f"\n  {name} " in out, out
    assert str(bin_dir.parent.resolve()) in out and str(ROOT) not in out


def test_three_shipped_scenarios_by_name_on_one_host(installed, elsewhere):
    bin_dir, env = installed
    out = elsewhere / "runs"
    proc = subprocess.run([str(bin_dir / "xenfb-harness"), "run", *SCENARIOS, "--output", str(out)], cwd=elsewhere,
                          env=env, capture_output=True, text=True, timeout=2400)
    (elsewhere / "run.log").write_text(proc.stdout + "\n" + proc.stderr)
    sys.stderr.write(proc.stdout)
    verdicts, reasons = {}, {}
    for i, name in enumerate(SCENARIOS, 1):
        path = out / f"{i:02d}-{name}" / "result.json"
        assert path.is_file(), f"{name}: no result.json; exit {proc.returncode}\n{proc.stderr[-3000:]}"
        result = json.loads(path.read_text())
        verdicts[name], reasons[name] = result["verdict"], result["reason"]
        if name == "own-module":  # the shipped config's ../guest-kernels/xenfb-legacy, inside the installed package
            source = Path(result["effective_config"]["module"]["source"])
            assert source.resolve().is_relative_to(bin_dir.parent.resolve()) and source.name == "xenfb-legacy", source
    assert verdicts == SCENARIOS, f"{reasons}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 1  # the worst verdict: legacy-race's FAIL
