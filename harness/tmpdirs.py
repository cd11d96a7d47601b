"""Private local temporary directories that record their owner, so that a later run can remove the ones a harness
killed outright (SIGKILL, power loss) left behind in /tmp without touching those of a run still going."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from .artifacts.mounts import remove_tree
from .progress import say

BASE = Path("/tmp")  # local, and short enough for the UNIX sockets that live in these directories
OWNER_FILE = "owner"
UNOWNED_GRACE = 3600.0  # seconds: a directory without an owner file may be one that a live run is creating


def _start_time(pid: int) -> str | None:
    """When pid started (field 22 of /proc/PID/stat), None if it is not running: a reused pid starts later."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may contain spaces; field 3 first
    return None if fields[0] in ("Z", "X") else fields[22 - 3]


def private_tmpdir(prefix: str, *, base: Path = BASE) -> Path:
    """Create base/<prefix>XXXXXXXX, mode 0700, owned by this process."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    (path / OWNER_FILE).write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
    return path


def _is_stale(path: Path) -> bool:
    try:
        pid, start = (path / OWNER_FILE).read_text().split()
        return _start_time(int(pid)) != start
    except (FileNotFoundError, ValueError):  # no owner file yet, or only half written
        return time.time() - path.stat().st_mtime > UNOWNED_GRACE


def prune_stale(prefix: str, *, base: Path = BASE) -> list[Path]:
    """Remove our base/<prefix>* directories whose owner is gone; return them."""
    removed = []
    for path in sorted(base.iterdir()):
        if not path.name.startswith(prefix) or path.is_symlink() or not path.is_dir():
            continue
        try:
            # Only our own: in a world-writable /tmp, anyone can make a directory with this name.
            if path.stat().st_uid != os.geteuid() or not _is_stale(path):
                continue
            remove_tree(path)
        except FileNotFoundError:
            continue  # another run pruned it first
        except OSError as e:
            say(f"cannot remove stale {path}: {e}")
            continue
        removed.append(path)
    return removed
