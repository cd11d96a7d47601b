"""What a round costs, from the result.json files under the given run directories: for rounds that matched and
for rounds that missed, the time from GO to the verdict and the part of it spent waiting for the backend after
DONE. Prints figures, asserts nothing.

Usage: .venv/bin/python benchmarks/round_cost.py RUN_DIR [RUN_DIR...]
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def main() -> None:
    rounds = [r for d in sys.argv[1:] for p in sorted(Path(d).rglob("result.json"))
              for r in json.loads(p.read_text())["rounds"] if r["round"] > 0]  # round 0 connects QMP
    for label, chosen in (("matched", [r for r in rounds if not r["missed_pixels"]]),
                          ("missed", [r for r in rounds if r["missed_pixels"]])):
        if not chosen:
            print(f"{label}: no rounds")
            continue
        total = [r["duration_s"] for r in chosen]
        waited = [r["settle_s"] for r in chosen]
        print(f"{label}: {len(chosen)} rounds; GO to verdict median {statistics.median(total):.2f} s "
              f"(max {max(total):.2f}); waiting after DONE median {statistics.median(waited):.2f} s "
              f"(max {max(waited):.2f}); judged by " +
              ", ".join(f"{how} {sum(r['settle'] == how for r in chosen)}" for how in sorted({r['settle'] for r in chosen})))


if __name__ == "__main__":
    main()
