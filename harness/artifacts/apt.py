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
from pathlib import Path

from ..progress import run, say, step

LISTS_MAX_AGE = 6 * 3600  # refresh package lists at most this often, so warm runs stay fast
VERSIONS = "versions.json"  # candidate versions already looked up, with the state of the lists they came from


def _candidates(policy: str) -> dict[str, str]:
    """`apt-cache policy A B ...` output -> {package: candidate}; a section starts with "name:" at column 0."""
    found, current = {}, None
    for line in policy.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = line[:-1]
        elif current and line.strip().startswith("Candidate:"):
            found[current] = line.split(":", 1)[1].strip()
    return found


class Apt:
    def __init__(self, state_dir: Path, sources: Path, log: Path):
        self.dir = Path(state_dir)
        self.sources = Path(sources)
        self.log = log
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
        self._versions: dict[str, str] = {}
        self._lists_known = ""  # the state of the lists _versions came from

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
        lists = self._lists_state()
        if lists != self._lists_known:  # first use, or another process updated the lists meanwhile
            self._versions, self._lists_known = self._load_known(lists), lists
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

    def _lists_state(self) -> str:
        """Changes whenever the package lists do: names, sizes and times of the files apt reads."""
        lists = self.dir / "lists"
        return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(lists.iterdir())
                        if p.is_file())

    def _load_known(self, lists: str) -> dict[str, str]:
        try:
            known = json.loads((self.dir / VERSIONS).read_text())
            if known["lists"] == lists:
                return dict(known["versions"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return {}

    def _save_known(self, lists: str) -> None:
        tmp = self.dir / f".{VERSIONS}.{os.getpid()}"
        tmp.write_text(json.dumps({"lists": lists, "versions": self._versions}))
        tmp.replace(self.dir / VERSIONS)

    def depends(self, package: str) -> list[str]:
        """The packages the candidate of `package` depends on (Depends and Pre-Depends), by name."""
        self.version(package)  # a clear error if it does not exist
        out = subprocess.run(["apt-cache", *self.opts, "depends", "--no-recommends", "--no-suggests",
                              "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", package],
                             capture_output=True, text=True, check=True)
        found = [m[1] for m in re.finditer(r"^\s*(?:Pre)?Depends:\s*(\S+)", out.stdout, re.M)]
        return [name for name in found if not name.startswith("<")]  # <virtual> names have no package

    def _downloaded(self, package: str, version: str) -> Path | None:
        """The .deb of package=version if we have it (apt writes an epoch's ':' as '%3a' in file names)."""
        return next((self.dir / "debs").glob(f"{package}_{version.replace(':', '%3a')}_*.deb"), None)

    def download(self, package: str, version: str | None = None) -> Path:
        """Download package at the given (default: candidate) version, once, and return the .deb path."""
        version = version or self.version(package)
        return self.download_all({package: version})[0]

    def install_set(self, packages: list[str]) -> dict[str, str]:
        """Every package (name -> version) that installing `packages` with their dependencies onto an empty
        system would bring, as apt resolves it (no recommends)."""
        out = subprocess.run(["apt-get", *self.opts, "-s", "install", "--no-install-recommends", *packages],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise LookupError(f"apt cannot resolve {' '.join(packages)} from {self.sources}:\n{out.stdout}"
                              f"{out.stderr}")
        found = {}
        for line in out.stdout.splitlines():
            if line.startswith("Inst "):  # "Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64])"
                name, _, rest = line[5:].partition(" (")
                found[name.split(":")[0]] = rest.split()[0]
        return found

    def download_all(self, packages: dict[str, str]) -> list[Path]:
        """Download name=version for each package in one apt call (what is already here is not fetched
        again) and return the .deb paths."""
        missing = [f"{n}={v}" for n, v in sorted(packages.items()) if not self._downloaded(n, v)]
        if missing:
            run(["apt-get", *self.opts, "download", *missing], self.log, cwd=self.dir / "debs")
        paths = []
        for name, version in sorted(packages.items()):
            found = self._downloaded(name, version)
            if found is None:
                raise LookupError(f"apt-get download {name}={version} produced no .deb in {self.dir / 'debs'}")
            paths.append(found)
        return paths

    def extract(self, package: str, dest: Path, version: str | None = None) -> Path:
        deb = self.download(package, version)
        run(["dpkg-deb", "-x", str(deb), str(dest)], self.log)
        return dest
