"""harness/hosts/dom0.py against a real OpenSSH server on 127.0.0.1 (tests/sshd.py): the session directory, the
cleanup guard, guests' names and directories, uploads, and `host clean`. There is no Xen here, so only
create_session() is used (open() would run the preflight), and the "remote" directories are local paths.

Without xl, `xl domid NAME` fails, which the scripts read as "no such domain". A second server runs with a
stand-in `xl` first on its PATH (domains are files in a directory, every call is logged), to see the guard and
clean destroy exactly the domains they should, and never list domains."""
from __future__ import annotations

import hashlib
import inspect
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from xenfb_harness.hosts import connect_ssh
from xenfb_harness.hosts.base import HostError
from xenfb_harness.hosts.dom0 import GUARD, GUARD_NAME, LEFTOVERS, PREFIX, REGISTER, Dom0, GuestSlot, Share, clean, leftovers
from xenfb_harness.hosts.nested import free_port
from xenfb_harness.hosts.ssh import SSHSession
from tests.sshd import SSHD, LocalSSHD, wait_for

pytestmark = pytest.mark.skipif(not os.path.exists(SSHD), reason="openssh-server is missing (scripts/install)")


def start_sshd(directory: Path, extra_config: str = "") -> LocalSSHD:
    server = LocalSSHD(directory)
    server.config.write_text(server.config.read_text() + extra_config)
    server.start(free_port())
    kind_and_key = " ".join(Path(f"{server.host_keys['ed25519']}.pub").read_text().split()[:2])
    (directory / "known_hosts").write_text(f"[127.0.0.1]:{server.port} {kind_and_key}\n")
    return server


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


class StandInXL:
    """An `xl` that knows only domid and destroy; a domain exists while a file of its name is in `state`. Like
    the real one, it writes to stderr before acting: where nobody reads any more, that write is its death."""

    def __init__(self, directory: Path):
        self.bin, self.state, self.log = directory / "bin", directory / "state", directory / "calls"
        self.gate = directory / "hold"  # while it exists, destroy waits (a destroy that takes its time)
        self.bin.mkdir()
        self.state.mkdir()
        script = self.bin / "xl"
        script.write_text(f"""#!/bin/sh
state={shlex.quote(str(self.state))}
printf '%s\\n' "$*" >> {shlex.quote(str(self.log))}
# as the real xl says on stderr, before anything else, on a host without /etc/xen/xl.conf
echo "Failed to read config file: /etc/xen/xl.conf: No such file or directory" >&2
case $1 in
domid) [ -e "$state/$2" ] || {{ echo "Error: Domain '$2' does not exist." >&2; exit 1; }}; echo 7 ;;
destroy) while [ -e {shlex.quote(str(self.gate))} ]; do sleep 0.02; done
    [ -e "$state/$2" ] && rm -f -- "$state/$2" ;;
create) name=$(sed -n 's/^name = "\\(.*\\)"$/\\1/p' "$2")
    grep -qx "$name" "$(dirname "$2")/../domains" || {{ echo "not registered: $name" >&2; exit 3; }}
    touch "$state/$name" ;;
console) [ -e "$state/$2" ] || exit 1; echo "console of $2"; exec cat ;;
*) echo "stand-in xl: unexpected $1" >&2; exit 2 ;;
esac
""")
        script.chmod(0o755)

    def reset(self) -> None:
        for f in self.state.iterdir():
            f.unlink()
        self.log.write_text("")
        self.gate.unlink(missing_ok=True)

    @contextmanager
    def holding_destroy(self) -> Iterator[None]:
        """`xl destroy` does not finish inside this block."""
        self.gate.touch()
        try:
            yield
        finally:
            self.gate.unlink(missing_ok=True)

    def create(self, *names: str) -> None:
        for name in names:
            (self.state / name).touch()

    def exists(self, name: str) -> bool:
        return (self.state / name).exists()

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture(scope="module")
def xl_module(tmp_path_factory):
    return StandInXL(tmp_path_factory.mktemp("xl"))


