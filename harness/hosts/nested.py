"""The nested Xen host: Xen and a PV dom0 booted under QEMU on this machine, then used like any other host,
over SSH (`dom0()`), exactly as `host.kind: ssh` uses a real one.

Like QEMU's own machine.py, the host is a context manager whose exit always shuts the VM down; a failed boot
raises HostError with the command line and the last console lines. The outer QEMU also gets PDEATHSIG, so even a
SIGKILLed harness cannot leave it running, and its private temp dir is removed by the next start.
"""
from __future__ import annotations

import collections
import ctypes
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pexpect
from qemu.qmp.legacy import QEMUMonitorProtocol

from ..artifacts.host import HostArtifacts
from ..artifacts.mounts import remove_tree
from ..tmpdirs import private_tmpdir, prune_stale
from ..progress import say, step
from .base import HostError
from .dom0 import Dom0
from .ssh import SSHSession

QEMU = "qemu-system-x86_64"
READY = "XFB-DOM0-READY"
TMP_PREFIX = "xfb-nested-"
# Lines that mean the stack is dead: no point waiting for a timeout.
FATAL = re.compile(r"XFB-DOM0-FAIL.*|Kernel panic.*|Panic on CPU \d+.*|\(XEN\) \*\*\*\*+.*|FATAL TRAP.*")
PR_SET_PDEATHSIG = 1
# Under TCG, with AVX on, data in dom0 gets corrupted once several processes are busy (seen: SSH "Mismatched MAC"
# while the device model served VNC; gone with AVX and XSAVE off, 10 of 10 transfers clean). Corrupted vector
# state could as well corrupt the device model's pixel copies, so the oracle must not run with it.
TCG_CPU = "max,xsave=off,avx=off,avx2=off"


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qemu_version() -> str:
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "unknown"


