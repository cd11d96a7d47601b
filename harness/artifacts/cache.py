"""A content-keyed artifact cache: an entry is a directory named by a hash of everything that went into it.

Entries are built in a temporary directory next to their final place and renamed into it only when complete, under
an exclusive lock, so a concurrent or interrupted run never sees (or leaves) a half-built entry.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ..progress import step


def default_cache_dir() -> Path:
    if os.environ.get("XENFB_HARNESS_CACHE"):
        return Path(os.environ["XENFB_HARNESS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xenfb-harness"


def key_of(inputs: dict) -> str:
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def hash_files(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


class Cache:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def entry(self, name: str, inputs: dict, build: Callable[[Path], None]) -> Path:
        """Return the directory for (name, inputs), calling build(tmpdir) to fill it if it is not cached yet."""
        final = self.root / f"{name}-{key_of(inputs)}"
        if final.is_dir():
            return final
        with open(self.root / f".{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a second run waits here, then finds the entry built
            if final.is_dir():
                return final
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=self.root))
            try:
                with step(f"build {name}"):
                    build(tmp)
                    (tmp / "inputs.json").write_text(json.dumps(inputs, indent=2, sort_keys=True))
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return final

    def prune_stale_tmp(self) -> None:
        """Remove temporary directories left by a run that was killed outright (SIGKILL, power loss)."""
        for tmp in self.root.glob(".tmp-*"):
            name = tmp.name[len(".tmp-"):].rsplit("-", 1)[0]
            with open(self.root / f".{name}.lock", "w") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # another run is building it right now
                shutil.rmtree(tmp, ignore_errors=True)
