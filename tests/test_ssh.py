"""harness/hosts/ssh.py against a real OpenSSH server on 127.0.0.1 (tests/sshd.py). The server runs on this
machine, so the "remote" files, sockets and markers the tests check are local paths."""
from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from xenfb_harness.hosts.base import HostError
from xenfb_harness.hosts.nested import free_port
from xenfb_harness.hosts.ssh import HostKeyError, SSHSession
from tests.sshd import SSHD, LocalSSHD, fingerprint, keygen, wait_for

pytestmark = pytest.mark.skipif(not os.path.exists(SSHD), reason="openssh-server is missing (scripts/install)")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = LocalSSHD(tmp_path_factory.mktemp("sshd"))
    server.start(free_port())
    yield server
    server.stop()


def public(key: Path) -> Path:
    return key.with_name(f"{key.name}.pub")


def known_hosts_line(server: LocalSSHD, kind: str = "ed25519", port: int | None = None) -> str:
    kind_and_key = " ".join(public(server.host_keys[kind]).read_text().split()[:2])
    return f"[127.0.0.1]:{port or server.port} {kind_and_key}\n"


@pytest.fixture
def known_hosts(sshd, tmp_path) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text(known_hosts_line(sshd))
    return path


def session(server: LocalSSHD, known_hosts: Path, key: Path | None = None, **kwargs) -> SSHSession:
    return SSHSession("127.0.0.1", server.port, server.user, key or server.client_keys["ed25519"], known_hosts,
                      **kwargs)


@pytest.fixture
def ssh(sshd, known_hosts):
    s = session(sshd, known_hosts)
    s.connect(time.monotonic() + 20)
    yield s
    s.close()


def forward_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("ssh-forward")]


