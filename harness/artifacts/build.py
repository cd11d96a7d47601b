"""The artifact recipe: config -> Xen, dom0 kernel + initramfs + disk, guest tools (writer, mapping checks), for the
X writer an X server and the X client, guest payload disk.

Every entry's cache key holds the package versions it came from, the config values it used and a hash of our
own files that shape it, so changing any of them rebuilds it and nothing stale is reused.
"""
from __future__ import annotations

import functools
import gzip
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..progress import run, step
from .apt import Apt
from .cache import Cache, hash_files
from .cpio import CpioWriter
from .elf import closure, copy_closure
from .kernel import bzimage, extract_vmlinux, kernel_version, module_load_order

HERE = Path(__file__).resolve().parent
FILES = HERE.parent / "files"
WRITER_SRC = HERE.parent / "writer" / "xfb-writer.c"
MAPCHECK_SRC = HERE.parent / "writer" / "xfb-mapcheck.c"
LEGACY_SRC = HERE.parent.parent / "guest-kernels" / "xenfb-legacy"
# frontend -> the module the guest loads (None: the kernel's built-in driver)
LEGACY_MODULES = {"upstream": None, "legacy": "xenfb_legacy", "legacy-fixed": "xenfb_legacy_fixed"}

DOM0_MODULES = ["virtio_blk", "virtio_pci", "ext4", "virtio_net",
                "xenfs", "xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-privcmd"]
DOM0_EXTRA_PACKAGES = ["xenstore-utils", "qemu-system-xen", "kmod", "iproute2", "mount", "procps",
                       "openssh-server", "socat"]
BUSYBOX = "busybox-static"
# The X stress writer's guest: an X server with the fbdev driver, its keymap compiler and data, and libX11.
XORG_PACKAGES = ["xserver-xorg-core", "xserver-xorg-video-fbdev", "x11-xkb-utils", "xkb-data", "libx11-6"]
# What runs in the guest: everything else in those packages (and their ~120 dependencies) is left out.
XORG_PROGRAMS = ["/usr/lib/xorg/Xorg", "/usr/bin/xkbcomp", "/usr/lib/xorg/modules/drivers/fbdev_drv.so",
                 "/usr/lib/xorg/modules/libfbdevhw.so", "/usr/lib/xorg/modules/libshadow.so",
                 "/usr/lib/xorg/modules/libshadowfb.so", "/usr/lib/xorg/modules/libwfb.so"]
XORG_DATA = ["usr/share/X11/xkb", "usr/lib/xorg/protocol.txt", "usr/share/X11/XErrorDB"]
XWRITER = "/usr/bin/xfb-xwriter"
# This file is the recipe of every entry below: any change to it rebuilds them all, so none is stale.
RECIPE = hash_files(Path(__file__))


@dataclass(frozen=True)
class Artifacts:
    xen: Path
    dom0_kernel: Path
    dom0_initrd: Path
    dom0_image: Path
    payload_image: Path  # ext4 disk with the guest kernel and initramfs, mounted at /guest in dom0
    ssh_host_key_pub: str
    ssh_client_key: Path
    xen_version: str  # e.g. "4.17", for /usr/lib/xen-<version>
    versions: dict  # package -> version, for the report


def xen_series(package: str) -> str:
    m = re.fullmatch(r"xen-hypervisor-(\d+\.\d+)-amd64", package)
    if not m:
        raise ValueError(f"host.xen_package {package!r}: expected a name like xen-hypervisor-4.17-amd64")
    return m.group(1)


def _ext4_image(src: Path, image: Path, label: str, log: Path) -> None:
    used = int(subprocess.run(["du", "-sm", str(src)], capture_output=True, text=True).stdout.split()[0])
    size_mb = int(used * 1.25) + 64  # room for ext4 metadata and dom0's few writes
    run(["mkfs.ext4", "-q", "-F", "-L", label, "-E", "root_owner=0:0", "-d", str(src), str(image), f"{size_mb}M"],
        log)


def _xen(cache: Cache, apt: Apt, package: str, log: Path) -> Path:
    def build(out: Path) -> None:
        tree = apt.extract(package, out / "deb")
        gz = next((tree / "boot").glob("xen-*.gz"))
        # QEMU's multiboot loader wants the plain 32-bit ELF.
        (out / "xen").write_bytes(gzip.decompress(gz.read_bytes()))
        shutil.rmtree(out / "deb")
    return cache.entry("xen", {"package": package, "version": apt.version(package), "build": RECIPE}, build) / "xen"


