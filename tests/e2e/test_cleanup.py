"""Whatever happens (Ctrl-C, SIGTERM, a boot timeout) at any stage of a nested run (building the artifacts,
booting Xen, starting the guest, the rounds), no process outlives its run, nothing stays mounted, no temp dir is
left, the verdict is ERROR and the artifact cache holds only complete entries."""
from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import pytest

from xenfb_harness.artifacts.cache import default_cache_dir
from xenfb_harness.artifacts.mounts import mounts_under

from .conftest import ROOT, harness_cmd, nested_tmpdirs, pid_alive, run_cli

pytestmark = pytest.mark.e2e


def interrupt_when(tmp_path, marker: str, sig: int, timeout: float = 900, extra: tuple[str, ...] = (),
                   wait_s: float = 1.5):
    """Start a long default run, send sig once `marker` appears on its stderr; return (rc, run dir, stderr)."""
    out, config = tmp_path / "run", tmp_path / "long.yaml"
    # Enough rounds (about 0.5 s each) that a signal sent during them surely lands inside them.
    config.write_text("frontend: upstream\nrounds: 200\n")  # the default scenario, longer
    # A background job of a non-interactive shell inherits SIGINT ignored (CI runners, our own tooling);
    # restore the default so the run gets Ctrl-C as a person at a terminal would send it.
    proc = subprocess.Popen(harness_cmd("run", str(config), "--output", str(out), *extra), cwd=ROOT,
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
        time.sleep(wait_s)  # well inside the step, not at its edge
        proc.send_signal(sig)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    return rc, out, "".join(lines)


def assert_cleaned_up(out, stderr, tmpdirs_before: set[str]):
    pid = int((out / "host" / "qemu.pid").read_text())
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pid_alive(pid), f"QEMU {pid} outlived the run"
    cache = default_cache_dir()
    assert not list(cache.glob(".tmp-*")), "a half-built cache entry was left behind"
    assert nested_tmpdirs() <= tmpdirs_before, "the nested host's temp dir was left behind"


@pytest.mark.parametrize("marker, boot, wait_s", [("boot Xen and dom0 ...", True, 1.5),
                                                   ("restore Xen and dom0 ...", False, 0.3),
                                                   ("start guest ...", False, 1.5), ("round 2:", False, 1.5)],
                         ids=["during-boot", "during-restore", "during-guest-start", "during-writer"])
def test_ctrl_c_stops_everything(tmp_path, marker, boot, wait_s):
    before = nested_tmpdirs()
    extra = ()
    if boot:  # a host that boots rather than being restored from its snapshot
        (tmp_path / "boot.yaml").write_text("host:\n  kind: nested\n  snapshot: false\n")
        extra = ("--host", str(tmp_path / "boot.yaml"))
    elif marker.startswith("restore"):  # a snapshot to restore (in an empty cache, this run boots and saves it)
        (tmp_path / "one.yaml").write_text("rounds: 1\n")
        first = run_cli("run", str(tmp_path / "one.yaml"), "--output", str(tmp_path / "first"))
        assert first.returncode == 0, first.stderr[-2000:]
    rc, out, stderr = interrupt_when(tmp_path, marker, signal.SIGINT, extra=extra, wait_s=wait_s)
    assert rc == 2, stderr[-2000:]
    res = json.loads((out / "result.json").read_text())
    assert res["verdict"] == "ERROR" and "interrupted" in res["reason"]
    assert_cleaned_up(out, stderr, before)


def test_sigterm_during_writer_stops_everything(tmp_path):
    before = nested_tmpdirs()
    rc, out, stderr = interrupt_when(tmp_path, "round 1:", signal.SIGTERM)
    assert rc == 2, stderr[-2000:]
    assert_cleaned_up(out, stderr, before)


def test_ctrl_c_while_building_the_dom0_image_leaves_nothing_mounted(tmp_path):
    """mmdebstrap mounts proc, sys, dev/pts and dev/shm in the image it builds: Ctrl-C in the middle must leave
    no mount, no half-built entry and no mmdebstrap process."""
    cache = tmp_path / "cache"
    rc, out, stderr = interrupt_when(tmp_path, "mmdebstrap dom0 root filesystem ...", signal.SIGINT,
                                     extra=("--cache-dir", str(cache)), wait_s=8)
    assert rc == 2, stderr[-2000:]
    res = json.loads((out / "result.json").read_text())
    assert res["verdict"] == "ERROR" and "interrupted" in res["reason"]
    assert mounts_under(cache) == [], "mounts left under the cache"
    assert not list(cache.glob(".tmp-*")), "a half-built cache entry was left behind"
    assert not list(cache.glob("dom0-image-*")), "an interrupted build is not an entry"
    left = subprocess.run(["pgrep", "-f", str(cache)], capture_output=True, text=True).stdout.split()
    assert left == [], f"processes still working in the cache: {left}"


def test_boot_timeout_is_an_error_with_console_lines(tmp_path):
    cfg = tmp_path / "short.yaml"
    cfg.write_text("host:\n  boot_timeout: 4\n  snapshot: false\n")  # a boot, not a restore
    out = tmp_path / "run"
    before = nested_tmpdirs()
    proc = run_cli("run", str(cfg), "--output", str(out))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "verdict: ERROR" in proc.stdout
    assert "did not boot within 4 s" in proc.stderr and "last console lines" in proc.stderr
    assert_cleaned_up(out, proc.stderr, before)
