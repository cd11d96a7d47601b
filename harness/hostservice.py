"""A nested host kept running between runs: `host up` boots it in a background process and returns once dom0
answers; `host down` stops it. Runs use it as any other SSH host, through the DIR/host.yaml it writes.

State directory (the user's; we write only these names):
  serve.pid     the background process that owns QEMU (QEMU dies with it: PDEATHSIG)
  host.log      its progress and errors
  host.yaml     the config fragment for `run --host`: address, port, user, key, known_hosts
  client_key, known_hosts   the SSH key to log in with and dom0's pinned host key
  serial.log, qemu-command.txt, qemu.pid    the nested host's own logs
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from . import signals
from .artifacts.cache import Cache
from .artifacts.host import build_host
from .config import Config
from .hosts.nested import NestedHost
from .progress import say

PID, LOG, HOST_YAML = "serve.pid", "host.log", "host.yaml"
CHECK_EVERY_S = 20
# Established SSH connections into dom0, ours included: more than one means somebody is using the host.
COUNT_SESSIONS = ["sh", "-c", "ss -Htn state established '( sport = :22 )' | wc -l"]


def _alive_server(state: Path) -> int | None:
    """The pid of the `host serve` process of this state dir, if it is running."""
    try:
        pid = int((state / PID).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _is_server(pid, state) else None


def _is_server(pid: int, state: Path) -> bool:
    """Whether pid is still the `host serve` process of this state dir (a zombie's cmdline is empty)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return b"serve" in cmdline and str(state.resolve()).encode() in cmdline


def up(cfg: Config, state: Path, cache: Cache) -> int:
    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    if cfg["host.kind"] != "nested":
        say(f"{cfg.source}: host.kind is {cfg['host.kind']!r}; `host up` boots a nested host")
        return 2
    if _alive_server(state):
        say(f"a host is already up in {state}: use {state / HOST_YAML}, or `host down --state {state}` first")
        return 2
    for name in (HOST_YAML, PID):
        (state / name).unlink(missing_ok=True)
    source = [] if cfg.source == "(defaults)" else [cfg.source]
    cmd = [sys.executable, "-m", "xenfb_harness", "host", "serve", *source, "--state", str(state),
           "--cache-dir", str(cache.root)]
    with open(state / LOG, "w") as log:
        # A session of its own: the terminal's Ctrl-C or the caller's exit does not reach the host.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    (state / PID).write_text(f"{proc.pid}\n")
    shown = 0
    try:
        while True:  # relay the server's progress until it is ready or gone
            text = (state / LOG).read_text(errors="replace")
            sys.stderr.write(text[shown:])
            shown = len(text)
            if (state / HOST_YAML).exists():
                print(f"host up: {state / HOST_YAML}  (run --host {state / HOST_YAML}; stop with "
                      f"`xenfb-harness host down --state {state}`; it stops itself after "
                      f"{cfg['host.idle_timeout_min']} idle minutes)")
                return 0
            if proc.poll() is not None:
                say(f"the host did not come up (exit {proc.returncode}); log: {state / LOG}")
                return 2
            time.sleep(0.5)
    except KeyboardInterrupt:
        say("interrupted: stopping the host")
        return max(down(state), 2)


def serve(cfg: Config, state: Path, cache: Cache) -> int:
    """The background process: boot, publish host.yaml, then wait for `host down` (SIGTERM) or the idle
    timeout. Leaving the `with` shuts QEMU down and removes its temp dir, whatever the reason."""
    state = state.resolve()
    published = [state / n for n in (HOST_YAML, "client_key", "known_hosts")]
    try:
        artifacts = build_host(cfg, cache, state / "build.log")
        with NestedHost(cfg.data["host"], artifacts, state, cache) as nested:
            key = state / "client_key"
            key.write_bytes(Path(artifacts.ssh_client_key).read_bytes())
            key.chmod(0o600)
            (state / "known_hosts").write_text(nested.known_hosts().read_text())
            fragment = {"host": {"kind": "ssh", "address": "127.0.0.1", "port": nested.ssh_port, "user": "root",
                                 "key": "client_key", "known_hosts": "known_hosts",
                                 "share_dir": str(nested.share.local), "share_mount": nested.share.remote}}
            tmp = state / f".{HOST_YAML}.tmp"
            tmp.write_text(f"# nested host, {nested.description}\n" + yaml.safe_dump(fragment, sort_keys=False))
            tmp.rename(state / HOST_YAML)  # appears complete or not at all: `host up` waits for it
            say(f"ready: {nested.description}, SSH at 127.0.0.1:{nested.ssh_port}")
            _wait_while_used(nested, cfg["host.idle_timeout_min"] * 60)
        return 0
    except KeyboardInterrupt:
        say(f"stopped by {signals.received or 'an interrupt'}")
        return 0
    except Exception as e:
        say(f"error: {type(e).__name__}: {e}")
        return 2
    finally:
        for path in published + [state / PID]:
            path.unlink(missing_ok=True)


def _wait_while_used(nested: NestedHost, idle_s: float) -> None:
    watcher = nested.dom0()
    try:
        last_used = time.monotonic()
        while time.monotonic() - last_used < idle_s:
            time.sleep(CHECK_EVERY_S)
            sessions = int(watcher.exec(COUNT_SESSIONS, timeout=30).stdout.strip() or 0)
            if sessions > 1:
                last_used = time.monotonic()
        say(f"idle for {idle_s / 60:.0f} minutes: stopping")
    finally:
        watcher.ssh.close()


def _gone(pid: int, state: Path, within_s: float) -> bool:
    """Wait up to within_s for the host process to be gone; whether it is."""
    deadline = time.monotonic() + within_s
    while _is_server(pid, state) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not _is_server(pid, state)


def down(state: Path) -> int:
    state = state.resolve()
    pid = _alive_server(state)
    if pid is None:
        say(f"no host is up in {state}")
        return 0
    with contextlib.suppress(ProcessLookupError):  # it may have ended by itself meanwhile
        os.kill(pid, signal.SIGTERM)
    # Until the process itself is gone, not only its pid file: it removes that file before Python exits.
    if not _gone(pid, state, 90):
        say(f"the host process {pid} did not stop in 90 s: killing it (QEMU dies with it)")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not _gone(pid, state, 10):
            say(f"the host process {pid} is still there 10 s after SIGKILL")
        (state / PID).unlink(missing_ok=True)
    say(f"host in {state} is down")
    return 0