# -- host keys and login ---------------------------------------------------------------------------------------
def test_unknown_host_key_is_refused_with_its_openssh_fingerprint(sshd, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    with pytest.raises(HostKeyError) as error:
        session(sshd, known_hosts).connect(time.monotonic() + 20)
    message = str(error.value)
    assert f"ssh-ed25519 {fingerprint(public(sshd.host_keys['ed25519']))}" in message
    assert f"127.0.0.1:{sshd.port}" in message and str(known_hosts) in message
    assert "--accept-new-host-key" in message
    assert not known_hosts.exists()


def test_accept_new_host_key_writes_known_hosts_for_the_next_session(sshd, tmp_path, capsys):
    known_hosts = tmp_path / "known_hosts"
    first = session(sshd, known_hosts, accept_new_host_key=True)
    first.connect(time.monotonic() + 20)
    first.close()
    assert fingerprint(public(sshd.host_keys["ed25519"])) in capsys.readouterr().err
    assert stat.S_IMODE(known_hosts.stat().st_mode) == 0o600
    assert known_hosts.read_text() == known_hosts_line(sshd)
    # OpenSSH reads the entry too
    subprocess.run(["ssh-keygen", "-F", f"[127.0.0.1]:{sshd.port}", "-f", str(known_hosts)], check=True,
                   stdout=subprocess.DEVNULL)
    second = session(sshd, known_hosts)
    second.connect(time.monotonic() + 20)
    assert second.exec(["echo", "ok"]).stdout == "ok\n"
    second.close()


def test_changed_host_key_is_refused_with_both_fingerprints_even_when_accepting_new(sshd, tmp_path):
    other = keygen(tmp_path / "other_host")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {public(other).read_text()}")
    before = known_hosts.read_text()
    with pytest.raises(HostKeyError, match="CHANGED") as error:
        session(sshd, known_hosts, accept_new_host_key=True).connect(time.monotonic() + 20)
    assert fingerprint(public(other)) in str(error.value)
    assert fingerprint(public(sshd.host_keys["ed25519"])) in str(error.value)
    assert known_hosts.read_text() == before


def test_hashed_known_hosts_entry(sshd, known_hosts):
    subprocess.run(["ssh-keygen", "-H", "-f", str(known_hosts)], check=True, capture_output=True)
    assert known_hosts.read_text().startswith("|1|")
    s = session(sshd, known_hosts)
    s.connect(time.monotonic() + 20)
    s.close()


def test_the_known_key_type_is_asked_for_when_the_server_has_several(sshd, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(known_hosts_line(sshd, "rsa"))  # the server prefers to show its ed25519 key
    s = session(sshd, known_hosts)
    s.connect(time.monotonic() + 20)
    assert s.transport.get_remote_server_key().get_name() == "ssh-rsa"
    s.close()


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_client_key_of_any_type(sshd, known_hosts, kind):
    s = session(sshd, known_hosts, key=sshd.client_keys[kind])
    s.connect(time.monotonic() + 20)
    assert s.exec(["id", "-un"]).stdout.strip() == sshd.user
    s.close()


def test_refused_login_is_reported_at_once_not_retried(sshd, known_hosts, tmp_path):
    stranger = keygen(tmp_path / "stranger")
    start = time.monotonic()
    with pytest.raises(HostError, match="refused") as error:
        session(sshd, known_hosts, key=stranger).connect(start + 60)
    assert time.monotonic() - start < 10
    assert not isinstance(error.value, HostKeyError)
    assert str(stranger) in str(error.value) and sshd.user in str(error.value)


def test_missing_client_key_names_the_file(sshd, known_hosts, tmp_path):
    with pytest.raises(HostError, match="no-such-key"):
        session(sshd, known_hosts, key=tmp_path / "no-such-key")


def test_connect_waits_for_a_server_that_comes_up_late(tmp_path):
    late = LocalSSHD(tmp_path)
    port = free_port()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(known_hosts_line(late, port=port))

    def come_up():
        # First a port that accepts and hangs up at once, as QEMU's forwarding does before dom0's sshd listens.
        with socket.create_server(("127.0.0.1", port)) as listener:
            listener.settimeout(0.1)
            until = time.monotonic() + 1.5
            while time.monotonic() < until:
                with contextlib.suppress(socket.timeout):
                    listener.accept()[0].close()
        time.sleep(0.5)  # refused
        late.start(port)

    starter = threading.Thread(target=come_up)
    starter.start()
    try:
        s = SSHSession("127.0.0.1", port, late.user, late.client_keys["ed25519"], known_hosts)
        s.connect(time.monotonic() + 30)
        assert s.exec(["true"]).rc == 0
        s.close()
    finally:
        starter.join()
        late.stop()


def test_connect_gives_up_at_the_deadline(sshd, known_hosts):
    s = SSHSession("127.0.0.1", free_port(), sshd.user, sshd.client_keys["ed25519"], known_hosts)
    start = time.monotonic()
    with pytest.raises(HostError, match="did not come up"):
        s.connect(start + 2)
    assert 1.5 < time.monotonic() - start < 5


# -- commands ------------------------------------------------------------------------------------------------
def test_exec_arguments_reach_the_command_byte_for_byte(ssh, tmp_path):
    marker = tmp_path / "pwned"
    args = [f"$(touch {marker})", f"`touch {marker}`", f"; touch {marker}", f"&& touch {marker}",
            f"| touch {marker}", f"' ; touch {marker} ; '", f'" ; touch {marker} ; "', "*", "two  spaces",
            "-n", "line\nbreak", "", "back\\slash", "$HOME", "~", "# not a comment", f"> {marker}", "tab\there", "!"]
    result = ssh.exec(["printf", "%s\\0", *args])
    assert result.stdout.split("\0")[:-1] == args
    assert not marker.exists()


def test_exec_stdin_and_both_streams_larger_than_the_ssh_window(ssh):
    assert ssh.exec(["cat"], stdin=b"some input\n").stdout == "some input\n"
    assert ssh.exec(["cat"], timeout=5).stdout == ""  # no stdin: EOF at once, no wait
    big = ssh.exec(["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' e >&2; head -c 3000000 /dev/zero"])
    assert len(big.stderr) == 3_000_000 and len(big.stdout) == 3_000_000


def test_exec_exit_status(ssh):
    assert ssh.exec(["sh", "-c", "exit 3"], check=False).rc == 3
    with pytest.raises(HostError, match=r"exit 3\): sh -c 'echo oops >&2; exit 3'\noops"):
        ssh.exec(["sh", "-c", "echo oops >&2; exit 3"])


def test_exec_timeout_names_the_command(ssh):
    start = time.monotonic()
    with pytest.raises(HostError, match="timed out after 1 s .*: sleep 10"):
        ssh.exec(["sleep", "10"], timeout=1)
    assert time.monotonic() - start < 4
    assert ssh.exec(["echo", "still usable"]).stdout == "still usable\n"


def test_dropped_connection_is_a_host_error(ssh):
    kill_my_sshd = ('pid=$$; until case $(cat /proc/$pid/comm) in sshd*) true;; *) false;; esac; '
                    'do pid=$(cut -d" " -f4 /proc/$pid/stat); done; kill -9 $pid')
    start = time.monotonic()
    with pytest.raises(HostError, match="SSH connection"):
        ssh.exec(["sh", "-c", kill_my_sshd], timeout=30)
    assert time.monotonic() - start < 10
    with pytest.raises(HostError, match="not open"):
        ssh.exec(["true"])


def test_console_reads_lines_and_sends_them(ssh, tmp_path):
    log = tmp_path / "console.log"
    console = ssh.console(["sh", "-c", 'stty -echo; echo ready; read line; echo "got $line"'], log)
    try:
        assert console.read_line(10) == "ready"
        console.send_line("hello")
        assert console.read_line(10) == "got hello"
        with pytest.raises(EOFError):
            console.read_line(10)
    finally:
        console.close()
    assert "got hello" in log.read_text()


def test_started_command_sees_eof_when_its_channel_closes(ssh, tmp_path):
    marker = tmp_path / "watchdog-fired"
    channel = ssh.start(["sh", "-c", 'cat >/dev/null; touch "$1"', "sh", str(marker)])
    time.sleep(1)
    assert not marker.exists()
    channel.close()
    assert wait_for(marker.exists)


def test_started_command_sees_eof_when_the_connection_drops(ssh, tmp_path):
    marker = tmp_path / "watchdog-fired"
    ssh.start(["sh", "-c", 'cat >/dev/null; touch "$1"', "sh", str(marker)])
    time.sleep(1)
    assert not marker.exists()
    ssh.close()
    assert wait_for(marker.exists)


# -- files -----------------------------------------------------------------------------------------------------
def test_get(ssh, tmp_path):
    data = os.urandom(300_000)
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "copy").write_bytes(data)
    ssh.get(str(remote / "copy"), tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data
    with pytest.raises(HostError, match="missing"):
        ssh.get(str(remote / "missing"), tmp_path / "missing")


# -- forwarding --------------------------------------------------------------------------------------------------
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)


@contextlib.contextmanager
def serving(server: socketserver.BaseServer):
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address
    finally:
        server.shutdown()
        server.server_close()


def echoed(sock: socket.socket, payload: bytes) -> bytes:
    """Send payload (from a thread, so neither direction waits on the other), half-close, read to EOF."""
    def send():
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
    sender = threading.Thread(target=send)
    sender.start()
    received = bytearray()
    while chunk := sock.recv(65536):
        received += chunk
    sender.join()
    return bytes(received)


def connected(address, family=socket.AF_INET) -> socket.socket:
    sock = socket.socket(family)
    sock.settimeout(20)
    sock.connect(address)
    return sock


def test_forward_tcp(ssh):
    with serving(socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)) as (host, port):
        with ssh.forward_tcp(host, port) as address:
            assert address[0] == "127.0.0.1" and address[1] != port
            a, b, idle = connected(address), connected(address), connected(address)
            for sock, word in ((a, b"a1"), (b, b"b1"), (idle, b"i1"), (a, b"a2")):
                sock.sendall(word)
                assert sock.recv(2) == word
            payload_a, payload_b = os.urandom(1_500_000), os.urandom(700_000)
            results = {}
            threads = [threading.Thread(target=lambda s=s, p=p: results.__setitem__(s, echoed(s, p)))
                       for s, p in ((a, payload_a), (b, payload_b))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert results[a] == payload_a and results[b] == payload_b
        # leaving the context ended the connection still open, the listener and every thread
        assert idle.recv(1) == b""
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=5)
        assert forward_threads() == []
        for sock in (a, b, idle):
            sock.close()


