"""The guest recipe: config -> the payload a host boots one guest with: an uncompressed guest kernel and an
initramfs holding busybox, our init, the guest tools (xfb-writer, xfb-mapcheck), the frontend's module when the
frontend is an out-of-tree module (ours or the user's), for the X writer an X server and the X client, and for a
command workload the packages it names.

It reads only the guest's side of the config (guest.kernel_*, frontend, legacy.source, module.*, writer.kind,
command.xorg, command.packages, apt.sources); nothing here shapes the host (host.py), and
the host's keys hold no hash of this file.
"""
from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import frontends
from . import kernel_build
from . import lock as locks
from ..config import Config, runs_x_server
from ..progress import run, step
from .apt import Apt
from .cache import Cache, hash_files, hash_tree
from .common import (BUSYBOX, FILES, HERE, _busybox, _gcc, _kernel, _start_initramfs, apt_for, kernel_image,
                     recipe_hash)
from .cpio import CpioWriter
from .elf import ELF_MAGIC, closure, copy_closure, is_elf

WRITER_SRC = HERE.parent / "writer" / "xfb-writer.c"
MAPCHECK_SRC = HERE.parent / "writer" / "xfb-mapcheck.c"
# The X stress writer's guest: an X server with the fbdev driver, its keymap compiler and data, and libX11.
XORG_PACKAGES = ["xserver-xorg-core", "xserver-xorg-video-fbdev", "x11-xkb-utils", "xkb-data", "libx11-6"]
# What runs in the guest: everything else in those packages (and their ~120 dependencies) is left out.
XORG_PROGRAMS = ["/usr/lib/xorg/Xorg", "/usr/bin/xkbcomp", "/usr/lib/xorg/modules/drivers/fbdev_drv.so",
                 "/usr/lib/xorg/modules/libfbdevhw.so", "/usr/lib/xorg/modules/libshadow.so",
                 "/usr/lib/xorg/modules/libshadowfb.so", "/usr/lib/xorg/modules/libwfb.so"]
XORG_DATA = ["usr/share/X11/xkb", "usr/lib/xorg/protocol.txt", "usr/share/X11/XErrorDB"]
XWRITER = "/usr/bin/xfb-xwriter"
DOC_DIRS = ("usr/share/doc/", "usr/share/man/", "usr/share/info/", "usr/share/lintian/", "usr/share/locale/")
# What `make M=...` leaves in a module tree; a legacy.source tree's own are not copied into the build.
BUILD_PRODUCTS = ("*.ko", "*.o", "*.mod", "*.mod.c", ".*.cmd", ".*.d", "modules.order", "Module.symvers",
                  ".tmp_versions")
# This file and common.py are the recipe of every entry below but the kernel (common.py's own).
RECIPE = recipe_hash(Path(__file__))


@dataclass(frozen=True)
class Payload:
    kernel: Path  # the uncompressed guest vmlinux (xl create boots it much faster than a bzImage)
    initrd: Path  # the initramfs (newc cpio)
    key: str  # short content key of this payload (its cache entry's key): equal keys, equal files
    sizes: dict  # file name -> bytes ("vmlinux", "initrd.cpio")
    versions: dict  # guest kernel package -> version, guest_kernel -> release, for the report
    packages: dict  # every Debian package the payload is made of: name -> version


def _guest_tools(cache: Cache, log: Path) -> Path:
    """The guest's static programs: the pattern writer and the mapping checks."""
    def build(out: Path) -> None:
        for src in (WRITER_SRC, MAPCHECK_SRC):
            run(["gcc", "-static", "-O2", "-Wall", "-Wextra", "-pthread", "-o", str(out / src.stem), str(src)], log)
    return cache.entry("guest-tools", {"source": hash_files(WRITER_SRC, MAPCHECK_SRC), "gcc": _gcc(), "build": RECIPE},
                       build)


def _user_files(deb: Path) -> tuple[list[str], list[str]]:
    """A package's own paths (relative, no leading '/'), split into programs (its regular ELF files) and the rest
    (files and symlinks), without documentation."""
    programs, rest = [], []
    elf: set[str] = set()
    listing = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(listing)) as tar:
        for member in tar:  # a hard link comes after the file it names, as tar writes them
            path = member.name.removeprefix("./")
            if member.isfile() and tar.extractfile(member).read(4) == ELF_MAGIC:
                elf.add(path)
            if member.isdir() or path.startswith(DOC_DIRS):
                continue
            if path in elf or (member.islnk() and member.linkname.removeprefix("./") in elf):
                programs.append(path)
            elif member.isfile() or member.issym() or member.islnk():
                rest.append(path)
    return programs, rest


