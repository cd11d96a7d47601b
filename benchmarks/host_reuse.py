"""One booted host for many guests, against a host booted per run: prints figures, asserts nothing.

1. `host up` to ready (a nested host kept running), then `run CONFIG --repeat N --host DIR/host.yaml`: the time
   of the first and of later scenarios on that host, from `xl create` to the verdict and in all.
2. N separate runs of CONFIG, each booting its own nested host, against one `run CONFIG --repeat N` (one host).

Usage: .venv/bin/python benchmarks/host_reuse.py [--repeat N] [CONFIG]    (warm artifact cache assumed)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def harness(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "xenfb_harness", *args], cwd=ROOT, capture_output=True, text=True)
    return time.monotonic() - start, proc


def results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.rglob("result.json"))]


def describe(res: dict) -> str:
    t = res["timings"]
    return (f"{res['verdict']}  xl create to verdict {t.get('xl create to verdict', 0):5.1f} s  "
            f"(upload {t.get('upload guest payload', 0):.1f} s, start guest {t.get('start guest', 0):.1f} s, "
            f"rounds {t.get('rounds', 0):.1f} s), scenario in all {t.get('total', 0):5.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default="configs/default.yaml")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="xfb-bench-") as tmp:
        state, n = Path(tmp) / "host", args.repeat
        took, proc = harness("host", "up", "--state", str(state))
        print(f"host up to ready: {took:.1f} s (rc {proc.returncode})")
        try:
            took, proc = harness("run", args.config, "--repeat", str(n), "--host", str(state / "host.yaml"),
                                 "--output", f"{tmp}/on-host")
            print(f"run --repeat {n} on that host: {took:.1f} s")
            for i, res in enumerate(results(Path(tmp) / "on-host")):
                print(f"  scenario {i + 1}: {describe(res)}")
        finally:
            harness("host", "down", "--state", str(state))

        took, proc = harness("run", args.config, "--repeat", str(n), "--output", f"{tmp}/repeat")
        print(f"run --repeat {n} (one nested host booted for it): {took:.1f} s in all, "
              f"{[r['verdict'] for r in results(Path(tmp) / 'repeat')]}")
        separate = []
        for i in range(n):
            took, proc = harness("run", args.config, "--output", f"{tmp}/separate-{i}")
            separate.append(took)
        print(f"{n} separate runs (a nested host booted for each): {sum(separate):.1f} s in all "
              f"({', '.join(f'{t:.1f}' for t in separate)})")


if __name__ == "__main__":
    main()