def test_forward_tcp_to_nothing_closes_the_local_connection(ssh):
    with ssh.forward_tcp("127.0.0.1", free_port()) as address:
        with connected(address) as sock:
            assert sock.recv(1) == b""
    assert forward_threads() == []


def test_forward_unix(ssh, tmp_path):
    remote_path = str(tmp_path / "qmp.sock")
    with serving(socketserver.ThreadingUnixStreamServer(remote_path, Echo)):
        with ssh.forward_unix(remote_path) as local_path:
            directory = Path(local_path).parent
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700
            first, second = connected(local_path, socket.AF_UNIX), connected(local_path, socket.AF_UNIX)
            second.sendall(b'{"execute": "qmp_capabilities"}\n')
            payload = os.urandom(500_000)
            assert echoed(first, payload) == payload
            assert second.recv(64) == b'{"execute": "qmp_capabilities"}\n'
        assert not directory.exists()
        assert forward_threads() == []
        first.close()
        second.close()


def test_forward_unix_refuses_a_path_socat_would_parse(ssh):
    with pytest.raises(HostError, match="socat"):
        with ssh.forward_unix("/run/a,fork"):
            pass


def test_close_is_idempotent_and_ends_the_forwards(ssh):
    with serving(socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)) as (host, port):
        with ssh.forward_tcp(host, port) as address:
            with connected(address) as sock:
                sock.sendall(b"x")
                assert sock.recv(1) == b"x"
                ssh.close()
                ssh.close()
                assert sock.recv(1) == b""
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(address, timeout=5)
            assert forward_threads() == []
    with pytest.raises(HostError, match="not open"):
        ssh.exec(["true"])