def _kernel(cache: Cache, apt: Apt, package: str, log: Path) -> Path:
    """Kernel image, vmlinux and the dom0 module set, out of one linux-image package."""
    def build(out: Path) -> None:
        tree = apt.extract(package, out / "deb")
        version = kernel_version(tree)
        shutil.copyfile(bzimage(tree, version), out / "vmlinuz")
        extract_vmlinux(out / "vmlinuz", out / "vmlinux")
        order = module_load_order(tree, version, DOM0_MODULES, log)
        for rel in order:
            (out / "modules" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tree / rel, out / "modules" / rel)
        (out / "modules.order").write_text("".join(f"{rel}\n" for rel in order))
        (out / "version").write_text(version)
        shutil.rmtree(out / "deb")
    inputs = {"package": package, "version": apt.version(package), "modules": DOM0_MODULES,
              "recipe": hash_files(HERE / "kernel.py"), "build": RECIPE}
    return cache.entry("kernel", inputs, build)


def _busybox(apt: Apt, dest: Path) -> Path:
    tree = apt.extract(BUSYBOX, dest / "bb")
    return tree / "bin" / "busybox"


def _start_initramfs(cpio: CpioWriter, busybox: Path, directories: tuple[str, ...]) -> None:
    """What both our initramfs images begin with: the top directories, the console node, busybox."""
    for d in directories:
        cpio.directory(d)
    cpio.char_device("dev/console", 5, 1)  # the kernel opens it before /init runs; devtmpfs is not there yet
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)


def _dom0_initrd(cache: Cache, apt: Apt, kernel: Path, log: Path) -> Path:
    def build(out: Path) -> None:
        busybox = _busybox(apt, out)
        with open(out / "initrd.cpio", "wb") as f:
            cpio = CpioWriter(f)
            _start_initramfs(cpio, busybox, ("bin", "dev", "proc", "sys", "newroot"))
            cpio.file("init", (FILES / "dom0-initramfs-init").read_bytes(), 0o755)
            cpio.file("modules.order", (kernel / "modules.order").read_bytes())
            cpio.tree(kernel / "modules" / "lib", "lib")
            cpio.close()
        shutil.rmtree(out / "bb")
    inputs = {"kernel": kernel.name, "busybox": apt.version(BUSYBOX),
              "recipe": hash_files(FILES / "dom0-initramfs-init", HERE / "cpio.py"), "build": RECIPE}
    return cache.entry("dom0-initrd", inputs, build) / "initrd.cpio"


def _dom0_image(cache: Cache, apt: Apt, cfg: Config, series: str, log: Path) -> Path:
    from .keys import make_keypair
    packages = [f"xen-utils-{series}", "xen-utils-common", *DOM0_EXTRA_PACKAGES]
    sources = Path(cfg["apt.sources"])

    def build(out: Path) -> None:
        if os.geteuid() != 0:
            raise PermissionError("building the dom0 image needs root (mmdebstrap --mode=root); run the build as "
                                  "root once, later runs reuse the cached image")
        root = out / "rootfs"
        with step("mmdebstrap dom0 root filesystem"):
            run(["mmdebstrap", "--mode=root", "--variant=essential", f"--include={','.join(packages)}",
                 cfg["apt.suite"], str(root), str(sources)], log)
        init = (FILES / "dom0-init").read_text().replace("@XEN_VERSION@", series)
        (root / "usr/local/sbin/xfb-dom0-init").write_text(init)
        (root / "usr/local/sbin/xfb-dom0-init").chmod(0o755)
        for old in (root / "etc/ssh").glob("ssh_host_*"):
            old.unlink()
        shutil.copyfile(FILES / "sshd_config", root / "etc/ssh/sshd_config")
        host_pub = make_keypair(root / "etc/ssh/ssh_host_ed25519_key")
        (root / "etc/ssh/ssh_host_ed25519_key.pub").write_text(host_pub + "\n")
        client_pub = make_keypair(out / "client_key")
        (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
        (root / "root/.ssh/authorized_keys").write_text(client_pub + "\n")
        (out / "host_key.pub").write_text(host_pub + "\n")
        with step("mkfs.ext4 dom0 disk"):
            _ext4_image(root, out / "dom0.img", "xfb-dom0", log)
        shutil.rmtree(root)
    inputs = {"suite": cfg["apt.suite"], "packages": {p: apt.version(p) for p in packages},
              "sources": sources.read_text(),
              "recipe": hash_files(FILES / "dom0-init", FILES / "sshd_config", HERE / "keys.py"), "build": RECIPE}
    return cache.entry("dom0-image", inputs, build)


@functools.cache
def _gcc() -> str:
    """The compiler's version line: part of the key of everything we compile."""
    return subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]


