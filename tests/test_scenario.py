"""harness/scenario.py's writer.kind command rounds, without a guest: the freeze timing from the seed, and the order
of START / FREEZE / THAW the rounds send, against a fake guest that freezes as xfb-writer --workload does (a
workload started in a frozen cgroup waits for THAW: tests/test_workload.py shows the real writer doing so)."""
from __future__ import annotations

import itertools
import types
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

from xenfb_harness import config, scenario
from xenfb_harness.capture import Settled
from xenfb_harness.geometry import Channel, Geometry
from xenfb_harness.protocol import Done
from xenfb_harness.result import ERROR, FAIL, PASS
from xenfb_harness.scenario import _command_rounds, freeze_intervals, new_result

GEOMETRY = Geometry(8, 4, 32, 32, Channel(16, 8), Channel(8, 8), Channel(0, 8))


def command_config(tmp_path: Path, text: str = "") -> config.Config:
    (tmp_path / "test.sources").write_text("deb http://mirror.invalid/debian bookworm main\n")
    p = tmp_path / "scenario.yaml"
    p.write_text("writer: {kind: command}\ncommand: {run: 'while :; do x11perf -rect500; done'}\n" + text
                 + "\napt:\n  sources: test.sources\n")
    return config.load(p)


def config_of(**keys) -> config.Config:
    """The defaults with some dotted keys changed (no file: freeze_intervals reads three keys)."""
    data = config.defaults()
    for dotted, value in keys.items():
        node = data
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return config.Config("(test)", data)


# --- freeze_intervals -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interval_ms", [10, 2000, 12345])
def test_periodic_intervals_are_interval_ms(interval_ms):
    cfg = config_of(command__timing="periodic", command__interval_ms=interval_ms, seed=3)
    assert list(itertools.islice(freeze_intervals(cfg), 50)) == [interval_ms / 1000] * 50


def test_periodic_intervals_do_not_depend_on_the_seed():
    a = list(itertools.islice(freeze_intervals(config_of(command__timing="periodic", seed=1)), 10))
    b = list(itertools.islice(freeze_intervals(config_of(command__timing="periodic", seed=2)), 10))
    assert a == b == [2.0] * 10


def random_intervals(seed: int, n: int = 200, interval_ms: int = 2000) -> list[float]:
    cfg = config_of(command__timing="random", command__interval_ms=interval_ms, seed=seed)
    return list(itertools.islice(freeze_intervals(cfg), n))


def test_random_intervals_are_the_default_and_deterministic_per_seed():
    assert config.defaults()["command"]["timing"] == "random"
    assert random_intervals(7) == random_intervals(7)
    assert random_intervals(2**64 - 1) == random_intervals(2**64 - 1)


def test_random_intervals_differ_between_seeds():
    runs = [random_intervals(seed, 20) for seed in (0, 1, 2, 7, 2**64 - 1)]
    assert all(a != b for a, b in itertools.combinations(runs, 2))


@pytest.mark.parametrize("interval_ms", [10, 2000])
def test_random_intervals_stay_within_half_and_one_and_a_half(interval_ms):
    base = interval_ms / 1000
    for seed in (0, 1, 99):
        values = random_intervals(seed, 500, interval_ms)
        assert all(0.5 * base <= v <= 1.5 * base for v in values)
        assert len(set(values)) > 400  # they vary
        assert min(values) < 0.6 * base and max(values) > 1.4 * base  # and use the whole range


def test_intervals_are_fresh_per_call():
    cfg = config_of(command__timing="random", seed=5)
    first = list(itertools.islice(freeze_intervals(cfg), 5))
    assert list(itertools.islice(freeze_intervals(cfg), 5)) == first  # a new generator starts over


# --- _command_rounds against a fake guest ---------------------------------------------------------------------------


