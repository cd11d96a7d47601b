"""A content-keyed artifact cache: an entry is a directory named by a hash of everything that went into it.

Entries are built in a temporary directory next to their final place and renamed into it only when complete, under
an exclusive lock, so a concurrent or interrupted run never sees (or leaves) a half-built entry. Each Cache records
the entries it handed out (`used`), so that the entries a run did not need can be listed and pruned.
"""
from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import re
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..progress import say, step
from .mounts import remove_tree


class _GivenUp(Exception):
    """Cache.saving's block left its directory empty: no entry."""


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


def hash_tree(root: Path) -> str:
    """Every regular file under root, recursively, by its path relative to root and its content; a symbolic link
    by its path and target (the tree is copied with its links as they are)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix().encode()
            if path.is_symlink():
                h.update(b"L" + rel + b"\0" + os.readlink(path).encode() + b"\0")
            elif path.is_file():
                h.update(b"F" + rel + b"\0" + str(path.stat().st_size).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class EntryInfo:
    name: str
    key: str
    path: Path
    size_bytes: int
    inputs: dict
    mtime: float


_ENTRY_NAME = re.compile(r"(?P<name>[^.].*)-(?P<key>[0-9a-f]{16})")  # a dot-name is a lock or a build under way


def _entry_name(path: Path) -> re.Match | None:
    match = _ENTRY_NAME.fullmatch(path.name)
    return match if match and path.is_dir() and not path.is_symlink() else None


class Cache:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.used: set[Path] = set()  # every entry entry() returned, built or found: what this run needs

    def entry(self, name: str, inputs: dict, build: Callable[[Path], None]) -> Path:
        """Return the directory for (name, inputs), calling build(tmpdir) to fill it if it is not cached yet."""
        final = self.path(name, inputs)
        if not final.is_dir():
            with self._lock(name, wait=True):  # a second run waits here, then finds the entry built
                if not final.is_dir():
                    with step(f"build {name}"), self._filling(name, inputs, final) as tmp:
                        build(tmp)
        self.used.add(final)
        return final

    def path(self, name: str, inputs: dict) -> Path:
        """Where the entry for (name, inputs) is, or would be."""
        return self.root / f"{name}-{key_of(inputs)}"

    def find(self, name: str, inputs: dict) -> Path | None:
        """The entry for (name, inputs) if it is complete in the cache, without building it."""
        final = self.path(name, inputs)
        if not final.is_dir():
            return None
        self.used.add(final)
        return final

    @contextmanager
    def saving(self, name: str, inputs: dict) -> Iterator[Path | None]:
        """For an entry made by the caller's own work rather than a build function (e.g. a snapshot of a running
        VM): yields a temporary directory to fill, which becomes the entry when the block ends without an
        exception and the caller put something in it (an empty one is given up); yields None when the entry exists
        or another run is making it right now (nothing to do)."""
        final = self.path(name, inputs)
        with self._lock(name, wait=False) as locked:
            if not locked or final.is_dir():
                yield None
                return
            with self._filling(name, inputs, final) as tmp:
                yield tmp
                if not any(tmp.iterdir()):
                    raise _GivenUp
        if final.is_dir():
            self.used.add(final)

    def discard(self, path: Path) -> None:
        """Remove an entry found broken (e.g. a truncated snapshot), unless its name is being made right now."""
        self.used.discard(path)
        match = _entry_name(path)
        if match is None:  # gone already (another run discarded it)
            return
        with self._lock(match["name"], wait=False) as locked:
            if locked and path.is_dir():
                self._retire(match["name"], path)

    def _retire(self, name: str, path: Path) -> None:
        # Renamed first, atomically: interrupted, it is a .tmp- leftover, never a half-removed entry.
        doomed = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=self.root))
        os.rename(path, doomed)
        remove_tree(doomed)

    @contextmanager
    def _filling(self, name: str, inputs: dict, final: Path) -> Iterator[Path]:
        """A temporary directory that becomes `final` (with inputs.json) if the block ends without an exception,
        and is removed otherwise. The caller holds the name's lock."""
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=self.root))
        try:
            yield tmp
            (tmp / "inputs.json").write_text(json.dumps(inputs, indent=2, sort_keys=True))
            os.rename(tmp, final)
        except _GivenUp:
            self._remove_quietly(tmp)
        except BaseException:
            self._remove_quietly(tmp)  # e.g. an interrupted mmdebstrap's mounts; never hide why the build failed
            raise

    def _remove_quietly(self, path: Path) -> None:
        try:
            remove_tree(path)
        except OSError as e:
            say(f"cannot remove {path}: {e}")

    @contextmanager
    def _lock(self, name: str, wait: bool) -> Iterator[bool]:
        """Hold the lock of entry name; without wait, yield False at once if another run holds it (building)."""
        with open(self.root / f".{name}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                locked = True
            except BlockingIOError:
                locked = False
            yield locked

    def prune_stale_tmp(self) -> None:
        """Remove temporary directories left by a run that was killed outright (SIGKILL, power loss)."""
        for tmp in self.root.glob(".tmp-*"):
            name = tmp.name[len(".tmp-"):].rsplit("-", 1)[0]
            with self._lock(name, wait=False) as locked:
                if locked:  # else another run is building it right now
                    self._remove_quietly(tmp)

    def entries(self) -> list[EntryInfo]:
        """Every entry in the cache, by name, then oldest first."""
        found = []
        for path in self.root.iterdir():
            match = _entry_name(path)
            if not match:
                continue
            try:
                inputs = json.loads((path / "inputs.json").read_text())
            except FileNotFoundError:
                inputs = {}
            found.append(EntryInfo(match["name"], match["key"], path, disk_usage(path), inputs,
                                   path.stat().st_mtime))
        return sorted(found, key=lambda e: (e.name, e.mtime))

    def other_sizes(self) -> dict[str, int]:
        """Disk usage of what is in the cache besides entries, e.g. apt's lists and downloaded packages."""
        return {p.name: disk_usage(p) for p in sorted(self.root.iterdir())
                if not p.name.startswith(".") and not _entry_name(p)}

    def prune(self, keep: set[Path], dry_run: bool = False) -> list[EntryInfo]:
        """Remove every entry not in keep, except those of a name being built right now; return what was (with
        dry_run: would be) removed."""
        keep = {Path(p).resolve() for p in keep}
        stale = [e for e in self.entries() if e.path.resolve() not in keep]
        removed = []
        for name, group in itertools.groupby(stale, key=lambda e: e.name):
            with self._lock(name, wait=False) as locked:
                if not locked:
                    continue
                for info in group:
                    if not dry_run:
                        self._retire(name, info.path)
                    removed.append(info)
        return removed


def disk_usage(path: Path) -> int:
    """Bytes on disk, like du: what sparse disk images really use; hard links once; symlinks not followed."""
    paths = itertools.chain([path], (os.path.join(top, n) for top, dirs, files in os.walk(path) for n in dirs + files))
    blocks = {}
    for p in paths:
        try:
            st = os.lstat(p)
        except FileNotFoundError:  # removed by a run working in the cache meanwhile
            continue
        blocks[st.st_dev, st.st_ino] = st.st_blocks
    return 512 * sum(blocks.values())


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _human_age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds // length:.0f} {unit}"
    return "<1 min"


_HASH = re.compile(r"[0-9a-f]{16}")


def _summary(inputs: dict, width: int = 60) -> str:
    """Names and versions in a few words: hashes and long texts say nothing at a glance, lists say how many."""
    words = [f"{k}={v}" for k, v in inputs.items() if isinstance(v, str) and "\n" not in v and not _HASH.fullmatch(v)]
    words += [f"{len(v)} {k}" for k, v in inputs.items() if isinstance(v, (dict, list))]
    text = ", ".join(words)
    return text if len(text) <= width else text[:width - 3] + "..."


def format_entries(entries: list[EntryInfo], now: float | None = None) -> str:
    """A table of entries, one a line, with their total size at the bottom."""
    now = time.time() if now is None else now
    rows = [("NAME", "KEY", "SIZE", "AGE", "INPUTS")]
    rows += [(e.name, e.key, human_size(e.size_bytes), _human_age(now - e.mtime), _summary(e.inputs))
             for e in entries]
    rows.append(("total", "", human_size(sum(e.size_bytes for e in entries)), "", f"{len(entries)} entries"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(f"{name:<{widths[0]}}  {key:<{widths[1]}}  {size:>{widths[2]}}  {age:>{widths[3]}}  {inputs}"
                     .rstrip() for name, key, size, age, inputs in rows)
