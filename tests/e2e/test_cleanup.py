"""Whatever happens (Ctrl-C, SIGTERM, a boot timeout), no QEMU outlives its run, the verdict is ERROR and the
artifact cache holds only complete entries."""
from __future__ import annotations

import signal
import subprocess
import threading
import time

import pytest

from harness.artifacts.cache import default_cache_dir

from .conftest import ROOT, harness_cmd, pid_alive, run_cli

pytestmark = pytest.mark.e2e


def interrupt_when(tmp_path, marker: str, sig: int, timeout: float = 900):
    """Start a default run, send sig once `marker` appears on its stderr, and return (rc, run dir, stderr)."""
    out = tmp_path / "run"
    # A background job of a non-interactive shell inherits SIGINT ignored (CI runners, our own tooling);
    # restore the default so the run gets Ctrl-C as a person at a terminal would send it.
    proc = subprocess.Popen(harness_cmd("run", "configs/default.yaml", "--output", str(out)), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    seen = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if marker in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(timeout), f"never saw {marker!r}:\n{''.join(lines[-30:])}"
        time.sleep(1.5)  # well inside the step, not at its edge
        proc.send_signal(sig)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    return rc, out, "".join(lines)


def assert_cleaned_up(out, stderr):
    pid = int((out / "qemu.pid").read_text())
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pid_alive(pid), f"QEMU {pid} outlived the run"
    cache = default_cache_dir()
    assert not list(cache.glob(".tmp-*")), "a half-built cache entry was left behind"


@pytest.mark.parametrize("marker", ["boot Xen and dom0 ...", "round 2:"], ids=["during-boot", "during-writer"])
def test_ctrl_c_stops_everything(tmp_path, marker):
    rc, out, stderr = interrupt_when(tmp_path, marker, signal.SIGINT)
    assert rc == 2, stderr[-2000:]
    import json
    res = json.loads((out / "result.json").read_text())
    assert res["verdict"] == "ERROR" and "interrupted" in res["reason"]
    assert_cleaned_up(out, stderr)


def test_sigterm_during_writer_stops_everything(tmp_path):
    rc, out, stderr = interrupt_when(tmp_path, "round 1:", signal.SIGTERM)
    assert rc == 2, stderr[-2000:]
    assert_cleaned_up(out, stderr)


def test_boot_timeout_is_an_error_with_console_lines(tmp_path):
    cfg = tmp_path / "short.yaml"
    cfg.write_text("host:\n  boot_timeout: 4\n")
    out = tmp_path / "run"
    proc = run_cli("run", str(cfg), "--output", str(out))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "verdict: ERROR" in proc.stdout
    assert "did not boot within 4 s" in proc.stderr and "last console lines" in proc.stderr
    assert_cleaned_up(out, proc.stderr)
