"""One scenario on a host it is given: upload the guest payload, `xl create`, the rounds, the capture, the
compare, and the guest's teardown. The host outlives it and serves the next scenario."""
from __future__ import annotations

import random
import time
from concurrent.futures import Future
from pathlib import Path

from . import pattern
from .artifacts.payload import Payload
from .capture import Capture
from .compare import compare
from .config import Config, runs_x_server
from .frontends import frontend, module_frontend
from .geometry import Rect
from .guest import Guest, save_workload_log, save_xorg_config, writer_params
from .hosts.base import HostError
from .hosts.dom0 import Dom0
from .images import diff_image, load_ppm, save_png
from .progress import record, say, step
from .result import Result, RoundResult


def new_result(cfg: Config) -> Result:
    return Result(config=cfg.source, frontend=cfg["frontend"], seed=cfg["seed"], rounds_planned=cfg["rounds"],
                  effective_config=cfg.effective())


def built_from(result: Result, payload: Payload) -> None:
    """What the guest's side of a run was built from: its kernel, and every Debian package."""
    result.versions.update(payload.versions)
    result.packages["guest"] = dict(payload.packages)


def run_scenario(cfg: Config, host: Dom0, payload: Payload, run_dir: Path, result: Result) -> Result:
    """Fill `result` with what one fresh guest on `host` showed; every exit path removes the guest."""
    run_dir.mkdir(parents=True, exist_ok=True)
    result.host = host.description
    built_from(result, payload)
    result.guest["payload"] = payload.key
    with step("upload guest payload"):
        kernel, initrd = host.upload(payload.kernel), host.upload(payload.initrd)
    guest = Guest(host, cfg, run_dir, kernel, initrd)
    created = time.monotonic()
    try:
        with step("start guest"):
            geometry = guest.start()
        result.guest.update(name=guest.slot.name, domid=guest.domid)
        result.geometry = geometry.as_dict()
        say(f"guest {guest.slot.name}: framebuffer {geometry.width}x{geometry.height}x{geometry.bpp}, "
            f"stride {geometry.stride}")
        result.checks = [{"name": c.name, "detail": c.detail} for c in guest.checks]
        with Capture(host, geometry, guest.vnc_port, guest.domid, guest.slot.dir) as capture:
            with step("rounds"):
                rounds = _command_rounds if cfg["writer.kind"] == "command" else _rounds
                rounds(cfg, guest, capture, geometry, result, run_dir)
        record("xl create to verdict", time.monotonic() - created)  # the last round's comparison decides
        module = module_frontend(cfg)
        if module is not None:  # counters are optional: say whether this module had any
            where = f"/sys/module/{module.name}/parameters"
            result.guest.update(module=module.name, counters=f"read from {where}" if result.counters else
                                f"none: the module has no counter files in {where}")
        if all(r.guest_memory_ok for r in result.rounds):
            result.unloaded = guest.finish()
    finally:
        guest.quit()  # a command workload's controller prints the workload's log on its way out
        if runs_x_server(cfg):
            result.xorg = save_xorg_config(run_dir)
        if cfg["writer.kind"] == "command":
            result.workload_log = save_workload_log(run_dir)
        if guest.slot is not None:
            try:
                host.save_guest_logs(guest.slot, run_dir)
            except Exception as e:  # never let log collection hide the real outcome
                say(f"warning: could not collect the guest's dom0 logs: {e}")
        guest.stop()
    return result


class RoundLog:
    """What every kind of round records the same way: the module's counters, the evidence of a miss, the line
    on the console."""

    def __init__(self, cfg: Config, guest: Guest, result: Result, run_dir: Path):
        self.guest, self.result, self.run_dir, self.last = guest, result, run_dir, cfg["rounds"]
        self.counted = frontend(cfg["frontend"]).counters
        self.before = guest.stats() if self.counted else {}
        self.start = time.monotonic()

    def add(self, r: int, started: float, expected, settled, seen, **facts) -> RoundResult:
        """Record round `r` (begun at monotonic time `started`): what the backend showed (`settled`, compared with
        `expected` as `seen`), plus the facts only one kind of round has."""
        rr = RoundResult(round=r, compared_pixels=seen.compared_pixels, missed_pixels=seen.missed_pixels,
                         rects=[x.as_dict() for x in seen.rects], pages=seen.pages, settle=settled.how,
                         settle_s=settled.waited_s, duration_s=round(time.monotonic() - started, 3),
                         at_s=round(time.monotonic() - self.start, 3), **facts)
        if self.counted:
            now = self.guest.stats()
            rr.counters = {k: v - self.before.get(k, 0) for k, v in now.items() if k != "race_window_ms"}
            self.result.counters = dict(now)
            self.before = now
        if seen.missed_pixels:
            base = self.run_dir / f"round-{r:03d}"
            save_png(f"{base}-expected.png", expected)
            save_png(f"{base}-seen-vnc.png", settled.frame)
            save_png(f"{base}-diff.png", diff_image(expected, settled.frame, seen.mask))
            rr.images = {k: f"round-{r:03d}-{k}.png" for k in ("expected", "seen-vnc", "diff")}
        self.result.rounds.append(rr)
        if r == self.last:
            # The last view is always kept: evidence of a PASS, and real captured data for the oracle's tests.
            save_png(self.run_dir / "final-seen-vnc.png", settled.frame)
        hits = f", {rr.counters.get('race_hits', 0)} race hits" if self.counted else ""
        say(f"round {r}: {seen.missed_pixels} missed pixels{hits} (settled by {settled.how} in "
            f"{settled.waited_s:.2f} s)")
        return rr


