"""Command line: `xenfb-harness run|matrix|merge|bisect|build|lock|configs|keys|host|cache`. Also
`python -m xenfb_harness`."""
from __future__ import annotations

import argparse
import contextlib
import faulthandler
import re
import signal
import sys
import textwrap
import time
from pathlib import Path

from . import config, resources, signals
from .artifacts.cache import Cache, default_cache_dir
from .result import ERROR, EXIT_CODES, FAIL, git_bisect_code

DESCRIPTION = """\
Start Xen PV guests with a virtual framebuffer on a Xen host, draw seeded patterns into the framebuffer from
inside each guest, and compare what the backend shows over VNC with what was drawn, round by round. A missed
screen update is a pixel the guest wrote that the backend never repainted.

The host is either nested (Xen and dom0 booted under QEMU here, the default) or a running dom0 reached over SSH
(host.kind: ssh; a real Xen host, or a nested one kept running by `xenfb-harness host up`). One host serves
every scenario of a run, each in a fresh guest.

Stages: config -> artifacts (Debian packages, dom0 image, guest payload; cached) -> host -> guest (payload
uploaded, xl create) -> writer rounds -> capture (VNC, plus a QMP screendump of guest memory) -> compare ->
result.json, junit.xml.

A CONFIG is a scenario file (YAML), or the name of a shipped scenario: `xenfb-harness run legacy-race` runs the
shipped legacy-race.yaml from any directory, and `xenfb-harness configs` lists them all.
"""

RUN_EPILOG = """\
verdicts and exit codes (with several scenarios or --repeat: the worst of them):
  0 PASS   every round was compared and the backend showed every pixel the guest wrote
  1 FAIL   missed updates: result.json and junit.xml say which rounds, how many pixels, which rectangles and
           framebuffer pages; expected/seen/diff PNGs are kept for every round that differed
  2 ERROR  the stack or the harness broke (boot timeout, crash, bad config, Ctrl-C); nothing is claimed about
           the frontend. The reason and the last console lines are printed.

examples:
  xenfb-harness run                                    # the shipped default scenario, on a nested host booted for it
  xenfb-harness configs                                # the shipped scenarios, which run takes by name
  xenfb-harness run default legacy-race                # two shipped scenarios by name, on one nested host
  xenfb-harness run my-scenario.yaml --repeat 5        # a file of your own; five fresh guests, one host
  xenfb-harness run legacy-race --lock my.lock         # the same packages as when `xenfb-harness lock` wrote it
  xenfb-harness host up --state /tmp/h                 # keep a nested host running, then:
  xenfb-harness run default --host /tmp/h/host.yaml
  xenfb-harness run default --host my-xen.yaml         # a real dom0: see README "Hosts"
  git bisect run xenfb-harness run my-kernel.yaml --repeat 3 --git-bisect-codes   # see README "Bisect"
  xenfb-harness bisect configs/source-6.1-upstream.yaml --patches guest-kernels/fbdev-lastclose

repeated runs (--repeat N, --duration TIME, --until-fail TIME): each run is a fresh guest on the same host.
Afterwards each scenario's statistics are printed and written to OUTPUT/summary.json: runs and verdicts; the
detection rate (FAIL among PASS and FAIL runs) with its 95% Wilson interval; rounds with misses, missed pages and
the frontend's race hits per minute of stress (the time the rounds took), with exact 95% Poisson intervals; the
time to the first FAIL; and a cross-check of every missed round against the module's race-hit counter.
  xenfb-harness run legacy-natural --duration 30m     # how often the natural race shows
  xenfb-harness run legacy-natural --until-fail 20m   # the first natural FAIL, or 20 minutes

Output: with one scenario, OUTPUT holds its result.json, junit.xml, images and logs; with several, each gets
OUTPUT/NN-<config name>; repeated runs go to [OUTPUT/NN-<config name>]/run-NNN. OUTPUT/host holds the host's
own logs.
The first run builds the artifacts (about a minute; a guest kernel built from source, about 4 more); later
runs reuse them from the cache (XENFB_HARNESS_CACHE, else $XDG_CACHE_HOME/xenfb-harness, else ~/.cache/xenfb-harness).
"""

