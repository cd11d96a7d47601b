"""The nested Xen host: Xen and a PV dom0 booted under QEMU on this machine, then used like any other host,
over SSH (`dom0()`), exactly as `host.kind: ssh` uses a real one.

Like QEMU's own machine.py, the host is a context manager whose exit always shuts the VM down; a failed boot
raises HostError with the command line and the last console lines. The outer QEMU also gets PDEATHSIG, so even a
SIGKILLed harness cannot leave it running, and its private temp dir is removed by the next start.
"""
from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pexpect
from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from ..artifacts.cache import Cache
from ..artifacts.host import HostArtifacts
from ..artifacts.mounts import remove_tree
from ..tmpdirs import private_tmpdir, prune_stale
from ..progress import say, step
from . import accel, snapshot
from .base import HostError
from .dom0 import Dom0, Share
from .preflight import PROBE
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
SHARE_TAG, SHARE_MOUNT = "xfbshare", "/run/xfb-share"
WORKDIR = "/tmp"  # where runs keep their files in a nested dom0 (tmpfs)
RESTORE_TIMEOUT_S = 30  # from QEMU's start to a dom0 that answers: a restore takes 2 s, a boot follows otherwise
# Run in dom0 over the first SSH connection, before anything else. $1: "restored" or "booted"; $2: the time
# here (epoch seconds); $3: fresh random bytes from here (hex). A restored dom0 wakes with the clock and the
# random pool of the moment the snapshot was taken: set the one, and mix new bytes into the other and force the
# kernel's generator to reseed from it (RNDRESEEDCRNG), so no two restores produce the same random numbers.
# (The pinned host key signs with Ed25519, whose signatures need no randomness: a restore cannot weaken it.)
# Then mount the payload share, and run the preflight probe (its `xl info` is what a restored host is checked by;
# the first dom0() gets its output, which saves a round trip).
SETTLE = r"""
if [ "$1" = restored ]; then
    date -s "@$2" >/dev/null || echo "xfb-settle: cannot set the clock" >&2
    printf '%s' "$3" > /dev/urandom
    perl -e 'open(my $f, ">", "/dev/urandom") or die "$!"; ioctl($f, 0x5207, 0) or die "RNDRESEEDCRNG: $!"' \
        || exit 1
fi
mkdir -p """ + SHARE_MOUNT + r"""
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose """ + SHARE_TAG + " " + SHARE_MOUNT + r""" || exit 1
shift 3
""" + PROBE


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _opt(path: Path) -> str:
    """A path as a QEMU option value: a comma there would end the value, and ",," stands for one."""
    return str(path).replace(",", ",,")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def give_up_snapshot(state: Path, why: Exception) -> None:
    """A snapshot that could not be saved costs the snapshot, not the run: nothing of it is left."""
    say(f"could not save a snapshot ({why}); going on without one")
    state.unlink(missing_ok=True)


@functools.cache  # the snapshot key, the description and the report each want it: one `--version` a run
def qemu_version() -> str:
    try:
        out = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout
    except FileNotFoundError:  # e.g. `cache prune` on a machine that only builds
        return "unknown"
    return out.splitlines()[0] if out else "unknown"


# The probe boots Xen alone, which panics for lack of a dom0 kernel as soon as it starts: under TCG here, its banner
# and that panic come 0.2-0.3 s after QEMU starts (0.4 s with both cores kept busy), and KVM only runs Xen faster.
# 5 s is over ten times that. The probe ends as soon as its answer is known, so the timeout is only waited for when
# QEMU hangs silently under KVM, and then once: the answer is cached (accel.py).
KVM_PROBE_TIMEOUT_S = 5


