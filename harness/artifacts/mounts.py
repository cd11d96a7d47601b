"""File systems left mounted inside a directory tree, e.g. the proc, sys, dev/pts and dev/shm that mmdebstrap
mounts in its target and, when interrupted, may leave behind: find them, unmount them, and only then remove the
tree, so that a removal never reaches into a mounted /proc or /dev."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")  # mountinfo writes space, tab, newline and backslash as \ooo


def mounts_under(path: str | os.PathLike) -> list[str]:
    """Mount points at or below path, deepest first (of a point mounted twice, the upper mount first)."""
    top = str(Path(path).resolve())
    inside = top.rstrip("/") + "/"
    points = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            raw = line.split(b" ")[4]
            point = os.fsdecode(_OCTAL_ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), raw))
            if point == top or point.startswith(inside):
                points.append(point)
    # mountinfo lists a mount after the one it is mounted over; sorted() keeps that (reversed) order among equals.
    return sorted(reversed(points), key=lambda p: p.count("/"), reverse=True)


def unmount_under(path: str | os.PathLike) -> None:
    """Unmount everything at or below path; raise OSError naming what is still mounted if that fails."""
    points = mounts_under(path)
    for point in points:
        # A recursive bind copy of a shared tree (mmdebstrap's fallback for /sys) is a peer of the original:
        # unmounting inside it would unmount the host's own submounts too. As a slave it propagates nothing back.
        subprocess.run(["mount", "--make-rslave", point], capture_output=True)
    for point in points:
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", point], capture_output=True)  # busy: detach it now, free it later
    left = mounts_under(path)
    if left:
        raise OSError(f"still mounted under {path}: {', '.join(left)}")


def remove_tree(path: str | os.PathLike) -> None:
    """Remove a directory tree after unmounting whatever is mounted inside it; if something stays mounted, raise
    instead of removing anything."""
    unmount_under(path)
    shutil.rmtree(path)
