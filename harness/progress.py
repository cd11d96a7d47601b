"""Progress for long steps: each step prints when it starts and how long it took; long subprocesses say they
are still alive, and their full output goes to a log file."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Callable


class Timings(dict):
    """Step name -> seconds, for one run's result.json. `step()` adds to the Timings being collected."""

    @contextmanager
    def collecting(self):
        token = _collecting.set(self)
        try:
            yield self
        finally:
            _collecting.reset(token)


_collecting: ContextVar[Timings | None] = ContextVar("timings", default=None)


def record(name: str, seconds: float) -> None:
    """A figure measured across steps (e.g. from `xl create` to the verdict), into the Timings being collected."""
    timings = _collecting.get()
    if timings is not None:
        timings[name] = round(seconds, 3)


def say(message: str) -> None:
    print(f"[xenfb-harness] {message}", file=sys.stderr, flush=True)


@contextmanager
def step(name: str):
    say(f"{name} ...")
    start = time.monotonic()
    try:
        yield
    finally:
        took = time.monotonic() - start
        timings = _collecting.get()
        if timings is not None:
            timings[name] = round(timings.get(name, 0.0) + took, 3)
        say(f"{name}: {took:.1f} s")


class CommandError(RuntimeError):
    def __init__(self, cmd: list[str], rc: int, output: str, log: Path | None):
        where = f" (full output: {log})" if log else ""
        tail = "\n".join(output.splitlines()[-20:])
        super().__init__(f"command failed with exit code {rc}: {' '.join(cmd)}{where}\n{tail}")
        self.cmd, self.rc, self.output = cmd, rc, output


STOP_GRACE = 30.0  # seconds an interrupted child gets to clean up after SIGTERM before SIGKILL


def run(cmd: list[str], log: Path | None = None, heartbeat: float = 15.0,
        progress: Callable[[list[str]], str] | None = None, **kwargs) -> str:
    """Run cmd (never through a shell), log its output, print a heartbeat while it runs; raise on failure.
    `progress(lines so far)` adds a few words on how far it got to each heartbeat (e.g. a kernel build's count).

    The child runs in its own session, so a Ctrl-C in the terminal reaches only the harness. If the harness is
    interrupted while waiting, the child is stopped politely (see _stop) and the interruption goes on."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True, **kwargs)
    start = time.monotonic()
    done = threading.Event()
    lines: list[str] = []

    def beat():
        while not done.wait(heartbeat):
            where = f": {progress(lines)}" if progress else ""
            say(f"  ... still running {cmd[0]} ({time.monotonic() - start:.0f} s){where}")

    def read():  # in a thread, so that the output read before an interruption is kept for the log
        with proc.stdout:
            for line in proc.stdout:
                lines.append(line)

    threading.Thread(target=beat, daemon=True).start()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait()
    except BaseException:
        say(f"stopping {cmd[0]} (up to {STOP_GRACE:.0f} s) ...")
        _stop(proc)
        raise
    finally:
        reader.join()
        done.set()
        output = "".join(lines)
        if log is not None:
            with open(log, "a") as f:
                f.write(f"$ {' '.join(cmd)}\n{output}\n")
    if proc.returncode != 0:
        raise CommandError(cmd, proc.returncode, output, log)
    return output


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the child's process group, so that e.g. mmdebstrap unmounts what it mounted in its target; SIGKILL
    what is left of the group after the child exits or STOP_GRACE seconds, whichever comes first."""
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        pass
    finally:  # also if interrupted again while waiting; stragglers would keep the output pipe open
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # its own session, so its process group has the child's pid
    except ProcessLookupError:
        pass
