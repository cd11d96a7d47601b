"""xfb-writer's workload mode (writer.kind command, harness/writer/xfb-writer.c) against this machine's real cgroup v2
hierarchy: it runs a shell command in CGROUP/workload, freezes and thaws CGROUP with the v2 freezer, reports a
workload that ended, and leaves nothing running when it stops. The framebuffer is a plain file (file mode)."""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from xenfb_harness import protocol
from xenfb_harness.config import MAX_COMMAND
from xenfb_harness.protocol import Bye, Done, Ready, Stats, WriterError, format_freeze, format_start, format_thaw, parse_line

from .test_pattern import RGB32, geometry_arg, writer  # noqa: F401 (writer: the fixture, built with -Werror)

LOG_BEGIN, LOG_END = "XFB-WORKLOAD-LOG-BEGIN", "XFB-WORKLOAD-LOG-END"
LOG_TAIL = 16384  # the writer's LOG_TAIL: how much of the workload's log it prints


# --- the writer and the cgroup hierarchy ------------------------------------------------------------------------


def _unescape(field: str) -> str:
    """A path from /proc/self/mounts, whose blanks and backslashes are octal escapes (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _cgroup2_mounts() -> list[Path]:
    with open("/proc/self/mounts") as f:
        return [Path(_unescape(fields[1])) for fields in (line.split() for line in f)
                if len(fields) > 2 and fields[2] == "cgroup2"]


@pytest.fixture(scope="module")
def cgroup2_root() -> Path:
    """A cgroup v2 mount we may make cgroups in, with the v2 freezer (cgroup.freeze) and cgroup.events."""
    reasons = []
    for mount in _cgroup2_mounts():
        probe = mount / f"xfb-test-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            probe.mkdir()
        except OSError as e:
            reasons.append(f"{mount}: {e.strerror}")
            continue
        try:
            if (probe / "cgroup.freeze").exists() and (probe / "cgroup.events").exists():
                return mount
            reasons.append(f"{mount}: no cgroup.freeze (the v2 freezer needs Linux 5.2)")
        finally:
            probe.rmdir()
    pytest.skip("no writable cgroup v2 mount with the freezer in /proc/self/mounts"
                + (f" ({'; '.join(reasons)})" if reasons else ""))


def events(cg: Path) -> dict[str, int]:
    """cgroup.events of cg: {"populated": 0|1, "frozen": 0|1}."""
    return {k: int(v) for k, v in (line.split() for line in (cg / "cgroup.events").read_text().splitlines())}


def procs(cg: Path) -> list[int]:
    """Every process in cg and in the cgroups below it."""
    return [int(p) for d, _, _ in os.walk(cg) for p in (Path(d) / "cgroup.procs").read_text().split()]


def wait_for(what: str, ok, timeout: float = 10.0, step: float = 0.01):
    deadline = time.monotonic() + timeout
    while not (value := ok()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)
    return value


def alive(pid: int) -> bool:
    """pid runs (a zombie has ended, whoever is to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, state) of each child of pid."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                state, ppid = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[:2]
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue
            if int(ppid) == pid:
                found.append((int(entry), state))
    return found


def empty_and_remove(cg: Path) -> None:
    """Kill everything in cg and below (frozen or not), wait until it is empty, and remove it and its children."""
    if not cg.exists():
        return
    if (cg / "cgroup.kill").exists():
        (cg / "cgroup.kill").write_text("1")
    else:
        for pid in procs(cg):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    (cg / "cgroup.freeze").write_text("0")
    wait_for(f"{cg} to be empty", lambda: not events(cg)["populated"])
    for d, _, _ in sorted(os.walk(cg), key=lambda w: -len(Path(w[0]).parts)):  # the deepest first
        os.rmdir(d)


@pytest.fixture
def cgroup(cgroup2_root) -> Path:
    """A fresh cgroup with a `workload` child, as the guest's init makes it; removed afterwards, whatever ran in it."""
    cg = cgroup2_root / f"xfb-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    (cg / "workload").mkdir(parents=True)
    try:
        yield cg
    finally:
        empty_and_remove(cg)


# --- a workload-mode writer, driven line by line ------------------------------------------------------------------


