"""Snapshots of the booted nested host (harness/hosts/snapshot.py): a run restores one when it can, and when it
cannot it says why and boots, and the verdict is the same either way.

The snapshot is the one every nested run of the suite uses (the default host settings), in the real cache: each
test damages it in its own way, and the boot that follows saves a good one again."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT, Run, harness_cmd, nested_tmpdirs, pid_alive, run_scenario, verdict_of

pytestmark = pytest.mark.e2e

STARTED = re.compile(r"(restored from|booted, saved) snapshot (host-snapshot-[0-9a-f]{16})")


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    """The default scenario with two rounds: these tests are about the host."""
    path = tmp_path_factory.mktemp("snapshot") / "quick.yaml"
    path.write_text("rounds: 2\n")
    return path


def started(run: Run) -> tuple[str, Path]:
    """How the run's host came up ('restored from' or 'booted, saved') and the snapshot entry it used."""
    from xenfb_harness.artifacts.cache import default_cache_dir
    res = verdict_of(run, "PASS")
    match = STARTED.search(res["versions"]["host_start"])
    assert match, res["versions"]["host_start"]
    return match.group(1), default_cache_dir() / match.group(2)


def good_snapshot(quick: Path, tmp_path: Path) -> Path:
    """Run until a snapshot exists (the first nested run of a fresh cache boots and saves it); its entry."""
    run = run_scenario(quick, tmp_path / "first")
    how, entry = started(run)
    assert (entry / "state.bin").is_file() and (entry / "snapshot.json").is_file()
    return entry


def boots_after(quick: Path, out: Path, entry: Path, why: str) -> None:
    """The next run refuses the snapshot with `why`, boots, PASSes, and saves a good snapshot in its place."""
    run = run_scenario(quick, out)
    how, used = started(run)
    assert (how, used) == ("booted, saved", entry), run.stderr[-2000:]
    said = re.search(rf"not restoring snapshot {entry.name}: (.*); booting instead", run.stderr)
    assert said and re.search(why, said.group(1)), run.stderr[-2000:]
    again = run_scenario(quick, out.parent / (out.name + "-again"))
    assert started(again) == ("restored from", entry), again.stderr[-2000:]


def test_restores_what_a_boot_saved(quick, tmp_path):
    entry = good_snapshot(quick, tmp_path)
    run = run_scenario(quick, tmp_path / "restored")
    assert started(run) == ("restored from", entry)
    res = run.result
    assert "restore Xen and dom0" in res["timings"] and "boot Xen and dom0" not in res["timings"], res["timings"]
    meta = json.loads((entry / "snapshot.json").read_text())
    assert meta["facts"]["xen_version"] and int(meta["facts"]["free_memory_mb"]) > 0


def test_truncated_snapshot_gives_a_boot(quick, tmp_path):
    entry = good_snapshot(quick, tmp_path)
    state = entry / "state.bin"
    size = state.stat().st_size
    with open(state, "r+b") as f:
        f.truncate(size // 2)
    boots_after(quick, tmp_path / "after", entry, rf"state\.bin is truncated: {size // 2} of {size} bytes")


def test_corrupt_snapshot_gives_a_boot(quick, tmp_path):
    entry = good_snapshot(quick, tmp_path)
    with open(entry / "state.bin", "r+b") as f:
        f.seek(f.seek(0, 2) // 2)
        f.write(b"\xde\xad\xbe\xef" * 64)
    boots_after(quick, tmp_path / "after", entry, r"state\.bin is corrupt")


def test_a_stream_qemu_cannot_load_gives_a_boot(quick, tmp_path):
    """Same size and a matching checksum, yet not a migration stream (as from another QEMU build under the same
    version string): QEMU refuses it, and the run boots instead of hanging."""
    from xenfb_harness.hosts.snapshot import sha256_file
    entry = good_snapshot(quick, tmp_path)
    state, meta_file = entry / "state.bin", entry / "snapshot.json"
    with open(state, "r+b") as f:
        f.write(b"\0" * 4096)  # the stream's magic and header gone
    meta = json.loads(meta_file.read_text())
    meta["sha256"] = sha256_file(state)
    meta_file.write_text(json.dumps(meta))
    boots_after(quick, tmp_path / "after", entry, r"the restore failed: QEMU")


def test_changed_host_artifacts_refuse_the_snapshot(quick, tmp_path):
    entry = good_snapshot(quick, tmp_path)
    meta = json.loads((entry / "snapshot.json").read_text())
    initrd = Path(meta["artifacts"]["dom0_initrd"][0])
    st = initrd.stat()
    os.utime(initrd, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # as if rebuilt in place
    boots_after(quick, tmp_path / "after", entry, r"the host artifacts changed since it was saved \(dom0_initrd\)")


def test_two_runs_restore_the_same_snapshot_at_once(quick, tmp_path):
    entry = good_snapshot(quick, tmp_path)
    before = nested_tmpdirs()
    procs = [subprocess.Popen(harness_cmd("run", str(quick), "--output", str(tmp_path / f"run{i}")), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 2)]
    runs = []
    for i, proc in enumerate(procs, 1):
        out, err = proc.communicate(timeout=900)
        runs.append(Run(proc.returncode, tmp_path / f"run{i}", out, err))
    for run in runs:
        assert started(run) == ("restored from", entry), run.stderr[-2000:]
    ports = {int((run.dir / "host" / "qemu-command.txt").read_text().split("hostfwd=tcp:127.0.0.1:")[1]
                 .split("-")[0]) for run in runs}
    assert len(ports) == 2, "both runs forwarded the same SSH port"
    for run in runs:
        assert not pid_alive(int((run.dir / "host" / "qemu.pid").read_text())), "QEMU outlived its run"
    assert nested_tmpdirs() <= before, "a nested host's temp dir outlived its run"
