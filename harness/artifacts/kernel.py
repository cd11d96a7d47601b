"""Facts pulled out of a Debian linux-image package: the kernel version, an uncompressed vmlinux for fast
`xl create`, and the insmod order for a list of modules."""
from __future__ import annotations

import lzma
import re
import subprocess
import zlib
from pathlib import Path

import zstandard

from ..progress import run

XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b\x08"


def kernel_version(root: Path) -> str:
    """The release of the one kernel in an extracted linux-image package, e.g. 6.1.0-56-amd64. Packages of merged-/usr
    releases (Debian 13 on) keep modules under usr/lib/modules: a lib -> usr/lib link makes both look alike (depmod
    -b and modprobe -d look under lib/modules)."""
    if not (root / "lib").exists() and (root / "usr/lib/modules").is_dir():
        (root / "lib").symlink_to("usr/lib")
    versions = [p.name for p in (root / "lib/modules").iterdir() if p.is_dir()]
    if len(versions) != 1:
        raise ValueError(f"expected one kernel in {root}/lib/modules, found {versions}")
    return versions[0]


def bzimage(root: Path, version: str) -> Path:
    return root / "boot" / f"vmlinuz-{version}"


def _xz(data: bytes) -> bytes:
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    out = decompressor.decompress(data)
    if not decompressor.eof:  # a truncated stream decodes partly, silently
        raise ValueError("truncated xz stream")
    return out


def _zstd(data: bytes) -> bytes:
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    out = decompressor.decompress(data)
    if not decompressor.eof:
        raise ValueError("truncated zstd stream")
    return out


def _gzip(data: bytes) -> bytes:
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = decompressor.decompress(data)
    if not decompressor.eof:
        raise ValueError("truncated gzip stream")
    return out


# What Debian compresses its kernels with (xz up to Debian 12, zstd from Debian 13), and kbuild's default (gzip).
PAYLOADS = ((XZ_MAGIC, _xz), (ZSTD_MAGIC, _zstd), (GZIP_MAGIC, _gzip))


def extract_vmlinux(bz: Path, out: Path) -> None:
    """Decompress the payload of a bzImage (xz, zstd or gzip) into an ELF vmlinux.

    `xl create` decompresses a bzImage in dom0 userspace, which is slow under TCG (10.7 s vs 5.9 s measured).
    """
    data = bz.read_bytes()
    for magic, decompress in PAYLOADS:
        start = data.find(magic)
        while start != -1:
            try:
                elf = decompress(data[start:])
            except (lzma.LZMAError, zstandard.ZstdError, zlib.error, ValueError):
                elf = b""
            if elf.startswith(b"\x7fELF"):
                out.write_bytes(elf)
                return
            start = data.find(magic, start + 1)
    raise ValueError(f"{bz}: no xz-, zstd- or gzip-compressed ELF payload found")


def module_load_order(root: Path, version: str, modules: list[str], log: Path) -> list[Path]:
    """Module files (relative to root) in an order insmod can load them, dependencies first."""
    run(["depmod", "-b", str(root), version], log)
    order: list[Path] = []
    for name in modules:
        out = subprocess.run(["modprobe", "-d", str(root), "-S", version, "--show-depends", name],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise LookupError(f"kernel module {name!r} not found for {version}: {out.stderr.strip()}")
        for line in out.stdout.splitlines():
            m = re.match(r"insmod (\S+)", line)
            if m:  # "builtin NAME" lines need nothing
                rel = Path(m.group(1)).relative_to(root)
                if rel not in order:
                    order.append(rel)
    return order