class Controller:
    """xfb-writer --workload on a plain file, its answers read line by line with a timeout."""

    def __init__(self, writer: Path, cg: Path, tmp: Path, extra: list[str] = ()):
        fb = tmp / "fb"
        fb.write_bytes(bytes(RGB32.height * RGB32.stride))
        self.log = tmp / "workload.log"
        self.proc = subprocess.Popen([str(writer), "--workload", str(cg), "--workload-log", str(self.log),
                                      "--fb", str(fb), "--geometry", geometry_arg(RGB32), *extra],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # EOF

    def line(self, timeout: float = 15.0) -> str | None:
        """The next line; None at EOF."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from the writer within {timeout} s") from None

    def message(self, timeout: float = 15.0):
        line = self.line(timeout)
        assert line is not None, "the writer's output ended"
        return parse_line(line)

    def send(self, text: str) -> None:
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def ask(self, text: str):
        self.send(text)
        return self.message()

    def rest(self, timeout: float = 15.0) -> list[str]:
        """Every further line until the writer's output ends."""
        out = []
        while (line := self.line(timeout)) is not None:
            out.append(line)
        return out

    def quiet_for(self, seconds: float) -> bool:
        """The writer said nothing for `seconds` (no answer is the protocol's answer to START and THAW)."""
        try:
            line = self.lines.get(timeout=seconds)
        except queue.Empty:
            return True
        self.lines.put(line)  # keep it for the assertion that follows
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # EOF: the writer stops the workload and exits
            except OSError:
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(5)  # it has read to EOF: the writer is gone
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


@pytest.fixture
def controller(writer, cgroup, tmp_path):
    """start() -> a ready Controller on `cgroup`; every one is stopped before the cgroup is emptied and removed."""
    started = []

    def start(extra: list[str] = ()) -> Controller:
        c = Controller(writer, cgroup, tmp_path, list(extra))
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


def ready(c: Controller) -> Controller:
    msg = c.message()
    assert isinstance(msg, Ready), msg
    return c


def grows(path: Path, seconds: float = 0.5) -> bool:
    before = path.stat().st_size if path.exists() else 0
    time.sleep(seconds)
    return (path.stat().st_size if path.exists() else 0) > before


COUNTER = "i=0; while :; do i=$((i+1)); echo $i >> {out}; sleep 0.01; done"


# --- READY, FREEZE, THAW --------------------------------------------------------------------------------------------


def test_ready_then_freeze_0_is_done_and_the_cgroup_is_frozen(controller, cgroup):
    c = controller()
    msg = c.message()
    assert isinstance(msg, Ready), msg
    g = msg.geometry
    assert (g.width, g.height, g.bpp, g.stride, g.smem) == (800, 600, 32, 3200, 800 * 600 * 4)
    assert g.channels() == RGB32.channels()
    assert events(cgroup)["frozen"] == 0
    assert c.ask(format_freeze(0)) == Done(0)
    assert events(cgroup)["frozen"] == 1
    assert (cgroup / "cgroup.freeze").read_text().strip() == "1"
    c.send(format_thaw())
    assert c.quiet_for(0.2)  # THAW has no answer
    wait_for("the cgroup to thaw", lambda: events(cgroup)["frozen"] == 0)
    assert c.ask(format_freeze(2**32 - 1)) == Done(2**32 - 1)  # the largest round
    c.send(protocol.format_quit())
    assert c.rest() == [LOG_BEGIN, LOG_END, "XFB BYE"]
    assert c.proc.wait(10) == 0


def test_a_counting_workload_counts_while_thawed_and_not_while_frozen(controller, cgroup, tmp_path):
    out = tmp_path / "count"
    c = ready(controller())
    c.send(format_start(COUNTER.format(out=out)))
    assert c.quiet_for(0.2)  # START has no answer
    wait_for("the workload to start counting", out.exists)
    assert grows(out), "the workload does not run after START"
    shell = procs(cgroup / "workload")
    assert shell and events(cgroup / "workload")["populated"] == 1
    for r in range(1, 4):
        assert c.ask(format_freeze(r)) == Done(r)
        assert events(cgroup)["frozen"] == 1
        frozen_at = out.read_text()
        assert not grows(out), f"round {r}: the workload runs while frozen"
        assert out.read_text() == frozen_at
        c.send(format_thaw())
        wait_for("the cgroup to thaw", lambda: events(cgroup)["frozen"] == 0)
        assert grows(out), f"round {r}: the workload does not run again after THAW"
    counts = [int(x) for x in out.read_text().split()]
    assert counts == list(range(1, len(counts) + 1))  # one workload, never restarted
    c.send(protocol.format_quit())
    rest = c.rest()
    assert rest[-1] == "XFB BYE" and rest[0] == LOG_BEGIN
    assert c.proc.wait(10) == 0


def test_a_workload_started_while_frozen_waits_for_thaw(controller, cgroup, tmp_path):
    """What the harness's rounds rely on: START does not thaw (harness/scenario.py must THAW before the workload
    can run)."""
    out = tmp_path / "count"
    c = ready(controller())
    assert c.ask(format_freeze(0)) == Done(0)
    c.send(format_start(COUNTER.format(out=out)))
    time.sleep(0.5)
    assert not out.exists() or not grows(out, 0.3)
    assert events(cgroup)["frozen"] == 1 and events(cgroup / "workload")["populated"] == 1
    c.send(format_thaw())
    wait_for("the workload to count after THAW", out.exists)
    assert grows(out)


def test_the_workload_runs_in_the_workload_cgroup_with_its_children(controller, cgroup, tmp_path):
    out = tmp_path / "pids"
    c = ready(controller())
    c.send(format_start(f"sleep 1000 & echo $$ $! > {out}.tmp && mv {out}.tmp {out}; while :; do sleep 1; done"))
    shell, child = (int(p) for p in wait_for("the workload's pids", lambda: out.exists() and out.read_text()).split())
    inside = procs(cgroup / "workload")
    assert shell in inside and child in inside
    assert c.proc.pid not in procs(cgroup)  # the controller stays outside what it freezes
    assert [pid for pid, _ in children(c.proc.pid)] == [shell]


def test_max_length_command_fits_in_one_line(controller, cgroup, tmp_path):
    """command.run's limit (harness/config.py MAX_COMMAND) travels as one START line the writer takes whole."""
    out = tmp_path / "ok"
    body = f"echo ok > {out}; while :; do sleep 1; done"
    command = ": " + "x" * (MAX_COMMAND - len(body) - 4) + "; " + body
    assert len(command.encode()) == MAX_COMMAND
    c = ready(controller())
    c.send(format_start(command))
    assert wait_for("the long command to run", lambda: out.exists() and out.read_text()) == "ok\n"
    assert c.ask(format_freeze(1)) == Done(1)


def test_stats_without_a_stats_dir_is_empty(controller):
    c = ready(controller())
    assert c.ask(protocol.format_stats()) == Stats({})


def test_stats_reads_the_stats_dir(controller, tmp_path):
    stats = tmp_path / "stats"
    stats.mkdir()
    (stats / "race_hits").write_text("3\n")
    (stats / "faults").write_text("12\n")
    c = ready(controller(["--stats-dir", str(stats)]))
    assert c.ask(protocol.format_stats()) == Stats({"faults": 12, "race_hits": 3})


# --- the workload's end is an error ---------------------------------------------------------------------------------


def _wait_until_exited(c: Controller) -> None:
    """Until the workload's shell (the writer's only child) has exited and waits to be reaped."""
    wait_for("the workload to exit", lambda: (kids := children(c.proc.pid)) and all(s == "Z" for _, s in kids))


def test_a_workload_that_exits_is_an_error_with_its_log(controller, cgroup):
    c = ready(controller())
    c.send(format_start("echo bye; echo to stderr >&2; exit 3"))
    _wait_until_exited(c)
    c.send(format_freeze(1))
    lines = c.rest()
    assert lines[:4] == [LOG_BEGIN, "bye", "to stderr", LOG_END], lines
    assert len(lines) == 5, lines
    msg = parse_line(lines[4])
    assert isinstance(msg, WriterError), lines
    assert msg.message.startswith("the workload exited with status 3"), msg
    assert c.proc.wait(10) != 0
    assert c.log.read_text() == "bye\nto stderr\n"


def test_a_workload_killed_by_a_signal_is_an_error(controller, cgroup, tmp_path):
    c = ready(controller())
    c.send(format_start("echo $$ > " + str(tmp_path / "pid") + "; while :; do sleep 1; done"))
    pid = int(wait_for("the workload's pid", lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text()))
    os.kill(pid, signal.SIGTERM)
    _wait_until_exited(c)
    c.send(format_freeze(2))
    lines = c.rest()
    msg = parse_line(lines[-1])
    assert isinstance(msg, WriterError) and msg.message.startswith(f"the workload was killed by signal "
                                                                   f"{signal.SIGTERM.value}"), lines
    assert LOG_BEGIN in lines and LOG_END in lines
    assert c.proc.wait(10) != 0


def test_the_log_tail_is_at_most_16_kib_and_ends_with_the_last_line(controller, cgroup):
    c = ready(controller())
    c.send(format_start("i=0; while [ $i -lt 5000 ]; do echo line$i; i=$((i+1)); done; exit 0"))
    _wait_until_exited(c)
    assert c.log.stat().st_size > LOG_TAIL
    c.send(format_freeze(1))
    lines = c.rest()
    begin, end = lines.index(LOG_BEGIN), lines.index(LOG_END)
    body = "\n".join(lines[begin + 1:end]) + "\n"
    assert len(body) <= LOG_TAIL + 1  # a cut first line may gain nothing but its own end
    assert lines[end - 1] == "line4999"
    assert c.log.read_text().endswith(body)
    assert parse_line(lines[-1]).message.startswith("the workload exited with status 0")


# --- QUIT and EOF leave nothing running -----------------------------------------------------------------------------


SPAWNER = ("sleep 1000 & sh -c 'sleep 1000 & sleep 1000' & echo started; "
           "while :; do sleep 1; done")


@pytest.mark.parametrize("frozen", [False, True], ids=["running", "frozen"])
def test_quit_kills_every_process_in_the_cgroup_and_says_bye(controller, cgroup, frozen):
    c = ready(controller())
    c.send(format_start(SPAWNER))
    running = wait_for("the workload and its children", lambda: len(procs(cgroup)) >= 4 and procs(cgroup))
    if frozen:
        assert c.ask(format_freeze(1)) == Done(1)
    c.send(protocol.format_quit())
    lines = c.rest()
    assert lines[0] == LOG_BEGIN and lines[-2] == LOG_END and "started" in lines
    assert parse_line(lines[-1]) == Bye()
    assert c.proc.wait(10) == 0
    assert procs(cgroup) == [] and events(cgroup)["populated"] == 0
    assert events(cgroup)["frozen"] == 0  # thawed for the kill: nothing stays frozen
    assert not [pid for pid in running if alive(pid)]


def test_quit_before_start_says_bye_with_an_empty_log(controller, cgroup):
    c = ready(controller())
    c.send(protocol.format_quit())
    assert c.rest() == [LOG_BEGIN, LOG_END, "XFB BYE"]
    assert c.proc.wait(10) == 0


@pytest.mark.parametrize("frozen", [False, True], ids=["running", "frozen"])
def test_eof_leaves_nothing_running(controller, cgroup, frozen):
    c = ready(controller())
    c.send(format_start(SPAWNER))
    running = wait_for("the workload and its children", lambda: len(procs(cgroup)) >= 4 and procs(cgroup))
    if frozen:
        assert c.ask(format_freeze(1)) == Done(1)
    c.proc.stdin.close()
    assert c.proc.wait(15) == 0
    assert c.rest() == []
    assert procs(cgroup) == [] and events(cgroup)["populated"] == 0
    assert not [pid for pid in running if alive(pid)]


# --- bad commands ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hex_", ["abc", "a", "zz", "6g", "echo hi", "00", "610062", "6100"],
                         ids=["odd", "one-digit", "not-hex", "not-hex-2", "plain-text", "nul", "nul-inside",
                              "nul-last"])