def _kvm_runs_xen(xen: Path, workdir: Path) -> tuple[bool, str]:
    """Boot Xen alone under KVM: it must reach dom0 construction (and panic for lack of one).

    /dev/kvm may exist and still be unable to run Xen (e.g. kvm_pvm here), so its presence proves nothing.
    """
    log, err = workdir / "kvm-probe.log", workdir / "kvm-probe.err"
    cmd = [QEMU, "-accel", "kvm", "-cpu", "host", "-m", "512", "-display", "none", "-no-reboot",
           "-serial", f"file:{log}", "-monitor", "none", "-kernel", str(xen),
           "-append", "console=com1 com1=115200,8n1 noreboot"]
    with open(err, "w") as stderr:
        qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                preexec_fn=_die_with_parent, start_new_session=True)
    deadline = time.monotonic() + KVM_PROBE_TIMEOUT_S
    try:
        while (answer := _probe_answer(qemu, log, err, deadline)) is None:
            time.sleep(0.05)
    finally:
        qemu.kill()
        qemu.wait()
    return answer


def _probe_answer(qemu: subprocess.Popen, log: Path, err: Path, deadline: float) -> tuple[bool, str] | None:
    """The probe's answer once it is known from its console and QEMU's messages, else None."""
    console = log.read_text(errors="replace") if log.exists() else ""
    if "Xen version" in console and re.search(r"(?i)dom0", console):
        return True, "Xen reached dom0 construction under KVM"
    said = err.read_text(errors="replace")
    # QEMU says what went wrong first; then comes an assertion, or a register dump after a KVM internal error (and
    # QEMU stays up, stopped). A Xen that panicked for another reason halts, and QEMU stays up too.
    lines = said.splitlines()
    error = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else "")
    if panic := re.search(r"Panic on CPU \d+:\s*\n(.+)", console):
        note = f"Xen panicked: {panic.group(1).removeprefix('(XEN) ')}"
    elif qemu.poll() is not None:
        note = error or f"QEMU exited with {qemu.returncode}"
    elif "KVM internal error" in said:
        note = error
    elif time.monotonic() > deadline:
        note = f"no answer within {KVM_PROBE_TIMEOUT_S} s"
    else:
        return None
    return False, f"Xen did not boot under KVM ({note})"


def choose_accel(wanted: str, xen: Path, workdir: Path, cache: Cache | None) -> tuple[str, str]:
    """The accelerator for host.accel (auto, kvm or tcg), and why: KVM if the probe's answer, cached or new, says
    it runs Xen."""
    if wanted == "tcg":
        return "tcg", "TCG (set in config)"
    ok, why = accel.kvm_answer(cache, accel.inputs_here(xen, qemu_version()), lambda: _kvm_runs_xen(xen, workdir))
    if ok:
        return "kvm", f"KVM, because {why}"
    if wanted == "kvm":
        raise HostError(f"host.accel is 'kvm' but KVM cannot run Xen here: {why}")
    return "tcg", f"TCG, because {why}"


