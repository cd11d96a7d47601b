"""Initramfs or disk for the X writer's guest? Boots the same X root both ways on the real stack and prints the
figures; asserts nothing. This is how the choice in harness/artifacts/build.py (initramfs) was made.

  initramfs: busybox, our init and the X root in one cpio, loaded by `xl create` with the kernel;
  disk:      busybox, our init and the modules for a Xen block device and ext4 in a small cpio, and the X root
             as an ext4 image behind xen-blkfront (QEMU's qdisk backend in dom0), mounted and chrooted into.

For each, N guests are started one after the other, and we time `xl create` to "the X server answers" (the X
client's --probe), from here and from the guest's uptime. Uses the cache of configs/xorg-upstream.yaml.
Measured 2026-11-25: initramfs 20.0 MiB, X answers 6.0 s after `xl create` (3.5 s of guest uptime); the disk
variant needs a 4.4 MiB initramfs plus a 90 MiB ext4 image, and did not boot in our minimal dom0: with the qdisk
backend no vbd device reached the guest, and the kernel backend (xen-blkback, loop) needs the block hotplug
script, which timed out there. So: initramfs.
Usage: .venv/bin/python benchmarks/xorg_boot_media.py [--boots N]
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from harness import config
from harness.artifacts import build
from harness.artifacts.apt import Apt
from harness.artifacts.cache import Cache, default_cache_dir
from harness.artifacts.cpio import CpioWriter
from harness.artifacts.kernel import kernel_version, module_load_order
from harness.guest import NAME, xl_config
from harness.hosts.nested import NestedHost

ROOT = Path(__file__).resolve().parents[1]
BLOCK_MODULES = ["xen-blkfront", "ext4"]

COMMON = """#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "XFB-T init $(cut -d' ' -f1 /proc/uptime)"
"""
START_X = """mkdir -p $R/tmp $R/var/lib/xkb
chroot $R /usr/lib/xorg/Xorg :0 -config /etc/X11/xfb-xorg.conf -noreset -nolisten tcp -nocursor -s 0 -dpms \\
    -novtswitch -sharevts -logfile /tmp/Xorg.0.log vt1 > /dev/null 2>&1 &
