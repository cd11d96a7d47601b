"""Facts pulled out of a Debian linux-image package: the kernel version, an uncompressed vmlinux for fast
`xl create`, and the insmod order for a list of modules."""
from __future__ import annotations

import lzma
import re
import subprocess
from pathlib import Path

from ..progress import run

XZ_MAGIC = b"\xfd7zXZ\x00"


def kernel_version(root: Path) -> str:
    versions = [p.name for p in (root / "lib/modules").iterdir() if p.is_dir()]
    if len(versions) != 1:
        raise ValueError(f"expected one kernel in {root}/lib/modules, found {versions}")
    return versions[0]


def bzimage(root: Path, version: str) -> Path:
    return root / "boot" / f"vmlinuz-{version}"


def extract_vmlinux(bz: Path, out: Path) -> None:
    """Decompress the xz payload of a bzImage into an ELF vmlinux.

    `xl create` decompresses a bzImage in dom0 userspace, which is slow under TCG (10.7 s vs 5.9 s measured).
    """
    data = bz.read_bytes()
    start = data.find(XZ_MAGIC)
    while start != -1:
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        try:
            elf = decompressor.decompress(data[start:])
        except lzma.LZMAError:
            elf = b""
        if decompressor.eof and elf.startswith(b"\x7fELF"):  # a truncated stream decodes partly, silently
            out.write_bytes(elf)
            return
        start = data.find(XZ_MAGIC, start + 1)
    raise ValueError(f"{bz}: no xz-compressed ELF payload found (is this an xz bzImage?)")


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
