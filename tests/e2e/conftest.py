"""End-to-end fixtures: runs of the real CLI against the real stack (Xen under QEMU), shared per session."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    rc: int
    dir: Path
    stdout: str
    stderr: str

    @property
    def result(self) -> dict:
        return json.loads((self.dir / "result.json").read_text())


def harness_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness", *args]


def run_cli(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(harness_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def run_scenario(config: str | Path, out: Path) -> Run:
    """`xenfb-harness run CONFIG --output OUT`, as a user would type it."""
    proc = run_cli("run", str(config), "--output", str(out))
    return Run(proc.returncode, out, proc.stdout, proc.stderr)


def run_shipped(tmp_path_factory, name: str) -> Run:
    """One of the shipped scenarios, configs/NAME.yaml, into a fresh run directory."""
    return run_scenario(f"configs/{name}.yaml", tmp_path_factory.mktemp(name) / "run")


@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> Run:
    """The README's main job: the default config, upstream frontend."""
    run = run_shipped(tmp_path_factory, "default")
    sys.stderr.write(run.stderr)
    return run


def pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def requires_root():
    return pytest.mark.skipif(os.geteuid() != 0, reason="building the dom0 image needs root (mmdebstrap)")
