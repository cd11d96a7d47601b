"""Time xenfb_harness.compare.compare on 800x600 frames at 32 bpp. Prints figures only; there is no pass/fail.

Run from the repository root:  python benchmarks/compare_bench.py [runs]
"""
from __future__ import annotations

import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # so it runs without installing the package

from xenfb_harness.compare import compare  # noqa: E402
from xenfb_harness.geometry import Channel, Geometry  # noqa: E402

W, H = 800, 600
GEOMETRY = Geometry(W, H, 32, W * 4, Channel(16, 8), Channel(8, 8), Channel(0, 8))


def cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(42)
    expected = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    rects = expected.copy()
    for x, y, w, h in [(10, 10, 40, 30), (300, 200, 25, 25), (700, 500, 60, 40), (0, 580, 800, 1)]:
        rects[y:y + h, x:x + w] ^= 0x80  # ~5 000 differing pixels in 4 regions
    noise = expected.copy()
    hit = rng.random((H, W)) < 0.05  # ~24 000 scattered pixels, tens of thousands of regions
    noise[hit] ^= 0x01
    return {"clean": (expected, expected.copy()), "4 rects": (expected, rects), "5% noise": (expected, noise)}


def main(runs: int = 30) -> None:
    print(f"compare() on {W}x{H} at 32 bpp, {runs} runs per case")
    print(f"{'case':<10} {'missed':>8} {'regions':>8} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'peak MiB':>9}")
    for name, (expected, seen) in cases().items():
        compare(expected, seen, GEOMETRY)  # warm up (imports, caches)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            res = compare(expected, seen, GEOMETRY)
            times.append((time.perf_counter() - t0) * 1000)
        tracemalloc.start()
        compare(expected, seen, GEOMETRY)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        print(f"{name:<10} {res.missed_pixels:>8} {res.regions:>8} {statistics.median(times):>10.2f} "
              f"{min(times):>8.2f} {max(times):>8.2f} {peak:>9.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