@pytest.fixture(scope="module")
def sshd_xl(tmp_path_factory, xl_module):
    server = start_sshd(tmp_path_factory.mktemp("sshd-xl"),
                        f"SetEnv PATH={xl_module.bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n")
    yield server
    server.stop()


@pytest.fixture
def xl(xl_module):
    xl_module.reset()
    return xl_module


def connect(server: LocalSSHD) -> SSHSession:
    s = SSHSession("127.0.0.1", server.port, server.user, server.client_keys["ed25519"], server.dir / "known_hosts")
    s.connect(time.monotonic() + 20)
    return s


@pytest.fixture
def opened():
    """Connects SSH sessions and opens Dom0 sessions; whatever a test left open is closed after it."""
    sessions: list[SSHSession] = []
    dom0s: list[Dom0] = []

    class Opener:
        @staticmethod
        def ssh(server: LocalSSHD) -> SSHSession:
            sessions.append(connect(server))
            return sessions[-1]

        @staticmethod
        def dom0(server: LocalSSHD, workdir: Path | str, **kwargs) -> Dom0:
            dom0 = Dom0(connect(server), "test host", str(workdir), **kwargs)
            dom0s.append(dom0)
            dom0.create_session()
            return dom0

    yield Opener
    for dom0 in dom0s:
        dom0.close()
    for s in sessions:
        s.close()


def register(dom0: Dom0) -> GuestSlot:
    """A guest's slot registered with the guard, with no domain yet: what start_guest does before `xl create`."""
    slot = dom0._next_slot()
    dom0.exec(["sh", "-c", REGISTER, "sh", slot.name, slot.dir, f"{dom0.root}/domains"])
    return slot


def remote_exists(ssh: SSHSession, path: str) -> bool:
    return ssh.exec(["test", "-e", path], check=False).rc == 0


def files_under(directory: Path) -> set[Path]:
    return {p for p in directory.rglob("*") if not p.is_dir()}


# -- the work directory and quoting --------------------------------------------------------------------------------
@pytest.mark.parametrize("workdir", ['/tmp/a"b', "/tmp/a\\b", "/tmp/a\nb", "relative/dir", ""])
def test_workdir_xl_cannot_take_is_refused(sshd, workdir):
    s = SSHSession("127.0.0.1", sshd.port, sshd.user, sshd.client_keys["ed25519"], sshd.dir / "known_hosts")
    with pytest.raises(HostError, match="host.workdir"):
        Dom0(s, "test host", workdir)


def test_session_and_guests_in_a_workdir_full_of_shell_syntax(sshd, opened, tmp_path):
    marker = tmp_path / "PWNED-xyz"
    m = str(marker)
    # Slashes in the injected commands nest it into several directories: still one literal path.
    name = (f"a b;c $(touch {m}) `touch {m}` && touch {m} | touch {m} * ' ; touch {m} ; ' $HOME ~ #x "
            f"> {m} ; touch {m}")
    workdir = tmp_path / name
    workdir.mkdir(parents=True)
    (workdir / "bystander").write_text("not ours\n")
    other = opened.ssh(sshd)

    dom0 = opened.dom0(sshd, str(workdir) + "/")
    root = Path(dom0.root)
    assert root.parent == workdir and root.name == f"{PREFIX}{dom0.session}"
    assert sorted(p.name for p in workdir.iterdir()) == sorted(["bystander", root.name])
    assert root.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in root.iterdir()) == ["guard.pid"]

    first, second = register(dom0), register(dom0)
    assert (first.name, first.dir) == (f"{PREFIX}{dom0.session}-1", f"{dom0.root}/guest-1")
    assert (second.name, second.dir) == (f"{PREFIX}{dom0.session}-2", f"{dom0.root}/guest-2")
    assert Path(first.dir).is_dir() and Path(second.dir).is_dir()
    assert (root / "domains").read_text() == f"{first.name}\n{second.name}\n"
    assert leftovers(other, str(workdir)) == [(dom0.root, True, [])]  # no xl: no domain exists

    dom0.end_guest(first)
    dom0.wait_ended()  # end_guest returns at once
    assert not Path(first.dir).exists() and Path(second.dir).is_dir()

    dom0.close()
    assert not remote_exists(other, dom0.root)
    assert [p.name for p in workdir.iterdir()] == ["bystander"]
    assert (workdir / "bystander").read_text() == "not ours\n"
    assert not marker.exists()
    assert files_under(tmp_path) == {workdir / "bystander"}  # nothing else appeared anywhere under it


