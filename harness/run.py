"""One end-to-end run: artifacts -> Xen host -> guest -> writer rounds -> capture -> compare -> report."""
from __future__ import annotations

import time
import traceback
from pathlib import Path

from . import pattern, report, signals
from .artifacts.build import build_all
from .artifacts.cache import Cache
from .capture import Capture
from .compare import compare
from .config import Config
from .geometry import Rect
from .guest import Guest, save_xorg_config, writer_params
from .hosts.nested import NestedHost, qemu_version
from .images import diff_image, load_ppm, save_png
from .progress import TIMINGS, say, step
from .report import ERROR, Result, RoundResult


def run(cfg: Config, run_dir: Path, cache: Cache) -> Result:
    run_dir.mkdir(parents=True, exist_ok=True)
    result = Result(config=cfg.source, frontend=cfg["frontend"], seed=cfg["seed"], rounds_planned=cfg["rounds"])
    TIMINGS.clear()
    start = time.monotonic()
    host = None
    try:
        artifacts = build_all(cfg, cache, run_dir / "build.log")
        result.versions = dict(artifacts.versions, qemu_outer=qemu_version())
        with NestedHost(cfg, artifacts, run_dir) as host:
            result.host = host.description
            try:
                with Guest(host, cfg, run_dir) as guest:
                    with step("start guest"):
                        geometry = guest.start()
                    result.geometry = geometry.as_dict()
                    say(f"guest framebuffer: {geometry.width}x{geometry.height}x{geometry.bpp}, "
                        f"stride {geometry.stride}")
                    result.checks = [{"name": c.name, "detail": c.detail} for c in guest.checks]
                    with Capture(host, geometry, Guest.VNC_PORT, guest.domid) as capture:
                        with step("rounds"):
                            _rounds(cfg, guest, capture, geometry, result, run_dir)
                    if not result.reason:  # an ERROR in the rounds has said all there is to say
                        result.unloaded = guest.finish()
            finally:
                if cfg["writer.kind"] == "xorg":
                    result.xorg = save_xorg_config(run_dir)
                try:
                    host.save_logs(run_dir)
                except Exception as e:  # never let log collection hide the real outcome
                    say(f"warning: could not collect dom0 logs: {e}")
    except (KeyboardInterrupt, Exception) as e:  # the stack or the harness broke, or we were stopped: ERROR
        (run_dir / "error.txt").write_text(traceback.format_exc())
        result.verdict = ERROR
        if signals.received:
            result.reason = f"interrupted by {signals.received}; every process we started was stopped"
        else:
            result.reason = f"{type(e).__name__}: {e}"
    result.timings = dict(TIMINGS, total=round(time.monotonic() - start, 3))
    result.decide()
    report.write(result, run_dir)
    return result


def _rounds(cfg: Config, guest: Guest, capture: Capture, geometry, result: Result, run_dir: Path) -> None:
    seed = cfg["seed"]
    exclude = [geometry.ticker_rect] + [Rect(**r) for r in cfg["compare.exclude"]]
    window_s = cfg["capture.settle_window_ms"] / 1000
    params = writer_params(cfg)
    counted = cfg["frontend"] != "upstream"  # our module keeps counters; the built-in driver has none
    before = guest.stats() if counted else {}
    for r in range(cfg["rounds"] + 1):  # round 0 is the baseline clear
        t0 = time.monotonic()
        expected = pattern.expected_rgb(geometry, seed, r + 1, params=params)
        done = guest.go(r, seed)
        settled = capture.settle(done.tick, lambda frame: compare(expected, frame, geometry, exclude).ok,
                                 window_s, cfg["capture.settle_timeout"])
        seen = compare(expected, settled.frame, geometry, exclude)
        dump_path = run_dir / f"round-{r:03d}-screendump.ppm"
        truth = compare(expected, capture.screendump(dump_path), geometry, exclude)
        rr = RoundResult(round=r, compared_pixels=seen.compared_pixels, missed_pixels=seen.missed_pixels,
                         rects=[x.as_dict() for x in seen.rects], pages=seen.pages, settle=settled.how,
                         settle_s=settled.waited_s, guest_memory_ok=truth.ok,
                         duration_s=round(time.monotonic() - t0, 3))
        if counted:
            now = guest.stats()
            rr.counters = {k: v - before.get(k, 0) for k, v in now.items() if k != "race_window_ms"}
            result.counters = {k: v for k, v in now.items()}
            before = now
        if seen.missed_pixels or not truth.ok:
            base = run_dir / f"round-{r:03d}"
            save_png(f"{base}-expected.png", expected)
            save_png(f"{base}-seen-vnc.png", settled.frame)
            save_png(f"{base}-diff.png", diff_image(expected, settled.frame, seen.mask))
            rr.images = {k: f"round-{r:03d}-{k}.png" for k in ("expected", "seen-vnc", "diff")}
        if truth.ok:
            dump_path.unlink()  # kept only as evidence of a guest-side problem
        result.rounds.append(rr)
        if r == cfg["rounds"]:
            # The last view is always kept: evidence of a PASS, and real captured data for the oracle's tests.
            save_png(run_dir / "final-seen-vnc.png", settled.frame)
        hits = f", {rr.counters.get('race_hits', 0)} race hits" if counted else ""
        say(f"round {r}: {seen.missed_pixels} missed pixels{hits} (settled by {settled.how} in "
            f"{settled.waited_s:.2f} s)")
        if not truth.ok:
            # The guest memory itself is not what the writer should have drawn: the writer or the guest is
            # wrong, which says nothing about the backend. That is an ERROR, not a FAIL.
            result.verdict = ERROR
            result.reason = (f"round {r}: the guest framebuffer memory (screendump) differs from the expected "
                             f"frame in {truth.missed_pixels} pixels, e.g. {truth.rects[:1]}; the writer or "
                             f"guest is wrong, not the backend")
            save_png(run_dir / f"round-{r:03d}-diff-screendump.png",
                     diff_image(expected, load_ppm(dump_path), truth.mask))
            return