def test_a_bad_start_is_an_error(controller, cgroup, hex_):
    c = ready(controller())
    c.send(f"START {hex_}\n")
    msg = c.message()
    assert isinstance(msg, WriterError) and msg.message.startswith("START needs the command as"), msg
    assert c.proc.wait(10) != 0
    assert procs(cgroup) == []  # nothing was started


def test_a_second_start_is_an_error(controller, cgroup):
    c = ready(controller())
    c.send(format_start("while :; do sleep 1; done"))
    c.send(format_start("echo second"))
    msg = c.message()
    assert msg == WriterError("START: the workload already runs"), msg


@pytest.mark.parametrize("line", ["HELLO", "GO 1 2", "FREEZE", "FREEZE x", "FREEZE -1", "FREEZE 4294967296",
                                  "FREEZE 1 2", "freeze 1", "START", "THAW 1", "QUIT now", "FREEZE1"])
def test_an_unknown_command_is_an_error_and_the_writer_goes_on(controller, cgroup, line):
    c = ready(controller())
    assert c.ask(line + "\n") == WriterError(f"unknown command: {line}")
    assert c.ask(format_freeze(7)) == Done(7)  # still listening, and nothing broke


def test_an_overlong_line_is_reported_shortened(controller):
    c = ready(controller())
    msg = c.ask("X" * 10000 + "\n")
    assert msg == WriterError("unknown command: " + "X" * 64 + "..."), msg
    assert c.ask(format_freeze(1)) == Done(1)


