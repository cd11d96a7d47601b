"""The verdict table: frontend x guest kernel x race window, one fresh guest each, all on one nested host.
Prints figures, asserts nothing.

Frontends: upstream (the kernel's xen-fbfront), legacy (our 2.6.18-design module), legacy-fixed (with the fix).
Guest kernels: Debian 11's 5.10, Debian 12's 6.1, Debian 13's 6.12, and 6.1 built here from linux-source-6.1
(tinyconfig + guest-kernels/xen-pv-guest.config; the modules build against its own build tree).
Windows: 'widened' is configs/legacy-race.yaml's writer with the legacy race window at 300 ms; 'natural' is
configs/legacy-natural.yaml's stress (README "The natural race on screen") with the window at 0. The upstream
frontend has no window: it runs under both writers.

Usage: .venv/bin/python benchmarks/verdict_table.py [--natural-rounds N] [--kernels 5.10,6.1,...] [--host FILE]
(a cold cache builds three releases' kernels and module headers, and a kernel from source: about 10 minutes more)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
KERNELS = {
    "5.10": {"kernel_package": "linux-image-amd64", "kernel_suite": "bullseye"},
    "6.1": {},
    "6.12": {"kernel_package": "linux-image-amd64", "kernel_suite": "trixie"},
    "6.1-src": {"kernel_source": "linux-source-6.1"},
}
FRONTENDS = ("upstream", "legacy", "legacy-fixed")
WINDOWS = {"widened": ("legacy-race.yaml", 300), "natural": ("legacy-natural.yaml", 0)}


def scenario(frontend: str, kernel: str, window: str, natural_rounds: int) -> dict:
    template, window_ms = WINDOWS[window]
    cfg = yaml.safe_load((ROOT / "configs" / template).read_text())
    cfg["frontend"] = frontend
    cfg["legacy"] = {"race_window_ms": window_ms}
    if window == "natural":
        cfg["rounds"] = natural_rounds
    cfg.setdefault("guest", {}).update(KERNELS[kernel])
    return cfg


def cell(res: dict) -> str:
    rounds = res.get("rounds", [])
    missed = sum(1 for r in rounds if r.get("missed_pixels"))
    hits = res.get("counters", {}).get("race_hits")
    text = f"{res['verdict']} {missed}/{len(rounds)}"
    return text + (f" h{hits}" if hits is not None else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--natural-rounds", type=int, default=3)  # about 30 s each
    ap.add_argument("--kernels", default=",".join(KERNELS), help="a comma-separated subset of " + ", ".join(KERNELS))
    ap.add_argument("--host", default=None, help="a host.yaml (`host up`) to run on, instead of a nested host "
                    "booted for the table")
    args = ap.parse_args()
    kernels = args.kernels.split(",")
    with tempfile.TemporaryDirectory(prefix="xfb-table-") as tmp:
        names, configs = [], []
        for frontend in FRONTENDS:
            for window in WINDOWS:
                for kernel in kernels:
                    name = f"{frontend}-{window}-{kernel}"
                    path = Path(tmp) / f"{name}.yaml"
                    path.write_text(yaml.safe_dump(scenario(frontend, kernel, window, args.natural_rounds)))
                    names.append((frontend, window, kernel))
                    configs.append(str(path))
        out = Path(tmp) / "runs"
        start = time.monotonic()
        host = ["--host", args.host] if args.host else []
        proc = subprocess.run([sys.executable, "-m", "xenfb_harness", "run", *configs, "--output", str(out), *host],
                              cwd=ROOT, capture_output=True, text=True)
        took = time.monotonic() - start
        results = {}
        for i, key in enumerate(names):
            found = list(out.glob(f"{i + 1:02d}-*/result.json"))
            results[key] = json.loads(found[0].read_text()) if found else {"verdict": "none"}
    print(f"{len(configs)} scenarios on one host in {took / 60:.1f} min (rc {proc.returncode})")
    print("cell: verdict, rounds with misses / rounds compared, h = race hits the module counted")
    width = 18
    print(f"{'frontend':<13} {'window':<8} " + "".join(f"{k:<{width}}" for k in kernels))
    for frontend in FRONTENDS:
        for window in WINDOWS:
            row = "".join(f"{cell(results[(frontend, window, k)]):<{width}}" for k in kernels)
            print(f"{frontend:<13} {window:<8} {row}")
    for key, res in results.items():
        if res["verdict"] == "ERROR":
            print(f"ERROR {'-'.join(key)}: {res.get('reason', '')[:300]}")


if __name__ == "__main__":
    main()
