"""What the rest of the harness needs from a Xen host, whether we boot it under QEMU or reach a real dom0."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class HostError(RuntimeError):
    """The Xen host broke or did not come up: always an ERROR verdict, never FAIL. Carries the console tail."""

    def __init__(self, message: str, console_tail: str = ""):
        text = message if not console_tail else f"{message}\n--- last console lines ---\n{console_tail}"
        super().__init__(text)
        self.console_tail = console_tail


@dataclass(frozen=True)
class ExecResult:
    rc: int
    stdout: str
    stderr: str


class Console(Protocol):
    """An interactive text stream (a guest console), read line by line."""

    def send_line(self, text: str) -> None: ...
    def read_line(self, timeout: float) -> str | None: ...  # None on timeout
    def tail(self, lines: int = 30) -> str: ...
    def close(self) -> None: ...


class XenHost(Protocol):
    description: str  # one line for the report, e.g. "nested: QEMU 7.2 (TCG) + Xen 4.17"
    vnc_listen: str  # address the guest's VNC server should listen on inside dom0
    guest_dir: str  # dom0 directory holding the guest kernel and initramfs

    def exec(self, argv: list[str], timeout: float = 60, check: bool = True) -> ExecResult: ...
    def put(self, local: Path, remote: str) -> None: ...
    def get(self, remote: str, local: Path) -> None: ...
    def console(self, argv: list[str], log: Path) -> Console: ...
    def forward(self, remote_port: int) -> tuple[str, int]: ...  # a dom0 TCP port, reachable here
    def console_tail(self, lines: int = 30) -> str: ...
    def save_logs(self, dest: Path) -> None: ...
    def close(self) -> None: ...
