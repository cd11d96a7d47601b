"""Owned temporary directories, with real child processes as owners that live, exit or are killed."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xenfb_harness.artifacts.mounts import mounts_under
from xenfb_harness.tmpdirs import OWNER_FILE, private_tmpdir, prune_stale

PREFIX = "xfb-test-"
ROOT = Path(__file__).resolve().parent.parent

# Creates an owned directory, prints it, then lives until its stdin closes.
OWNER = f"""
import sys
from pathlib import Path
from xenfb_harness.tmpdirs import private_tmpdir
print(private_tmpdir({PREFIX!r}, base=Path(sys.argv[1])), flush=True)
sys.stdin.read()
"""


@pytest.fixture
def owner(tmp_path):
    """Start a child process that owns a new directory in tmp_path: returns (process, directory)."""
    children = []

    def start():
        child = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path)], cwd=ROOT, text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        children.append(child)
        return child, Path(child.stdout.readline().strip())

    yield start
    for child in children:
        child.kill()
        child.wait()
        child.stdin.close()
        child.stdout.close()


def test_private_tmpdir(tmp_path):
    path = private_tmpdir(PREFIX, base=tmp_path)
    assert path.parent == tmp_path and path.name.startswith(PREFIX)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert (path / OWNER_FILE).read_text().split()[0] == str(os.getpid())
    assert private_tmpdir(PREFIX, base=tmp_path) != path


def test_live_owners_are_kept_dead_ones_removed(tmp_path, owner):
    ours = private_tmpdir(PREFIX, base=tmp_path)
    live, live_dir = owner()
    exited, exited_dir = owner()
    exited.stdin.close()
    exited.wait()
    killed, killed_dir = owner()
    killed.kill()
    killed.wait()
    assert prune_stale(PREFIX, base=tmp_path) == sorted([exited_dir, killed_dir])
    assert ours.is_dir() and live_dir.is_dir() and not exited_dir.exists() and not killed_dir.exists()
    live.kill()
    live.wait()
    assert prune_stale(PREFIX, base=tmp_path) == [live_dir]
    assert sorted(tmp_path.iterdir()) == [ours]


def test_killed_owner_not_yet_reaped_is_dead(tmp_path, owner):
    zombie, path = owner()
    zombie.send_signal(signal.SIGKILL)
    while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)
    assert prune_stale(PREFIX, base=tmp_path) == [path]


def test_reused_pid_is_not_the_owner(tmp_path):
    path = private_tmpdir(PREFIX, base=tmp_path)
    pid, start = (path / OWNER_FILE).read_text().split()
    (path / OWNER_FILE).write_text(f"{pid} {int(start) - 1}\n")  # this pid, but another process that had it before
    assert prune_stale(PREFIX, base=tmp_path) == [path]


@pytest.mark.parametrize("content", [None, "", "12"], ids=["no-owner-file", "empty", "half-written"])
def test_without_owner_only_old_dirs_are_removed(tmp_path, content):
    young, old = tmp_path / f"{PREFIX}young", tmp_path / f"{PREFIX}old"
    for path in (young, old):
        path.mkdir()
        if content is not None:
            (path / OWNER_FILE).write_text(content)
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    assert prune_stale(PREFIX, base=tmp_path) == [old]
    assert young.is_dir()


def test_leaves_other_things_alone(tmp_path):
    dead = tmp_path / f"{PREFIX}dead"
    dead.mkdir()
    (dead / OWNER_FILE).write_text("999999999 1\n")
    other_prefix = tmp_path / "other-dead"
    other_prefix.mkdir()
    (other_prefix / OWNER_FILE).write_text("999999999 1\n")
    a_file = tmp_path / f"{PREFIX}file"
    a_file.write_text("999999999 1\n")
    a_link = tmp_path / f"{PREFIX}link"
    a_link.symlink_to(other_prefix)
    assert prune_stale(PREFIX, base=tmp_path) == [dead]
    assert other_prefix.is_dir() and a_file.exists() and a_link.is_symlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown and mount")
def test_someone_elses_dir_is_left_alone(tmp_path):
    theirs = tmp_path / f"{PREFIX}theirs"
    theirs.mkdir()
    (theirs / OWNER_FILE).write_text("999999999 1\n")
    os.chown(theirs, 65534, 65534)
    assert prune_stale(PREFIX, base=tmp_path) == []
    assert theirs.is_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mount")
def test_stale_dir_with_a_mount_inside(tmp_path, owner):
    child, path = owner()
    (path / "proc").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "test-tmpfs", str(path / "proc")], check=True)
    try:
        child.kill()
        child.wait()
        assert prune_stale(PREFIX, base=tmp_path) == [path]
        assert not path.exists() and mounts_under(tmp_path) == []
    finally:
        for point in mounts_under(tmp_path):
            subprocess.run(["umount", "--lazy", point], check=True)
