"""What the package ships besides its code (harness/resources.py): the shipped configs and guest-side sources are
found through importlib.resources, everything they need ships, and a shipped scenario or matrix goes by its name.
tests/e2e/test_wheel.py installs the built wheel and runs from it."""
from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from xenfb_harness import cli, config, resources
from xenfb_harness.artifacts.kernel_build import FRAGMENT
from xenfb_harness.config import ConfigError
from xenfb_harness.frontends import OUR_SOURCE

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# What `make M=...` or Python leave in a checkout's trees: never shipped, never needed.
LEFTOVERS = ("*.pyc", "*.ko", "*.o", "*.mod", "*.mod.c", "*.cmd", "modules.order", "Module.symvers")
HOST_SOURCES = Path(config.SCHEMA["apt"]["sources"].default)
needs_host_sources = pytest.mark.skipif(not HOST_SOURCES.is_file(), reason=f"the shipped configs use {HOST_SOURCES}")


def test_in_the_checkout_they_are_its_own_folders():
    """The editable install (scripts/install) maps the packages onto the checkout's top-level folders."""
    assert resources.CONFIGS == ROOT / "configs"
    assert resources.GUEST_KERNELS == ROOT / "guest-kernels"


def test_configs_and_guest_kernels_sit_side_by_side():
    """Shipped configs reach the sources by ../guest-kernels/...: so they must be siblings, installed too."""
    assert resources.CONFIGS.parent / "guest-kernels" == resources.GUEST_KERNELS


def test_every_shipped_resource_exists():
    assert cli.DEFAULT_CONFIG == resources.CONFIGS / "default.yaml" and cli.DEFAULT_CONFIG.is_file()
    assert FRAGMENT == resources.GUEST_KERNELS / "xen-pv-guest.config" and FRAGMENT.is_file()
    assert OUR_SOURCE == resources.GUEST_KERNELS / "xenfb-legacy"
    for name in ("Kbuild", "Makefile", "xenfb_legacy.c", "xenfb_legacy_fixed.c"):
        assert (OUR_SOURCE / name).is_file(), name
    assert sorted(p.name for p in (resources.GUEST_KERNELS / "fbdev-lastclose").glob("*.patch"))[0].startswith("0001")
    scenarios, matrices = config.shipped(resources.CONFIGS)
    assert {"default", "legacy-race", "own-module"} <= {p.stem for p in scenarios}
    assert {"matrix", "matrix-wide"} <= {p.stem for p in matrices}


def _package_data(package: str) -> list[str]:
    return PYPROJECT["tool"]["setuptools"]["package-data"][package]


@pytest.mark.parametrize("package", ["xenfb_harness.configs", "xenfb_harness.guest-kernels"])
def test_the_wheel_takes_every_file_of_the_folder(package):
    """A file added to configs/ or guest-kernels/ that package-data's globs miss would be in the checkout but not
    in an installed package: a shipped config that uses it would work here and fail installed."""
    assert package in PYPROJECT["tool"]["setuptools"]["packages"]
    folder = ROOT / PYPROJECT["tool"]["setuptools"]["package-dir"][package]
    patterns = _package_data(package)
    missed = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            rel = (Path(dirpath) / name).relative_to(folder).as_posix()
            if rel == "__init__.py" or any(fnmatch.fnmatch(name, p) for p in LEFTOVERS):
                continue
            if not any(fnmatch.fnmatch(rel, p) and rel.count("/") == p.count("/") for p in patterns):
                missed.append(rel)
    assert not missed, f"{package}: files its package-data {patterns} leave out of the wheel: {missed}"


