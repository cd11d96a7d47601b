"""A minimal writer of the 'newc' cpio format the Linux kernel unpacks as an initramfs.

Ours, so device nodes (the kernel needs /dev/console before /init runs) need no root, and output is
byte-for-byte reproducible (fixed mtimes and owners).
"""
from __future__ import annotations

import stat
from pathlib import Path
from typing import BinaryIO


class CpioWriter:
    def __init__(self, out: BinaryIO):
        self.out = out
        self.ino = 1
        self.seen: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        name = name.strip("/")
        if name in self.seen:
            raise ValueError(f"duplicate initramfs entry {name!r}")
        self.seen.add(name)
        encoded = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.ino += 1
        self._write_padded(header + encoded)
        self._write_padded(data)

    def _write_padded(self, blob: bytes) -> None:
        self.out.write(blob)
        self.out.write(b"\0" * (-len(blob) % 4))

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def tree(self, root: Path, prefix: str = "") -> None:
        """Add a host directory tree under prefix, keeping file modes and symlinks."""
        parts = [p for p in prefix.strip("/").split("/") if p]
        for i in range(1, len(parts) + 1):  # the kernel creates no missing parents while unpacking
            if "/".join(parts[:i]) not in self.seen:
                self.directory("/".join(parts[:i]))
        for path in sorted(Path(root).rglob("*")):
            rel = f"{prefix.rstrip('/')}/{path.relative_to(root)}".lstrip("/")
            if path.is_symlink():
                self.symlink(rel, str(path.readlink()))
            elif path.is_dir():
                self.directory(rel, path.stat().st_mode & 0o7777)
            else:
                self.file(rel, path.read_bytes(), path.stat().st_mode & 0o7777)

    def close(self) -> None:
        self._entry("TRAILER!!!", 0)
        self.seen.discard("TRAILER!!!")