HOST_EPILOG = """\
  xenfb-harness host up [CONFIG] --state DIR   boot a nested host (CONFIG's host settings) and return once dom0
                                               is ready; it keeps running and stops itself after
                                               host.idle_timeout_min minutes nobody used it. DIR/host.yaml is
                                               the config fragment to reach it: `run --host DIR/host.yaml`
  xenfb-harness host down --state DIR          stop it; nothing of it is left running or mounted
  xenfb-harness host clean --host FILE         show and remove what killed runs left on a host: domains and
                                               directories named xfb-harness-*, never anything else
"""

BISECT_DESCRIPTION = """\
Find the first patch of an ordered series that turns PASS into FAIL, on a guest kernel built from source
(guest.kernel_source). Step k is that kernel with the series' first k patches applied (after the config's own
guest.kernel_patches). Step 0 must PASS and step n FAIL; then steps are tested as `git bisect` would, all of
them on one host, each with --runs-per-step fresh guests. Every step's kernel is cached, so a second bisect of the
same series only runs guests.
"""

BISECT_EPILOG = """\
exit codes: 0 the first bad patch was named; 1 no single patch was (step 0 already FAILs, the whole series
PASSes, or skipped steps leave several candidates); 2 ERROR (bad config, or the host broke).
OUTPUT/bisect.json holds every step, every run's verdict and directory, and the conclusion.

example (the showcase in guest-kernels/fbdev-lastclose: a revert of upstream's "fbdev: flush deferred IO before
closing" among harmless patches):
  xenfb-harness bisect configs/source-6.1-upstream.yaml --patches guest-kernels/fbdev-lastclose --runs-per-step 2
"""

MATRIX_DESCRIPTION = """\
Run every cell of a matrix: a base scenario, axes whose values change some of its keys (frontend, writer, guest
kernel, Xen release, seed...), exclusions, and the verdict each cell is expected to give. A cell is green when
its verdict is the expected one: the legacy frontend with a widened race window is expected to FAIL, so a gate
is green when the known-bad frontend fails as it should. Cells that share host settings run on one host, each
in a fresh guest. The file's format: the docstring of harness/matrix.py, or configs/matrix.yaml.
"""

MATRIX_EPILOG = """\
exit codes: 0 every cell gave its expected verdict; 1 some cell did not (summary.json says which and why);
2 a bad matrix file.

output (OUTPUT, default runs/matrix-<name>-<time>):
  summary.json   every cell: its verdict, expected verdict, green or red and why, timings, run directory
  junit.xml      a test suite per cell, a test case per round and one for the cell's verdict
  report.html    the verdict grid, expected vs actual, with links to each cell's own report
  cells/<cell>/  each cell's run directory (result.json, junit.xml, report.html, images, console log), and
                 scenario.yaml: the cell as a scenario of its own, to run again with `xenfb-harness run`
  hosts/<n>/     the hosts' logs

sharding (CI runners in parallel): --shard I/N runs the I-th of N disjoint, balanced parts; every runner
computes the same parts from the same matrix (and the same --times file, if any). Then:
  xenfb-harness merge --output all shard-1 shard-2      # one summary, junit.xml and report.html

examples:
  xenfb-harness matrix matrix                                      # the shipped configs/matrix.yaml, by name
  xenfb-harness matrix configs/matrix.yaml
  xenfb-harness matrix configs/matrix.yaml --list --shard 1/2     # which cells shard 1 of 2 runs
  xenfb-harness matrix configs/matrix.yaml --shard 2/2 --times last/summary.json --output shard-2
"""

