"""Real mounts (tmpfs, bind): these tests need root, and always unmount what they mounted."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from xenfb_harness.artifacts.mounts import mounts_under, remove_tree, unmount_under

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    yield root
    for point in mounts_under(tmp_path):  # whatever a failing test left mounted
        subprocess.run(["umount", "--lazy", point], check=True)


def mount_tmpfs(point, *extra):
    point.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", *extra, "test-tmpfs", str(point)], check=True)


def test_nothing_mounted(tree):
    assert mounts_under(tree) == []
    unmount_under(tree)


def test_deepest_first_and_only_inside(tree):
    mount_tmpfs(tree / "a")
    mount_tmpfs(tree / "a" / "b")
    mount_tmpfs(tree / "a" / "b" / "c")
    mount_tmpfs(tree / "d")
    mount_tmpfs(tree.parent / "tree2")  # shares the prefix "tree", but is not below it
    points = mounts_under(tree)
    assert points == [str(tree / p) for p in ("a/b/c", "a/b", "d", "a")]  # equals: the later mounted first
    assert mounts_under(tree / "a" / "b") == [str(tree / "a/b/c"), str(tree / "a/b")]  # the path itself counts


def test_escaped_names_and_unresolved_path(tree):
    odd = tree / "with space\tand\\backslash"
    mount_tmpfs(odd)
    assert mounts_under(tree / "." / ".." / "tree") == [str(odd)]


def test_unmount_stacked_nested_and_busy(tree):
    mount_tmpfs(tree / "proc")
    mount_tmpfs(tree / "proc")  # mounted over the first one
    mount_tmpfs(tree / "dev")
    mount_tmpfs(tree / "dev" / "pts")
    assert mounts_under(tree).count(str(tree / "proc")) == 2
    (tree / "dev" / "pts" / "busy").write_text("x")
    with open(tree / "dev" / "pts" / "busy"):  # an open file: a plain umount fails, a lazy one succeeds
        unmount_under(tree)
        assert mounts_under(tree) == []
    assert sorted(p.name for p in tree.iterdir()) == ["dev", "proc"]  # the mount points, now empty directories


def test_remove_tree_unmounts_first(tree):
    mount_tmpfs(tree / "proc")
    (tree / "proc" / "precious").write_text("on the mounted file system")
    (tree / "file").write_text("on the tree's own file system")
    remove_tree(tree)
    assert not tree.exists()


def test_unmounting_inside_a_bind_copy_keeps_the_original_mounted(tree):
    # Like mmdebstrap's `mount -o rbind /sys target/sys` when / is shared (systemd's default).
    outside = tree.parent / "outside"
    mount_tmpfs(outside)
    subprocess.run(["mount", "--make-shared", str(outside)], check=True)
    mount_tmpfs(outside / "sub")
    (tree / "sys").mkdir()
    subprocess.run(["mount", "--rbind", str(outside), str(tree / "sys")], check=True)
    assert mounts_under(tree) == [str(tree / "sys/sub"), str(tree / "sys")]
    remove_tree(tree)
    assert mounts_under(outside) == [str(outside / "sub"), str(outside)]


def test_remove_tree_raises_and_removes_nothing_if_unmounting_fails(tree):
    mount_tmpfs(tree / "proc")
    (tree / "proc" / "precious").write_text("x")
    (tree / "file").write_text("x")
    # In a new user namespace, mounts inherited from outside are locked: they cannot be unmounted from there.
    if not shutil.which("unshare"):
        pytest.skip("unshare is missing")
    code = f"from xenfb_harness.artifacts.mounts import remove_tree; remove_tree({str(tree)!r})"
    child = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c", code],
                           capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    if "unshare failed" in child.stderr:
        pytest.skip(f"no user namespaces here: {child.stderr.strip()}")
    assert child.returncode != 0
    assert f"OSError: still mounted under {tree}: {tree / 'proc'}" in child.stderr
    assert (tree / "proc" / "precious").exists() and (tree / "file").exists()
