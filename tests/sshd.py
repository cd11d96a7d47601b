"""A real OpenSSH server on 127.0.0.1 for the SSH tests: its own host keys and authorized client keys in a
temporary directory, key login only, independent of any system sshd."""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself, so it must be started by its absolute path


def keygen(path: Path, kind: str = "ed25519") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path


def fingerprint(public_key: Path) -> str:
    """As `ssh-keygen -lf` prints it, e.g. SHA256:..."""
    return subprocess.run(["ssh-keygen", "-lf", str(public_key)], check=True, capture_output=True,
                          text=True).stdout.split()[1]


class LocalSSHD:
    """Host keys (ed25519 and rsa) and client keys are made once; start() may then run the server on any port."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.user = getpass.getuser()
        self.host_keys = {kind: keygen(directory / f"host_{kind}", kind) for kind in ("ed25519", "rsa")}
        self.client_keys = {kind: keygen(directory / f"client_{kind}", kind) for kind in ("ed25519", "ecdsa", "rsa")}
        (directory / "authorized_keys").write_text(
            "".join(Path(f"{key}.pub").read_text() for key in self.client_keys.values()))
        self.config = directory / "sshd_config"
        self.config.write_text("".join(f"{line}\n" for line in [
            "ListenAddress 127.0.0.1",
            *(f"HostKey {key}" for key in self.host_keys.values()),
            f"AuthorizedKeysFile {directory / 'authorized_keys'}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",  # the keys live in a pytest temporary directory
            "PidFile none",
            "AllowTcpForwarding yes",
            "Subsystem sftp internal-sftp",
            "LogLevel ERROR",
        ]))
        self.port = 0
        self.process: subprocess.Popen | None = None

    def start(self, port: int) -> None:
        if shutil.which(SSHD) is None:
            raise RuntimeError(f"{SSHD} is missing: scripts/install installs openssh-server")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.port = port
        self.log = open(self.dir / "sshd.log", "a")
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config), "-p", str(port)],
                                        stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd did not start: {(self.dir / 'sshd.log').read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
            self.log.close()


def wait_for(condition, timeout: float = 10) -> bool:
    """Poll condition() until it is true (True) or timeout seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
