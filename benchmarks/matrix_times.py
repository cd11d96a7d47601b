"""Wall time of a matrix (default: configs/matrix.yaml) from an empty artifact cache and then from a warm one, with
each cell's time and verdict. Prints figures, asserts nothing.

- cold: a fresh cache (downloads, the dom0 image, every cell's guest payload, the first boot and its snapshot);
- warm: the same cache again (the host restored from its snapshot, the payloads found).

Usage: .venv/bin/python benchmarks/matrix_times.py [--cache DIR] [--warm-runs N] [MATRIX]
  --cache DIR   use (and keep) this cache instead of a fresh one: the first run is then not cold
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(matrix: str, cache: str, out: Path) -> tuple[float, dict]:
    env = dict(os.environ, XENFB_HARNESS_CACHE=cache)
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "xenfb_harness", "matrix", matrix, "--output", str(out)], cwd=ROOT, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start, json.loads((out / "summary.json").read_text())


def show(label: str, wall: float, summary: dict) -> None:
    t = summary["totals"]
    print(f"{label}: {wall:6.1f} s wall for {t['cells']} cells ({t['green']} green, {t['red']} red)")
    for c in summary["cells"]:
        steps = c["timings"]
        host = steps.get("restore Xen and dom0") or steps.get("boot Xen and dom0")
        print(f"  {c['id']:45s} {c['verdict']:5s} (expected {c['expected']:5s}) {steps.get('total', 0):6.1f} s"
              + (f"  incl. host {host:.1f} s" if host else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("matrix", nargs="?", default="configs/matrix.yaml")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--warm-runs", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="xfb-matrix-bench-") as tmp:
        cache = args.cache or str(Path(tmp) / "cache")
        show("cold" if not args.cache else "first", *one(args.matrix, cache, Path(tmp) / "first"))
        for k in range(args.warm_runs):
            show("warm", *one(args.matrix, cache, Path(tmp) / f"warm-{k}"))


if __name__ == "__main__":
    main()