def test_session_directory_is_never_someone_elses(sshd, tmp_path):
    dom0 = Dom0(connect(sshd), "test host", str(tmp_path))
    try:
        Path(dom0.root).mkdir()
        (Path(dom0.root) / "theirs").write_text("x")
        with pytest.raises(HostError, match="mkdir"):
            dom0.create_session()
        assert dom0.guard is None and (Path(dom0.root) / "theirs").read_text() == "x"
    finally:
        dom0.close()
    assert (Path(dom0.root) / "theirs").exists()


# -- uploads -------------------------------------------------------------------------------------------------------
def test_upload_arrives_intact_and_only_once(sshd, opened, tmp_path, monkeypatch):
    data = os.urandom(3 * 1024 * 1024)
    local = tmp_path / "vm linux's $(kernel).bin"
    local.write_bytes(data)
    workdir = tmp_path / "work"
    workdir.mkdir()
    dom0 = opened.dom0(sshd, workdir)

    remote = dom0.upload(local)
    assert remote.startswith(f"{dom0.root}/upload-") and remote.endswith(local.name)
    digest = dom0.exec(["sha256sum", "--", remote]).stdout.split()[0]
    assert digest == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in Path(dom0.root).iterdir()) == sorted(["guard.pid", Path(remote).name])  # no .gz
    before = os.stat(remote)

    sent = []
    for method in ("exec", "start"):  # every way SSHSession sends a file
        real = getattr(dom0.ssh, method)
        monkeypatch.setattr(dom0.ssh, method, lambda *a, real=real, **k: sent.append(a) or real(*a, **k))
    again = tmp_path / "copy"  # the same content under another name: still the first copy
    again.write_bytes(data)
    assert dom0.upload(local) == remote and dom0.upload(again) == remote
    assert sent == []
    after = os.stat(remote)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    other = tmp_path / "other"
    other.write_bytes(data[:-1])
    assert dom0.upload(other) != remote and len(sent) == 1


def spy_on_remote(dom0: Dom0, monkeypatch) -> list:
    """Every way a Dom0 reaches the host over SSH, recorded (and still done)."""
    sent = []
    for method in ("exec", "start", "console", "get"):
        real = getattr(dom0.ssh, method)
        monkeypatch.setattr(dom0.ssh, method, lambda *a, real=real, m=method, **k: sent.append((m, a)) or real(*a, **k))
    return sent


@pytest.fixture
def share(tmp_path) -> Share:
    """A share directory here, and the path dom0 sees it at: another name for the same directory, as a mount."""
    (tmp_path / "share").mkdir()
    (tmp_path / "mnt").symlink_to(tmp_path / "share")
    return Share(tmp_path / "share", str(tmp_path / "mnt"))


def test_upload_through_a_share_links_the_file_and_sends_nothing(sshd, opened, tmp_path, share, monkeypatch):
    data = os.urandom(256 * 1024)
    local = tmp_path / "vm linux's $(kernel).bin"
    local.write_bytes(data)
    (tmp_path / "work").mkdir()
    dom0 = opened.dom0(sshd, tmp_path / "work", share=share)
    sent = spy_on_remote(dom0, monkeypatch)

    remote = dom0.upload(local)
    name = f"upload-{hashlib.sha256(data).hexdigest()[:16]}-{local.name}"
    assert remote == f"{share.remote}/{name}"
    assert sent == []  # no command, no transfer
    linked = share.local / name
    assert (linked.stat().st_ino, linked.stat().st_dev) == (local.stat().st_ino, local.stat().st_dev)
    assert sorted(p.name for p in Path(dom0.root).iterdir()) == ["guard.pid"]  # nothing in the session directory
    monkeypatch.undo()
    assert dom0.exec(["sha256sum", "--", remote]).stdout.split()[0] == hashlib.sha256(data).hexdigest()  # dom0's view