LOCK_DESCRIPTION = """\
Build (or find in the cache) the artifacts of the given configs, host and guest, and write a lock: every Debian
package = version they are made of, with the SHA-256 of its .deb, and every answer apt gave on the way (candidate
versions, dependency sets, the kernel a metapackage stood for), per Debian release. `run --lock FILE` and
`matrix --lock FILE` then use exactly those, on any machine and any day: a version the archive no longer has is
fetched from apt.snapshot (a snapshot service laid out as Debian's own snapshot archive), and anything else that
differs is an ERROR that names it. One limit: a dom0 image that is not in the cache is made by mmdebstrap from
the archive as it is today, and under a lock it must come out as locked, else ERROR. A matrix is locked through
the scenarios its cells use (each cell's cells/<cell>/scenario.yaml, or the same configs).

example:
  xenfb-harness lock default legacy-race --output ci/xenfb.lock
  xenfb-harness run default legacy-race --lock ci/xenfb.lock
"""

DEFAULT_CONFIG = resources.CONFIGS / "default.yaml"  # the shipped default scenario


def _lock_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lock", type=Path, default=None, metavar="FILE",
                   help="build only from the packages of a lock made by `xenfb-harness lock` (see its --help)")


def _cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", type=Path, default=None,
                   help=f"artifact cache (default: {default_cache_dir()})")


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return n


DURATION = re.compile(r"(\d+(?:\.\d+)?)([smh])")


def duration(text: str) -> float:
    """'90s', '30m', '2h' or '1.5h' -> seconds."""
    m = DURATION.fullmatch(text.strip())
    if not m or float(m[1]) <= 0:
        raise argparse.ArgumentTypeError(f"expected a time such as 90s, 30m or 2h, got {text!r}")
    return float(m[1]) * {"s": 1, "m": 60, "h": 3600}[m[2]]