def _kvm_runs_xen(xen: Path, workdir: Path) -> tuple[bool, str]:
    """Boot Xen alone under KVM: it must reach dom0 construction (and panic for lack of one).

    /dev/kvm may exist and still be unable to run Xen (e.g. kvm_pvm here), so its presence proves nothing.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    log = workdir / "kvm-probe.log"
    cmd = [QEMU, "-accel", "kvm", "-cpu", "host", "-m", "512", "-display", "none", "-no-reboot",
           "-serial", f"file:{log}", "-monitor", "none", "-kernel", str(xen),
           "-append", "console=com1 com1=115200,8n1 noreboot"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20, preexec_fn=_die_with_parent,
                              start_new_session=True)
        note = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    except subprocess.TimeoutExpired:
        note = "timed out"
    text = log.read_text(errors="replace") if log.exists() else ""
    if "Xen version" in text and re.search(r"(?i)dom0", text):
        return True, "Xen reached dom0 construction under KVM"
    return False, f"Xen did not boot under KVM ({note})"


def choose_accel(wanted: str, xen: Path, workdir: Path) -> tuple[str, str]:
    if wanted == "tcg":
        return "tcg", "TCG (set in config)"
    ok, why = _kvm_runs_xen(xen, workdir)
    if ok:
        return "kvm", f"KVM ({why})"
    if wanted == "kvm":
        raise HostError(f"host.accel is 'kvm' but KVM cannot run Xen here: {why}")
    return "tcg", f"TCG, because {why}"


class NestedHost:
    """`host` is the config's host section (a dict), so two scenarios with the same host settings share one."""

    def __init__(self, host: dict, artifacts: HostArtifacts, log_dir: Path):
        self.host, self.art, self.log_dir = host, artifacts, Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.child: pexpect.spawn | None = None
        self.qmp: QEMUMonitorProtocol | None = None
        for stale in prune_stale(TMP_PREFIX):  # left by a harness that was SIGKILLed
            say(f"removed {stale}, left by a harness that no longer runs")
        self.tmp = private_tmpdir(TMP_PREFIX)
        self.serial_log = self.log_dir / "serial.log"
        self.recent: collections.deque[str] = collections.deque(maxlen=60)
        self.drain: threading.Thread | None = None
        self.description = ""
        self.accel = ""
        self.ssh_port = 0

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> "NestedHost":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def command(self, accel: str, ssh_port: int) -> list[str]:
        h, a = self.host, self.art
        for p in (a.dom0_kernel, a.dom0_initrd):
            if "," in str(p):
                raise HostError(f"path {p} contains a comma, which QEMU's multiboot -initrd cannot take")
        xen_args = (f"console=com1 com1=115200,8n1 dom0_mem={h['dom0_memory_mb']}M,"
                    f"max:{h['dom0_memory_mb']}M loglvl=all guest_loglvl=all noreboot")
        if accel == "tcg":
            xen_args += " smap=0 smep=0"  # without them dom0 dies at once under TCG (#PF in create_bounce_frame)
        if h["xen_cmdline"]:
            xen_args += " " + h["xen_cmdline"]
        dom0_args = "root=/dev/vda console=hvc0 earlyprintk=xen"
        cpu = TCG_CPU if accel == "tcg" else "host"
        return [
            QEMU, "-accel", accel, "-cpu", cpu, "-m", str(h["memory_mb"]), "-smp", str(h["cpus"]),
            "-display", "none", "-no-reboot", "-monitor", "none", "-serial", "stdio",
            "-qmp", f"unix:{self.tmp / 'qmp.sock'},server=on,wait=off",
            "-kernel", str(a.xen), "-append", xen_args,
            "-initrd", f"{a.dom0_kernel} {dom0_args},{a.dom0_initrd}",
            # snapshot=on: dom0 may write to its disk, but the cached image is never modified.
            "-drive", f"file={a.dom0_image},if=virtio,format=raw,snapshot=on",
            # SSH is the only way in, on 127.0.0.1 only; guests' VNC and QMP are forwarded through it.
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
            "-device", "virtio-net-pci,netdev=net0",
        ]

    def start(self) -> None:
        self.accel, why = choose_accel(self.host["accel"], self.art.xen, self.tmp)
        say(f"accelerator: {why}")
        self.ssh_port = free_port()
        cmd = self.command(self.accel, self.ssh_port)
        (self.log_dir / "qemu-command.txt").write_text(" ".join(cmd) + "\n")
        self.description = f"nested: {qemu_version()} ({self.accel.upper()}), Xen {self.art.xen_version}"
        deadline = time.monotonic() + self.host["boot_timeout"]
        with step("boot Xen and dom0"):
            # pexpect puts QEMU in a session of its own, so Ctrl-C reaches only the harness, which then
            # shuts QEMU down in order.
            self.child = pexpect.spawn(cmd[0], cmd[1:], encoding="utf-8", codec_errors="replace",
                                       preexec_fn=_die_with_parent, timeout=None, maxread=65536)
            self.child.logfile_read = open(self.serial_log, "w", buffering=1)
            (self.log_dir / "qemu.pid").write_text(f"{self.child.pid}\n")  # lets tests prove it is gone
            self._wait_ready(deadline, cmd)
            self.drain = threading.Thread(target=self._drain, daemon=True, name="serial-drain")
            self.drain.start()
            # Prove SSH answers within the boot deadline; each dom0() opens its own connection.
            self.dom0(deadline=deadline).ssh.close()
        self.qmp = QEMUMonitorProtocol(str(self.tmp / "qmp.sock"))
        self.qmp.connect()
        self.qmp.settimeout(30)

    def known_hosts(self) -> Path:
        """dom0's host key, pinned at build time, for the port this boot forwards."""
        path = self.tmp / "known_hosts"
        path.write_text(f"[127.0.0.1]:{self.ssh_port} {self.art.ssh_host_key_pub}\n")
        return path

    def dom0(self, workdir: str = "/tmp", deadline: float | None = None) -> Dom0:
        """A fresh SSH connection into dom0, the same way `host.kind: ssh` reaches a real host."""
        ssh = SSHSession("127.0.0.1", self.ssh_port, "root", self.art.ssh_client_key, self.known_hosts())
        ssh.connect(deadline or time.monotonic() + 60)
        return Dom0(ssh, self.description, workdir, console_tail=self.console_tail)

    def _wait_ready(self, deadline: float, cmd: list[str]) -> None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HostError(f"Xen/dom0 did not boot within {self.host['boot_timeout']} s "
                                f"(host.boot_timeout); QEMU: {' '.join(cmd)}", self.console_tail())
            try:
                self.child.expect(["\n", pexpect.EOF], timeout=min(left, 5))
            except pexpect.TIMEOUT:
                continue
            if self.child.match is pexpect.EOF:
                raise HostError(f"QEMU exited during boot; command: {' '.join(cmd)}", self.console_tail())
            line = self.child.before.strip("\r")
            self.recent.append(line)
            if READY in line:
                return
            fatal = FATAL.search(line)
            if fatal:
                self._gather_after_fatal()
                raise HostError(f"the nested stack crashed during boot: {fatal.group(0)}", self.console_tail())

    def _gather_after_fatal(self) -> None:
        """A panic prints its backtrace after the first line: keep a little more for the error message."""
        end = time.monotonic() + 2
        while time.monotonic() < end:
            try:
                self.child.expect(["\n", pexpect.EOF], timeout=0.5)
                self.recent.append(self.child.before.strip("\r"))
                if self.child.match is pexpect.EOF:
                    return
            except pexpect.TIMEOUT:
                return

    def _drain(self) -> None:
        """After boot nobody waits on the serial console, but it must be read: QEMU stalls on a full pty."""
        while self.child is not None and self.child.isalive():
            try:
                self.child.expect(["\n", pexpect.EOF], timeout=1)
                self.recent.append(self.child.before.strip("\r"))
                if self.child.match is pexpect.EOF:
                    return
            except pexpect.TIMEOUT:
                continue
            except (OSError, ValueError):
                return

    def close(self) -> None:
        """Always safe, always complete: QMP, QEMU itself and our temp dir, whatever state we are in."""
        if self.child is not None:
            if self.child.isalive() and self.qmp is not None:
                try:
                    self.qmp.cmd_raw("quit")
                except Exception:
                    pass
            try:
                self.child.expect(pexpect.EOF, timeout=3)
            except Exception:
                pass
            if self.child.isalive():
                self.child.terminate(force=True)
            self.child.close(force=True)
            if self.child.logfile_read:
                self.child.logfile_read.close()
            self.child = None
        if self.qmp is not None:
            try:
                self.qmp.close()
            except Exception:
                pass
            self.qmp = None
        remove_tree(self.tmp)

    def console_tail(self, lines: int = 30) -> str:
        return "\n".join(list(self.recent)[-lines:])
