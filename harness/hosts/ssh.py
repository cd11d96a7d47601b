"""The one SSH connection (paramiko) through which the harness does everything on a Xen host's dom0, whether we
booted that dom0 here and reach it at 127.0.0.1:PORT or it is a real machine elsewhere: commands, file copies,
consoles, a watchdog channel, and forwarded TCP ports and unix sockets.

Host keys are checked strictly against an OpenSSH known_hosts file: an unknown key is refused unless the caller
asked to accept new keys, and a changed key is always refused.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import select
import shlex
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import paramiko

from ..progress import say
from ..signals import deferring
from ..tmpdirs import private_tmpdir, prune_stale
from .base import ExecResult, HostError

# paramiko logs every refused connection attempt while dom0 boots; the errors we act on are raised anyway.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False

CONNECT_TIMEOUT = 10  # s, per attempt: the TCP connection
HANDSHAKE_TIMEOUT = 30  # s, per attempt: banner, key exchange, login (a dom0 under TCG is slow)
RETRY_PAUSE = 1  # s between attempts while the server comes up
KEEPALIVE = 15  # s
OPEN_TIMEOUT = 30  # s to open a channel
SFTP_TIMEOUT = 120  # s without progress before a transfer is an error, not a hang

# What a connection can fail with: the network, the SSH protocol, or a stream that ended.
SSH_ERRORS = (OSError, EOFError, paramiko.SSHException)
# socat reads ':' ',' '!' quotes and brackets in its addresses as syntax, so only plain paths are forwarded.
FORWARD_PREFIX = "xenfb-ssh-"  # our private dirs of forwarded unix sockets in /tmp
SOCAT_SAFE_PATH = re.compile(r"[A-Za-z0-9_./@+-]+")


class HostKeyError(HostError):
    """The host's key is not one known_hosts has for it: never retried, never accepted silently."""


