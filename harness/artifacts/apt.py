"""Debian packages through the host's own apt sources, with apt state kept inside our cache.

We never name a mirror: the sources file (the host's by default, a config key overrides it) is copied into a
private apt configuration, so our package lists and downloads neither depend on nor disturb the host's apt.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from ..progress import run, say, step
from . import lock as locks
from .lock import LockError, ReleaseLock, sha256

LISTS_MAX_AGE = 6 * 3600  # refresh package lists at most this often, so warm runs stay fast
VERSIONS = "versions.json"  # candidate versions already looked up, with the state of the lists they came from


def _suite_of(token: str) -> str:
    """The release codename of a suite name: bookworm-updates, bookworm-security, buster/updates -> the codename."""
    return re.split(r"[-/]", token, maxsplit=1)[0]


def sources_codename(text: str) -> str:
    """The release an apt sources file (deb822 or one-line) is for: the codename of the first suite it names."""
    for line in text.splitlines():
        m = re.match(r"\s*Suites:\s*(\S+)", line, re.I) or re.match(
            r"\s*deb(?:-src)?\s+(?:\[[^\]]*\]\s+)?\S+\s+(\S+)", line)
        if m:
            return _suite_of(m[1])
    raise ValueError("the apt sources name no suite")


def sources_for_suite(text: str, suite: str) -> str:
    """An apt sources file (deb822 or one-line) with its release's codename replaced by `suite` in every suite name
    (bookworm, bookworm-updates, bookworm-security -> bullseye, bullseye-updates, bullseye-security): the same
    mirrors, another Debian release. The codename is the first suite the file names."""
    if not re.fullmatch(r"[a-z][a-z0-9]*", suite):
        raise ValueError(f"expected a Debian codename such as bullseye or trixie, got {suite!r}")
    out, codename = [], None

    def swap(token: str) -> str:
        nonlocal codename
        codename = codename or _suite_of(token)
        return suite + token[len(codename):] if _suite_of(token) == codename else token

    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        m = re.match(r"(\s*Suites:\s*)(.*)", body, re.I)
        one = re.match(r"(\s*deb(?:-src)?\s+(?:\[[^\]]*\]\s+)?\S+\s+)(\S+)(.*)", body)
        if m:
            line = m[1] + " ".join(swap(t) for t in m[2].split()) + line[len(body):]
        elif one:
            line = one[1] + swap(one[2]) + one[3] + line[len(body):]
        out.append(line)
    if codename is None:
        raise ValueError("the apt sources name no suite")
    return "".join(out)


def _candidates(policy: str) -> dict[str, str]:
    """`apt-cache policy A B ...` output -> {package: candidate}; a section starts with "name:" at column 0."""
    found, current = {}, None
    for line in policy.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = line[:-1]
        elif current and line.strip().startswith("Candidate:"):
            found[current] = line.split(":", 1)[1].strip()
    return found


def _listed(versions: list[str]) -> str:
    """The versions the archive has of a package, as an error says them."""
    return ", ".join(versions) if versions else "no version of it"


def _unlocked(locked: ReleaseLock, packages: dict[str, str]) -> list[str]:
    """Each package (name -> version) the lock does not hold at that version, with what it holds instead."""
    return [f"{n} {v} (the lock has {locked.packages[n]['version'] if n in locked.packages else 'none'})"
            for n, v in sorted(packages.items()) if locked.packages.get(n, {}).get("version") != v]


class Apt:
    """A Debian release's packages through one sources file. While a lock is active (lock.py), its answers come
    from the lock (`using`) or go into it (`recording`)."""

    def __init__(self, state_dir: Path, sources: Path, log: Path, snapshot: str = ""):
        self.dir = Path(state_dir)
        self.sources = Path(sources)
        self.log = log
        self.snapshot = snapshot  # base URL of an archive snapshot service, for locked versions the archive lost
        self.lock = locks.active()
        parts = self.dir / "sources.list.d"
        parts.mkdir(parents=True, exist_ok=True)
        for old in parts.iterdir():
            old.unlink()
        suffix = ".sources" if self.sources.name.endswith(".sources") else ".list"
        shutil.copyfile(self.sources, parts / f"harness{suffix}")
        for sub in ("lists/partial", "cache/archives/partial", "debs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "status").touch()
        self.opts = [
            "-o", "Dir::Etc::SourceList=/dev/null",
            "-o", f"Dir::Etc::SourceParts={parts}",
            "-o", f"Dir::State::Lists={self.dir / 'lists'}",
            "-o", f"Dir::State::status={self.dir / 'status'}",
            "-o", f"Dir::Cache={self.dir / 'cache'}",
            "-o", "APT::Sandbox::User=root",
            "-o", "Debug::NoLocking=1",
        ]
        self.release = sources_codename(self.sources.read_text())  # e.g. bookworm, for what we say
        self._versions: dict[str, str] = {}
        self._sets: dict[str, dict[str, str]] = {}  # install_set's answers, by request
        self._lists_known = ""  # the state of the lists _versions and _sets came from

    def _locked(self) -> ReleaseLock | None:
        """This release's part of the lock a locked run uses; None when none is used."""
        return self.lock.release(self.release) if self.lock and not self.lock.recording else None

    def _recorded(self) -> ReleaseLock | None:
        """This release's part of a lock being recorded; None when none is."""
        return self.lock.release(self.release) if self.lock and self.lock.recording else None

    def update(self) -> None:
        stamp = self.dir / "lists" / ".updated"
        same_sources = stamp.exists() and stamp.read_text() == self.sources.read_text()
        if same_sources and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE:
            return
        with step("apt-get update (private lists)"):
            try:
                run(["apt-get", *self.opts, "update"], self.log)
            except Exception as e:
                if any((self.dir / "lists").glob("*Packages*")):
                    say(f"warning: apt-get update failed, using the package lists we have: {e}")
                    return
                raise
        stamp.write_text(self.sources.read_text())

    def version(self, package: str) -> str:
        """The candidate version of package in our sources; a clear error if it does not exist."""
        return self.versions([package])[package]

    def versions(self, packages: list[str]) -> dict[str, str]:
        """Candidate versions of several packages. One apt-cache call for those not known yet (each call costs
        about 0.3 s), and what is known is kept on disk for as long as the package lists stay the same."""
        if (locked := self._locked()) is not None:
            if missing := [p for p in packages if p not in locked.candidates]:
                raise self.lock.missing(f"the version of {', '.join(missing)} in Debian {self.release}")
            return {p: locked.candidates[p] for p in packages}
        if (recorded := self._recorded()) is not None:
            recorded.candidates.update(answer := self._versions_from_apt(packages))
            return answer
        return self._versions_from_apt(packages)

    def _versions_from_apt(self, packages: list[str]) -> dict[str, str]:
        lists = self._known_for_lists()
        missing = [p for p in dict.fromkeys(packages) if p not in self._versions]
        if missing:
            out = subprocess.run(["apt-cache", *self.opts, "policy", *missing], capture_output=True, text=True)
            found = _candidates(out.stdout)
            for package in missing:
                candidate = found.get(package, "")
                if not candidate or candidate == "(none)":
                    raise LookupError(f"package {package!r} is not available from apt sources {self.sources}")
                self._versions[package] = candidate
            if self._lists_state() == lists:  # else they may be from either lists: keep them to ourselves
                self._save_known(lists)
        return {p: self._versions[p] for p in packages}

    def _known_for_lists(self) -> str:
        """The lists' state, with what is known of them loaded (first use, or another process updated them)."""
        lists = self._lists_state()
        if lists != self._lists_known:
            self._versions, self._sets = self._load_known(lists)
            self._lists_known = lists
        return lists

    def _lists_state(self) -> str:
        """Changes whenever the package lists do: names, sizes and times of the files apt reads."""
        lists = self.dir / "lists"
        return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(lists.iterdir())
                        if p.is_file())

    def _load_known(self, lists: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
        try:
            known = json.loads((self.dir / VERSIONS).read_text())
            if known["lists"] == lists:
                return dict(known["versions"]), dict(known.get("sets", {}))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        return {}, {}

    def _save_known(self, lists: str) -> None:
        tmp = self.dir / f".{VERSIONS}.{os.getpid()}"
        tmp.write_text(json.dumps({"lists": lists, "versions": self._versions, "sets": self._sets}))
        tmp.replace(self.dir / VERSIONS)

    def depends(self, package: str) -> list[str]:
        """The packages the candidate of `package` depends on (Depends and Pre-Depends), by name."""
        if (locked := self._locked()) is not None:
            if package not in locked.depends:
                raise self.lock.missing(f"what {package} depends on in Debian {self.release}")
            return list(locked.depends[package])
        self.version(package)  # a clear error if it does not exist
        out = subprocess.run(["apt-cache", *self.opts, "depends", "--no-recommends", "--no-suggests",
                              "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", package],
                             capture_output=True, text=True, check=True)
        found = [m[1] for m in re.finditer(r"^\s*(?:Pre)?Depends:\s*(\S+)", out.stdout, re.M)]
        names = [name for name in found if not name.startswith("<")]  # <virtual> names have no package
        if (recorded := self._recorded()) is not None:
            recorded.depends[package] = names
        return names

    def uses(self, packages: dict[str, str]) -> None:
        """Say that an artifact is made of these packages (name -> version): a lock being recorded takes each with
        its .deb's SHA-256 (fetched for it if need be); a lock in use must hold each at that version."""
        if (recorded := self._recorded()) is not None:
            packages = {n: v for n, v in packages.items() if recorded.packages.get(n, {}).get("version") != v}
            for (name, version), deb in zip(sorted(packages.items()), self.download_all(packages)):
                recorded.packages[name] = {"version": version, "sha256": sha256(deb)}
        elif (locked := self._locked()) is not None and (wrong := _unlocked(locked, packages)):
            raise LockError(f"{self.lock.source}: an artifact is made of packages the lock does not hold at those "
                            f"versions: {', '.join(wrong)}")

    def _downloaded(self, package: str, version: str) -> Path | None:
        """The .deb of package=version if we have it (apt writes an epoch's ':' as '%3a' in file names)."""
        return next((self.dir / "debs").glob(f"{package}_{version.replace(':', '%3a')}_*.deb"), None)

    def download(self, package: str, version: str | None = None) -> Path:
        """Download package at the given (default: candidate) version, once, and return the .deb path."""
        version = version or self.version(package)
        return self.download_all({package: version})[0]

    def install_set(self, packages: list[str]) -> dict[str, str]:
        """Every package (name -> version) that installing `packages` (names, or name=version where only that
        version will do) with their dependencies onto an empty system would bring, as apt resolves it (no
        recommends). Remembered, like versions, for as long as the package lists stay the same."""
        request = " ".join(sorted(set(packages)))
        if (locked := self._locked()) is not None:
            if request not in locked.sets:
                raise self.lock.missing(f"what installing {request} brings in Debian {self.release}")
            return dict(locked.sets[request])
        answer = self._install_set_from_apt(packages, request)
        if (recorded := self._recorded()) is not None:
            recorded.sets[request] = dict(answer)
        return answer

    def _install_set_from_apt(self, packages: list[str], request: str) -> dict[str, str]:
        lists = self._known_for_lists()
        if request in self._sets:
            return dict(self._sets[request])
        out = subprocess.run(["apt-get", *self.opts, "-s", "install", "--no-install-recommends", *packages],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise LookupError(self._unresolvable(packages, out.stdout + out.stderr))
        found = {}
        for line in out.stdout.splitlines():
            if line.startswith("Inst "):  # "Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64])"
                name, _, rest = line[5:].partition(" (")
                found[name.split(":")[0]] = rest.split()[0]
        self._sets[request] = found
        if self._lists_state() == lists:
            self._save_known(lists)
        return dict(found)

    def _unresolvable(self, packages: list[str], apt_says: str) -> str:
        """Why apt cannot install `packages`: for a name=version it no longer has, what it has now."""
        for wanted in packages:
            name, _, version = wanted.partition("=")
            if version and f"'{version}' for '{name}' was not found" in apt_says:
                return (f"{name} {version} is not in {self.release}'s archive (apt sources {self.sources}); "
                        f"it has {_listed(self._available(name))}")
        return f"apt cannot resolve {' '.join(packages)} from {self.sources}:\n{apt_says.strip()}"

    def _available(self, package: str) -> list[str]:
        """Every version of package the archive has now, newest first."""
        out = subprocess.run(["apt-cache", *self.opts, "madison", package], capture_output=True, text=True)
        return [line.split("|")[1].strip() for line in out.stdout.splitlines() if line.count("|") >= 2]

    def download_all(self, packages: dict[str, str]) -> list[Path]:
        """Download name=version for each package in one apt call (what is already here is not fetched
        again) and return the .deb paths. With a lock in use, only locked versions, each checked against its
        SHA-256, and a version the archive lost comes from the snapshot service."""
        locked = self._locked()
        if locked is not None and (wrong := _unlocked(locked, packages)):
            raise LockError(f"{self.lock.source}: not in the lock at these versions: {', '.join(wrong)}")
        missing = {n: v for n, v in sorted(packages.items()) if not self._downloaded(n, v)}
        if locked is not None:
            for name, version in list(missing.items()):
                if version not in (have := self._available(name)):
                    self._from_snapshot(name, version, have)
                    del missing[name]
        if missing:
            run(["apt-get", *self.opts, "download", *(f"{n}={v}" for n, v in missing.items())], self.log,
                cwd=self.dir / "debs")
        paths = []
        for name, version in sorted(packages.items()):
            found = self._downloaded(name, version)
            if found is None:
                raise LookupError(f"apt-get download {name}={version} produced no .deb in {self.dir / 'debs'}")
            if locked is not None and (got := sha256(found)) != locked.packages[name]["sha256"]:
                found.unlink()  # never used again, in this run or another
                raise LockError(f"{name} {version}: its .deb has SHA-256 {got}, but the lock {self.lock.source} "
                                f"says {locked.packages[name]['sha256']}")
            paths.append(found)
        return paths

    def _from_snapshot(self, name: str, version: str, have: list[str]) -> Path:
        """A locked version the archive no longer has (it has `have`), from the snapshot service (laid out as
        Debian's own: /mr/binary/NAME/VERSION/binfiles names the file's hash, /file/HASH is the file)."""
        if not self.snapshot:
            raise LockError(f"{name} {version} (locked in {self.lock.source}) is no longer in {self.release}'s "
                            f"archive, which has {_listed(have)}; set apt.snapshot to an archive snapshot "
                            f"service's base URL to fetch it from there")
        base = self.snapshot.rstrip("/")
        where = f"{base}/mr/binary/{urllib.parse.quote(name)}/{urllib.parse.quote(version)}/binfiles"
        partial = self.dir / "debs" / f".{name}_{os.getpid()}.partial"
        with step(f"fetch {name} {version} from the snapshot service"):
            try:
                with urllib.request.urlopen(where, timeout=60) as answer:
                    files = json.load(answer)["result"]
                arch, digest = next((f["architecture"], f["hash"]) for f in files
                                    if f.get("architecture") in ("amd64", "all"))
                with urllib.request.urlopen(f"{base}/file/{digest}", timeout=600) as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (OSError, ValueError, KeyError, StopIteration) as e:
                partial.unlink(missing_ok=True)
                raise LockError(f"{name} {version} (locked in {self.lock.source}) is not in {self.release}'s "
                                f"archive, and the snapshot service at {base} does not give it: "
                                f"{type(e).__name__}: {e}") from None
            deb = self.dir / "debs" / f"{name}_{version.replace(':', '%3a')}_{arch}.deb"
            partial.replace(deb)  # checked against the lock's hash by download_all, like any other
        return deb

    def extract(self, package: str, dest: Path, version: str | None = None) -> Path:
        deb = self.download(package, version)
        run(["dpkg-deb", "-x", str(deb), str(dest)], self.log)
        return dest
