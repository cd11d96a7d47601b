"""End-to-end fixtures: runs of the real CLI against the real stack (Xen under QEMU), shared per session.

Most scenarios run on one nested host that `xenfb-harness host up` keeps running for the whole session
(`shared_host`), reached as a real Xen host would be: `host.kind: ssh` through its host.yaml. The default run
boots its own nested host, as the README's main job does."""
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
    return [sys.executable, "-m", "xenfb_harness", *args]


def run_cli(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(harness_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def run_scenario(config: str | Path, out: Path, host: Path | None = None) -> Run:
    """`xenfb-harness run CONFIG --output OUT [--host HOST]`, as a user would type it."""
    proc = run_cli("run", str(config), "--output", str(out), *(["--host", str(host)] if host else []))
    return Run(proc.returncode, out, proc.stdout, proc.stderr)


def run_shipped(tmp_path_factory, name: str, host: Path | None = None) -> Run:
    """One of the shipped scenarios, configs/NAME.yaml, into a fresh run directory."""
    return run_scenario(f"configs/{name}.yaml", tmp_path_factory.mktemp(name) / "run", host)


def verdict_of(run: Run, verdict: str) -> dict:
    """The run's result, once it is known to have the verdict (else its reason and stderr tail say why not)."""
    res = run.result
    assert res["verdict"] == verdict, res["reason"] + "\n" + run.stderr[-3000:]
    return res


def dom0_sh(host_yaml: Path, script: str) -> str:
    """Run a shell script in the dom0 that host_yaml reaches, as a person would check it by hand."""
    from xenfb_harness import config
    from xenfb_harness.hosts import connect_ssh
    dom0 = connect_ssh(config.load(None, host_yaml).data["host"])
    try:
        return dom0.exec(["sh", "-c", script], timeout=60, check=False).stdout
    finally:
        dom0.ssh.close()


def domains(host_yaml: Path) -> list[str]:
    """Every domain's name, from `xl list` (a test may list; the harness never does)."""
    return [line.split()[0] for line in dom0_sh(host_yaml, "xl list").splitlines()[1:] if line.strip()]


def nested_tmpdirs() -> set[str]:
    return {p.name for p in Path("/tmp").glob("xfb-nested-*")}


@pytest.fixture(scope="session")
def shared_host(tmp_path_factory):
    """A nested host kept up for the session by `host up`; `host down` at the end must leave nothing."""
    state = tmp_path_factory.mktemp("host")
    before = nested_tmpdirs()
    proc = run_cli("host", "up", "--state", str(state), timeout=1800)
    assert proc.returncode == 0 and (state / "host.yaml").is_file(), proc.stdout + proc.stderr[-3000:]
    qemu = int((state / "qemu.pid").read_text())
    serve = int((state / "serve.pid").read_text())
    yield state / "host.yaml"
    down = run_cli("host", "down", "--state", str(state), timeout=300)
    assert down.returncode == 0, down.stderr
    for pid in (qemu, serve):
        assert not pid_alive(pid), f"process {pid} outlived `host down`"
    assert not (state / "host.yaml").exists(), "host.yaml of a stopped host"
    assert nested_tmpdirs() <= before, "the nested host's temp dir outlived it"


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


@pytest.fixture(scope="session")
def host_pair(shared_host, tmp_path_factory) -> tuple[Run, Run]:
    """configs/default.yaml then configs/legacy-race.yaml, in one `run` on the shared host: two fresh guests."""
    out = tmp_path_factory.mktemp("pair") / "run"
    proc = run_cli("run", "configs/default.yaml", "configs/legacy-race.yaml", "--host", str(shared_host),
                   "--output", str(out))
    return (Run(proc.returncode, out / "01-default", proc.stdout, proc.stderr),
            Run(proc.returncode, out / "02-legacy-race", proc.stdout, proc.stderr))
