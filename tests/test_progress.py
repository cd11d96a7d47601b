"""progress.run with real child processes, interrupted by real signals sent to the main thread."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from xenfb_harness import progress, signals
from xenfb_harness.progress import CommandError, run

# Traps SIGTERM like mmdebstrap does to unmount what it mounted; $1 is a directory for its files.
POLITE = """
trap 'echo cleaning up; echo cleaned > "$1/marker"; exit 1' TERM
echo started
sleep 60 &
echo $! > "$1/grandchild"
: > "$1/ready"
wait
"""

# Ignores SIGTERM (and so does its sleep, which inherits that): only SIGKILL stops it.
STUBBORN = """
trap '' TERM
echo $$ > "$1/child"
: > "$1/ready"
sleep 60
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def signal_when_ready(ready: Path, signum: int) -> threading.Thread:
    """From a thread, send signum to the main thread (where Python runs handlers) once the child is ready."""
    main = threading.main_thread().ident

    def wait_and_signal():
        deadline = time.monotonic() + 10
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        signal.pthread_kill(main, signum)

    thread = threading.Thread(target=wait_and_signal, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def harness_signals():
    """The harness's own SIGINT/SIGTERM handling, as in a real run; restored afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signals.install()
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)
    signals.received = None


def test_output_is_returned_and_logged(tmp_path):
    log = tmp_path / "log"
    log.write_text("earlier\n")
    assert run(["sh", "-c", "echo out; echo err >&2"], log) == "out\nerr\n"
    assert log.read_text() == "earlier\n$ sh -c echo out; echo err >&2\nout\nerr\n\n"


def test_failure_raises_with_tail(tmp_path):
    with pytest.raises(CommandError) as info:
        run(["sh", "-c", "seq 1 30; exit 3"], tmp_path / "log")
    assert info.value.rc == 3
    assert str(info.value).endswith("\n".join(str(i) for i in range(11, 31)))
    assert str(tmp_path / "log") in str(info.value)


def test_kwargs_reach_popen(tmp_path):
    assert run(["pwd"], cwd=tmp_path) == f"{tmp_path}\n"


def test_heartbeat(capsys):
    run(["sleep", "0.5"], heartbeat=0.1)
    assert "still running sleep" in capsys.readouterr().err


def test_child_has_its_own_session():
    # A terminal's Ctrl-C goes to its foreground process group: the harness, not the child.
    child_sid = run([sys.executable, "-c", "import os; print(os.getsid(0))"])
    assert int(child_sid) != os.getsid(0)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_interrupt_lets_the_child_clean_up(tmp_path, harness_signals, signum):
    log = tmp_path / "log"
    thread = signal_when_ready(tmp_path / "ready", signum)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run(["sh", "-c", POLITE, "sh", str(tmp_path)], log)
    thread.join()
    assert time.monotonic() - start < 15
    assert (tmp_path / "marker").read_text() == "cleaned\n"  # the child got SIGTERM, not SIGKILL
    assert not alive(int((tmp_path / "grandchild").read_text()))  # its whole process group was stopped
    assert log.read_text().endswith("\nstarted\ncleaning up\n\n")  # output from before and after the interrupt
    assert signals.received == signal.Signals(signum).name


def test_any_exception_stops_the_child_and_is_reraised(tmp_path):
    class Boom(Exception):
        pass

    def raise_boom(signum, frame):
        raise Boom()

    saved = signal.signal(signal.SIGUSR1, raise_boom)
    try:
        thread = signal_when_ready(tmp_path / "ready", signal.SIGUSR1)
        with pytest.raises(Boom):
            run(["sh", "-c", POLITE, "sh", str(tmp_path)])
        thread.join()
    finally:
        signal.signal(signal.SIGUSR1, saved)
    assert (tmp_path / "marker").exists()


def test_child_ignoring_sigterm_is_killed_after_grace(tmp_path, harness_signals, monkeypatch):
    monkeypatch.setattr(progress, "STOP_GRACE", 0.5)
    thread = signal_when_ready(tmp_path / "ready", signal.SIGINT)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run(["sh", "-c", STUBBORN, "sh", str(tmp_path)])
    thread.join()
    took = time.monotonic() - start
    assert 0.5 <= took < 15
    assert not alive(int((tmp_path / "child").read_text()))
