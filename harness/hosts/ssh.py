"""The SSH control channel into dom0 (paramiko), with the host key pinned: no unknown key is ever accepted."""
from __future__ import annotations

import base64
import collections
import logging
import shlex
import socket
import threading
import time
from pathlib import Path

import paramiko

from ..signals import deferring
from .base import ExecResult, HostError

# paramiko logs every refused connection attempt while dom0 boots; the errors we act on are raised anyway.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False


class SSHSession:
    def __init__(self, host: str, port: int, key_file: Path, host_key_line: str, user: str = "root"):
        self.host, self.port, self.user = host, port, user
        self.key = paramiko.Ed25519Key.from_private_key_file(str(key_file))
        kind, blob = host_key_line.split()[:2]
        self.client = paramiko.SSHClient()
        name = host if port == 22 else f"[{host}]:{port}"
        self.client.get_host_keys().add(name, kind, paramiko.PKey.from_type_string(kind, _b64(blob)))
        self.client.set_missing_host_key_policy(paramiko.RejectPolicy())

    @deferring
    def connect(self, deadline: float) -> None:
        """Connect, retrying while the server is still coming up, until the monotonic deadline."""
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                self.client.connect(self.host, self.port, username=self.user, pkey=self.key, timeout=10,
                                    banner_timeout=30, auth_timeout=30, allow_agent=False, look_for_keys=False)
                self.client.get_transport().set_keepalive(15)
                return
            except paramiko.BadHostKeyException:
                raise  # never retried: a wrong key is an attack or a stale image, not a slow boot
            except (OSError, paramiko.SSHException, EOFError) as e:
                last = e
                time.sleep(1)
        raise HostError(f"SSH to {self.host}:{self.port} did not come up: {last}")

    @deferring
    def exec(self, argv: list[str], timeout: float = 60, check: bool = True) -> ExecResult:
        cmd = shlex.join(argv)  # every argument quoted: no config value reaches a shell as code
        _in, out, err = self.client.exec_command(cmd, timeout=timeout)
        try:
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
            rc = out.channel.recv_exit_status()
        except socket.timeout:
            raise HostError(f"command timed out after {timeout} s in dom0: {cmd}") from None
        if check and rc != 0:
            raise HostError(f"command failed in dom0 (exit {rc}): {cmd}\n{stderr.strip()}")
        return ExecResult(rc, stdout, stderr)

    def _sftp(self, timeout: float = 120) -> paramiko.SFTPClient:
        sftp = self.client.open_sftp()
        sftp.get_channel().settimeout(timeout)  # a stalled transfer is an error, not a hang
        return sftp

    @deferring
    def put(self, local: Path, remote: str) -> None:
        with self._sftp() as sftp:
            sftp.put(str(local), remote)

    @deferring
    def get(self, remote: str, local: Path) -> None:
        with self._sftp() as sftp:
            sftp.get(remote, str(local))

    @deferring
    def console(self, argv: list[str], log: Path) -> "ChannelConsole":
        channel = self.client.get_transport().open_session()
        channel.get_pty(term="dumb", width=200, height=50)
        channel.exec_command(shlex.join(argv))
        return ChannelConsole(channel, log)

    def close(self) -> None:
        self.client.close()


def _b64(blob: str) -> bytes:
    return base64.b64decode(blob)


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

    def close(self) -> None:
        self.channel.close()
        self.reader.join(5)  # let the reader write what it has before the log closes
        self.log.close()
