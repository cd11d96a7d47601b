"""What the host recipe (host.py) and the guest recipe (payload.py) share: the apt state, busybox, the start of
an initramfs, the compiler's version line, and kernels out of Debian's linux-image packages.

Every cache entry's key holds the package versions it came from, the config values it used and hashes of our own
files that shape it: its recipe file (host.py or payload.py) and this one, never the other recipe, so changing
the guest recipe rebuilds no host entry and the other way round.
"""
from __future__ import annotations

import fcntl
import functools
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

from . import lock as locks
from .lock import LockError
from .apt import LISTS_MAX_AGE, Apt, sources_codename, sources_for_suite
from .cache import Cache, hash_files
from .cpio import CpioWriter
from .kernel import bzimage, extract_vmlinux, kernel_version, module_load_order

HERE = Path(__file__).resolve().parent
FILES = HERE.parent / "files"
BUSYBOX = "busybox-static"


def recipe_hash(recipe: Path) -> str:
    """The "build" part of an entry's key: its recipe file and this one."""
    return hash_files(Path(recipe), Path(__file__))


# One Apt per cache root and suite, so a process that builds a host and then its guests (or many guests) runs
# `apt-get update` and prunes the cache's stale temporary directories once, and asks apt-cache for each version
# once. Reused for at most LISTS_MAX_AGE, after which update() may refresh the lists again.
_APTS: dict[tuple[Path, str], tuple[tuple, float, Apt]] = {}
_APTS_LOCK = threading.Lock()


def apt_for(cache: Cache, sources: str | Path, log: Path, suite: str = "", snapshot: str = "") -> Apt:
    """The Apt for this cache and sources file (with `suite` other than the file's own release, the same sources
    for that Debian release instead, with apt state of its own), updated; the first call per cache also prunes
    stale temporary directories. Its output goes to `log` (the latest caller's). `snapshot`: apt.snapshot, where
    a locked run fetches versions the archive no longer has."""
    sources = Path(sources).resolve()
    root = cache.root.resolve()
    ident = (str(sources), sources.read_text(), snapshot)
    if suite and suite == sources_codename(ident[1]):
        suite = ""  # the file's own release: the same Apt as without one
    with _APTS_LOCK:
        known = _APTS.get((root, suite))
        if (known and known[0] == ident and known[2].lock is locks.active()
                and time.monotonic() - known[1] < LISTS_MAX_AGE):
            known[2].log = log
            return known[2]
        if not any(r == root for r, _ in _APTS):
            cache.prune_stale_tmp()
        state = root / (f"apt-{suite}" if suite else "apt")
        state.mkdir(parents=True, exist_ok=True)
        # A new Apt rewrites the private sources under its state directory, and updates its lists: one per cache
        # root and suite at a time, in this process (the lock above) and across processes (matrix --jobs).
        with open(state / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if suite:  # Apt copies the file it is given; it keeps the name's suffix, which says the format
                rewritten = state / ("harness.sources" if sources.name.endswith(".sources") else "harness.list")
                rewritten.write_text(sources_for_suite(ident[1], suite))
                sources = rewritten
            apt = Apt(state, sources, log, snapshot)
            apt.update()
        _APTS[(root, suite)] = (ident, time.monotonic(), apt)
        return apt


def xen_series(package: str) -> str:
    m = re.fullmatch(r"xen-hypervisor-(\d+\.\d+)-amd64", package)
    if not m:
        raise ValueError(f"host.xen_package {package!r}: expected a name like xen-hypervisor-4.17-amd64")
    return m.group(1)


def _busybox(apt: Apt, dest: Path) -> Path:
    """busybox-static extracted under dest/bb (the caller removes it); returns the binary."""
    tree = apt.extract(BUSYBOX, dest / "bb")
    return next(p for p in (tree / "bin" / "busybox", tree / "usr/bin/busybox") if p.exists())  # merged /usr


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


@functools.cache
def _binutils() -> str:
    """The linker's version line: part of the key of every kernel we link."""
    out = subprocess.run(["ld", "--version"], capture_output=True, text=True)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


# A versioned kernel image has its version first (linux-image-6.1.0-56-amd64, linux-image-6.12.118+deb13-amd64); the
# flavour after the ABI (amd64, rt-amd64, cloud-amd64) is also the name of the metapackage that follows it.
VERSIONED_IMAGE = re.compile(r"linux-image-\d[\w.+~]*(?:-\d+)?-(?P<flavour>[a-z][\w-]*)")


def kernel_image(apt: Apt, package: str, key: str) -> str:
    """The linux-image package that holds the kernel: `package` itself, or, for a metapackage (linux-image-amd64,
    linux-image-rt-amd64...), the versioned image it depends on now. A versioned image the archive no longer has
    is an error that names the current one."""
    seen = [package]
    while not VERSIONED_IMAGE.fullmatch(package):
        images = [d for d in apt.depends(package) if d.startswith("linux-image-")]
        if len(images) != 1:
            raise LookupError(f"{key} {seen[0]!r}: expected a linux-image package or a metapackage "
                              f"that depends on one, but {package!r} depends on {images or 'no linux-image'}")
        package = images[0]
        seen.append(package)
    try:
        apt.version(package)
    except LockError:
        raise  # the lock's own word, not the archive's
    except LookupError:
        raise LookupError(_gone(apt, package, key)) from None
    return package


def _gone(apt: Apt, package: str, key: str) -> str:
    """Debian keeps only each release's current kernel ABI: say so, and what the archive has now."""
    text = f"{key}: {package} is no longer in {apt.release}'s archive (Debian keeps only its current kernels)"
    metapackage = f"linux-image-{VERSIONED_IMAGE.fullmatch(package)['flavour']}"
    try:
        current = kernel_image(apt, metapackage, key)
    except LookupError:
        return text
    return f"{text}; its current kernel is {current} ({metapackage} stands for it, and follows it)"


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
