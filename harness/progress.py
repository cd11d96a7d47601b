"""Progress for long steps: each step prints when it starts and how long it took; long subprocesses say they
are still alive, and their full output goes to a log file."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

TIMINGS: dict[str, float] = {}  # step name -> seconds, collected for result.json


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
        TIMINGS[name] = round(TIMINGS.get(name, 0.0) + took, 3)
        say(f"{name}: {took:.1f} s")


class CommandError(RuntimeError):
    def __init__(self, cmd: list[str], rc: int, tail: str, log: Path | None):
        where = f" (full output: {log})" if log else ""
        super().__init__(f"command failed with exit code {rc}: {' '.join(cmd)}{where}\n{tail}")
        self.cmd, self.rc = cmd, rc


def run(cmd: list[str], log: Path | None = None, heartbeat: float = 15.0, **kwargs) -> str:
    """Run cmd (never through a shell), log its output, print a heartbeat while it runs; raise on failure."""
    start = time.monotonic()
    done = threading.Event()

    def beat():
        while not done.wait(heartbeat):
            say(f"  ... still running {cmd[0]} ({time.monotonic() - start:.0f} s)")

    threading.Thread(target=beat, daemon=True).start()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace", **kwargs)
    finally:
        done.set()
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n")
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-20:])
        raise CommandError(cmd, proc.returncode, tail, log)
    return proc.stdout