def test_upload_through_a_share_once_per_content(sshd, opened, tmp_path, share, monkeypatch):
    local = tmp_path / "vmlinux"
    local.write_bytes(b"kernel" * 1000)
    (tmp_path / "work").mkdir()
    dom0 = opened.dom0(sshd, tmp_path / "work", share=share)
    sent = spy_on_remote(dom0, monkeypatch)
    remote = dom0.upload(local)
    copy = tmp_path / "initrd"  # the same bytes under another name: the first upload
    copy.write_bytes(local.read_bytes())
    assert dom0.upload(local) == dom0.upload(copy) == remote
    other = tmp_path / "other"
    other.write_bytes(b"other")
    assert dom0.upload(other) != remote
    assert len(list(share.local.iterdir())) == 2 and sent == []

    later = opened.dom0(sshd, tmp_path / "work", share=share)  # another session on the same host
    before = os.stat(share.local / Path(remote).name)
    assert later.upload(local) == remote
    after = os.stat(share.local / Path(remote).name)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_upload_through_a_share_on_another_file_system_copies(sshd, opened, tmp_path, share, monkeypatch):
    local = tmp_path / "vmlinux"
    local.write_bytes(b"kernel" * 1000)
    (tmp_path / "work").mkdir()
    dom0 = opened.dom0(sshd, tmp_path / "work", share=share)

    def cross_device(src, dst, *a, **k):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    remote = dom0.upload(local)
    copied = share.local / Path(remote).name
    assert copied.read_bytes() == local.read_bytes() and copied.stat().st_ino != local.stat().st_ino


def test_a_copy_cut_short_is_not_reused_by_a_later_session(sshd, opened, tmp_path, share, monkeypatch):
    data = os.urandom(64 * 1024)
    local = tmp_path / "vmlinux"
    local.write_bytes(data)
    (tmp_path / "work").mkdir()

    def cross_device(src, dst, *a, **k):  # the share in /tmp (tmpfs), payloads in ~/.cache
        raise OSError(18, "Invalid cross-device link")

    def interrupted(src, dst, *a, **k):  # Ctrl-C while copying a 66 MB vmlinux
        Path(dst).write_bytes(Path(src).read_bytes()[:1000])
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "link", cross_device)
    monkeypatch.setattr(shutil, "copyfile", interrupted)
    with pytest.raises(KeyboardInterrupt):
        opened.dom0(sshd, tmp_path / "work", share=share).upload(local)
    monkeypatch.undo()
    remote = opened.dom0(sshd, tmp_path / "work", share=share).upload(local)  # the next run on that `host up`
    assert (share.local / Path(remote).name).read_bytes() == data


def test_connect_ssh_gives_the_config_share_to_its_dom0(sshd, tmp_path):
    host = {"address": "127.0.0.1", "port": sshd.port, "user": sshd.user, "key": str(sshd.client_keys["ed25519"]),
            "known_hosts": str(sshd.dir / "known_hosts"), "workdir": str(tmp_path), "share_dir": str(tmp_path),
            "share_mount": "/run/xfb-share/"}
    dom0 = connect_ssh(host)
    try:
        assert dom0.share == Share(tmp_path, "/run/xfb-share") and not dom0.disposable
    finally:
        dom0.ssh.close()
    dom0 = connect_ssh({**host, "share_dir": "", "share_mount": ""})
    try:
        assert dom0.share is None
    finally:
        dom0.ssh.close()


# -- the guard ---------------------------------------------------------------------------------------------------
def test_guard_is_named_and_close_removes_the_session(sshd, opened, tmp_path):
    dom0 = opened.dom0(sshd, tmp_path)
    other = opened.ssh(sshd)
    pid = int((Path(dom0.root) / "guard.pid").read_text())
    assert GUARD_NAME.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    register(dom0)
    dom0.upload(Path(__file__))
    dom0.close()
    assert not remote_exists(other, dom0.root)
    assert not Path(f"/proc/{pid}").exists()
    assert list(tmp_path.iterdir()) == []
    assert dom0.guard is None and dom0.ssh.transport is None
    dom0.close()  # again: nothing to do