class FakeGuest:
    """Guest memory that the workload changes while it runs: started and not frozen, as with the real freezer."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.frozen = False
        self.started = False
        self.memory = np.zeros((GEOMETRY.height, GEOMETRY.width, 3), np.uint8)
        self.drawn = 0

    def start_workload(self, command: str) -> None:
        self.calls.append(("start", command))
        self.started = True  # like START: in a frozen cgroup it stays frozen

    def freeze(self, round_no: int) -> Done:
        self.calls.append(("freeze", round_no))
        self.frozen = True
        return Done(round_no)

    def thaw(self) -> None:
        self.calls.append(("thaw",))
        self.frozen = False

    def stats(self) -> dict:
        return {}

    def run_for(self, seconds: float) -> None:
        """The workload runs for `seconds`: while it may, it draws one more pixel."""
        self.calls.append(("run", seconds, self.started and not self.frozen))
        if self.started and not self.frozen:
            self.drawn += 1
            y, x = divmod(self.drawn % (GEOMETRY.width * GEOMETRY.height), GEOMETRY.width)
            self.memory[y, x] = (self.drawn * 37) % 256, 200, 100


def ppm(frame: np.ndarray) -> bytes:
    h, w, _ = frame.shape
    return f"P6\n{w} {h}\n255\n".encode() + frame.tobytes()


class FakeCapture:
    """Screendumps of the fake guest memory, and a VNC view that is `view(memory)` (exact by default)."""

    def __init__(self, guest: FakeGuest, view=lambda m: m.copy(), restless_round: int | None = None):
        self.guest, self.view, self.restless_round = guest, view, restless_round
        self.dumps: list[str] = []

    def screendump(self, local: Path) -> Future:
        self.dumps.append(local.name)
        frame = self.guest.memory.copy()
        if self.restless_round is not None and local.name == f"round-{self.restless_round:03d}-guest-memory-after.ppm":
            frame[0, 0] = (1, 2, 3) if tuple(frame[0, 0]) != (1, 2, 3) else (4, 5, 6)  # someone drew meanwhile
        local.write_bytes(ppm(frame))
        done: Future = Future()
        done.set_result(local)
        return done

    def settle(self, matches, quiet_s: float) -> Settled:
        frame = self.view(self.guest.memory)
        return Settled(frame, "match" if matches(frame) else "quiet", 0.0)


@pytest.fixture
def run(tmp_path, monkeypatch):
    """run(cfg_text, **capture options) -> (result, guest, run_dir, cfg) after _command_rounds with a fake guest,
    the result decided."""

    def go(text: str = "", **capture_options):
        cfg = command_config(tmp_path, text)
        guest = FakeGuest()
        monkeypatch.setattr(scenario, "time", types.SimpleNamespace(monotonic=scenario.time.monotonic,
                                                                     sleep=guest.run_for))
        monkeypatch.setattr(scenario, "say", lambda message: None)
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        result = new_result(cfg)
        _command_rounds(cfg, guest, FakeCapture(guest, **capture_options), GEOMETRY, result, run_dir)
        result.decide()
        return result, guest, run_dir, cfg

    return go


def test_command_rounds_freeze_every_round_and_start_once(run):
    result, guest, run_dir, cfg = run("rounds: 4\ncommand: {run: 'x', timing: periodic, interval_ms: 10}\n")
    freezes = [c[1] for c in guest.calls if c[0] == "freeze"]
    assert freezes == [0, 1, 2, 3, 4]
    assert [c for c in guest.calls if c[0] == "start"] == [("start", "x")]
    assert guest.calls[0] == ("freeze", 0)  # round 0: the screen before the workload starts
    assert guest.calls.index(("start", "x")) < guest.calls.index(("freeze", 1))
    assert [c[1] for c in guest.calls if c[0] == "run"] == [0.01] * 4  # one interval before each later freeze
    assert [r.round for r in result.rounds] == [0, 1, 2, 3, 4]
    assert result.rounds[0].drawn_pixels is None and all(r.drawn_pixels is not None for r in result.rounds[1:])
    assert all(r.guest_quiet and r.missed_pixels == 0 for r in result.rounds)
    assert [r.at_s for r in result.rounds] == sorted(r.at_s for r in result.rounds)
    assert not list(run_dir.glob("*.ppm"))  # the dumps are not kept
    assert (run_dir / "final-seen-vnc.png").exists()


def test_command_rounds_use_the_seeded_intervals(run):
    result, guest, _, cfg = run("rounds: 5\nseed: 11\ncommand: {run: 'x', timing: random, interval_ms: 50}\n")
    assert [c[1] for c in guest.calls if c[0] == "run"] == list(itertools.islice(freeze_intervals(cfg), 5))


def test_command_rounds_thaw_before_every_round_after_the_first(run):
    _, guest, _, _ = run("rounds: 3\ncommand: {run: 'x', timing: periodic, interval_ms: 10}\n")
    for r in (2, 3):
        between = guest.calls[guest.calls.index(("freeze", r - 1)) + 1:guest.calls.index(("freeze", r))]
        assert ("thaw",) in between and between.index(("thaw",)) < [c[0] for c in between].index("run")


def test_the_workload_runs_in_every_rounds_interval(run):
    _, guest, _, _ = run("rounds: 3\ncommand: {run: 'x', timing: periodic, interval_ms: 10}\n")
    runs = [c for c in guest.calls if c[0] == "run"]
    assert [may_run for _, _, may_run in runs] == [True, True, True], guest.calls


def test_a_one_round_run_of_a_drawing_workload_passes(run):
    result, guest, _, _ = run("rounds: 1\ncommand: {run: 'x', timing: periodic, interval_ms: 10}\n")
    assert result.rounds[1].drawn_pixels > 0
    assert result.verdict == PASS, result.reason


def test_a_drawing_workload_passes(run):
    result, guest, _, _ = run("rounds: 4\ncommand: {run: 'x', timing: periodic, interval_ms: 10}\n")
    assert result.verdict == PASS, result.reason
    assert sum(r.drawn_pixels for r in result.rounds[1:]) > 0


def test_a_view_that_misses_a_pixel_fails_and_keeps_the_evidence(run):
    def stale(memory):
        frame = memory.copy()
        frame[3, 7] = (9, 9, 9)
        return frame

    result, _, run_dir, _ = run("rounds: 2\ncommand: {run: 'x', timing: periodic, interval_ms: 10}\n", view=stale)
    assert result.verdict == FAIL and "round 0" in result.reason
    assert all(r.missed_pixels == 1 and r.rects == [{"x": 7, "y": 3, "w": 1, "h": 1}] for r in result.rounds)
    for r in range(3):
        assert {p.name for p in run_dir.glob(f"round-{r:03d}-*.png")} == {
            f"round-{r:03d}-{k}.png" for k in ("expected", "seen-vnc", "diff")}


def test_guest_memory_that_changes_while_frozen_stops_the_run_with_an_error(run):
    result, guest, run_dir, _ = run("rounds: 4\ncommand: {run: 'x', timing: periodic, interval_ms: 10}\n",
                                    restless_round=2)
    assert [r.round for r in result.rounds] == [0, 1, 2]  # nothing more to learn
    assert [r.guest_quiet for r in result.rounds] == [True, True, False]
    assert result.rounds[2].guest_changed_pixels == 1
    assert result.rounds[2].guest_changed_rects == [{"x": 0, "y": 0, "w": 1, "h": 1}]
    assert (run_dir / "round-002-guest-memory-changed.png").exists()
    assert result.verdict == ERROR and "round 2" in result.reason and "never became quiet" in result.reason
    assert ("freeze", 3) not in guest.calls


def test_a_view_of_another_size_is_waited_for_then_named():
    """A backend may take the frontend's size a moment late: until it has, a frame does not match (no exception
    that would end the round early); once the round settles still at another size, the error says both sizes."""
    geometry = Geometry(800, 600, 32, 3200, Channel(16, 8), Channel(8, 8), Channel(0, 8))
    expected = np.zeros((600, 800, 3), np.uint8)
    small = np.zeros((480, 640, 3), np.uint8)
    matches = scenario.matcher(expected, geometry, [])
    assert matches(small) is False and matches(expected.copy()) is True
    with pytest.raises(scenario.HostError, match="640x480 after the quiet time.*800x600"):
        scenario.judge(expected, small, geometry, [])
    assert scenario.judge(expected, expected.copy(), geometry, []).ok