def _guest_tools(cache: Cache, log: Path) -> Path:
    """The guest's static programs: the pattern writer and the mapping checks."""
    def build(out: Path) -> None:
        for src in (WRITER_SRC, MAPCHECK_SRC):
            run(["gcc", "-static", "-O2", "-Wall", "-Wextra", "-pthread", "-o", str(out / src.stem), str(src)], log)
    return cache.entry("guest-tools", {"source": hash_files(WRITER_SRC, MAPCHECK_SRC), "gcc": _gcc(), "build": RECIPE},
                       build)


def _xorg_root(cache: Cache, apt: Apt, log: Path) -> Path:
    """The X writer's part of the guest: Xorg with the fbdev driver, xkbcomp, keymaps and the X client
    (xfb-xwriter, linked against the guest's libX11), with only the shared libraries they load."""
    packages = apt.install_set(XORG_PACKAGES)

    def build(out: Path) -> None:
        debs = apt.download_all(packages)
        tree = out / "packages"
        with step(f"extract {len(debs)} X packages"):
            for deb in debs:
                run(["dpkg-deb", "-x", str(deb), str(tree)], log)
        # Built here, against this machine's libX11 headers; run there, against the guest's libX11 (same soname).
        run(["gcc", "-O2", "-Wall", "-Wextra", "-DXFB_X11", "-o", str(tree / XWRITER.lstrip("/")), str(WRITER_SRC),
             "-lX11"], log)
        root = out / "root"
        files = closure(tree, XORG_PROGRAMS + [XWRITER])
        copy_closure(files, root)
        for data in XORG_DATA:
            src, dest = tree / data, root / data
            dest.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dest, symlinks=True)  # links resolve in the guest, whose root this is
            else:
                shutil.copy2(src, dest)
        (root / "etc/X11").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FILES / "xorg.conf", root / "etc/X11/xfb-xorg.conf")
        shutil.rmtree(tree)
    inputs = {"packages": packages, "source": hash_files(WRITER_SRC, FILES / "xorg.conf", HERE / "elf.py"),
              "gcc": _gcc(), "build": RECIPE}
    return cache.entry("xorg-root", inputs, build) / "root"


def _legacy_modules(cache: Cache, apt: Apt, image_package: str, kernel: Path, log: Path) -> Path:
    """Our old-design frontend, built against the exact guest kernel's headers from Debian's packages."""
    version = (kernel / "version").read_text()  # e.g. 6.1.0-56-amd64
    abi, flavour = version.rsplit("-", 1)
    series = ".".join(version.split(".")[:2])  # 6.1
    source_version = apt.version(image_package)  # headers and kbuild must match the image exactly
    packages = [f"linux-headers-{version}", f"linux-headers-{abi}-common", f"linux-kbuild-{series}"]
    if not LEGACY_SRC.is_dir():
        raise FileNotFoundError(f"frontend module sources not found at {LEGACY_SRC}")
    sources = [p for p in sorted(LEGACY_SRC.iterdir()) if p.is_file()]

    def build(out: Path) -> None:
        root = out / "headers"
        for package in packages:
            apt.extract(package, root, source_version)
        kdir = root / "usr/src" / f"linux-headers-{version}"
        # The arch headers include the common ones by absolute path; point it into our tree.
        makefile = kdir / "Makefile"
        makefile.write_text(makefile.read_text().replace("/usr/src/", f"{root}/usr/src/"))
        src = out / "src"
        shutil.copytree(LEGACY_SRC, src)
        run(["make", "-C", str(kdir), f"M={src}", "modules"], log)
        for name in LEGACY_MODULES.values():
            if name:
                shutil.copyfile(src / f"{name.replace('_', '-')}.ko", out / f"{name}.ko")  # file vs module name
        shutil.rmtree(root)
        shutil.rmtree(src)
    inputs = {"kernel": version, "version": source_version, "packages": packages,
              "source": hash_files(*sources), "build": RECIPE}
    return cache.entry("legacy-modules", inputs, build)