def _guest_root(cache: Cache, apt: Apt, xorg: bool, packages: list[str], log: Path) -> tuple[Path, dict]:
    """What the guest runs besides busybox and our static tools, as a tree for its initramfs: with `xorg`, Xorg with
    the fbdev driver, xkbcomp, keymaps and our X client (xfb-xwriter, linked against the guest's libX11); and every
    file of the given Debian `packages` (command.packages). Of their ~100 dependencies, only the shared libraries
    the programs load come along (harness/artifacts/elf.py). Returns the tree and the packages it came from, as
    apt resolved them (name -> version)."""
    wanted = (XORG_PACKAGES if xorg else []) + list(packages)
    resolved = apt.install_set(wanted)

    def build(out: Path) -> None:
        debs = dict(zip(sorted(resolved), apt.download_all(resolved)))  # download_all returns them sorted by name
        tree = out / "packages"
        with step(f"extract {len(debs)} packages for the guest"):
            for deb in debs.values():
                run(["dpkg-deb", "-x", str(deb), str(tree)], log)
        roots, data = [], []
        if xorg:
            # Built here, against this machine's libX11 headers; run there, against the guest's libX11 (same soname).
            run(["gcc", "-O2", "-Wall", "-Wextra", "-DXFB_X11", "-o", str(tree / XWRITER.lstrip("/")),
                 str(WRITER_SRC), "-lX11"], log)
            roots, data = XORG_PROGRAMS + [XWRITER], list(XORG_DATA)
        for name in packages:
            if name not in debs:
                raise LookupError(f"command.packages: {name!r} is not a package apt can install as such (a virtual "
                                  f"package? apt chose: {', '.join(sorted(debs))})")
            programs, rest = _user_files(debs[name])
            roots += ["/" + p for p in programs]
            data += rest
        root = out / "root"
        copy_closure(closure(tree, roots), root)
        for path in data:
            src, dest = tree / path, root / path
            if dest.exists() or dest.is_symlink():
                continue  # the closure brought it already
            dest.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir() and not src.is_symlink():
                shutil.copytree(src, dest, symlinks=True)  # links resolve in the guest, whose root this is
            else:
                shutil.copy2(src, dest, follow_symlinks=False)
        if xorg:
            (root / "etc/X11").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(FILES / "xorg.conf", root / "etc/X11/xfb-xorg.conf")
        shutil.rmtree(tree)
    inputs = {"packages": resolved, "xorg": xorg, "own": sorted(packages),
              "source": hash_files(WRITER_SRC, FILES / "xorg.conf", HERE / "elf.py"), "gcc": _gcc(), "build": RECIPE}
    return cache.entry("guest-root", inputs, build) / "root", resolved


# Building a release's modules with this machine's gcc (Debian 12's): every release's headers name the compiler
# they were built with (gcc-10 for Debian 11, gcc-14 for Debian 13). Before gcc 14, kbuild aligns functions with
# -falign-functions, as it does when CONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT is unset. Debian 13's headers ship a
# vmlinux, which would make kbuild generate BTF for the module with pahole; 6.1's do not, so it never did.
KBUILD_VARS = ("CC=gcc", "CONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT=", "CONFIG_DEBUG_INFO_BTF_MODULES=")


def _tools_runtime(apt: Apt, kbuild: str) -> dict[str, str]:
    """What the kernel's build tools need to run here, name -> version: nothing if this machine's C library is as
    new as their release's; else (Debian 13's tools need glibc 2.38) their own release's libraries, as apt
    resolves kbuild's dependencies. `kbuild` is the build tools' package as name=version."""
    host_libc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libc6"], capture_output=True, text=True,
                               check=True).stdout
    needed = subprocess.run(["dpkg", "--compare-versions", apt.version("libc6"), "gt", host_libc]).returncode == 0
    lock = locks.active()
    if needed:
        return apt.install_set([kbuild])  # guest_kernel says the payload uses them, with the headers
    if lock and lock.recording:  # a lock made here may be used on an older machine, which needs them
        apt.uses(apt.install_set([kbuild]))
    return {}


