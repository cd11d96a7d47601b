"""A Debian archive of our own, on this machine: packages made with dpkg-deb (or real ones repacked with other
versions), indexed with dpkg-scanpackages, with a Release file apt checks them against, served as file:. Tests
make the archive move with it: a kernel ABI that left, build tools newer than their headers, a metapackage that
moved on. Nothing reaches a mirror."""
from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path


class LocalArchive:
    def __init__(self, root: Path, suite: str = "bookworm"):
        self.root, self.suite = Path(root), suite
        self.pool = self.root / "pool"
        self.pool.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, version: str, depends: str = "", files: dict[str, bytes] | None = None) -> Path:
        """A package of our own making: its control fields, and files (path -> content) under its root."""
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            tree = Path(tmp)
            (tree / "DEBIAN").mkdir()
            control = (f"Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: tests <t@t>\n"
                       f"Description: {name} for the archive-drift tests\n")
            if depends:
                control += f"Depends: {depends}\n"
            (tree / "DEBIAN" / "control").write_text(control)
            for path, data in (files or {}).items():
                (tree / path).parent.mkdir(parents=True, exist_ok=True)
                (tree / path).write_bytes(data)
                if data.startswith((b"#!", b"\x7fELF")):
                    (tree / path).chmod(0o755)
            return self._build(tree, name, version)

    def repack(self, deb: Path, version: str | None = None, name: str | None = None,
               keep_depends: tuple[str, ...] | None = None, depends: str | None = None) -> Path:
        """A real .deb again, with another version or name; `keep_depends`: keep only the dependencies whose
        names start so (the rest of Debian is not in this archive), or `depends`: these instead."""
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            tree = Path(tmp) / "tree"
            subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
            fields = {}
            for line in (tree / "DEBIAN" / "control").read_text().splitlines():
                if line[:1].isspace():  # a continuation line (the long description)
                    continue
                key, _, value = line.partition(":")
                fields[key] = value.strip()
            fields["Version"] = version or fields["Version"]
            fields["Package"] = name or fields["Package"]
            if depends is not None:
                fields["Depends"] = depends
            elif keep_depends is not None:
                kept = [d.strip() for d in fields.get("Depends", "").split(",")
                        if d.strip().startswith(keep_depends)]
                fields["Depends"] = ", ".join(kept)
            for key in ("Pre-Depends", "Recommends", "Suggests", "Breaks", "Replaces", "Conflicts", "Provides"):
                fields.pop(key, None)
            if not fields.get("Depends"):
                fields.pop("Depends", None)
            (tree / "DEBIAN" / "control").write_text("".join(f"{k}: {v}\n" for k, v in fields.items()))
            return self._build(tree, fields["Package"], fields["Version"])

    def _build(self, tree: Path, name: str, version: str) -> Path:
        deb = self.pool / f"{name}_{version.replace(':', '%3a')}_amd64.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)], check=True,
                       capture_output=True)
        return deb

    def remove(self, name: str, version: str) -> None:
        (self.pool / f"{name}_{version.replace(':', '%3a')}_amd64.deb").unlink()

    def publish(self) -> Path:
        """Index the pool as dists/SUITE/main/binary-amd64 with a Release file; returns a sources file for it."""
        binary = self.root / "dists" / self.suite / "main" / "binary-amd64"
        if binary.exists():
            shutil.rmtree(binary)
        binary.mkdir(parents=True)
        packages = subprocess.run(["dpkg-scanpackages", "--multiversion", "pool", "/dev/null"], cwd=self.root,
                                  capture_output=True, check=True).stdout
        (binary / "Packages").write_bytes(packages)
        (binary / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
        lines = [f"Suite: {self.suite}", f"Codename: {self.suite}", "Components: main", "Architectures: amd64",
                 "SHA256:"]
        for index in ("Packages", "Packages.gz"):
            data = (binary / index).read_bytes()
            lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} main/binary-amd64/{index}")
        (self.root / "dists" / self.suite / "Release").write_text("\n".join(lines) + "\n")
        sources = self.root / f"{self.suite}.list"
        sources.write_text(f"deb [trusted=yes] file:{self.root} {self.suite} main\n")
        return sources


def snapshot_service(root: Path, debs: list[Path]) -> str:
    """A directory laid out as Debian's snapshot archive serves these .debs (BASE/mr/binary/NAME/VERSION/binfiles
    names each file's SHA-1, BASE/file/SHA1 is the file); returns its base URL."""
    for deb in debs:
        fields = dict(line.split(": ", 1) for line in subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture"], capture_output=True, text=True,
            check=True).stdout.splitlines())
        digest = hashlib.sha1(deb.read_bytes()).hexdigest()
        answer = root / "mr" / "binary" / fields["Package"] / fields["Version"] / "binfiles"
        answer.parent.mkdir(parents=True, exist_ok=True)
        answer.write_text(json.dumps({"result": [{"architecture": fields["Architecture"], "hash": digest}]}))
        (root / "file").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(deb, root / "file" / digest)
    return f"file://{root}"


def kernel_files(release: str) -> dict[str, bytes]:
    """What a linux-image package holds for our kernel recipe: a bzImage whose payload is a gzip-compressed ELF
    (extract_vmlinux looks for it), and the release's modules directory. It never boots."""
    elf = b"\x7fELF\x02\x01\x01" + bytes(57) + f"not a kernel, release {release}".encode()
    return {f"boot/vmlinuz-{release}": b"MZ bzImage setup\0" + gzip.compress(elf, mtime=0),
            f"lib/modules/{release}/modules.order": b""}


# busybox's part in a payload: `busybox --list` names the applets to link; the guest never runs this one.
BUSYBOX = {"bin/busybox": b"#!/bin/sh\necho sh\n"}


def headers_of(archive: LocalArchive, abi: str, version: str) -> None:
    """A kernel image with its headers as Debian's linux source package makes them: the arch headers depend on
    their common headers at exactly their version, and on the build tools at that version or newer."""
    archive.add(f"linux-image-{abi}", version, files=kernel_files(abi))
    common_abi = abi.removesuffix("-amd64")
    archive.add(f"linux-headers-{abi}", version, depends=f"linux-headers-{common_abi}-common (= {version}), "
                f"linux-kbuild-6.1 (>= {version}), linux-compiler-gcc-12-x86")
    archive.add(f"linux-headers-{common_abi}-common", version)