def _payload(cache: Cache, apt: Apt, kernel: Path, tools: Path, modules: Path | None, xorg: Path | None,
             log: Path) -> Path:
    def build(out: Path) -> None:
        busybox = _busybox(apt, out)
        disk = out / "disk"
        disk.mkdir()
        shutil.copyfile(kernel / "vmlinux", disk / "vmlinux")
        with open(disk / "initrd.cpio", "wb") as f:
            cpio = CpioWriter(f)
            _start_initramfs(cpio, busybox, ("bin", "dev", "proc", "sys", "tmp"))
            for applet in ("sh", "mount", "grep", "stty", "poweroff", "cat", "echo", "sleep", "insmod", "rmmod",
                           "ls", "mkdir"):
                cpio.symlink(f"bin/{applet}", "busybox")
            for program in ("xfb-writer", "xfb-mapcheck"):
                cpio.file(f"bin/{program}", (tools / program).read_bytes(), 0o755)
            if modules is not None:
                cpio.directory("modules")
                for ko in sorted(modules.glob("*.ko")):
                    cpio.file(f"modules/{ko.name}", ko.read_bytes())
            if xorg is not None:
                cpio.tree(xorg)
            cpio.file("init", (FILES / "guest-init").read_bytes(), 0o755)
            cpio.close()
        sizes = {name: (disk / name).stat().st_size for name in ("vmlinux", "initrd.cpio")}
        (out / "sizes.json").write_text(json.dumps(sizes) + "\n")  # for benchmarks/e2e_times.py
        _ext4_image(disk, out / "payload.img", "xfb-guest", log)
        shutil.rmtree(disk)
        shutil.rmtree(out / "bb")
    inputs = {"kernel": kernel.name, "tools": tools.name, "busybox": apt.version(BUSYBOX),
              "modules": modules.name if modules else None, "xorg": xorg.parent.name if xorg else None,
              "recipe": hash_files(FILES / "guest-init", HERE / "cpio.py"), "build": RECIPE}
    return cache.entry("guest-payload", inputs, build) / "payload.img"


def build_all(cfg: Config, cache: Cache, log: Path) -> Artifacts:
    cache.prune_stale_tmp()
    apt = Apt(cache.root / "apt", Path(cfg["apt.sources"]), log)
    apt.update()
    series = xen_series(cfg["host.xen_package"])
    xen = _xen(cache, apt, cfg["host.xen_package"], log)
    dom0_kernel = _kernel(cache, apt, cfg["host.dom0_kernel_package"], log)
    guest_kernel = _kernel(cache, apt, cfg["guest.kernel_package"], log)
    dom0_initrd = _dom0_initrd(cache, apt, dom0_kernel, log)
    dom0 = _dom0_image(cache, apt, cfg, series, log)
    tools = _guest_tools(cache, log)
    modules = None
    if LEGACY_MODULES[cfg["frontend"]]:
        modules = _legacy_modules(cache, apt, cfg["guest.kernel_package"], guest_kernel, log)
    xorg = _xorg_root(cache, apt, log) if cfg["writer.kind"] == "xorg" else None
    payload = _payload(cache, apt, guest_kernel, tools, modules, xorg, log)
    versions = {p: apt.version(p) for p in (cfg["host.xen_package"], cfg["host.dom0_kernel_package"],
                                            cfg["guest.kernel_package"], f"xen-utils-{series}",
                                            "qemu-system-xen")}
    versions["dom0_kernel"] = (dom0_kernel / "version").read_text()
    versions["guest_kernel"] = (guest_kernel / "version").read_text()
    return Artifacts(xen=xen, dom0_kernel=dom0_kernel / "vmlinuz", dom0_initrd=dom0_initrd,
                     dom0_image=dom0 / "dom0.img", payload_image=payload,
                     ssh_host_key_pub=(dom0 / "host_key.pub").read_text().strip(),
                     ssh_client_key=dom0 / "client_key", xen_version=series, versions=versions)
