"""Command line: `xenfb-harness run|build|keys`. Also `python -m harness`."""
from __future__ import annotations

import argparse
import faulthandler
import signal
import sys
import textwrap
import time
from pathlib import Path

from . import config, signals
from .artifacts.cache import Cache, default_cache_dir
from .report import ERROR, EXIT_CODES

DESCRIPTION = """\
Boot Xen with a PV dom0 under QEMU, start a PV guest with a virtual framebuffer, draw seeded patterns into the
framebuffer from inside the guest, and compare what the backend shows over VNC with what was drawn, round by
round. A missed screen update is a pixel the guest wrote that the backend never repainted.

Stages: config -> artifacts (Debian packages, dom0 and guest images, cached) -> nested Xen host -> guest ->
writer rounds -> capture (VNC, plus a QMP screendump of guest memory) -> compare -> report.
"""

RUN_EPILOG = """\
verdicts and exit codes:
  0 PASS   every round was compared and the backend showed every pixel the guest wrote
  1 FAIL   missed updates: result.json and junit.xml say which rounds, how many pixels, which rectangles and
           framebuffer pages; expected/seen/diff PNGs are kept for every round that differed
  2 ERROR  the stack or the harness broke (boot timeout, crash, bad config, Ctrl-C); nothing is claimed about
           the frontend. The reason and the last console lines are printed.

examples:
  xenfb-harness run                          # configs/default.yaml: upstream frontend, 10 rounds
  xenfb-harness run configs/default.yaml --output /tmp/run1
  xenfb-harness build                        # only build (or check) the cached artifacts
  xenfb-harness keys                         # every config key, its default and meaning

The first run builds the artifacts (about a minute); later runs reuse them from the cache
(XENFB_HARNESS_CACHE, else $XDG_CACHE_HOME/xenfb-harness, else ~/.cache/xenfb-harness).
"""

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default=None,
                   help=f"scenario YAML (default: {DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parent.parent)} "
                        "when it exists, else built-in defaults)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help=f"artifact cache (default: {default_cache_dir()})")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="xenfb-harness", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="build what is missing, boot the stack, run the rounds, report a verdict",
                         description=DESCRIPTION, epilog=RUN_EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _config_arg(run)
    run.add_argument("--output", type=Path, default=None,
                     help="run directory for result.json, junit.xml, images and logs "
                          "(default: runs/<time>-<config name>)")
    run.add_argument("--repeat", type=int, default=1, metavar="N",
                     help="run N times (each boots afresh, into OUTPUT/run-NNN) and print how often it failed, "
                          "per minute of stress, with the frontend's race-hit counter beside it")
    run.add_argument("--until-fail", action="store_true",
                     help="with --repeat: stop at the first FAIL (or ERROR)")
    build = sub.add_parser("build", help="build the artifacts into the cache and print where they are")
    _config_arg(build)
    sub.add_parser("keys", help="list every config key with its default and meaning")
    return ap


def _load(path: str | None) -> config.Config:
    if path is None and DEFAULT_CONFIG.is_file():
        path = str(DEFAULT_CONFIG)
    return config.load(path)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "keys":
        print("Config keys (YAML, nested by the dots):\n" + config.describe())
        return 0
    signals.install()
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack: for hangs
    try:
        cfg = _load(args.config)
    except config.ConfigError as e:
        print(f"xenfb-harness: bad config: {e}", file=sys.stderr)
        return EXIT_CODES[ERROR]
    cache = Cache(args.cache_dir or default_cache_dir())
    if args.command == "build":
        from .artifacts.build import build_all
        try:
            art = build_all(cfg, cache, cache.root / "build.log")
        except KeyboardInterrupt:
            print("xenfb-harness: interrupted; the cache holds only complete entries", file=sys.stderr)
            return EXIT_CODES[ERROR]
        for name, value in vars(art).items():
            print(f"{name}: {value}")
        return 0
    from .report import summary
    from .run import run
    out = args.output or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{Path(cfg.source).stem}"
    if args.repeat > 1:
        return _repeat(cfg, out, cache, args.repeat, args.until_fail)
    result = run(cfg, out, cache)
    print(summary(result, out))
    if result.verdict == ERROR:
        print("\n" + textwrap.indent(result.reason, "  "), file=sys.stderr)
    return EXIT_CODES[result.verdict]


def _repeat(cfg: config.Config, out: Path, cache: Cache, times: int, until_fail: bool) -> int:
    """Many runs of one scenario: the rate at which it fails, per minute of writer stress."""
    from .run import run
    verdicts: list[str] = []
    stress_s = 0.0
    hits = 0
    for i in range(times):
        result = run(cfg, out / f"run-{i + 1:03d}", cache)
        verdicts.append(result.verdict)
        stress_s += result.timings.get("rounds", 0.0)
        hits += result.counters.get("race_hits", 0)
        print(f"run {i + 1}/{times}: {result.verdict}  race hits {result.counters.get('race_hits', '-')}  "
              f"{(result.reason.splitlines() or [''])[0][:110]}", flush=True)
        if signals.received or (until_fail and result.verdict != "PASS"):
            break
    fails = verdicts.count("FAIL")
    minutes = stress_s / 60
    rate = f"{fails / minutes:.2f} FAIL per minute of stress" if minutes else "no stress time"
    print(f"{len(verdicts)} runs: {fails} FAIL, {verdicts.count('PASS')} PASS, {verdicts.count('ERROR')} ERROR; "
          f"{minutes:.1f} min of rounds, {rate}; race hits counted by the frontend: {hits}")
    print(f"run directories: {out}/run-*")
    if verdicts.count(ERROR):
        return EXIT_CODES[ERROR]
    return EXIT_CODES["FAIL"] if fails else EXIT_CODES["PASS"]


if __name__ == "__main__":
    sys.exit(main())