class SSHSession:
    def __init__(self, address: str, port: int, user: str, key_file: Path, known_hosts: Path,
                 accept_new_host_key: bool = False):
        self.address, self.port, self.user = address, port, user
        self.key_file, self.known_hosts = Path(key_file), Path(known_hosts)
        self.accept_new_host_key = accept_new_host_key
        self.where = f"{address}:{port}"
        self.host_name = address if port == 22 else f"[{address}]:{port}"  # as known_hosts names it
        try:
            self.key = paramiko.PKey.from_path(self.key_file)  # Ed25519, ECDSA or RSA, OpenSSH or PEM format
        except (OSError, ValueError, TypeError, paramiko.SSHException, paramiko.UnknownKeyType) as e:
            raise HostError(f"cannot load the SSH client key {self.key_file}: {e}") from None
        self.transport: paramiko.Transport | None = None
        self.forwards: set[_Forward] = set()

    # -- connection ----------------------------------------------------------------------------------------
    def connect(self, deadline: float) -> None:
        """Connect and log in, retrying until the monotonic deadline while the server is still coming up (refused,
        no banner, dropped); a host key or login problem is raised at once, as a retry cannot fix it."""
        known = self._known_keys()
        while True:
            try:
                self.transport = self._attempt(deadline, known)
                return
            except SSH_ERRORS as e:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HostError(f"SSH to {self.where} did not come up in time: {_describe(e)}") from None
                time.sleep(min(RETRY_PAUSE, left))  # outside `deferring`: Ctrl-C while we wait stops at once

    @deferring
    def _attempt(self, deadline: float, known: dict[str, paramiko.PKey]) -> paramiko.Transport:
        def timeout(cap: float) -> float:
            return max(1.0, min(cap, deadline - time.monotonic()))

        transport = paramiko.Transport(socket.create_connection((self.address, self.port), timeout(CONNECT_TIMEOUT)))
        try:
            handshake = timeout(HANDSHAKE_TIMEOUT)
            transport.banner_timeout = transport.handshake_timeout = transport.auth_timeout = handshake
            if known:  # ask for a key type we know, or a server with several keys would look changed
                options = transport.get_security_options()
                options.key_types = sorted(options.key_types, key=lambda algorithm: not _is_known(algorithm, known))
            transport.start_client(timeout=handshake)
            self._check_host_key(transport.get_remote_server_key(), known)
            try:
                transport.auth_publickey(self.user, self.key)
            except paramiko.AuthenticationException as e:
                raise HostError(f"SSH login to {self.where} as {self.user} with the key {self.key_file} was refused: "
                                f"{e}") from None
            transport.set_keepalive(KEEPALIVE)
            return transport
        except BaseException:
            transport.close()
            raise

    def _known_keys(self) -> dict[str, paramiko.PKey]:
        """The keys known_hosts has for this host, by type; hashed entries are matched too."""
        hosts = paramiko.HostKeys()
        if self.known_hosts.exists():
            try:
                hosts.load(str(self.known_hosts))
            except OSError as e:
                raise HostKeyError(f"cannot read the known_hosts file {self.known_hosts}: {e}") from None
        return dict(hosts.lookup(self.host_name) or {})

    def _check_host_key(self, key: paramiko.PKey, known: dict[str, paramiko.PKey]) -> None:
        presented = f"{key.get_name()} {key.fingerprint}"
        if any(k.asbytes() == key.asbytes() for k in known.values()):
            return
        if known:
            was = ", ".join(f"{k.get_name()} {k.fingerprint}" for k in known.values())
            raise HostKeyError(
                f"the host key of {self.where} has CHANGED: it presents {presented}, but {self.known_hosts} has "
                f"{was}. Either the host was reinstalled or someone is in the middle; if you know the change is "
                f"legitimate, remove the old entry for {self.host_name} from {self.known_hosts}")
        if not self.accept_new_host_key:
            raise HostKeyError(
                f"the host key of {self.where} is unknown: {presented} is not in {self.known_hosts}; "
                f"run again with --accept-new-host-key after checking the fingerprint")
        self._remember(key)
        say(f"accepted the new host key of {self.where}: {presented} (added to {self.known_hosts})")

    def _remember(self, key: paramiko.PKey) -> None:
        self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        existing = self.known_hosts.read_bytes() if self.known_hosts.exists() else b""
        separator = "\n" if existing and not existing.endswith(b"\n") else ""  # a hand-edited last line
        fd = os.open(self.known_hosts, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{separator}{self.host_name} {key.get_name()} {key.get_base64()}\n")

    def _live_transport(self) -> paramiko.Transport:
        if self.transport is None or not self.transport.is_active():
            raise HostError(f"the SSH connection to {self.where} is not open")
        return self.transport

    # -- commands ------------------------------------------------------------------------------------------
    @deferring
    def exec(self, argv: list[str], timeout: float = 60, check: bool = True,
             stdin: bytes | None = None) -> ExecResult:
        """Run argv on the host; stdin (small: it is sent before the output is read) is all the input it gets."""
        cmd = shlex.join(argv)  # every argument quoted: no config value reaches the remote shell as code
        deadline = time.monotonic() + timeout
        try:
            channel = self._live_transport().open_session(timeout=min(timeout, OPEN_TIMEOUT))
            try:
                channel.settimeout(timeout)
                channel.exec_command(cmd)
                if stdin:
                    channel.sendall(stdin)
                channel.shutdown_write()  # EOF on the command's stdin, so nothing waits for input
                stdout, stderr, rc = _wait_for_command(channel, deadline)
            finally:
                channel.close()
        except socket.timeout:
            raise HostError(f"command timed out after {timeout} s on {self.where}: {cmd}") from None
        except SSH_ERRORS as e:
            raise HostError(f"the SSH connection to {self.where} failed while running: {cmd}: "
                            f"{_describe(e)}") from None
        result = ExecResult(rc, stdout.decode(errors="replace"), stderr.decode(errors="replace"))
        if check and rc != 0:
            raise HostError(f"command failed on {self.where} (exit {rc}): {cmd}\n{result.stderr.strip()}")
        return result

    @deferring
    def start(self, argv: list[str]) -> paramiko.Channel:
        """Start argv with no pty and its stdin left open, for a remote watchdog: it reads EOF there once the
        channel is closed or the connection drops. The caller closes the channel."""
        try:
            channel = self._live_transport().open_session(timeout=OPEN_TIMEOUT)
            channel.exec_command(shlex.join(argv))
        except SSH_ERRORS as e:
            raise HostError(f"cannot start on {self.where}: {shlex.join(argv)}: {_describe(e)}") from None
        return channel

    @deferring
    def console(self, argv: list[str], log: Path) -> ChannelConsole:
        try:
            channel = self._live_transport().open_session(timeout=OPEN_TIMEOUT)
            channel.get_pty(term="dumb", width=200, height=50)
            channel.exec_command(shlex.join(argv))
        except SSH_ERRORS as e:
            raise HostError(f"cannot start the console on {self.where}: {shlex.join(argv)}: {_describe(e)}") from None
        return ChannelConsole(channel, log)

    # -- files ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _sftp(self, what: str) -> Iterator[paramiko.SFTPClient]:
        try:
            with paramiko.SFTPClient.from_transport(self._live_transport()) as sftp:
                sftp.get_channel().settimeout(SFTP_TIMEOUT)
                yield sftp
        except SSH_ERRORS as e:
            raise HostError(f"{what} on {self.where} failed: {_describe(e)}") from None

    @deferring
    def get(self, remote: str, local: Path) -> None:
        with self._sftp(f"copying {remote} to {local}") as sftp:
            sftp.get(remote, str(local))

    # -- forwarding ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def forward_tcp(self, remote_host: str, remote_port: int) -> Iterator[tuple[str, int]]:
        """("127.0.0.1", port): each connection to it is relayed to remote_host:remote_port as seen by the host."""
        listener = socket.create_server(("127.0.0.1", 0))

        def open_channel() -> paramiko.Channel:
            return self._live_transport().open_channel("direct-tcpip", (remote_host, remote_port),
                                                       ("127.0.0.1", 0), timeout=OPEN_TIMEOUT)

        with self._forwarding(listener, open_channel):
            yield listener.getsockname()

    @contextlib.contextmanager
    def forward_unix(self, remote_path: str) -> Iterator[str]:
        """A unix socket here, in a private directory: each connection to it is relayed to the host's unix socket
        remote_path by `socat` run there (paramiko has no direct-streamlocal channel), so the host needs socat."""
        if not SOCAT_SAFE_PATH.fullmatch(remote_path):
            raise HostError(f"cannot forward the unix socket {remote_path!r}: socat would parse its punctuation")
        command = shlex.join(["socat", "STDIO", f"UNIX-CONNECT:{remote_path}"])

        def open_channel() -> paramiko.Channel:
            channel = self._live_transport().open_session(timeout=OPEN_TIMEOUT)
            channel.exec_command(command)
            return channel

        prune_stale(FORWARD_PREFIX)  # left by a harness that was SIGKILLed
        directory = str(private_tmpdir(FORWARD_PREFIX))  # mode 0700: only we can connect
        listener = socket.socket(socket.AF_UNIX)
        try:
            path = os.path.join(directory, "socket")
            listener.bind(path)
            listener.listen()
            with self._forwarding(listener, open_channel):
                yield path
        finally:
            listener.close()
            shutil.rmtree(directory, ignore_errors=True)

    @contextlib.contextmanager
    def _forwarding(self, listener: socket.socket, open_channel: Callable[[], paramiko.Channel]) -> Iterator[None]:
        forward = _Forward(listener, open_channel)
        self.forwards.add(forward)
        try:
            yield
        finally:
            self.forwards.discard(forward)
            forward.close()

    @deferring
    def close(self) -> None:
        """Every forward, then the connection; safe to call again."""
        for forward in list(self.forwards):
            forward.close()
        self.forwards.clear()
        if self.transport is not None:
            self.transport.close()
            self.transport = None


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__  # EOFError and socket.timeout often say nothing


def _is_known(algorithm: str, known: dict[str, paramiko.PKey]) -> bool:
    """Whether a host key algorithm gives a key of a type we know; an "ssh-rsa" key is signed as rsa-sha2-*."""
    return algorithm in known or ("ssh-rsa" in known and algorithm.startswith("rsa-sha2-"))


def _wait_for_command(channel: paramiko.Channel, deadline: float) -> tuple[bytes, bytes, int]:
    """stdout, stderr and exit status of the channel's command. Both streams are read as data comes: a command
    that fills one while we wait on the other would stall."""
    stdout, stderr = bytearray(), bytearray()
    while True:
        if channel.recv_ready():
            stdout += channel.recv(65536)
        elif channel.recv_stderr_ready():
            stderr += channel.recv_stderr(65536)
        elif channel.closed or (channel.eof_received and channel.exit_status_ready()):
            break
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout()
            select.select([channel], [], [], min(left, 1))  # wakes on data and on close, not on exit status
    rc = channel.recv_exit_status()
    if rc == -1 and not channel.get_transport().is_active():
        raise EOFError("connection lost")
    return bytes(stdout), bytes(stderr), rc


class _Forward:
    """A local listener: each connection it accepts is relayed through a new SSH channel from open_channel()."""

    def __init__(self, listener: socket.socket, open_channel: Callable[[], paramiko.Channel]):
        self.listener, self.open_channel = listener, open_channel
        self.relays: list[_Relay] = []  # only the acceptor adds to it, and close() reads it after joining that
        self.acceptor = threading.Thread(target=self._accept, daemon=True, name="ssh-forward-accept")
        self.acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return  # the listener was shut down
            try:
                channel = self.open_channel()
            except (*SSH_ERRORS, HostError):
                sock.close()  # e.g. nothing listens there: the client sees its connection closed
                continue
            self.relays = [r for r in self.relays if r.thread.is_alive()] + [_Relay(sock, channel)]

    @deferring
    def close(self) -> None:
        """Stop accepting, end every connection, wait for every thread; safe to call again."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (Linux)
        self.listener.close()
        self.acceptor.join()
        for relay in self.relays:
            relay.abort()
        for relay in self.relays:
            relay.thread.join()


class _Relay:
    """One forwarded connection: bytes copied both ways until both directions have ended. Each side's EOF is
    passed on to the other as a half-close; an error in either direction ends both."""

    def __init__(self, sock: socket.socket, channel: paramiko.Channel):
        self.sock, self.channel = sock, channel
        self.thread = threading.Thread(target=self._run, daemon=True, name="ssh-forward-down")
        self.thread.start()

    def _run(self) -> None:
        up = threading.Thread(target=self._copy, args=(self.sock.recv, self.channel.sendall,
                                                       self.channel.shutdown_write),
                              daemon=True, name="ssh-forward-up")
        up.start()
        self._copy(self.channel.recv, self.sock.sendall, lambda: self.sock.shutdown(socket.SHUT_WR))
        up.join()
        self.channel.close()
        self.sock.close()

    def _copy(self, recv: Callable[[int], bytes], send: Callable[[bytes], object], eof: Callable[[], object]) -> None:
        try:
            while data := recv(65536):
                send(data)
            eof()
        except SSH_ERRORS:
            self.abort()

    def abort(self) -> None:
        """End both directions now: wakes any thread blocked on either side."""
        self.channel.close()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class ChannelConsole:
    """Lines from an interactive SSH channel (e.g. `xl console`), logged to a file as they arrive."""

    def __init__(self, channel: paramiko.Channel, log: Path):
        self.channel = channel
        self.log = open(log, "a", buffering=1, errors="replace")
        self.lines: collections.deque[str] = collections.deque()
        self.history: collections.deque[str] = collections.deque(maxlen=200)
        self.cond = threading.Condition()
        self.closed = False
        self.reader = threading.Thread(target=self._pump, daemon=True, name="console-reader")
        self.reader.start()

    def _pump(self) -> None:
        partial = ""
        while True:
            try:
                data = self.channel.recv(4096)
            except OSError:
                data = b""
            if not data:
                break
            text = data.decode(errors="replace")
            self.log.write(text)
            partial += text.replace("\r", "")
            *complete, partial = partial.split("\n")
            with self.cond:
                self.lines.extend(complete)
                self.history.extend(complete)
                self.cond.notify_all()
        with self.cond:
            if partial:
                self.lines.append(partial)
                self.history.append(partial)
            self.closed = True
            self.cond.notify_all()

    @deferring
    def send_line(self, text: str) -> None:
        self.channel.sendall((text.rstrip("\n") + "\n").encode())

    def read_line(self, timeout: float) -> str | None:
        """The next line; None on timeout; EOFError once the stream has ended and every line was read."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.lines:
                if self.closed:
                    raise EOFError("console closed")
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.lines.popleft()

    def tail(self, lines: int = 30) -> str:
        with self.cond:
            return "\n".join(list(self.history)[-lines:])

    @deferring
    def close(self) -> None:
        self.channel.close()
        self.reader.join(5)  # let the reader write what it has before the log closes
        self.log.close()