def test_blank_lines_and_blanks_around_commands(controller):
    c = ready(controller())
    c.send("\n   \n\t\n")
    assert c.ask("  FREEZE 3 \t\n") == Done(3)
    assert c.ask("FREEZE\t4\r\n") == Done(4)


# --- the X server's cgroup --------------------------------------------------------------------------------------


def _fake_xorg(cg: Path) -> subprocess.Popen:
    """A process in CGROUP/xorg, as guest-init starts the X server there."""
    (cg / "xorg").mkdir(exist_ok=True)
    proc = subprocess.Popen(["sh", "-c", f"echo $$ > {cg}/xorg/cgroup.procs && exec sleep 1000"])
    wait_for("the fake X server in its cgroup", lambda: proc.pid in procs(cg / "xorg"))
    return proc


def test_the_x_server_is_frozen_with_the_workload_and_killed_at_quit(controller, cgroup):
    xorg = _fake_xorg(cgroup)
    try:
        c = ready(controller())
        assert c.ask(format_freeze(0)) == Done(0)
        assert events(cgroup / "xorg")["frozen"] == 1
        c.send(protocol.format_quit())
        assert parse_line(c.rest()[-1]) == Bye()
        assert xorg.wait(10) == -signal.SIGKILL
        assert procs(cgroup) == []
    finally:
        if xorg.poll() is None:
            xorg.kill()
        xorg.wait()