def _own_libc_for_tools(apt: Apt, runtime_packages: dict[str, str], headers: Path, runtime: Path,
                        log: Path) -> None:
    """Make the build tools (modpost, objtool, fixdep...) run on their own release's C library, through its
    loader, when they need it (_tools_runtime). --argv0 keeps each tool's own name: Debian's modpost picks the real
    modpost.real-<endianness>-<bits> by its name."""
    if not runtime_packages:
        return  # the tools run here as they are
    for deb in apt.download_all(runtime_packages):
        run(["dpkg-deb", "-x", str(deb), str(runtime)], log)
    loader = next(p for p in (runtime / "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                              runtime / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2") if p.exists())
    libraries = ":".join(str(runtime / d) for d in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"))
    for tool in sorted((headers / "usr/lib").glob("linux-kbuild-*/**/*")):
        if tool.is_file() and not tool.is_symlink() and os.access(tool, os.X_OK) and is_elf(tool):
            real = tool.with_name(f"{tool.name}.xfb-real")
            tool.rename(real)
            tool.write_text(f'#!/bin/sh\nexec {shlex.quote(str(loader))} --argv0 "$0" --library-path '
                            f'{shlex.quote(libraries)} {shlex.quote(str(real))} "$@"\n')
            tool.chmod(0o755)


# What a module build takes from the headers' dependencies as apt resolves them: the headers (the image's own and
# the common ones they include) and the build tools, all built from Debian's linux source package. The rest of
# what apt would install with them (the compiler, the C library) is this machine's.
KERNEL_BUILD_PACKAGES = ("linux-headers-", "linux-kbuild-")


@dataclass(frozen=True)
class ModuleHeaders:
    """Where out-of-tree modules for a guest kernel build: `make -C <dir> M=<module tree> <vars> modules`."""
    key: dict  # what identifies that directory, for the key of the modules built against it
    prepare: Callable[[Path], tuple[Path, tuple[str, ...]]]  # (a scratch directory) -> (the directory, make vars)
    packages: dict = field(default_factory=dict)  # the Debian packages it is made of: name -> version


def debian_header_packages(apt: Apt, image_package: str, release: str) -> dict[str, str]:
    """The packages a module build for one Debian kernel image needs, name -> version. Exact is only what must be:
    the image's own headers at the image's version. Everything else is what apt resolves from their dependencies,
    whatever versions the archive's relations allow (linux-kbuild-6.1 (>= 6.1.192-2) may well be 6.1.192-3)."""
    wanted = f"linux-headers-{release}={apt.version(image_package)}"
    resolved = apt.install_set([wanted])
    packages = {n: v for n, v in sorted(resolved.items()) if n.startswith(KERNEL_BUILD_PACKAGES)}
    if not any(n.startswith("linux-kbuild-") for n in packages):
        raise LookupError(f"{wanted} depends on no linux-kbuild package, as apt resolves it: {sorted(resolved)}")
    return packages


def _debian_headers(apt: Apt, image_package: str, release: str, log: Path) -> ModuleHeaders:
    """The exact guest kernel's headers from Debian's packages, and this machine's gcc."""
    packages = debian_header_packages(apt, image_package, release)
    kbuild = next(f"{n}={v}" for n, v in packages.items() if n.startswith("linux-kbuild-"))
    runtime = _tools_runtime(apt, kbuild)  # known before the build: part of the key, and of what a lock holds

    def prepare(scratch: Path) -> tuple[Path, tuple[str, ...]]:
        root = scratch / "headers"
        for deb in apt.download_all(packages):
            run(["dpkg-deb", "-x", str(deb), str(root)], log)
        kdir = root / "usr/src" / f"linux-headers-{release}"
        # The arch headers include the common ones by absolute path; point it into our tree.
        makefile = kdir / "Makefile"
        makefile.write_text(makefile.read_text().replace("/usr/src/", f"{root}/usr/src/"))
        _own_libc_for_tools(apt, runtime, root, scratch / "runtime", log)
        return kdir, KBUILD_VARS
    return ModuleHeaders({"kernel": release, "packages": packages, "tools_runtime": runtime}, prepare,
                         {**runtime, **packages})


def _frontend_modules(cache: Cache, headers: ModuleHeaders, source: Path, log: Path) -> Path:
    """Every module the tree at `source` builds (<module name>.ko each: our old-design frontend's two builds, or a
    user's module), built against the guest kernel. The entry is keyed by every file of the tree, so a patched
    copy is a different entry."""
    if not source.is_dir():
        raise FileNotFoundError(f"frontend module sources not found at {source}")

    def build(out: Path) -> None:
        scratch = out / "scratch"
        scratch.mkdir()
        kdir, make_vars = headers.prepare(scratch)
        src = out / "src"
        # Without what an earlier build in that tree left: only this build's .ko files may count as built.
        shutil.copytree(source, src, symlinks=True, ignore=shutil.ignore_patterns(*BUILD_PRODUCTS))
        run(["make", "-C", str(kdir), f"M={src}", *make_vars, "modules"], log)
        for built in sorted(src.rglob("*.ko")):  # kbuild names a module after its file, with '-' as '_'
            shutil.copyfile(built, out / f"{built.stem.replace('-', '_')}.ko")
        for tree in (scratch, src):
            shutil.rmtree(tree)
    inputs = {**headers.key, "source": hash_tree(source), "gcc": _gcc(), "build": RECIPE}
    return cache.entry("frontend-modules", inputs, build)


@dataclass(frozen=True)
class GuestKernel:
    entry: Path  # a cache entry with vmlinux and version (the release, e.g. 6.1.0-56-amd64)
    versions: dict  # what the report says of it
    headers: ModuleHeaders | None  # what frontend modules build against; None: none needed, or no module support
    packages: dict  # the Debian packages it is made of, headers included: name -> version


def guest_kernel(cfg: Config, cache: Cache, log: Path) -> GuestKernel:
    """The guest kernel a config asks for: built from source, the user's own image, or a Debian package."""
    # The same Apt as the guest's userspace when the suite is ''.
    kernel_apt = apt_for(cache, cfg["apt.sources"], log, cfg["guest.kernel_suite"], cfg["apt.snapshot"])
    packages = {}
    if cfg["guest.kernel_source"]:
        spec = kernel_build.SourceSpec(cfg["guest.kernel_source"], cfg["guest.kernel_config"],
                                       tuple(cfg["guest.kernel_patches"]))
        entry = kernel_build.source_kernel(cache, kernel_apt, spec, log)
        built = entry / "build"
        headers = ModuleHeaders({"kernel_build": entry.name}, lambda scratch: (built, ())) if built.is_dir() else None
        versions = {"kernel_source": spec.describe()}
        if spec.package:
            packages[spec.package] = versions[spec.package] = kernel_apt.version(spec.package)
    elif cfg["guest.kernel_image"]:
        entry = kernel_build.image_kernel(cache, Path(cfg["guest.kernel_image"]), log)
        tree = Path(cfg["guest.kernel_build_tree"]) if cfg["guest.kernel_build_tree"] else None
        # The image too: a rebuilt kernel with a changed header need not change .config or Module.symvers.
        headers = (ModuleHeaders({**kernel_build.build_tree_identity(tree), "image": entry.name},
                                 lambda scratch: (tree, ())) if tree else None)
        versions = {"kernel_image": cfg["guest.kernel_image"]}
    else:
        asked = cfg["guest.kernel_package"]
        package = kernel_image(kernel_apt, asked, "guest.kernel_package")
        entry = _kernel(cache, kernel_apt, package, [], log)  # the guest loads no module of the kernel's own
        # Only a module frontend needs headers: a kernel whose headers are gone still runs the others.
        headers = (_debian_headers(kernel_apt, package, (entry / "version").read_text(), log)
                   if frontends.module_frontend(cfg) else None)
        packages = {package: kernel_apt.version(package), **(headers.packages if headers else {})}
        versions = {package: packages[package]}
        if asked != package:  # a metapackage: which kernel it stood for at build time
            versions["guest.kernel_package"] = f"{asked} -> {package}"
    kernel_apt.uses(packages)
    return GuestKernel(entry, {**versions, "guest_kernel": (entry / "version").read_text()}, headers, packages)


def _payload(cache: Cache, apt: Apt, kernel: Path, tools: Path, module: Path | None, root: Path | None,
             log: Path) -> Path:
    def build(out: Path) -> None:
        busybox = _busybox(apt, out)
        # The 63 MB vmlinux is the kernel entry's own file, hard-linked: no copy, no extra space, and the payload
        # entry still holds both files a host uploads (and survives the kernel entry being deleted). Both are in
        # the cache's directory, so one file system; a copy only if linking is refused anyway.
        try:
            os.link(kernel / "vmlinux", out / "vmlinux")
        except OSError:
            shutil.copyfile(kernel / "vmlinux", out / "vmlinux")
        with open(out / "initrd.cpio", "wb") as f:
            cpio = CpioWriter(f)
            _start_initramfs(cpio, busybox, ("bin", "dev", "proc", "sys", "tmp"))
            # Every applet: guest-init needs a dozen, a command workload may want any (a shell loop with dd, seq...).
            applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout
            for applet in applets.split():
                if applet not in ("busybox", "init"):  # /init is ours
                    cpio.symlink(f"bin/{applet}", "busybox")
            for program in ("xfb-writer", "xfb-mapcheck"):
                cpio.file(f"bin/{program}", (tools / program).read_bytes(), 0o755)
            if module is not None:  # only the module this guest's init loads (guest-init: /modules/$xfb_module.ko)
                cpio.directory("modules")
                cpio.file(f"modules/{module.name}", module.read_bytes())
            if root is not None:
                cpio.tree(root)
            cpio.file("init", (FILES / "guest-init").read_bytes(), 0o755)
            cpio.close()
        sizes = {name: (out / name).stat().st_size for name in ("vmlinux", "initrd.cpio")}
        (out / "sizes.json").write_text(json.dumps(sizes) + "\n")  # for benchmarks/e2e_times.py
        shutil.rmtree(out / "bb")
    # Entry names are the keys of what they were built from (package versions, sources, compiler, recipes).
    inputs = {"kernel": kernel.name, "tools": tools.name, "busybox": apt.version(BUSYBOX),
              "module": f"{module.parent.name}/{module.name}" if module else None,
              "root": root.parent.name if root else None,
              "recipe": hash_files(FILES / "guest-init", HERE / "cpio.py"), "build": RECIPE}
    return cache.entry("guest-payload", inputs, build)


def build_payload(cfg: Config, cache: Cache, log: Path) -> Payload:
    """Build (or find in the cache) what a host boots one guest with."""
    apt = apt_for(cache, cfg["apt.sources"], log, snapshot=cfg["apt.snapshot"])  # the guest's userspace
    kernel = guest_kernel(cfg, cache, log)
    tools = _guest_tools(cache, log)
    module = None
    spec = frontends.module_frontend(cfg)
    if spec is not None:
        if kernel.headers is None:
            raise FileNotFoundError(f"{cfg.source}: frontend {cfg['frontend']!r} is a module, and the guest kernel "
                                    f"({kernel.versions['guest_kernel']}) was built without module support "
                                    f"(CONFIG_MODULES)")
        built = _frontend_modules(cache, kernel.headers, spec.source, log)
        module = built / f"{spec.name}.ko"
        if not module.is_file():
            found = sorted(p.stem for p in built.glob("*.ko")) or ["none"]
            key = "legacy.source" if spec.ours else "module.name"
            raise FileNotFoundError(
                f"{cfg.source}: {key}: the tree {str(spec.source)!r} built no module {spec.name!r}, which frontend "
                f"{cfg['frontend']!r} loads; it built: {', '.join(found)}")
    xorg = runs_x_server(cfg)
    packages = cfg["command.packages"] if cfg["writer.kind"] == "command" else []
    root, userspace = _guest_root(cache, apt, xorg, packages, log) if xorg or packages else (None, {})
    entry = _payload(cache, apt, kernel.entry, tools, module, root, log)
    userspace = {BUSYBOX: apt.version(BUSYBOX), **userspace}
    apt.uses(userspace)
    lock = locks.active()
    locked = {"lock": lock.source} if lock and not lock.recording else {}  # the run says it was locked
    return Payload(kernel=entry / "vmlinux", initrd=entry / "initrd.cpio", key=entry.name.rsplit("-", 1)[1],
                   sizes=json.loads((entry / "sizes.json").read_text()), versions={**kernel.versions, **locked},
                   packages={**kernel.packages, **userspace})
