"""Ctrl-C and SIGTERM: the first one unwinds the run (every context manager shuts its part down), later ones are
noted but do not interrupt that cleanup. The signal is remembered so the report says "interrupted".

An exception raised in the middle of a library call (paramiko, QMP) can leave that library's locks or stream
half-used, and then the cleanup that needs it hangs. So such calls run `deferring`: a signal that arrives inside
one is raised when the call returns (every such call has a timeout, so that is soon).
"""
from __future__ import annotations

import functools
import signal
import threading

received: str | None = None
_depth = 0
_pending = False


def _handler(signum, frame):
    global received, _pending
    first = received is None
    received = signal.Signals(signum).name
    if not first:
        return
    if _depth:
        _pending = True
    else:
        raise KeyboardInterrupt(received)


def install() -> None:
    global received, _pending
    received, _pending = None, False
    # Set explicitly: a run started as a background job inherits SIGINT ignored, and must still stop cleanly.
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def deferring(fn):
    """Run fn with signals held back until it returns (main thread only; other threads never get signals)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _depth, _pending
        if threading.current_thread() is not threading.main_thread():
            return fn(*args, **kwargs)
        _depth += 1
        try:
            return fn(*args, **kwargs)
        finally:
            _depth -= 1
            if not _depth and _pending:
                _pending = False
                raise KeyboardInterrupt(received)
    return wrapper
