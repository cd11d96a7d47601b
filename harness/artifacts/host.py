"""The host recipe: config -> Xen, the dom0 kernel and its initramfs, the dom0 root filesystem as an ext4 disk
with the SSH keys that pin the control channel.

It reads only the host's config keys (host_inputs): what a guest runs never rebuilds or changes the host, so one
booted host can run many guests, each with its own payload (payload.py) uploaded to it.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from ..progress import run, step
from .apt import Apt
from .cache import Cache, hash_files
from .common import (BUSYBOX, FILES, HERE, _busybox, _kernel, _start_initramfs, apt_for, kernel_image,
                     recipe_hash, xen_series)
from .cpio import CpioWriter

# 9p, 9pnet_virtio: the share guest payloads reach a nested dom0 through (hosts/nested.py).
DOM0_MODULES = ["virtio_blk", "virtio_pci", "ext4", "virtio_net", "9pnet_virtio", "9p",
                "xenfs", "xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-privcmd"]
# socat: relays the device model's QMP socket to TCP for the harness (harness/capture.py).
DOM0_EXTRA_PACKAGES = ["xenstore-utils", "qemu-system-xen", "kmod", "iproute2", "mount", "procps",
                       "openssh-server", "socat"]
# This file and common.py are the recipe of every entry below but the kernel (common.py's own).
RECIPE = recipe_hash(Path(__file__))
# The config keys the host is made of; nothing else in the config reaches this recipe.
HOST_KEYS = ("host.xen_package", "host.dom0_kernel_package", "apt.sources", "apt.suite", "apt.snapshot")


@dataclass(frozen=True)
class HostArtifacts:
    xen: Path  # the hypervisor, a plain 32-bit ELF for QEMU's multiboot loader
    dom0_kernel: Path  # vmlinuz
    dom0_initrd: Path  # busybox cpio that loads DOM0_MODULES and switches to the dom0 disk
    dom0_image: Path  # ext4 root filesystem of dom0, mounted read-only: the cached file is never written
    ssh_host_key_pub: str  # dom0's host key, to pin
    ssh_client_key: Path  # private key root@dom0 accepts
    xen_version: str  # e.g. "4.17", for /usr/lib/xen-<version>
    versions: dict  # package -> version, and dom0_kernel -> release, for the report
    packages: dict = field(default_factory=dict)  # every Debian package the host is made of (dom0's image as
    #                                               installed): name -> version


def host_inputs(cfg: Config) -> dict:
    """Exactly the config values the host recipe reads (dotted key -> value)."""
    return {key: cfg[key] for key in HOST_KEYS}


def _xen(cache: Cache, apt: Apt, package: str, log: Path) -> Path:
    def build(out: Path) -> None:
        tree = apt.extract(package, out / "deb")
        gz = next((tree / "boot").glob("xen-*.gz"))
        # QEMU's multiboot loader wants the plain 32-bit ELF.
        (out / "xen").write_bytes(gzip.decompress(gz.read_bytes()))
        shutil.rmtree(out / "deb")
    return cache.entry("xen", {"package": package, "version": apt.version(package), "build": RECIPE}, build) / "xen"


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


def _ext4_image(src: Path, image: Path, label: str, log: Path) -> None:
    used = int(subprocess.run(["du", "-sm", str(src)], capture_output=True, text=True).stdout.split()[0])
    size_mb = int(used * 1.25) + 64  # room for ext4 metadata and the few writes made to it
    run(["mkfs.ext4", "-q", "-F", "-L", label, "-E", "root_owner=0:0", "-d", str(src), str(image), f"{size_mb}M"],
        log)


def _dom0_image(cache: Cache, apt: Apt, inp: dict, series: str, log: Path) -> Path:
    from .keys import make_keypair
    packages = [f"xen-utils-{series}", "xen-utils-common", *DOM0_EXTRA_PACKAGES]
    sources = Path(inp["apt.sources"])
    suite = inp["apt.suite"]

    def build(out: Path) -> None:
        if os.geteuid() != 0:
            raise PermissionError("building the dom0 image needs root (mmdebstrap --mode=root); run the build as "
                                  "root once, later runs reuse the cached image")
        root = out / "rootfs"
        with step("mmdebstrap dom0 root filesystem"):
            run(["mmdebstrap", "--mode=root", "--variant=essential", f"--include={','.join(packages)}",
                 suite, str(root), str(apt.sources)], log)  # the sources for that suite
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
        # What mmdebstrap installed, essential packages included: the image's own account of itself.
        listing = subprocess.run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f=${Package}=${Version}\n"],
                                 capture_output=True, text=True, check=True).stdout
        installed = dict(line.split("=", 1) for line in listing.split())
        apt.uses(installed)  # a locked run: mmdebstrap took what the archive has now, and it must be the lock's
        (out / "packages.json").write_text(json.dumps(installed, indent=1, sort_keys=True) + "\n")
        with step("mkfs.ext4 dom0 disk"):
            _ext4_image(root, out / "dom0.img", "xfb-dom0", log)
        shutil.rmtree(root)
    # Keyed by everything apt resolves those packages to, with their dependencies and the essential packages
    # mmdebstrap's essential variant adds (apt's ?essential pattern): a new libc or bash rebuilds the image.
    inputs = {"suite": suite, "packages": apt.install_set(["?essential", *packages]), "sources": sources.read_text(),
              "recipe": hash_files(FILES / "dom0-init", FILES / "sshd_config", HERE / "keys.py"), "build": RECIPE}
    return cache.entry("dom0-image", inputs, build)


def build_host(cfg: Config, cache: Cache, log: Path) -> HostArtifacts:
    """Build (or find in the cache) everything the nested host boots."""
    inp = host_inputs(cfg)
    # apt.suite is the host's Debian release, Xen's with it (bookworm 4.17, trixie 4.20, bullseye 4.14): the
    # sources file's own release, or the same mirrors for another one.
    apt = apt_for(cache, inp["apt.sources"], log, inp["apt.suite"], inp["apt.snapshot"])
    series = xen_series(inp["host.xen_package"])
    xen = _xen(cache, apt, inp["host.xen_package"], log)
    kernel_package = kernel_image(apt, inp["host.dom0_kernel_package"], "host.dom0_kernel_package")
    dom0_kernel = _kernel(cache, apt, kernel_package, DOM0_MODULES, log)
    dom0_initrd = _dom0_initrd(cache, apt, dom0_kernel, log)
    dom0 = _dom0_image(cache, apt, inp, series, log)
    image = json.loads((dom0 / "packages.json").read_text())
    versions = {p: apt.version(p) for p in (inp["host.xen_package"], kernel_package)}
    versions.update({p: image[p] for p in (f"xen-utils-{series}", "qemu-system-xen")})  # as installed in dom0
    if kernel_package != inp["host.dom0_kernel_package"]:  # a metapackage: which kernel it stood for
        versions["host.dom0_kernel_package"] = f"{inp['host.dom0_kernel_package']} -> {kernel_package}"
    versions["dom0_kernel"] = (dom0_kernel / "version").read_text()
    packages = {**image, inp["host.xen_package"]: versions[inp["host.xen_package"]],
                kernel_package: versions[kernel_package], BUSYBOX: apt.version(BUSYBOX)}
    apt.uses(packages)
    return HostArtifacts(xen=xen, dom0_kernel=dom0_kernel / "vmlinuz", dom0_initrd=dom0_initrd,
                         dom0_image=dom0 / "dom0.img", ssh_host_key_pub=(dom0 / "host_key.pub").read_text().strip(),
                         ssh_client_key=dom0 / "client_key", xen_version=series, versions=versions,
                         packages=dict(sorted(packages.items())))
