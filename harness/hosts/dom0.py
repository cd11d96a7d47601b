"""A running Xen dom0 reached over one SSH connection: what guests need from a host, for both kinds of host.

On someone else's machine the harness touches only what it created. Everything it creates carries the session's
unique name: one directory `<workdir>/xfb-harness-<session>/` (uploads, guest configs, screendumps) and domains
named `xfb-harness-<session>-<n>`, each written to that directory's `domains` file before `xl create`.

Cleanup lives in one place, a small guard script in dom0 started over the same SSH connection. It waits for
EOF on its stdin; it gets that when we close it at the end of a run, and also when the connection drops or the
harness dies (sshd closes the session's pipes). Then it destroys the domains named in `domains` (only those;
it never lists domains) and removes the session directory. `xenfb-harness host clean` finds what a guard could
not clean (dom0 rebooted mid-run, guard killed) by the same names.
"""
from __future__ import annotations

import gzip
import hashlib
import itertools
import os
import re
import secrets
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..config import workdir_problem
from ..progress import say
from .base import Console, ExecResult, HostError
from .preflight import PROBE, Preflight, judge
from .ssh import SSHSession

PREFIX = "xfb-harness-"
GUARD_WAIT_S = 60  # for the guard's `xl destroy` of our domains at the end
GUARD_NAME = "xfb-harness-guard"  # the guard's $0: how `host clean` tells a live guard from a reused pid
# $1 = session directory. The names in `domains` are ours (PREFIX + session + n); quoted, never evaluated.
GUARD = r"""
root=$1
echo $$ > "$root/guard.pid"
cat > /dev/null
exec >/dev/null 2>&1  # the connection may be gone: a command writing there would die of SIGPIPE mid-destroy
if [ -f "$root/domains" ]; then
    while read -r name; do
        xl domid "$name" >/dev/null 2>&1 && xl destroy "$name"
    done < "$root/domains"
fi
rm -rf -- "$root"
"""
# Lists our session directories under $1 with, for each, whether its guard is alive and which of its domains
# still exist. Only reads.
LEFTOVERS = r"""
for dir in "$1"/""" + PREFIX + r"""*; do
    [ -d "$dir" ] || continue
    pid=$(cat "$dir/guard.pid" 2>/dev/null)
    alive=no
    [ -n "$pid" ] && grep -q """ + GUARD_NAME + r""" "/proc/$pid/cmdline" 2>/dev/null && alive=yes
    echo "dir $dir guard=$alive"
    [ -f "$dir/domains" ] || continue
    while read -r name; do
        xl domid "$name" >/dev/null 2>&1 && echo "domain $name"
    done < "$dir/domains"
done
"""
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
# $1 = a guest's domain name, $2 = its directory, $3 = the session's `domains` file: the guard's list.
REGISTER = 'mkdir -- "$2" && printf "%s\\n" "$1" >> "$3"'


@dataclass(frozen=True)
class Share:
    """A directory here that dom0 has mounted read-only (a nested host's virtio-9p share): payloads reach dom0
    through it rather than through SSH, which carries 1-2 MB/s into a TCG dom0."""
    local: Path
    remote: str


@dataclass(frozen=True)
class GuestSlot:
    """Where one guest lives on the host: its domain name and its own directory."""
    name: str
    dir: str