def serving_sshd(server: LocalSSHD, pid: int) -> int:
    """The sshd process that runs the session pid belongs to: one of our server's children, never another sshd."""
    chain = []
    while pid > 1:
        chain.append(pid)
        if Path(f"/proc/{pid}/comm").read_text().startswith("sshd"):
            break
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    ancestors = []
    while pid > 1:
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        ancestors.append(pid)
    assert server.process.pid in ancestors, (chain, ancestors)
    return chain[-1]


def close_in_time(dom0: Dom0, seconds: float = 10) -> None:
    closer = threading.Thread(target=dom0.close, daemon=True)
    closer.start()
    closer.join(seconds)
    assert not closer.is_alive(), "Dom0.close() hangs after the connection dropped"


@pytest.mark.parametrize("drop", ["client closes the connection", "sshd serving it is killed"])
def test_guard_cleans_up_by_itself_when_the_connection_drops(sshd_xl, xl, opened, tmp_path, drop, capsys):
    dom0 = opened.dom0(sshd_xl, tmp_path)
    other = opened.ssh(sshd_xl)
    running, gone = register(dom0), register(dom0)
    xl.create(running.name, "Domain-0", "someone-elses")
    guard = int((Path(dom0.root) / "guard.pid").read_text())
    assert remote_exists(other, dom0.root) and xl.calls() == []

    if drop == "client closes the connection":
        dom0.ssh.transport.close()
    else:
        os.kill(serving_sshd(sshd_xl, guard), signal.SIGKILL)
    assert wait_for(lambda: not remote_exists(other, dom0.root), 5), "the guard did not clean up on its own"
    assert not xl.exists(running.name) and xl.exists("Domain-0") and xl.exists("someone-elses")
    assert xl.calls() == [f"domid {running.name}", f"destroy {running.name}", f"domid {gone.name}"]
    assert wait_for(lambda: not Path(f"/proc/{guard}").exists(), 5)

    close_in_time(dom0)
    assert "its guard cleans up" in capsys.readouterr().err  # said, not raised


def test_guard_and_end_guest_destroy_only_our_registered_domains(sshd_xl, xl, opened, tmp_path):
    dom0 = opened.dom0(sshd_xl, tmp_path)
    a, b, c = register(dom0), register(dom0), register(dom0)
    xl.create(a.name, b.name, "Domain-0", f"{PREFIX}someone-else-1")
    dom0.end_guest(a)
    dom0.wait_ended()
    assert not xl.exists(a.name) and not Path(a.dir).exists() and Path(b.dir).is_dir()
    dom0.end_guest(c)  # never created: nothing to destroy, its directory goes
    dom0.wait_ended()
    assert not Path(c.dir).exists()
    assert xl.calls() == [f"domid {a.name}", f"destroy {a.name}", f"domid {c.name}"]
    xl.log.write_text("")
    dom0.close()
    assert not Path(dom0.root).exists()
    assert not xl.exists(b.name) and xl.exists("Domain-0") and xl.exists(f"{PREFIX}someone-else-1")
    assert xl.calls() == [f"domid {a.name}", f"domid {b.name}", f"destroy {b.name}", f"domid {c.name}"]


def destroying(xl: StandInXL, name: str) -> bool:
    return f"destroy {name}" in xl.calls()


def test_end_guest_returns_before_the_domain_is_gone_and_wait_ended_waits(sshd_xl, xl, opened, tmp_path):
    dom0 = opened.dom0(sshd_xl, tmp_path)
    slot = register(dom0)
    xl.create(slot.name)
    with xl.holding_destroy():
        dom0.end_guest(slot)  # returns although `xl destroy` cannot finish
        assert wait_for(lambda: destroying(xl, slot.name), 5)
        assert xl.exists(slot.name) and Path(slot.dir).is_dir()
        waiter = threading.Thread(target=dom0.wait_ended, daemon=True)
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive()  # still destroying
    waiter.join(10)
    assert not waiter.is_alive()
    assert not xl.exists(slot.name) and not Path(slot.dir).exists()
    dom0.wait_ended()  # nothing left to wait for


