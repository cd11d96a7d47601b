"""Cold and warm end-to-end times of a run (default: the default config), and the size of what the guest boots:
prints figures, asserts nothing.

Cold: an empty artifact cache (what a new user's first run pays). Warm: the same cache again.
Usage: .venv/bin/python benchmarks/e2e_times.py [--warm-runs N] [CONFIG]
e.g.   .venv/bin/python benchmarks/e2e_times.py configs/xorg-upstream.yaml     # the X writer's guest
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


def one_run(config: str, cache: str, out: Path) -> tuple[float, dict]:
    env = dict(os.environ, XENFB_HARNESS_CACHE=cache)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "harness", "run", config, "--output", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    took = time.monotonic() - start
    result = json.loads((out / "result.json").read_text())
    if proc.returncode != 0:
        print(f"  run exited {proc.returncode}: {result['verdict']} {result['reason'][:200]}")
    return took, result


def guest_sizes(cache: Path) -> None:
    """What the guest boots (its kernel and initramfs), and the X part of the initramfs where there is one."""
    for sizes in sorted(cache.glob("guest-payload-*/sizes.json")):
        for name, size in json.loads(sizes.read_text()).items():
            print(f"  guest {name}: {size / 2**20:.1f} MiB")
    for root in sorted(cache.glob("guest-root-*/root")):
        files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
        print(f"  of which the X server and/or command.packages, with their libraries: "
              f"{sum(p.stat().st_size for p in files) / 2**20:.1f} MiB in {len(files)} files")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default="configs/default.yaml")
    ap.add_argument("--warm-runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="xfb-bench-") as tmp:
        cache = os.path.join(tmp, "cache")
        took, res = one_run(args.config, cache, Path(tmp) / "cold")
        print(f"cold (empty cache): {took:6.1f} s  verdict {res['verdict']}  host {res['host']}")
        print("  stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in res["timings"].items()))
        guest_sizes(Path(cache))
        warm = []
        for i in range(args.warm_runs):
            took, res = one_run(args.config, cache, Path(tmp) / f"warm{i}")
            warm.append(took)
            print(f"warm run {i + 1}:        {took:6.1f} s  verdict {res['verdict']}  rounds {len(res['rounds'])}")
            print("  stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in res["timings"].items()))
        if warm:
            print(f"warm: median {statistics.median(warm):.1f} s, min {min(warm):.1f} s, max {max(warm):.1f} s "
                  f"(target: 10 rounds in <= 60 s on 2 cores under TCG)")


if __name__ == "__main__":
    main()