def _config_arg(p: argparse.ArgumentParser, many: bool = False) -> None:
    p.add_argument("config", nargs="*" if many else "?", default=None,
                   help="scenario YAML, or a shipped scenario's name such as legacy-race (`xenfb-harness configs` "
                        f"lists them; default: {DEFAULT_CONFIG.stem})")
    _cache_arg(p)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="xenfb-harness", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="build what is missing, start guests on a host, run the rounds, report",
                         description=DESCRIPTION, epilog=RUN_EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _config_arg(run, many=True)
    run.add_argument("--output", type=Path, default=None,
                     help="run directory for result.json, junit.xml, images and logs "
                          "(default: runs/<time>-<config name>)")
    run.add_argument("--host", type=Path, default=None, metavar="FILE",
                     help="a config fragment with only a host: section (e.g. DIR/host.yaml from `host up`, or "
                          "your real dom0's address, user, key and known_hosts) that replaces every scenario's")
    run.add_argument("--accept-new-host-key", action="store_true",
                     help="ssh hosts: accept and remember an unknown host key (check the fingerprint printed); "
                          "a changed key is never accepted")
    run.add_argument("--repeat", type=positive_int, default=None, metavar="N",
                     help="run each scenario N times, each in a fresh guest on the same host, and print the "
                          "statistics (see 'repeated runs' below); with --duration or a budget: at most N times")
    run.add_argument("--duration", type=duration, default=None, metavar="TIME",
                     help="run each scenario again and again until TIME (e.g. 90s, 30m, 2h) has passed since its "
                          "first run began (a run under way always ends), then print the statistics")
    run.add_argument("--until-fail", nargs="?", type=duration, const=0.0, default=None, metavar="TIME",
                     help="stop at the first run that does not PASS (nothing more runs, of any scenario); with TIME "
                          "(e.g. 30m), run each scenario again and again until it fails or TIME has passed")
    _lock_arg(run)
    run.add_argument("--git-bisect-codes", action="store_true",
                     help="exit as `git bisect run` expects: 0 when every run PASSed, 1 when any FAILed, 125 (skip) "
                          "otherwise, e.g. an ERROR such as a kernel that did not build or boot")
    matrix = sub.add_parser("matrix", help="run every cell of a matrix and check each against its expected verdict",
                            description=MATRIX_DESCRIPTION, epilog=MATRIX_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    matrix.add_argument("matrix", type=Path, help="matrix YAML, or a shipped matrix's name, e.g. configs/matrix.yaml "
                        "or matrix (`xenfb-harness configs` lists them)")
    matrix.add_argument("--shard", default=None, metavar="I/N", help="run only the I-th of N parts (1-based)")
    matrix.add_argument("--times", type=Path, default=None, metavar="SUMMARY",
                        help="an earlier summary.json whose cell times balance the shards (default: equal counts)")
    matrix.add_argument("--list", action="store_true", help="print the cells (of the shard) and run nothing")
    matrix.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="hosts side by side, for cells with different host settings (default: one per 4 "
                             "cores; a nested host keeps 2 busy)")
    matrix.add_argument("--group", type=int, default=None, help=argparse.SUPPRESS)  # one host group, for --jobs
    matrix.add_argument("--output", type=Path, default=None, help="output directory (see below)")
    matrix.add_argument("--host", type=Path, default=None, metavar="FILE", help="as for run: every cell on it")
    matrix.add_argument("--accept-new-host-key", action="store_true", help="as for run")
    _lock_arg(matrix)
    _cache_arg(matrix)
    merge = sub.add_parser("merge", help="merge the outputs of a matrix's shards into one summary and report")
    merge.add_argument("dirs", nargs="+", type=Path, metavar="SHARD_DIR", help="output directories of `matrix`")
    merge.add_argument("--output", type=Path, required=True, help="where the merged summary and reports go")
    bisect = sub.add_parser("bisect", help="find the first patch of a series that turns PASS into FAIL",
                            description=BISECT_DESCRIPTION, epilog=BISECT_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    bisect.add_argument("config", help="scenario YAML (or a shipped scenario's name) whose guest kernel is built "
                        "from source (guest.kernel_source); its own guest.kernel_patches stay under the series")
    _cache_arg(bisect)
    bisect.add_argument("--patches", type=Path, required=True, metavar="DIR",
                        help="the ordered series: a directory of patches (its quilt `series` file's order, else "
                             "its *.patch and *.diff files by name, as `git format-patch` numbers them)")
    bisect.add_argument("--runs-per-step", type=int, default=3, metavar="N",
                        help="fresh guests per step (default 3): any FAIL makes a step bad, every run PASSing "
                             "makes it good, anything else (an ERROR) makes it a skip")
    bisect.add_argument("--output", type=Path, default=None,
                        help="where bisect.json and every run's directory go (default: runs/<time>-bisect-<name>)")
    bisect.add_argument("--host", type=Path, default=None, metavar="FILE", help="as for run")
    bisect.add_argument("--accept-new-host-key", action="store_true", help="as for run")
    build = sub.add_parser("build", help="build the artifacts into the cache and print where they are")
    _config_arg(build)
    lock = sub.add_parser("lock", help="write every package = version (with its SHA-256) that configs' artifacts "
                          "use, for `run --lock`", description=LOCK_DESCRIPTION,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    _config_arg(lock, many=True)
    lock.add_argument("--output", type=Path, required=True, metavar="FILE", help="the lock file to write")
    sub.add_parser("configs", help="list the shipped scenarios and matrices, which run and matrix take by name")
    sub.add_parser("keys", help="list every config key with its default and meaning")
    host = sub.add_parser("host", help="keep a nested host running (up, down), or clean up a host",
                          epilog=HOST_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    host_sub = host.add_subparsers(dest="host_command", required=True, metavar="ACTION")
    up = host_sub.add_parser("up", help="boot a nested host that keeps running; prints DIR/host.yaml")
    _config_arg(up)
    up.add_argument("--state", type=Path, required=True, metavar="DIR", help="where the host keeps its state")
    serve = host_sub.add_parser("serve", help=argparse.SUPPRESS)  # what `host up` starts in the background
    _config_arg(serve)
    serve.add_argument("--state", type=Path, required=True)
    down = host_sub.add_parser("down", help="stop a host started with `host up`")
    down.add_argument("--state", type=Path, required=True, metavar="DIR")
    clean = host_sub.add_parser("clean", help="show and remove our leftovers (domains, files) on a host")
    clean.add_argument("--host", type=Path, required=True, metavar="FILE", help="host config fragment")
    clean.add_argument("--accept-new-host-key", action="store_true", help="as for run")
    cache = sub.add_parser("cache", help="list the artifact cache, or prune what the given configs do not use")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    _cache_arg(cache_sub.add_parser("list", help="every entry, its size, and what keyed it"))
    prune = cache_sub.add_parser("prune", help="build (if missing) what the configs need, remove the rest")
    _config_arg(prune, many=True)
    prune.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    return ap


def _load(given: str | None, host_file: Path | None = None) -> config.Config:
    """A config as the command line names it: a file, a shipped scenario's name, or nothing (the shipped default)."""
    return config.load(str(DEFAULT_CONFIG) if given is None else resources.config_file(given), host_file)


def _shipped_configs() -> list[config.Config]:
    """Every shipped scenario and every cell of every shipped matrix: what `cache prune` keeps by default."""
    from .matrix import load_matrix
    scenarios, matrices = config.shipped(resources.CONFIGS)
    return [config.load(p) for p in scenarios] + [c.cfg for m in matrices for c in load_matrix(m).cells]


def _bare_until_fail_last(argv: list[str]) -> list[str]:
    """`--until-fail` takes an optional TIME, and argparse would take the config path in `--until-fail CONFIG` for
    one: a bare `--until-fail` (what follows does not start with a digit, as a time does) moves to the end, where
    nothing can follow it. A mistyped time ('5d') stays, for argparse to refuse."""
    for i, arg in enumerate(argv[:-1]):
        after = argv[i + 1]
        if arg == "--until-fail" and (not after[:1].isdigit() or after.endswith((".yaml", ".yml"))):
            return argv[:i] + argv[i + 1:] + [arg]
    return argv


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(_bare_until_fail_last(sys.argv[1:] if argv is None else list(argv)))
    code = _main(args)
    if getattr(args, "git_bisect_codes", False):
        return git_bisect_code([verdict for verdict, c in EXIT_CODES.items() if c == code])
    return code


def _main(args) -> int:
    if args.command == "keys":
        print("Config keys (YAML, nested by the dots):\n" + config.describe())
        return 0
    if args.command == "configs":
        print(resources.listing())
        return 0
    signals.install()
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack: for hangs
    try:
        if args.command == "host" and args.host_command == "down":
            from .hostservice import down
            return down(args.state)
        if args.command == "merge":
            return _merge(args)
        if args.command == "matrix":
            with _using_lock(args):
                return _matrix(args)
        if args.command == "host" and args.host_command == "clean":
            return _clean(_load(None, args.host), args.accept_new_host_key)
        given = getattr(args, "config", None)  # `cache list` takes none
        names = given if isinstance(given, list) else [given]
        if args.command == "cache" and args.cache_command == "prune" and not given:
            cfgs = _shipped_configs()
        else:
            cfgs = [_load(name, getattr(args, "host", None) if args.command in ("run", "bisect") else None)
                    for name in (names or [None])]
        if args.command == "bisect":
            return _bisect(args, cfgs[0])
    except config.ConfigError as e:
        print(f"xenfb-harness: bad config: {e}", file=sys.stderr)
        return EXIT_CODES[ERROR]
    cache = Cache(args.cache_dir or default_cache_dir())
    if args.command == "cache":
        return _cache(cache, args, cfgs)
    if args.command == "build":
        return _build(cfgs[0], cache)
    if args.command == "lock":
        return _lock(args, cfgs, cache)
    if args.command == "host":
        from . import hostservice
        if args.host_command == "up":
            return hostservice.up(cfgs[0], args.state, cache)
        return hostservice.serve(cfgs[0], args.state, cache)
    with _using_lock(args):
        return _run(args, cfgs, cache)


def _using_lock(args) -> contextlib.AbstractContextManager:
    """--lock FILE: the lock every build of this command takes its packages from (a bad file: exit 2)."""
    from .artifacts import lock as locks
    if getattr(args, "lock", None) is None:
        return contextlib.nullcontext()
    try:
        return locks.using(args.lock)
    except locks.LockError as e:
        print(f"xenfb-harness: --lock: {e}", file=sys.stderr)
        raise SystemExit(EXIT_CODES[ERROR]) from None


def _lock(args, cfgs: list[config.Config], cache: Cache) -> int:
    from .artifacts import lock as locks
    from .artifacts.host import build_host
    from .artifacts.payload import build_payload
    try:
        with locks.recording() as lock:
            for cfg in cfgs:
                build_payload(cfg, cache, cache.root / "build.log")
                if cfg["host.kind"] == "nested":
                    build_host(cfg, cache, cache.root / "build.log")
        lock.configs = [cfg.source for cfg in cfgs]
        partial = args.output.with_name(f".{args.output.name}.partial")
        partial.write_text(lock.dump())
        partial.replace(args.output)  # whole or not at all
    except (KeyboardInterrupt, Exception) as e:
        print(f"xenfb-harness: lock: {type(e).__name__}: {e}; no lock written", file=sys.stderr)
        return EXIT_CODES[ERROR]
    for name, release in sorted(lock.releases.items()):
        print(f"{name}: {len(release.packages)} packages")
    print(f"lock: {args.output}")
    return 0


def _build(cfg: config.Config, cache: Cache) -> int:
    from .artifacts.host import build_host
    from .artifacts.payload import build_payload
    try:
        art = build_payload(cfg, cache, cache.root / "build.log")
        if cfg["host.kind"] == "nested":
            for name, value in vars(build_host(cfg, cache, cache.root / "build.log")).items():
                print(f"host {name}: {_shown(name, value)}")
    except KeyboardInterrupt:
        print("xenfb-harness: interrupted; the cache holds only complete entries", file=sys.stderr)
        return EXIT_CODES[ERROR]
    for name, value in vars(art).items():
        print(f"payload {name}: {_shown(name, value)}")
    return 0


def _shown(name: str, value) -> object:
    """A field of the built artifacts as `build` prints it: a package list (a dom0 image has ~160) as a count."""
    return f"{len(value)} Debian packages (`xenfb-harness lock` lists them)" if name == "packages" else value


def _repeat(args):
    """--repeat, --duration and --until-fail as one policy (argparse has checked each value)."""
    from .run import Repeat
    budget = args.until_fail or None  # --until-fail alone is 0.0: no budget
    if budget and args.duration is not None:
        print("xenfb-harness run: --duration and --until-fail TIME are two time budgets: give one", file=sys.stderr)
        raise SystemExit(EXIT_CODES[ERROR])  # a usage error, as argparse's own: never 1, which says FAIL
    budget = budget or args.duration
    count = args.repeat if args.repeat is not None else (None if budget else 1)
    return Repeat(count=count, budget_s=budget, until_fail=args.until_fail is not None)


def _run(args, cfgs: list[config.Config], cache: Cache) -> int:
    from .result import summary
    from .run import Job, run_jobs
    from .stats import describe, repeat_stats, write_summary
    repeat = _repeat(args)
    out = args.output or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{Path(cfgs[0].source).stem}"
    jobs = [Job(cfg, out if len(cfgs) == 1 else out / f"{i + 1:02d}-{Path(cfg.source).stem}")
            for i, cfg in enumerate(cfgs)]
    by_job: dict[Path, list] = {job.run_dir: [] for job in jobs}

    def report(result, job) -> None:
        print(summary(result, job.run_dir), flush=True)
        if result.verdict == ERROR:
            print("\n" + textwrap.indent(result.reason, "  "), file=sys.stderr)
        by_job[job.run_dir.parent if repeat.numbered else job.run_dir].append(result)

    try:
        results = run_jobs(jobs, cache, out / "host", args.accept_new_host_key, repeat, report)
    except config.ConfigError as e:
        print(f"xenfb-harness: bad config: {e}", file=sys.stderr)
        return EXIT_CODES[ERROR]
    if repeat.numbered:
        figures = [repeat_stats(job.cfg.source, by_job[job.run_dir], repeat.until_fail) for job in jobs]
        for f in figures:
            print(describe(f))
        write_summary(out / "summary.json", figures)
        print(f"statistics: {out / 'summary.json'}")
    if len(results) > 1:
        print(f"run directories: {out}")
    verdicts = [r.verdict for r in results] or [ERROR]
    if args.git_bisect_codes:  # any FAIL is bad, even beside an ERROR: the worst verdict would say ERROR
        return EXIT_CODES[FAIL] if FAIL in verdicts else max(EXIT_CODES[v] for v in verdicts)
    return max(EXIT_CODES[v] for v in verdicts)


def _matrix(args) -> int:
    from .matrix import default_jobs, exit_code, host_groups, load_matrix, parse_shard, run_group, run_matrix, shard, \
        times_from
    args.matrix = Path(resources.config_file(str(args.matrix), matrix=True))  # a shipped matrix's name: its file
    matrix = load_matrix(args.matrix, args.host)  # a ConfigError: exit 2 with the file, key and what was expected
    cells, label = matrix.cells, None
    if args.shard:
        try:
            option = "--shard"
            i, n = parse_shard(args.shard)
            option = "--times"
            times = times_from(args.times) if args.times else None
        except (ValueError, OSError, KeyError) as e:
            print(f"xenfb-harness: matrix: {option}: {e}", file=sys.stderr)
            return EXIT_CODES[ERROR]
        cells, label = shard(cells, i, n, times), args.shard
    if args.list:
        print("\n".join(c.id for c in cells))
        return 0
    out = args.output or Path("runs") / f"matrix-{matrix.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    cache = Cache(args.cache_dir or default_cache_dir())

    def report(result, job) -> None:
        cell = next(c for c in cells if job.run_dir.name == c.slug)
        mark = "green" if result.verdict == cell.expected else "RED"
        print(f"{mark:5s} {cell.id}: {result.verdict} (expected {cell.expected}); "
              f"{result.reason.splitlines()[0] if result.reason else ''}", flush=True)

    if args.group is not None:  # a child of --jobs: one host group of this same selection
        run_group(matrix, host_groups(cells), args.group, out, cache, args.accept_new_host_key, report)
        return 0
    jobs = args.jobs or default_jobs()
    child = [sys.executable, "-m", "xenfb_harness", "matrix", str(args.matrix), "--output", str(out),
             *(["--shard", args.shard] if args.shard else []), *(["--times", str(args.times)] if args.times else []),
             *(["--host", str(args.host)] if args.host else []),
             *(["--accept-new-host-key"] if args.accept_new_host_key else []),
             *(["--lock", str(args.lock)] if args.lock else []),
             *(["--cache-dir", str(args.cache_dir)] if args.cache_dir else [])]
    summary = run_matrix(matrix, cells, out, cache, args.accept_new_host_key, label, report, jobs, child)
    t = summary["totals"]
    print(f"matrix {matrix.name}{f' shard {label}' if label else ''}: {t['green']} of {t['cells']} cells green, "
          f"{t['red']} red; {summary['timings']['total']:.0f} s")
    print(f"report: {out / 'report.html'}")
    return exit_code(summary)


def _merge(args) -> int:
    from .matrix import exit_code, merge
    try:
        summary = merge(args.dirs, args.output)
    except ValueError as e:
        print(f"xenfb-harness: merge: {e}", file=sys.stderr)
        return EXIT_CODES[ERROR]
    t = summary["totals"]
    print(f"matrix {summary['name']}: {t['green']} of {t['cells']} cells green, {t['red']} red")
    print(f"report: {args.output / 'report.html'}")
    return exit_code(summary)


def _bisect(args, cfg: config.Config) -> int:
    from .artifacts.kernel_build import patch_series
    from .bisect import bisect, check_base, report
    from .progress import say
    from .result import summary
    from .run import HostSession, Job, run_jobs
    check_base(cfg)  # a ConfigError, before anything is built or booted
    if args.runs_per_step < 1:
        print(f"xenfb-harness: bisect: --runs-per-step: expected at least 1, got {args.runs_per_step}",
              file=sys.stderr)
        return EXIT_CODES[ERROR]
    try:
        series = patch_series(args.patches.resolve()) if args.patches.is_dir() else []
    except FileNotFoundError as e:  # a series file that names a patch that is not there
        print(f"xenfb-harness: bisect: --patches: {e}", file=sys.stderr)
        return EXIT_CODES[ERROR]
    if not series:
        print(f"xenfb-harness: bisect: --patches: expected a directory of patches, {str(args.patches)!r} holds none "
              "(a series file, or *.patch or *.diff files)", file=sys.stderr)
        return EXIT_CODES[ERROR]
    cache = Cache(args.cache_dir or default_cache_dir())
    out = args.output or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-bisect-{Path(cfg.source).stem}"
    out.mkdir(parents=True, exist_ok=True)
    with HostSession(cfg, cache, out / "host", args.accept_new_host_key, cfg["guest.memory_mb"]) as session:
        def run_step(step_cfg: config.Config, dirs: list[Path]):
            return run_jobs([Job(step_cfg, d) for d in dirs], cache, out / "host", session=session,
                            on_result=lambda result, job: print(summary(result, job.run_dir), flush=True))
        found = bisect(cfg, [str(p) for p in series], args.runs_per_step, out, run_step, say)
    print(report(found))
    print(f"details: {out / 'bisect.json'}")
    return found.conclusion()[0]


def _clean(cfg: config.Config, accept_new: bool) -> int:
    from .hosts import connect_ssh
    from .hosts.dom0 import clean
    if cfg["host.kind"] != "ssh":
        print("xenfb-harness: host clean needs a host of kind ssh (--host FILE)", file=sys.stderr)
        return EXIT_CODES[ERROR]
    dom0 = connect_ssh(cfg.data["host"], accept_new)
    try:
        done = clean(dom0.ssh, cfg["host.workdir"])
    finally:
        dom0.ssh.close()
    print("\n".join(done) if done else f"nothing of ours under {cfg['host.workdir']}")
    return 0


def _cache(cache: Cache, args, cfgs: list[config.Config]) -> int:
    from .artifacts.cache import format_entries, human_size
    if args.cache_command == "list":
        print(format_entries(cache.entries()))
        for name, size in cache.other_sizes().items():  # e.g. apt's lists and downloaded packages
            print(f"besides the entries: {name}/ {human_size(size)}")
        return 0
    from .artifacts.host import build_host
    from .artifacts.payload import build_payload
    from .hosts import accel
    from .hosts.nested import qemu_version
    from .hosts.snapshot import saved_for
    for cfg in cfgs:  # resolving an entry's key needs what it is built from, so missing ones get built
        build_payload(cfg, cache, cache.root / "build.log")
        if cfg["host.kind"] == "nested":
            art = build_host(cfg, cache, cache.root / "build.log")
            saved_for(cache, cfg.data["host"], art, qemu_version())
            cache.find(accel.ENTRY, accel.inputs_here(art.xen, qemu_version()))  # this machine's KVM answer
    removed = cache.prune(cache.used, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(format_entries(removed) if removed else "nothing to prune")
    print(f"{verb} {len(removed)} entries; kept {len(cache.used)} used by {len(cfgs)} configs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