def test_the_next_guest_waits_for_the_one_before_to_be_gone(sshd_xl, xl, opened, tmp_path):
    dom0 = opened.dom0(sshd_xl, tmp_path)
    first = register(dom0)
    xl.create(first.name)
    got = []
    with xl.holding_destroy():
        dom0.end_guest(first)
        assert wait_for(lambda: destroying(xl, first.name), 5)
        nexter = threading.Thread(target=lambda: got.append(register(dom0)), daemon=True)
        nexter.start()
        nexter.join(0.5)
        assert got == []  # its memory is not free yet
    nexter.join(10)
    assert not xl.exists(first.name) and got and Path(got[0].dir).is_dir()


def test_a_disposable_dom0_starts_no_guard_and_close_does_not_wait(sshd_xl, xl, opened, tmp_path):
    dom0 = opened.dom0(sshd_xl, tmp_path, disposable=True)
    assert dom0.guard is None and Path(dom0.root).is_dir()
    assert list(Path(dom0.root).iterdir()) == []  # no guard.pid: no guard
    slot = register(dom0)
    xl.create(slot.name)
    with xl.holding_destroy():
        dom0.end_guest(slot)
        assert wait_for(lambda: destroying(xl, slot.name), 5)
        started = time.monotonic()
        close_in_time(dom0, 5)  # with the destroy held, a close that waited would hang
        assert time.monotonic() - started < 2
        assert dom0.ssh.transport is None


# -- leftovers and clean -------------------------------------------------------------------------------------------
@pytest.fixture
def not_a_guard():
    process = subprocess.Popen(["sleep", "60"])  # alive, but its pid is not a guard's
    yield process.pid
    process.kill()
    process.wait()


def dead_session(workdir: Path, name: str, guard_pid: int | None, domains: list[str] = ()) -> Path:
    path = workdir / name
    (path / "guest-1").mkdir(parents=True)
    (path / "upload-0123-vmlinux").write_bytes(b"\0" * 1000)
    if guard_pid is not None:
        (path / "guard.pid").write_text(f"{guard_pid}\n")
    if domains:
        (path / "domains").write_text("".join(f"{d}\n" for d in domains))
    return path


def test_clean_removes_dead_sessions_keeps_live_ones_and_touches_nothing_else(sshd, opened, tmp_path, not_a_guard):
    workdir = tmp_path / "left overs $HOME ;*"
    workdir.mkdir()
    dead = dead_session(workdir, f"{PREFIX}dead-1", not_a_guard, [f"{PREFIX}dead-1-1"])
    vanished = subprocess.Popen(["true"])
    vanished.wait()
    dead_pid = dead_session(workdir, f"{PREFIX}dead-2", vanished.pid)  # its guard is long gone
    no_pid = dead_session(workdir, f"{PREFIX}dead 3", None)  # the guard never started
    live = opened.dom0(sshd, workdir)
    live_slot = register(live)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep")
    (workdir / f"{PREFIX}link").symlink_to(elsewhere)
    untouched = {workdir / "not-ours": True, workdir / "xfb-harness": True, workdir / "xfb-harnessX": True,
                 workdir / f"{PREFIX}file": False}
    for path, is_dir in untouched.items():
        if is_dir:
            path.mkdir()
            (path / "guard.pid").write_text(f"{not_a_guard}\n")
        else:
            path.write_text("a file, not a session\n")
    ours = (str(dead), str(dead_pid), str(no_pid), live.root, f"{workdir}/{PREFIX}link")
    before = {p: p.read_bytes() for p in files_under(tmp_path) if not str(p).startswith(ours)}

    other = opened.ssh(sshd)
    found = leftovers(other, str(workdir))
    assert sorted(found) == sorted([(str(dead), False, []), (str(dead_pid), False, []), (str(no_pid), False, []),
                                    (f"{workdir}/{PREFIX}link", False, []), (live.root, True, [])])

    done = clean(other, str(workdir) + "/")
    assert sorted(done) == sorted([f"removed {dead}", f"removed {dead_pid}", f"removed {no_pid}",
                                   f"removed {workdir}/{PREFIX}link",
                                   f"kept {live.root}: its run is still going (guard alive)"])
    assert not dead.exists() and not dead_pid.exists() and not no_pid.exists()
    assert not (workdir / f"{PREFIX}link").is_symlink()
    assert {p: p.read_bytes() for p in before} == before  # every other file is still there, unchanged
    assert (elsewhere / "precious").read_text() == "keep"
    assert Path(live_slot.dir).is_dir()  # the live run goes on
    assert live.exec(["cat", f"{live.root}/domains"]).stdout == f"{live_slot.name}\n"

    live.close()
    assert leftovers(other, str(workdir)) == [] and clean(other, str(workdir)) == []
    assert sorted(p.name for p in workdir.iterdir()) == sorted(p.name for p in untouched)