chroot $R /usr/bin/xfb-xwriter --probe 120 --display :0 --fb /dev/fb0 && echo "XFB-T x $(cut -d' ' -f1 /proc/uptime)"
poweroff -f
"""
INIT_RAM = COMMON + "R=/\n" + START_X
INIT_DISK = COMMON + """for m in $(cat /modules.order); do insmod "/$m"; done
i=0; while [ ! -b /dev/xvda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
mkdir -p /mnt && mount -o ro /dev/xvda /mnt && echo "XFB-T mounted $(cut -d' ' -f1 /proc/uptime)"
# If the disk never came, say what the guest saw (modules, xenbus devices, kernel messages).
[ -b /dev/xvda ] || { cat /proc/modules; ls /sys/bus/xen/devices; dmesg | tail -20; }
for d in tmp var/lib/xkb; do mount -t tmpfs tmpfs /mnt/$d; done
for d in dev proc sys; do mount -o bind /$d /mnt/$d; done
R=/mnt
""" + START_X


def cpio(path: Path, busybox: Path, init: str, tree: Path | None = None, modules: tuple[Path, list] = None):
    with open(path, "wb") as f:
        c = CpioWriter(f)
        build._start_initramfs(c, busybox, ("bin", "dev", "proc", "sys", "mnt"))
        for applet in ("sh", "mount", "mkdir", "cat", "cut", "echo", "sleep", "insmod", "chroot", "poweroff", "ls",
                       "dmesg", "tail"):
            c.symlink(f"bin/{applet}", "busybox")
        c.file("init", init.encode(), 0o755)
        if tree is not None:
            c.tree(tree)
        if modules is not None:  # flat, in load order: the kernel makes no parent directories while unpacking
            base, order = modules
            c.directory("modules")
            names = [f"modules/{i:02d}-{rel.name}" for i, rel in enumerate(order)]
            for name, rel in zip(names, order):
                c.file(name, (base / rel).read_bytes())
            c.file("modules.order", "".join(f"{name}\n" for name in names).encode())
        c.close()


def boot(host: NestedHost, cfg, ramdisk: str, disk: str | None, log: Path) -> tuple[float, dict]:
    xl = xl_config(cfg, host).replace(f'ramdisk = "{host.guest_dir}/initrd.cpio"', f'ramdisk = "{ramdisk}"')
    if disk:
        xl += f'disk = [ "format=raw,vdev=xvda,access=ro,backendtype=qdisk,target={disk}" ]\n'
    local = log.with_suffix(".cfg")
    local.write_text(xl)
    host.put(local, "/tmp/bench.cfg")
    start = time.monotonic()
    console = host.console(["xl", "create", "-c", "/tmp/bench.cfg"], log)
    marks, took = {}, None
    try:
        while took is None:
            try:
                line = console.read_line(180)
            except EOFError:
                raise RuntimeError(f"the guest stopped before X answered:\n{console.tail(40)}") from None
            if line is None:
                raise TimeoutError(f"no X within 180 s; see {log}")
            m = re.search(r"XFB-T (\w+) ([0-9.]+)", line)
            if m:
                marks[m[1]] = float(m[2])
                if m[1] == "x":
                    took = time.monotonic() - start
    finally:
        console.close()
        host.exec(["xl", "destroy", NAME], check=False)
    return took, marks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--boots", type=int, default=3)
    ap.add_argument("--only", choices=("initramfs", "disk"), help="boot one variant only")
    args = ap.parse_args()
    cfg = config.load(ROOT / "configs" / "xorg-upstream.yaml")
    cache = Cache(default_cache_dir())
    with tempfile.TemporaryDirectory(prefix="xfb-media-") as tmp:
        tmp = Path(tmp)
        log = tmp / "build.log"
        artifacts = build.build_all(cfg, cache, log)
        apt = Apt(cache.root / "apt", Path(cfg["apt.sources"]), log)
        xroot = build._xorg_root(cache, apt, log)
        busybox = build._busybox(apt, tmp)
        ktree = apt.extract(cfg["guest.kernel_package"], tmp / "kernel")
        order = module_load_order(ktree, kernel_version(ktree), BLOCK_MODULES, log)
        cpio(tmp / "ram.cpio", busybox, INIT_RAM, tree=xroot)
        cpio(tmp / "disk.cpio", busybox, INIT_DISK, modules=(ktree, order))
        stage = tmp / "xroot-disk"
        shutil.copytree(xroot, stage, symlinks=True)
        for d in ("bin", "dev", "proc", "sys", "tmp", "var/lib/xkb"):
            (stage / d).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(busybox, stage / "bin/busybox")  # X runs xkbcomp through /bin/sh
        (stage / "bin/busybox").chmod(0o755)
        (stage / "bin/sh").symlink_to("busybox")
        build._ext4_image(stage, tmp / "xroot.img", "xfb-xroot", log)
        sizes = {"initramfs with X": (tmp / "ram.cpio").stat().st_size,
                 "initramfs for the disk": (tmp / "disk.cpio").stat().st_size,
                 "ext4 disk with X": (tmp / "xroot.img").stat().st_size}
        for name, size in sizes.items():
            print(f"{name}: {size / 2**20:.1f} MiB")
        with NestedHost(cfg, artifacts, tmp) as host:
            for name in ("ram.cpio", "disk.cpio", "xroot.img"):
                host.put(tmp / name, f"/tmp/{name}")
            for variant, ramdisk, disk in (("initramfs", "/tmp/ram.cpio", None),
                                           ("disk", "/tmp/disk.cpio", "/tmp/xroot.img")):
                if args.only and variant != args.only:
                    continue
                walls, guest = [], []
                for i in range(args.boots):
                    try:
                        took, marks = boot(host, cfg, ramdisk, disk, tmp / f"{variant}-{i}.log")
                    except (RuntimeError, TimeoutError) as e:
                        print(f"{variant} boot {i + 1}: did not reach X: {e}")
                        break
                    walls.append(took)
                    guest.append(marks["x"])
                    print(f"{variant} boot {i + 1}: xl create -> X answers {took:.2f} s; guest uptime at init "
                          f"{marks['init']:.2f} s" + (f", disk mounted {marks['mounted']:.2f} s" if disk else "")
                          + f", X answers {marks['x']:.2f} s")
                if not walls:
                    continue
                print(f"{variant}: median {statistics.median(walls):.2f} s from xl create, "
                      f"{statistics.median(guest):.2f} s of guest uptime")


if __name__ == "__main__":
    main()