def session_id() -> str:
    """Unique to this run: the local host name (sanitised), our pid and random bits."""
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:16] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class Dom0:
    def __init__(self, ssh: SSHSession, description: str, workdir: str,
                 console_tail: Callable[[int], str] | None = None, share: Share | None = None,
                 disposable: bool = False, probe: str | None = None):
        """disposable: the host goes away with this run (a nested host we booted), so the end of the session
        does not wait for cleanup inside it. probe: the preflight probe's output if it was run already."""
        if problem := workdir_problem(workdir):
            raise HostError(f"host.workdir {workdir!r}: expected {problem} (it goes into xl's configuration file)")
        self.ssh, self.description, self.workdir = ssh, description, workdir.rstrip("/")  # "/" -> "": no "//"
        self._console_tail = console_tail
        self.share, self.disposable, self._probe = share, disposable, probe
        self._ending: list = []  # `xl destroy`s under way (end_guest), waited for before the next guest
        self.session = session_id()
        self.root = f"{self.workdir}/{PREFIX}{self.session}"
        self.guard = None
        self.preflight: Preflight | None = None
        self.versions: dict = {}  # for the report: Xen and dom0 kernel as the host says, artifacts of a nested one
        self.packages: dict = {}  # a nested one's Debian packages (name -> version); what a real host runs is its own
        self._numbers = itertools.count(1)
        self._uploads: dict[str, str] = {}  # content hash -> remote path, so a host uploads each payload once

    # -- session ------------------------------------------------------------------------------------------
    def open(self, need_memory_mb: int) -> None:
        """Preflight, then our session directory and its guard. Nothing is created if preflight fails."""
        self.check(need_memory_mb)
        self.create_session()

    def check(self, need_memory_mb: int) -> Preflight:
        workdir = self.workdir or "/"
        if self._probe is None:
            probe = self.ssh.exec(["sh", "-c", PROBE, "sh", workdir], timeout=60, check=False)
            self._probe = probe.stdout + probe.stderr
        self.preflight = judge(self._probe, need_memory_mb, workdir, self.description)
        self._probe = None  # a later check() looks again
        for line in self.preflight.report().splitlines():
            say(f"preflight: {line}")
        if not self.preflight.ok:
            raise HostError("the Xen host cannot run the guest:\n  " + "\n  ".join(self.preflight.problems))
        self.versions.update(xen=self.preflight.facts["xen_version"], dom0_kernel=self.preflight.facts["dom0_kernel"])
        if "Xen" not in self.description:
            self.description += f", Xen {self.preflight.facts['xen_version']}"
        return self.preflight

    def create_session(self) -> None:
        self.ssh.exec(["mkdir", "-m", "0700", "--", self.root])  # fails if it exists: never someone else's
        if self.disposable:
            return  # nothing in it outlives the host, which dies with us (even SIGKILLed: PDEATHSIG)
        self.guard = self.ssh.start(["sh", "-c", GUARD, GUARD_NAME, self.root])
        deadline = time.monotonic() + 20
        while self.exec(["test", "-s", f"{self.root}/guard.pid"], check=False).rc != 0:
            if time.monotonic() > deadline:
                raise HostError(f"the cleanup guard did not start in {self.root}")
            time.sleep(0.1)

    def close(self) -> None:
        """The guard destroys our domains and removes our directory; wait for it when the connection lives."""
        if self.disposable:
            self.ssh.close()  # the guard and everything else in dom0 go with the host
            return
        self.wait_ended()
        if self.guard is not None:
            try:
                self.guard.shutdown_write()
                if not self.guard.status_event.wait(GUARD_WAIT_S):
                    say(f"warning: the cleanup guard in {self.root} is still busy after {GUARD_WAIT_S} s")
                elif (status := self.guard.recv_exit_status()) == -1:  # the channel closed with no status
                    say(f"the connection to the host is gone; its guard cleans up {self.root} by itself")
                elif status != 0:
                    say(f"warning: the cleanup guard in {self.root} reported a failure (exit {status})")
            except Exception as e:  # a dropped connection: the guard cleans up by itself on EOF
                say(f"warning: could not wait for the cleanup guard ({e}); it cleans up on its own")
            self.guard.close()
            self.guard = None
        self.ssh.close()

    def __enter__(self) -> "Dom0":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- guests -----------------------------------------------------------------------------------------------
    def start_guest(self, xl_config: Callable[[str], str], log: Path) -> tuple[GuestSlot, Console]:
        """A fresh name and directory, registered with the guard before the domain can exist, then its xl
        configuration (xl_config(name)) written into it, `xl create`, and its console: one command, where each
        costs a round trip into a TCG dom0. Not `xl create -c`, whose
        console child sleeps a second before it attaches while the domain waits paused; xenconsoled keeps what
        the guest prints until a console attaches, so nothing is lost."""
        slot = self._next_slot()
        script = REGISTER + (' && printf "%s" "$4" > "$2/guest.cfg" && xl create "$2/guest.cfg" && '
                             'exec xl console "$1"')
        console = self.ssh.console(["sh", "-c", script, "sh", slot.name, slot.dir, f"{self.root}/domains",
                                    xl_config(slot.name)], log)
        return slot, console

    def _next_slot(self) -> GuestSlot:
        self.wait_ended()  # the memory of the guest before
        n = next(self._numbers)
        return GuestSlot(f"{PREFIX}{self.session}-{n}", f"{self.root}/guest-{n}")

    def end_guest(self, slot: GuestSlot) -> None:
        """Destroy the guest's domain if it exists and remove its directory (the guard would, at the end).
        Returns at once: destroying takes seconds (the device model goes too), and the next guest's slot or
        close() waits for it."""
        self._ending.append(self.ssh.start(["sh", "-c", 'xl domid "$1" >/dev/null 2>&1 && xl destroy "$1"; '
                                            'rm -rf -- "$2"', "sh", slot.name, slot.dir]))

    def wait_ended(self) -> None:
        for channel in self._ending:
            if not channel.status_event.wait(GUARD_WAIT_S):
                say(f"warning: destroying a guest took more than {GUARD_WAIT_S} s")
            channel.close()
        self._ending = []

    def upload(self, local: Path) -> str:
        """Make a file readable in dom0, once per session (by content); returns its path there.

        Through the share when there is one (a link to the file: nothing is copied). Else over SSH, sent
        gzip-compressed and unpacked in dom0: a 66 MB guest vmlinux took 8.8 s over SFTP into a TCG dom0, 6.8 s
        piped into gzip, and 3.2 s this way (it compresses to 19%; 1.2 s to send, 2.0 s to unpack).
        """
        data = local.read_bytes()
        digest = hashlib.sha256(data).hexdigest()[:16]
        if digest in self._uploads:
            return self._uploads[digest]
        name = f"upload-{digest}-{local.name}"
        if self.share is not None:
            _link_or_copy(local, self.share.local / name)
            remote = f"{self.share.remote}/{name}"
        else:
            remote = f"{self.root}/{name}"
            self.exec(["sh", "-c", 'cat > "$1.gz" && gzip -d "$1.gz"', "sh", remote],
                      stdin=gzip.compress(data, compresslevel=1), timeout=600)
        self._uploads[digest] = remote
        return remote

    # -- plumbing for the rest of the harness -------------------------------------------------------------
    def exec(self, argv: list[str], timeout: float = 60, check: bool = True, stdin: bytes | None = None
             ) -> ExecResult:
        return self.ssh.exec(argv, timeout=timeout, check=check, stdin=stdin)

    def get(self, remote: str, local: Path) -> None:
        self.ssh.get(remote, local)

    @contextmanager
    def forward_tcp(self, port: int, address: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
        with self.ssh.forward_tcp(address, port) as local:
            yield local

    @contextmanager
    def forward_unix(self, path: str) -> Iterator[str]:
        with self.ssh.forward_unix(path) as local:
            yield local

    def console_tail(self, lines: int = 30) -> str:
        return self._console_tail(lines) if self._console_tail else ""

    def save_guest_logs(self, slot: GuestSlot, dest: Path) -> None:
        """The device model's and xl's logs of this guest, and the hypervisor's log, into dest/dom0-logs."""
        out = dest / "dom0-logs"
        out.mkdir(exist_ok=True)
        listing = self.exec(["sh", "-c", 'ls /var/log/xen/*"$1"* 2>/dev/null', "sh", slot.name], check=False)
        for remote in listing.stdout.split():
            try:
                self.get(remote, out / remote.strip("/").replace("/", "_"))
            except HostError:
                pass
        (out / "xl-dmesg.txt").write_text(self.exec(["xl", "dmesg"], timeout=20, check=False).stdout)


def _link_or_copy(src: Path, dst: Path) -> None:
    """dst appears complete or not at all (its name says its content: one that exists is the right one)."""
    if dst.exists():
        return
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}")
    try:
        os.link(src, tmp)
    except OSError:  # another file system
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def leftovers(ssh: SSHSession, workdir: str) -> list[tuple[str, bool, list[str]]]:
    """Session directories of ours under workdir: (directory, guard alive, domains of it that still exist)."""
    out = ssh.exec(["sh", "-c", LEFTOVERS, "sh", workdir.rstrip("/")], timeout=60, check=False).stdout
    found: list[tuple[str, bool, list[str]]] = []
    for line in out.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "dir":
            path, _, guard = rest.rpartition(" ")
            found.append((path, guard == "guard=yes", []))
        elif kind == "domain" and found:
            found[-1][2].append(rest)
    return found


def clean(ssh: SSHSession, workdir: str) -> list[str]:
    """Remove what dead runs left: their domains (by the names they registered) and directories. A directory
    whose guard is still alive belongs to a running harness and is left alone. Returns what was done."""
    done = []
    for path, alive, domains in leftovers(ssh, workdir):
        if not path.startswith(f"{workdir.rstrip('/')}/{PREFIX}"):
            continue
        if alive:
            done.append(f"kept {path}: its run is still going (guard alive)")
            continue
        for name in domains:
            if not SAFE_NAME.fullmatch(name) or not name.startswith(PREFIX):
                continue  # not one of our names: never touch it
            ssh.exec(["xl", "destroy", name], timeout=60, check=False)
            done.append(f"destroyed domain {name}")
        ssh.exec(["rm", "-rf", "--", path], timeout=60, check=False)
        done.append(f"removed {path}")
    return done