class NestedHost:
    """`host` is the config's host section (a dict), so two scenarios with the same host settings share one.
    With a cache and host.snapshot on, the host is restored from a snapshot of an earlier boot when there is a
    usable one, and a boot saves one when there is none (snapshot.py)."""

    def __init__(self, host: dict, artifacts: HostArtifacts, log_dir: Path, cache: Cache | None = None):
        self.host, self.art, self.log_dir, self.cache = host, artifacts, Path(log_dir), cache
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.child: pexpect.spawn | None = None
        self.qmp: QEMUMonitorProtocol | None = None
        for stale in prune_stale(TMP_PREFIX):  # left by a harness that was SIGKILLed
            say(f"removed {stale}, left by a harness that no longer runs")
        self.tmp = private_tmpdir(TMP_PREFIX)
        self.share = Share(self.tmp / "share", SHARE_MOUNT)
        self.share.local.mkdir()
        self.serial_log = self.log_dir / "serial.log"
        self.recent: collections.deque[str] = collections.deque(maxlen=60)
        self.drain: threading.Thread | None = None
        self.description = ""
        self.accel = ""
        self.ssh_port = 0
        self.started_by = ""  # how this host came up, for the report: restored from a snapshot, or booted
        self._first: SSHSession | None = None  # the connection that proved SSH, handed to the first dom0()
        self._probe: str | None = None  # its preflight probe's output, for the first dom0()

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

    def command(self, accel: str, ssh_port: int, incoming: bool = False) -> list[str]:
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
            "-qmp", f"unix:{_opt(self.tmp / 'qmp.sock')},server=on,wait=off",
            "-kernel", str(a.xen), "-append", xen_args,
            "-initrd", f"{a.dom0_kernel} {dom0_args},{a.dom0_initrd}",
            # dom0 mounts its root read-only, so the cached image is never written, and every snapshot of a
            # booted dom0 stays true to it.
            "-drive", f"file={_opt(a.dom0_image)},if=virtio,format=raw,readonly=on",
            # Guest payloads, read-only; dom0 mounts it after boot or restore (a mounted 9p share blocks migration).
            "-fsdev", f"local,id={SHARE_TAG},path={_opt(self.share.local)},security_model=none,readonly=on",
            "-device", f"virtio-9p-pci,fsdev={SHARE_TAG},mount_tag={SHARE_TAG}",
            # SSH is the only way in, on 127.0.0.1 only; guests' VNC and QMP are forwarded through it.
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
            "-device", "virtio-net-pci,netdev=net0",
            *(["-incoming", "defer"] if incoming else []),
        ]

    def start(self) -> None:
        self.accel, why = choose_accel(self.host["accel"], self.art.xen, self.tmp, self.cache)
        say(f"accelerator: {why}")
        self.description = f"nested: {qemu_version()} ({self.accel.upper()}), Xen {self.art.xen_version}"
        inputs = None
        if self.cache is not None and self.host["snapshot"]:
            inputs = snapshot.snapshot_inputs(self.host, self.art, self.accel, qemu_version())
            entry = self.cache.find(snapshot.ENTRY, inputs)
            if entry is not None:
                try:
                    why_not = snapshot.unusable(entry, self.art)
                    if not why_not:
                        saved = f"{entry.name} (saved {snapshot.age(entry)} ago)"  # read now: it may go meanwhile
                        with step("restore Xen and dom0"):
                            self._restore(entry)
                        self.started_by = f"restored from snapshot {saved}"
                        say(f"host {self.started_by}")
                        return
                except Exception as e:  # whatever it was, a boot follows (an interrupt still stops the run)
                    text = e.message if isinstance(e, HostError) else f"{type(e).__name__}: {e}"
                    why_not = f"the restore failed: {text}"  # the console is in serial.log
                    self._close_first()
                    self._stop_qemu()
                say(f"not restoring snapshot {entry.name}: {why_not}; booting instead, and saving a new one")
                self.cache.discard(entry)
        self._boot(inputs)

    def _boot(self, snapshot_inputs: dict | None) -> None:
        """Boot Xen and dom0; with snapshot_inputs, save a snapshot of it into the cache on the way."""
        self.ssh_port = free_port()
        cmd = self.command(self.accel, self.ssh_port)
        deadline = time.monotonic() + self.host["boot_timeout"]
        with step("boot Xen and dom0"):
            self._spawn(cmd)
            self._wait_ready(deadline, cmd)
            self._start_drain()
            self._connect_qmp(deadline)
            saving = (self.cache.saving(snapshot.ENTRY, snapshot_inputs) if snapshot_inputs is not None
                      else contextlib.nullcontext(None))
            saved = False
            with saving as entry:
                if entry is not None:  # else another run is saving one right now, or no snapshots wanted
                    saved = self._save_state(entry / snapshot.STATE, deadline)
                # Prove SSH within the boot deadline; the connection serves the first dom0().
                facts = self._settle(deadline, restored=False)
                if saved:
                    try:
                        snapshot.write_meta(entry, self.art, facts)
                    except OSError as e:  # e.g. a full disk
                        give_up_snapshot(entry / snapshot.STATE, e)
                        saved = False
        self.started_by = f"booted, saved snapshot {self.cache.path(snapshot.ENTRY, snapshot_inputs).name}" \
            if saved else "booted"

    def _restore(self, entry: Path) -> None:
        """Start QEMU paused for an incoming migration, feed it the saved state, and check the dom0 it gives."""
        self.ssh_port = free_port()
        cmd = self.command(self.accel, self.ssh_port, incoming=True)
        deadline = time.monotonic() + RESTORE_TIMEOUT_S
        self._spawn(cmd)
        self._start_drain()
        self._connect_qmp(deadline)
        with open(entry / snapshot.STATE, "rb") as state:
            # The file goes to QEMU as a descriptor over QMP: no path, no shell.
            self.qmp.send_fd_scm(state.fileno())
            self.qmp.cmd("getfd", fdname="snapshot")
            self.qmp.cmd("migrate-incoming", uri="fd:snapshot")
            while (status := self._qmp_status(deadline)) == "inmigrate":
                time.sleep(0.05)
        if status != "paused":  # it was saved stopped, and comes back so
            raise HostError(f"QEMU is {status!r} after loading the snapshot", self.console_tail())
        self.qmp.cmd("cont")
        facts = self._settle(deadline, restored=True)
        if differ := snapshot.facts_differ(snapshot.saved_facts(entry), facts):
            raise HostError(f"the restored host is not the one saved: {differ}")

    def _spawn(self, cmd: list[str]) -> None:
        (self.log_dir / "qemu-command.txt").write_text(" ".join(cmd) + "\n")
        # pexpect puts QEMU in a session of its own, so Ctrl-C reaches only the harness, which then shuts QEMU
        # down in order.
        self.child = pexpect.spawn(cmd[0], cmd[1:], encoding="utf-8", codec_errors="replace",
                                   preexec_fn=_die_with_parent, timeout=None, maxread=65536)
        self.child.logfile_read = open(self.serial_log, "a", buffering=1)
        (self.log_dir / "qemu.pid").write_text(f"{self.child.pid}\n")  # lets tests prove it is gone

    def _connect_qmp(self, deadline: float) -> None:
        """QEMU creates the socket as it starts: wait for it (or for QEMU's death)."""
        sock = self.tmp / "qmp.sock"
        while not sock.exists():
            if not self.child.isalive():
                raise HostError("QEMU exited as it started", self.console_tail())
            if time.monotonic() > deadline:
                raise HostError("QEMU's QMP socket did not appear", self.console_tail())
            time.sleep(0.02)
        self.qmp = QEMUMonitorProtocol(str(sock))
        self.qmp.connect()
        self.qmp.settimeout(30)

    def _qmp_status(self, deadline: float) -> str:
        if time.monotonic() > deadline:
            raise HostError(f"QEMU did not load the snapshot within {RESTORE_TIMEOUT_S} s", self.console_tail())
        try:
            return self.qmp.cmd("query-status")["status"]
        except Exception as e:  # QEMU exits when a migration stream turns out bad
            time.sleep(0.2)  # let its last words reach the console log
            said = "; ".join(line.split(": ", 1)[-1] for line in self.recent if line.startswith(QEMU))
            raise HostError(f"QEMU stopped while loading the snapshot ({said or type(e).__name__})",
                            self.console_tail()) from None

    def _save_state(self, path: Path, deadline: float) -> bool:
        """Stop the VM, write its migration stream to path, and let it go on: it is the host this run uses.
        A failure costs the snapshot (nothing is left at path), not the run."""
        try:
            with step("save a snapshot of the booted host"):
                self.qmp.cmd("stop")
                # The default bandwidth limit (128 MiB/s) is for live migration over a network; this is a file.
                self.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 64 << 30})
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # dom0's RAM holds its keys
                try:
                    self.qmp.send_fd_scm(fd)
                    self.qmp.cmd("getfd", fdname="snapshot")
                finally:
                    os.close(fd)
                self.qmp.cmd("migrate", uri="fd:snapshot")
                while (info := self.qmp.cmd("query-migrate")).get("status") not in ("completed", "failed",
                                                                                   "cancelled"):
                    if time.monotonic() > deadline:
                        self.qmp.cmd("migrate_cancel")
                        raise HostError("it did not finish within the boot deadline")
                    time.sleep(0.05)
                if info["status"] != "completed":
                    raise HostError(info.get("error-desc", info["status"]))
            return True
        except (HostError, QMPError, OSError, TimeoutError) as e:
            give_up_snapshot(path, e)
            return False
        finally:
            self._resume(deadline)

    def _resume(self, deadline: float) -> None:
        """After a save: the VM runs on (a failure here is the host's, and ends the run as an ERROR)."""
        while (status := self.qmp.cmd("query-status")["status"]) == "finish-migrate":
            if time.monotonic() > deadline:
                raise HostError("QEMU did not leave finish-migrate after saving the snapshot")
            time.sleep(0.02)
        if status != "running":
            self.qmp.cmd("cont")

    def _settle(self, deadline: float, restored: bool) -> dict:
        """The first SSH connection: prove dom0 answers with its pinned key, set it up (SETTLE), and return its
        facts from `xl info`. The connection is kept for the first dom0()."""
        ssh = self._connect(deadline)
        try:
            out = ssh.exec(["sh", "-c", SETTLE, "sh", "restored" if restored else "booted", str(int(time.time())),
                            secrets.token_hex(64), WORKDIR], timeout=max(deadline - time.monotonic(), 5), check=False)
            if out.rc != 0:
                raise HostError(f"setting up dom0 failed (exit {out.rc}): {out.stderr.strip()[-500:]}")
        except BaseException:
            ssh.close()
            raise
        self._first, self._probe = ssh, out.stdout + out.stderr
        return snapshot.parse_facts(out.stdout)

    def _connect(self, deadline: float) -> SSHSession:
        """An SSH connection into dom0, its host key checked against the pinned one."""
        ssh = SSHSession("127.0.0.1", self.ssh_port, "root", self.art.ssh_client_key, self.known_hosts())
        ssh.connect(deadline)
        return ssh

    def known_hosts(self) -> Path:
        """dom0's host key, pinned at build time, for the port this boot forwards."""
        path = self.tmp / "known_hosts"
        path.write_text(f"[127.0.0.1]:{self.ssh_port} {self.art.ssh_host_key_pub}\n")
        return path

    def dom0(self) -> Dom0:
        """A fresh SSH connection into dom0 (the first one: the connection start() proved SSH with, and its
        preflight probe), the same way `host.kind: ssh` reaches a real host; guest payloads go through the share."""
        ssh, probe, self._first, self._probe = self._first, self._probe, None, None
        if ssh is None:
            ssh = self._connect(time.monotonic() + 60)
        return Dom0(ssh, self.description, WORKDIR, console_tail=self.console_tail, share=self.share,
                    disposable=True, probe=probe)

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

    def _start_drain(self) -> None:
        self.drain = threading.Thread(target=self._drain, args=(self.child,), daemon=True, name="serial-drain")
        self.drain.start()

    def _drain(self, child: pexpect.spawn) -> None:
        """After boot nobody waits on the serial console, but it must be read: QEMU stalls on a full pty. This
        QEMU's only: after a failed restore, the boot's QEMU has a drain of its own."""
        while child.isalive():
            try:
                child.expect(["\n", pexpect.EOF], timeout=1)
                self.recent.append(child.before.strip("\r"))
                if child.match is pexpect.EOF:
                    return
            except pexpect.TIMEOUT:
                continue
            except (OSError, ValueError):
                return

    def close(self) -> None:
        """Always safe, always complete: SSH, QMP, QEMU itself and our temp dir, whatever state we are in."""
        self._close_first()
        self._stop_qemu()
        remove_tree(self.tmp)

    def _close_first(self) -> None:
        if self._first is not None:
            self._first.close()
            self._first, self._probe = None, None

    def _stop_qemu(self) -> None:
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
            if self.drain is not None:
                self.drain.join(2)
                self.drain = None
            if self.child.logfile_read:
                self.child.logfile_read.close()
            self.child = None
        if self.qmp is not None:
            try:
                self.qmp.close()
            except Exception:
                pass
            self.qmp = None
        (self.tmp / "qmp.sock").unlink(missing_ok=True)

    def console_tail(self, lines: int = 30) -> str:
        return "\n".join(list(self.recent)[-lines:])
