"""Cold and warm times of each kind of guest kernel: each Debian release's kernel package (fetched and unpacked),
and linux-source-6.1 built from source (cold: empty cache and empty ccache; warm: a cache hit; and rebuilt with
a one-line patch, as a bisect step is, with ccache warm). Prints figures, asserts nothing.

Usage: .venv/bin/python benchmarks/kernel_times.py [--skip-source]   (uses a fresh cache in a temp directory)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xenfb_harness import config  # noqa: E402
from xenfb_harness.artifacts.cache import Cache  # noqa: E402
from xenfb_harness.artifacts.payload import guest_kernel  # noqa: E402

RELEASES = {
    "Debian 11 (5.10)": "configs/debian11-upstream.yaml",
    "Debian 12 (6.1)": "configs/default.yaml",
    "Debian 13 (6.12)": "configs/debian13-upstream.yaml",
    "linux-source-6.1": "configs/source-6.1-upstream.yaml",
    "linux-source-6.1 + a patch": "configs/source-6.1-lastclose-revert.yaml",
}


def timed(cfg: config.Config, cache: Cache, log: Path) -> tuple[float, str]:
    start = time.monotonic()
    kernel = guest_kernel(cfg, cache, log)
    return time.monotonic() - start, kernel.versions["guest_kernel"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-source", action="store_true", help="only the Debian packages")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="xfb-kernels-") as tmp:
        cache = Cache(Path(tmp) / "cache")
        log = Path(tmp) / "build.log"
        for name, path in RELEASES.items():
            if args.skip_source and "source" in name:
                continue
            cfg = config.load(ROOT / path)
            cold, version = timed(cfg, cache, log)
            warm, _ = timed(cfg, cache, log)
            print(f"{name:<28} {version:<20} first {cold:6.1f} s   again (cached) {warm:5.2f} s", flush=True)


if __name__ == "__main__":
    main()