def test_the_x_servers_exit_is_an_error(controller, cgroup):
    xorg = _fake_xorg(cgroup)
    c = ready(controller())
    assert c.ask(format_freeze(0)) == Done(0)
    c.send(format_thaw())
    xorg.kill()
    xorg.wait()
    wait_for("the X cgroup to empty", lambda: events(cgroup / "xorg")["populated"] == 0)
    c.send(format_freeze(1))
    lines = c.rest()
    assert parse_line(lines[-1]) == WriterError("the X server exited"), lines
    assert c.proc.wait(10) != 0


def test_without_an_xorg_cgroup_no_x_server_is_watched(controller, cgroup):
    # What guest-init does with command.xorg false: only the workload's cgroup (an xorg one means "watch X").
    assert not (cgroup / "xorg").exists()
    c = ready(controller())
    c.send(format_freeze(0))
    lines = [c.line()]
    if lines[0] != "XFB DONE 0":
        lines += c.rest()
    assert lines == ["XFB DONE 0"]


def test_a_missing_workload_cgroup_is_refused_before_ready(writer, cgroup2_root, tmp_path):
    cg = cgroup2_root / f"xfb-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    cg.mkdir()
    try:
        fb = tmp_path / "fb"
        fb.write_bytes(bytes(RGB32.height * RGB32.stride))
        out = subprocess.run([str(writer), "--workload", str(cg), "--fb", str(fb), "--geometry",
                              geometry_arg(RGB32)], input="", capture_output=True, text=True, timeout=10)
        assert out.returncode != 0
        msg = parse_line(out.stdout.strip())
        assert isinstance(msg, WriterError) and "workload is not a directory" in msg.message
    finally:
        empty_and_remove(cg)


@pytest.mark.parametrize("extra", [["--seed", "1"], ["--rounds", "2"], ["--mappings", "2"], ["--lifecycle", "per-round"]])
def test_workload_mode_refuses_pattern_options(writer, cgroup, tmp_path, extra):
    fb = tmp_path / "fb"
    fb.write_bytes(bytes(RGB32.height * RGB32.stride))
    out = subprocess.run([str(writer), "--workload", str(cgroup), "--fb", str(fb), "--geometry",
                          geometry_arg(RGB32), *extra], input="", capture_output=True, text=True, timeout=10)
    assert out.returncode != 0 and "--workload takes only" in out.stdout