def test_clean_destroys_only_our_registered_domains_that_exist(sshd_xl, xl, opened, tmp_path, not_a_guard):
    ours, never_created = f"{PREFIX}dead-1-1", f"{PREFIX}dead-1-2"
    odd = f"{PREFIX}dead-1-3; xl destroy Domain-0"  # a line someone edited: not a name of ours
    dead = dead_session(tmp_path, f"{PREFIX}dead-1", not_a_guard, [ours, never_created, "Domain-0", odd])
    xl.create(ours, "Domain-0", odd)
    other = opened.ssh(sshd_xl)
    assert leftovers(other, str(tmp_path)) == [(str(dead), False, [ours, "Domain-0", odd])]
    xl.log.write_text("")
    assert clean(other, str(tmp_path)) == [f"destroyed domain {ours}", f"removed {dead}"]
    assert not dead.exists()
    assert not xl.exists(ours) and xl.exists("Domain-0") and xl.exists(odd)
    destroyed = [c for c in xl.calls() if c.startswith("destroy")]
    assert destroyed == [f"destroy {ours}"]


# -- never list domains ----------------------------------------------------------------------------------------------
def xl_subcommands(text: str) -> set[str]:
    return set(re.findall(r"\bxl\s+(\w[\w-]*)", text))


def code_text(function) -> str:
    """A function's source, with its argv lists joined into words: `["xl", "destroy", name]` -> `xl destroy`."""
    return re.sub(r'"\s*,\s*"', " ", inspect.getsource(function))


def test_guard_and_clean_never_list_domains():
    texts = {"GUARD": GUARD, "LEFTOVERS": LEFTOVERS, "clean": code_text(clean), "end_guest": code_text(Dom0.end_guest)}
    assert {name: xl_subcommands(text) for name, text in texts.items()} == {
        "GUARD": {"domid", "destroy"}, "LEFTOVERS": {"domid"}, "clean": {"destroy"}, "end_guest": {"domid", "destroy"}}
    assert not any(re.search(r"\bxl\b.*\blist\b", text) for text in texts.values())


def test_start_guest_registers_writes_the_config_creates_then_attaches_the_console(sshd_xl, xl, opened, tmp_path):
    """One command: the domain's name in `domains` (the guard's list) before `xl create`, the configuration
    written as given, then `xl console` on the new domain, whose lines reach our console log."""
    workdir = tmp_path / "a b;c $(touch PWNED)"
    workdir.mkdir()
    dom0 = opened.dom0(sshd_xl, workdir)
    texts = {}

    def config(name: str) -> str:
        texts[name] = f'name = "{name}"\nextra = "it\'s $(not) `run`"\n'
        return texts[name]

    def next_line() -> str | None:  # the console is a pty: xl's complaint about its xl.conf comes through too
        while (line := console.read_line(20)) is not None and "xl.conf" in line:
            pass
        return line

    slot, console = dom0.start_guest(config, tmp_path / "console.log")
    try:
        assert next_line() == f"console of {slot.name}"
        console.send_line("hello")
        assert next_line() == "hello"
    finally:
        console.close()
    assert (Path(slot.dir) / "guest.cfg").read_text() == texts[slot.name]
    assert (Path(dom0.root) / "domains").read_text() == f"{slot.name}\n"
    assert [c.split()[0] for c in xl.calls()] == ["create", "console"] and xl.exists(slot.name)
    assert not list(tmp_path.rglob("PWNED"))
