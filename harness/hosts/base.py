"""Errors and results shared by both kinds of Xen host (what a host offers is `Dom0`, in dom0.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class HostError(RuntimeError):
    """The Xen host broke or did not come up: always an ERROR verdict, never FAIL. Carries the console tail."""

    def __init__(self, message: str, console_tail: str = ""):
        text = message if not console_tail else f"{message}\n--- last console lines ---\n{console_tail}"
        super().__init__(text)
        self.message, self.console_tail = message, console_tail


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
