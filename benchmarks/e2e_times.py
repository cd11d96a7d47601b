"""End-to-end times of a run (default: the default config), stage by stage: cold, warm and booted. Prints figures,
asserts nothing.

- cold: an empty artifact cache (what a new user's first run pays: downloads, builds, the first boot, which
  saves the host snapshot);
- warm: the same cache again, so the nested host is restored from that snapshot;
- booted: the same cache with host.snapshot off (every run boots Xen and dom0), for comparison.

With --kvm-probe, only warm runs, in the cache given or the default one, alternately with /dev/kvm as it is here
(e.g. there but unable to run Xen) and with /dev/kvm hidden (as on a machine without KVM), after one run of each
that may have to probe KVM or save a snapshot: once the probe's answer is cached, the two should be within 1 s.

"to verdict" is from starting the command to the verdict line; "exit" to the command's exit.
Usage: .venv/bin/python benchmarks/e2e_times.py [--runs N] [--cache DIR] [--kvm-probe] [CONFIG]
  --cache DIR   use (and keep) this cache instead of a fresh one; the first run is then not cold
  --kvm-probe   warm runs with /dev/kvm as it is and hidden (needs root, for a mount namespace)
e.g.   .venv/bin/python benchmarks/e2e_times.py --runs 3 configs/xorg-upstream.yaml
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from xenfb_harness.artifacts.cache import default_cache_dir

ROOT = Path(__file__).resolve().parents[1]
# Runs a command with no /dev/kvm at all, as on a machine without KVM: in a private mount namespace, the real /dev
# (with its pts and shm) is bind-mounted at the directory given as $0, and /dev becomes a tmpfs of links to each of
# its entries but kvm; the rest of /dev works as before, and nothing outlives the command. (Binding /dev/null over
# /dev/kvm would not do: the harness would find a /dev/kvm it can open, that only QEMU finds is not KVM.)
HIDE_KVM = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --rbind /dev "$0" && mount -t tmpfs -o mode=755 none /dev && '
            'for f in "$0"/*; do [ "${f##*/}" = kvm ] || ln -s "$f" /dev/; done && exec "$@"')


def one_run(config: str, cache: str, out: Path, host: Path | None = None, wrap: tuple[str, ...] = ()) -> dict:
    """One run of the harness, under the command prefix wrap if any, timed from here."""
    env = dict(os.environ, XENFB_HARNESS_CACHE=cache)
    cmd = [*wrap, sys.executable, "-m", "xenfb_harness", "run", config, "--output", str(out),
           *(["--host", str(host)] if host else [])]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    accelerator = []  # when and why it was chosen: after Python's start, the artifact lookups and the KVM probe

    def watch_stderr() -> None:
        for line in proc.stderr:
            if "] accelerator: " in line and not accelerator:
                accelerator.append((time.monotonic() - start, line.split("] ", 1)[1].strip()))

    watcher = threading.Thread(target=watch_stderr, daemon=True)
    watcher.start()
    to_verdict = None
    for line in proc.stdout:
        if line.startswith("verdict:") and to_verdict is None:
            to_verdict = time.monotonic() - start
    proc.wait()
    watcher.join()
    to_accelerator, why = accelerator[0] if accelerator else (float("nan"), "")
    result = json.loads((out / "result.json").read_text())
    return {"exit": time.monotonic() - start, "to verdict": to_verdict or float("nan"), "verdict": result["verdict"],
            "stages": result["timings"], "host_start": result["versions"].get("host_start", ""),
            "reason": result["reason"], "to accelerator": to_accelerator, "accelerator": why}


def show(label: str, run: dict) -> None:
    print(f"{label}: to verdict {run['to verdict']:5.1f} s, exit {run['exit']:5.1f} s, {run['verdict']}"
          f"  ({run['host_start'] or 'host: ?'})")
    if run["verdict"] == "ERROR":
        print(f"  {run['reason'][:300]}")
    print("  " + ", ".join(f"{k} {v:.1f}" for k, v in run["stages"].items()))


def summary(mode: str, runs: list[dict]) -> None:
    if not runs:
        return
    stages: dict[str, list[float]] = {}
    for run in runs:
        for k, v in run["stages"].items():
            stages.setdefault(k, []).append(v)
    verdicts = [r["to verdict"] for r in runs]
    print(f"{mode:7s} median of {len(runs)}: to verdict {statistics.median(verdicts):.1f} s (min {min(verdicts):.1f}, "
          f"max {max(verdicts):.1f}), exit {statistics.median(r['exit'] for r in runs):.1f} s")
    for k, v in stages.items():
        print(f"          {k:36s} {statistics.median(v):6.2f} s")


def guest_sizes(cache: Path) -> None:
    """What the guest boots (its kernel and initramfs)."""
    for sizes in sorted(cache.glob("guest-payload-*/sizes.json")):
        print("  guest payload: " + ", ".join(f"{name} {size / 2**20:.1f} MiB"
                                               for name, size in json.loads(sizes.read_text()).items()))


def kvm_probe(config: str, cache: str, tmp: Path, runs: int) -> None:
    """Warm runs with /dev/kvm as it is here and hidden, alternately, after a first run of each."""
    dev = tmp / "dev"  # where HIDE_KVM keeps the real /dev, in its namespace only
    dev.mkdir()
    cases = {"/dev/kvm as here": (), "/dev/kvm hidden": (*HIDE_KVM, str(dev))}
    warm: dict[str, list[dict]] = {case: [] for case in cases}
    for i in range(runs + 1):
        for n, (case, wrap) in enumerate(cases.items()):
            run = one_run(config, cache, tmp / f"case{n}-run{i}", wrap=wrap)
            show(f"{case}, {f'warm {i}' if i else 'first'}", run)
            print(f"  at {run['to accelerator']:.2f} s {run['accelerator']}")
            if i:
                warm[case].append(run)
    print()
    medians = {}
    for case, case_runs in warm.items():
        medians[case] = {k: statistics.median(r[k] for r in case_runs) for k in ("to verdict", "to accelerator")}
        verdicts = [r["to verdict"] for r in case_runs]
        print(f"{case:17s} median of {runs}: to verdict {medians[case]['to verdict']:.1f} s (min {min(verdicts):.1f}, "
              f"max {max(verdicts):.1f}), accelerator chosen at {medians[case]['to accelerator']:.2f} s")
    here, hidden = medians.values()
    print(f"difference of the medians: to verdict {abs(here['to verdict'] - hidden['to verdict']):.1f} s, "
          f"to the accelerator {abs(here['to accelerator'] - hidden['to accelerator']):.2f} s "
          "(target: within 1 s once the probe's answer is cached)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default="configs/default.yaml")
    ap.add_argument("--runs", type=int, default=3,
                    help="warm runs, and booted runs (default 3 each; with --kvm-probe, warm runs of each case)")
    ap.add_argument("--cache", help="an existing cache to use and keep (no cold run)")
    ap.add_argument("--kvm-probe", action="store_true",
                    help="only warm runs (default cache: the harness's own), with /dev/kvm as it is and hidden")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="xfb-bench-") as tmp:
        if args.kvm_probe:
            kvm_probe(args.config, args.cache or str(default_cache_dir()), Path(tmp), args.runs)
            return
        cache = args.cache or os.path.join(tmp, "cache")
        if not args.cache:
            show("cold (empty cache)", one_run(args.config, cache, Path(tmp) / "cold"))
            guest_sizes(Path(cache))
        warm = [one_run(args.config, cache, Path(tmp) / f"warm{i}") for i in range(args.runs)]
        for i, run in enumerate(warm, 1):
            show(f"warm {i}", run)
        booted_host = Path(tmp) / "booted.yaml"
        booted_host.write_text("host:\n  kind: nested\n  snapshot: false\n")
        booted = [one_run(args.config, cache, Path(tmp) / f"booted{i}", booted_host) for i in range(args.runs)]
        for i, run in enumerate(booted, 1):
            show(f"booted {i}", run)
        print()
        summary("warm", warm)
        summary("booted", booted)
        print("target: a warm default verdict <= 10 s on this machine (2 cores, TCG)")


if __name__ == "__main__":
    main()
