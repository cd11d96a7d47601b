"""End-to-end times of a run (default: the default config), stage by stage: cold, warm and booted. Prints figures,
asserts nothing.

- cold: an empty artifact cache (what a new user's first run pays: downloads, builds, the first boot, which
  saves the host snapshot);
- warm: the same cache again, so the nested host is restored from that snapshot;
- booted: the same cache with host.snapshot off (every run boots Xen and dom0), for comparison.

"to verdict" is from starting the command to the verdict line; "exit" to the command's exit.
Usage: .venv/bin/python benchmarks/e2e_times.py [--runs N] [--cache DIR] [CONFIG]
  --cache DIR   use (and keep) this cache instead of a fresh one; the first run is then not cold
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run(config: str, cache: str, out: Path, host: Path | None = None) -> dict:
    env = dict(os.environ, XENFB_HARNESS_CACHE=cache)
    cmd = [sys.executable, "-m", "xenfb_harness", "run", config, "--output", str(out), *(["--host", str(host)] if host
                                                                                     else [])]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    to_verdict = None
    for line in proc.stdout:
        if line.startswith("verdict:") and to_verdict is None:
            to_verdict = time.monotonic() - start
    proc.wait()
    result = json.loads((out / "result.json").read_text())
    return {"exit": time.monotonic() - start, "to verdict": to_verdict or float("nan"), "verdict": result["verdict"],
            "stages": result["timings"], "host_start": result["versions"].get("host_start", ""),
            "reason": result["reason"]}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default="configs/default.yaml")
    ap.add_argument("--runs", type=int, default=3, help="warm runs, and booted runs (default 3 each)")
    ap.add_argument("--cache", help="an existing cache to use and keep (no cold run)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="xfb-bench-") as tmp:
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
