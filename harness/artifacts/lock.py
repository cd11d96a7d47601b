"""A lock: every Debian package = version, with its SHA-256, that some configs' artifacts were built from, and every
answer apt gave on the way (candidate versions, dependency sets, a metapackage's kernel), per Debian release.

`xenfb-harness lock CONFIG... --output FILE` records one (`recording()`); `run`/`matrix --lock FILE` use one
(`using()`): every Apt then answers from the lock instead of the archive, fetches exactly the locked versions
(from the archive, or from an `apt.snapshot` service when the archive no longer has them) and checks each file's
hash. A question the lock has no answer for, a version the archive dropped with no snapshot service, or a hash
that does not match is a LockError: a locked run never silently takes another version.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

LOCK_VERSION = 1


class LockError(LookupError):
    """The lock and what a build needs (or what the archive has) disagree."""


@dataclass
class ReleaseLock:
    """One Debian release's part of a lock."""
    candidates: dict[str, str] = field(default_factory=dict)  # package -> the version taken
    sets: dict[str, dict[str, str]] = field(default_factory=dict)  # an install request -> what apt resolved
    depends: dict[str, list[str]] = field(default_factory=dict)  # package -> the packages it depends on
    packages: dict[str, dict[str, str]] = field(default_factory=dict)  # package -> {version, sha256}: what is used


@dataclass
class Lock:
    source: str  # the file, for what errors say ("" while recording)
    releases: dict[str, ReleaseLock] = field(default_factory=dict)
    configs: list[str] = field(default_factory=list)
    recording: bool = False

    def release(self, name: str) -> ReleaseLock:
        if self.recording:
            return self.releases.setdefault(name, ReleaseLock())
        if name not in self.releases:
            raise LockError(f"{self.source}: the lock has no packages of Debian {name}; make it again with "
                            f"`xenfb-harness lock` for these configs")
        return self.releases[name]

    def missing(self, what: str) -> LockError:
        return LockError(f"{self.source}: the lock has no answer for {what}: it was made for other configs (or "
                         f"an older harness); make it again with `xenfb-harness lock`")

    def dump(self) -> str:
        return json.dumps({"lock_version": LOCK_VERSION, "configs": self.configs,
                           "releases": {name: vars(r) for name, r in sorted(self.releases.items())}},
                          indent=1, sort_keys=True) + "\n"


def load(path: str | Path) -> Lock:
    source = str(path)
    try:
        data = json.loads(Path(path).read_text())
        if data.get("lock_version") != LOCK_VERSION:
            raise LockError(f"{source}: lock_version: expected {LOCK_VERSION}, got {data.get('lock_version')!r}")
        releases = {name: ReleaseLock(**{k: dict(v) for k, v in r.items()}) for name, r in data["releases"].items()}
        for name, release in releases.items():
            for package, held in release.packages.items():
                if not (isinstance(held, dict) and isinstance(held.get("version"), str)
                        and isinstance(held.get("sha256"), str)):
                    raise LockError(f"{source}: releases.{name}.packages.{package}: expected a version and a sha256, "
                                    f"got {held!r}")
        return Lock(source, releases, list(data.get("configs", [])))
    except OSError as e:
        raise LockError(f"{source}: cannot read the lock: {e.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise LockError(f"{source}: not a lock written by `xenfb-harness lock` ({type(e).__name__}: {e})") from None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# The lock of this process's builds: set by the CLI around a run (using) or a lock command (recording); every Apt
# made meanwhile answers from it or records into it.
_ACTIVE: Lock | None = None


def active() -> Lock | None:
    return _ACTIVE


@contextlib.contextmanager
def _active(lock: Lock) -> Iterator[Lock]:
    global _ACTIVE
    before, _ACTIVE = _ACTIVE, lock
    try:
        yield lock
    finally:
        _ACTIVE = before


def using(path: str | Path) -> contextlib.AbstractContextManager[Lock]:
    return _active(load(path))


def recording() -> contextlib.AbstractContextManager[Lock]:
    return _active(Lock("", recording=True))
