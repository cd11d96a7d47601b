"""Ctrl-C and SIGTERM: the first one unwinds the run (every context manager shuts its part down), later ones are
noted but do not interrupt that cleanup. The signal is remembered so the report says "interrupted" even when the
exception that surfaced came from a library cut off mid-operation (e.g. an SFTP transfer)."""
from __future__ import annotations

import signal

received: str | None = None


def _handler(signum, frame):
    global received
    first = received is None
    received = signal.Signals(signum).name
    if first:
        raise KeyboardInterrupt(received)


def install() -> None:
    global received
    received = None
    # Set explicitly: a run started as a background job inherits SIGINT ignored, and must still stop cleanly.
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
