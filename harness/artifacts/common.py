"""What the host recipe (host.py) and the guest recipe (payload.py) share: the apt state, busybox, the start of
an initramfs, the compiler's version line, and kernels out of Debian's linux-image packages.

Every cache entry's key holds the package versions it came from, the config values it used and hashes of our own
files that shape it: its recipe file (host.py or payload.py) and this one, never the other recipe, so changing
the guest recipe rebuilds no host entry and the other way round.
"""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

from .apt import LISTS_MAX_AGE, Apt
from .cache import Cache, hash_files
from .cpio import CpioWriter
from .kernel import bzimage, extract_vmlinux, kernel_version, module_load_order

HERE = Path(__file__).resolve().parent
FILES = HERE.parent / "files"
BUSYBOX = "busybox-static"


def recipe_hash(recipe: Path) -> str:
    """The "build" part of an entry's key: its recipe file and this one."""
    return hash_files(Path(recipe), Path(__file__))


# One Apt per cache root (and sources file), so a process that builds a host and then its guests (or many guests)
# runs `apt-get update` and prunes the cache's stale temporary directories once, and asks apt-cache for each
# version once. Reused for at most LISTS_MAX_AGE, after which update() may refresh the lists again.
_APTS: dict[Path, tuple[tuple, float, Apt]] = {}
_APTS_LOCK = threading.Lock()


def apt_for(cache: Cache, sources: str | Path, log: Path) -> Apt:
    """The Apt for this cache and sources file, updated; the first call per cache also prunes stale temporary
    directories. Its output goes to `log` (the latest caller's)."""
    sources = Path(sources).resolve()
    root = cache.root.resolve()
    ident = (str(sources), sources.read_text())
    with _APTS_LOCK:
        known = _APTS.get(root)
        if known and known[0] == ident and time.monotonic() - known[1] < LISTS_MAX_AGE:
            known[2].log = log
            return known[2]
        if known is None:
            cache.prune_stale_tmp()
        # A new Apt rewrites the private sources under <cache>/apt, so there is one per cache root at a time.
        apt = Apt(root / "apt", sources, log)
        apt.update()
        _APTS[root] = (ident, time.monotonic(), apt)
        return apt


def xen_series(package: str) -> str:
    m = re.fullmatch(r"xen-hypervisor-(\d+\.\d+)-amd64", package)
    if not m:
        raise ValueError(f"host.xen_package {package!r}: expected a name like xen-hypervisor-4.17-amd64")
    return m.group(1)


def _busybox(apt: Apt, dest: Path) -> Path:
    """busybox-static extracted under dest/bb (the caller removes it); returns the binary."""
    tree = apt.extract(BUSYBOX, dest / "bb")
    return tree / "bin" / "busybox"


def _start_initramfs(cpio: CpioWriter, busybox: Path, directories: tuple[str, ...]) -> None:
    """What both our initramfs images begin with: the top directories, the console node, busybox."""
    for d in directories:
        cpio.directory(d)
    cpio.char_device("dev/console", 5, 1)  # the kernel opens it before /init runs; devtmpfs is not there yet
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)


@functools.cache
def _gcc() -> str:
    """The compiler's version line: part of the key of everything we compile."""
    return subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]


def _kernel(cache: Cache, apt: Apt, package: str, modules: list[str], log: Path) -> Path:
    """One linux-image package -> an entry with vmlinuz, vmlinux, `version` (the release, e.g. 6.1.0-56-amd64),
    and the given modules with their dependencies under modules/lib/modules/..., in load order in modules.order.
    The module list is part of the key: dom0 needs its block, network and Xen modules, the guest none ([])."""
    modules = list(modules)

    def build(out: Path) -> None:
        tree = apt.extract(package, out / "deb")
        version = kernel_version(tree)
        shutil.copyfile(bzimage(tree, version), out / "vmlinuz")
        extract_vmlinux(out / "vmlinuz", out / "vmlinux")
        order = module_load_order(tree, version, modules, log) if modules else []
        for rel in order:
            (out / "modules" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tree / rel, out / "modules" / rel)
        (out / "modules.order").write_text("".join(f"{rel}\n" for rel in order))
        (out / "version").write_text(version)
        shutil.rmtree(out / "deb")
    inputs = {"package": package, "version": apt.version(package), "modules": modules,
              "recipe": hash_files(HERE / "kernel.py"), "build": hash_files(Path(__file__))}
    return cache.entry("kernel", inputs, build)