def matcher(expected, geometry, exclude):
    """Does a frame of the backend's view equal the expected one? A view of another size does not (yet): the
    backend may take the frontend's size a moment after the guest starts drawing."""
    return lambda frame: frame.shape == expected.shape and compare(expected, frame, geometry, exclude).ok


def judge(expected, seen, geometry, exclude):
    """The round's comparison, once the view has settled; a view still of another size compares nothing."""
    if seen.shape != expected.shape:
        raise HostError(f"the backend's screen is {seen.shape[1]}x{seen.shape[0]} after the quiet time, but the "
                        f"guest's framebuffer is {geometry.width}x{geometry.height}: the backend never took the "
                        f"frontend's size, so nothing can be compared")
    return compare(expected, seen, geometry, exclude)


def _rounds(cfg: Config, guest: Guest, capture: Capture, geometry, result: Result, run_dir: Path) -> None:
    """Our writer's rounds: each draws a seeded frame we know; the backend's view and guest memory must both be it."""
    seed = cfg["seed"]
    exclude = [Rect(**r) for r in cfg["compare.exclude"]]
    quiet_s = cfg["capture.quiet_ms"] / 1000
    params = writer_params(cfg)
    log = RoundLog(cfg, guest, result, run_dir)
    pending: GuestMemoryCheck | None = None
    for r in range(cfg["rounds"] + 1):  # round 0 is the baseline clear
        t0 = time.monotonic()
        expected = pattern.expected_rgb(geometry, seed, r + 1, params=params)
        guest.go(r, seed)  # DONE: from now until the round is judged, nothing in the guest draws
        settled = capture.settle(matcher(expected, geometry, exclude), quiet_s)
        seen = judge(expected, settled.frame, geometry, exclude)
        # Taken now, while the guest is quiet; fetched and checked while the next round runs.
        dump = capture.screendump(run_dir / f"round-{r:03d}-screendump.ppm")
        rr = log.add(r, t0, expected, settled, seen)
        if pending is not None and not pending.check():
            return  # the guest drew the wrong thing: Result.decide makes it an ERROR; nothing more to learn
        pending = GuestMemoryCheck(rr, expected, dump, geometry, exclude)
    if pending is not None:
        pending.check()


def freeze_intervals(cfg: Config):
    """writer.kind command: how long (s) the workload runs before each freeze after the first, from the seed."""
    rng = random.Random(cfg["seed"])
    base = cfg["command.interval_ms"] / 1000
    while True:
        yield base if cfg["command.timing"] == "periodic" else base * rng.uniform(0.5, 1.5)


def _command_rounds(cfg: Config, guest: Guest, capture: Capture, geometry, result: Result, run_dir: Path) -> None:
    """Someone else's workload, which draws nothing we can predict. Round 0 judges the screen before it starts
    (the X server's, or the cleared console's); each later round lets it run, freezes it (with the X server), and
    takes guest memory at that moment as the expected frame. The backend's view must come to equal it while
    everything is frozen; a second look at guest memory afterwards proves nothing else drew in the meantime."""
    exclude = [Rect(**r) for r in cfg["compare.exclude"]]
    quiet_s = cfg["capture.quiet_ms"] / 1000
    log = RoundLog(cfg, guest, result, run_dir)
    intervals = freeze_intervals(cfg)
    previous = None  # guest memory at the previous freeze
    for r in range(cfg["rounds"] + 1):
        t0 = time.monotonic()
        if r >= 1:
            if r == 1:
                guest.start_workload(cfg["command.run"])  # into the cgroup round 0 froze: it waits for the thaw
            guest.thaw()
            time.sleep(next(intervals))
        guest.freeze(r)  # DONE: nothing in guest userspace runs until the round is judged
        base = run_dir / f"round-{r:03d}"
        expected = load_ppm(capture.screendump(Path(f"{base}-guest-memory.ppm")).result())
        settled = capture.settle(matcher(expected, geometry, exclude), quiet_s)
        seen = judge(expected, settled.frame, geometry, exclude)
        after = load_ppm(capture.screendump(Path(f"{base}-guest-memory-after.ppm")).result())
        changed = compare(expected, after, geometry, exclude)
        drawn = compare(previous, expected, geometry, exclude).missed_pixels if previous is not None else None
        previous = expected
        log.add(r, t0, expected, settled, seen, guest_quiet=changed.ok, guest_changed_pixels=changed.missed_pixels,
                guest_changed_rects=[x.as_dict() for x in changed.rects[:3]], drawn_pixels=drawn)
        for dump in ("guest-memory", "guest-memory-after"):
            Path(f"{base}-{dump}.ppm").unlink()
        if not changed.ok:
            save_png(f"{base}-guest-memory-changed.png", diff_image(expected, after, changed.mask))
            return  # Result.decide makes it an ERROR: a screen that is still being drawn cannot be judged


class GuestMemoryCheck:
    """A round's guest memory (its screendump) against the expected frame, once the dump has arrived."""

    def __init__(self, rr: RoundResult, expected, dump: Future, geometry, exclude: list[Rect]):
        self.rr, self.expected, self.dump, self.geometry, self.exclude = rr, expected, dump, geometry, exclude

    def check(self) -> bool:
        path = self.dump.result()
        frame = load_ppm(path)
        truth = compare(self.expected, frame, self.geometry, self.exclude)
        self.rr.guest_memory_ok = truth.ok
        self.rr.guest_memory_missed = truth.missed_pixels
        self.rr.guest_memory_rects = [x.as_dict() for x in truth.rects[:3]]
        if truth.ok:
            path.unlink()  # kept only as evidence of a guest-side problem
        else:
            base = path.parent / f"round-{self.rr.round:03d}"
            save_png(f"{base}-expected.png", self.expected)
            save_png(f"{base}-diff-screendump.png", diff_image(self.expected, frame, truth.mask))
        return truth.ok