def _paths_in(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _paths_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from _paths_in(v)
    elif isinstance(value, str) and value.startswith("/"):
        yield Path(value)


@needs_host_sources
def test_shipped_configs_use_only_what_ships():
    """Every path a shipped scenario or matrix cell resolves to is either outside the checkout (e.g. apt.sources)
    or among the shipped files: nothing of the checkout that a wheel would not have."""
    from xenfb_harness.matrix import load_matrix
    scenarios, matrices = config.shipped(resources.CONFIGS)
    cfgs = [config.load(p) for p in scenarios] + [c.cfg for m in matrices for c in load_matrix(m).cells]
    used = {p for cfg in cfgs for p in _paths_in(cfg.data) if p.is_relative_to(ROOT)}
    assert used, "own-module.yaml and source-6.1-lastclose-revert.yaml use shipped sources"
    for p in used:
        assert p.resolve().is_relative_to(resources.GUEST_KERNELS) or p.resolve().is_relative_to(resources.CONFIGS), p


# --- a shipped config by name ---------------------------------------------------------------------------------------


def test_a_name_is_a_shipped_scenario(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resources.config_file("legacy-race") == str(resources.CONFIGS / "legacy-race.yaml")
    assert resources.config_file("matrix", matrix=True) == str(resources.CONFIGS / "matrix.yaml")


def test_a_file_of_that_name_comes_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "legacy-race").write_text("rounds: 2\n")
    assert resources.config_file("legacy-race") == "legacy-race"
    (tmp_path / "default").mkdir()  # e.g. `run default --output default` before: a directory is no config
    assert resources.config_file("default") == str(resources.CONFIGS / "default.yaml")


@pytest.mark.parametrize("given", ["my.yaml", "sub/legacy-race", "./default", "/nowhere/x.yml"])
def test_a_path_stays_a_path(tmp_path, monkeypatch, given):
    """Anything with a '/' or a .yaml/.yml ending is a path: a missing one is an error of its own, never a
    shipped file that happens to share its name."""
    monkeypatch.chdir(tmp_path)
    assert resources.config_file(given) == given


@pytest.mark.parametrize("given, matrix, words", [
    ("no-such-scenario", False, ["no such file", "no shipped scenario", "xenfb-harness configs"]),
    ("matrix", False, ["a shipped matrix", "`xenfb-harness matrix matrix`"]),
    ("default", True, ["a shipped scenario", "`xenfb-harness run default`"]),
    ("legacy-race.yaml", False, ["does not exist", "named without .yaml: legacy-race"]),
])
def test_names_that_are_not_found(tmp_path, monkeypatch, given, matrix, words):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        resources.config_file(given, matrix)
    assert err.value.source == given
    for word in words:
        assert word in str(err.value)


def test_the_listing(tmp_path, monkeypatch):
    (tmp_path / "a.yaml").write_text("# A first line.\n# A second.\nrounds: 2\n")
    (tmp_path / "bee.yaml").write_text("\nrounds: 3\n# a comment further down is no title\n")
    (tmp_path / "matrix-x.yaml").write_text("#Frontends, tersely.\nbase: a.yaml\n")
    monkeypatch.setattr(resources, "CONFIGS", tmp_path)
    assert [(s.name, s.matrix, s.about) for s in resources.shipped_configs()] == [
        ("a", False, "A first line."), ("bee", False, ""),
        ("matrix-x", True, "Frontends, tersely.")]
    assert resources.listing().splitlines()[:5] == [
        "scenarios (xenfb-harness run NAME [NAME...]):",
        "  a         A first line.",
        "  bee",
        "matrices (xenfb-harness matrix NAME):",
        "  matrix-x  Frontends, tersely."]


def harness(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xenfb_harness", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def test_configs_command_from_another_directory(tmp_path):
    proc = harness("configs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "scenarios (xenfb-harness run NAME" in out and "matrices (xenfb-harness matrix NAME)" in out
    for shipped in resources.shipped_configs():
        assert f"  {shipped.name} " in out
    assert "The default scenario: the guest kernel's own xen-fbfront" in out
    assert str(resources.CONFIGS) in out


def test_help_teaches_names_and_the_configs_command(tmp_path):
    top = harness("--help", cwd=tmp_path).stdout
    assert "configs" in top and "list the shipped scenarios and matrices" in top
    run = harness("run", "--help", cwd=tmp_path).stdout
    assert "shipped scenario's name" in run and "xenfb-harness run default legacy-race" in run


def test_run_a_name_that_is_not_shipped(tmp_path):
    proc = harness("run", "legacy-rase", "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2 and "legacy-rase" in proc.stderr and "xenfb-harness configs" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_shipped_matrix_by_name_from_another_directory(tmp_path):
    proc = harness("matrix", "matrix", "--list", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "frontend=legacy-race,writer=mmap" in proc.stdout.split()


@needs_host_sources
def test_the_cli_loads_a_name_and_nothing_as_the_shipped_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli._load("legacy-race").source == str(resources.CONFIGS / "legacy-race.yaml")
    assert cli._load(None).source == str(resources.CONFIGS / "default.yaml")
