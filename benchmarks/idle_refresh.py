"""How long the backend's view takes to show a round drawn after the guest was idle: the figure capture.quiet_ms
must exceed. Prints figures, asserts nothing.

QEMU's display refresh (which applies the frontend's queued updates and lets VNC send them) slows down by 50 ms
per refresh with nothing new, to about 3 s, and speeds up again when something changes. So the slowest case is a
round drawn after a long idle time. For each idle gap, the writer draws one round after the gap (nothing draws
during it) and we time from its DONE to the VNC view equalling the expected frame.

Usage: .venv/bin/python benchmarks/idle_refresh.py --host DIR/host.yaml [--gaps 0,1,3,10,30,100] [--reps 2]
       [CONFIG]      (a host from `xenfb-harness host up --state DIR`; CONFIG's frontend draws, default upstream)
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from xenfb_harness import config, pattern
from xenfb_harness.artifacts.cache import Cache, default_cache_dir
from xenfb_harness.artifacts.payload import build_payload
from xenfb_harness.capture import Capture
from xenfb_harness.compare import compare
from xenfb_harness.guest import Guest, writer_params
from xenfb_harness.hosts import connect_ssh


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default="configs/default.yaml")
    ap.add_argument("--host", type=Path, required=True)
    ap.add_argument("--gaps", default="0,1,3,10,30,100", help="idle seconds before a round, comma-separated")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    cfg = config.load(args.config, args.host)
    gaps = [float(g) for g in args.gaps.split(",")]
    with tempfile.TemporaryDirectory(prefix="xfb-idle-") as tmp, \
            connect_ssh(cfg.data["host"]) as dom0:
        run_dir = Path(tmp)
        dom0.open(cfg["guest.memory_mb"])
        payload = build_payload(cfg, Cache(default_cache_dir()), run_dir / "build.log")
        guest = Guest(dom0, cfg, run_dir, dom0.upload(payload.kernel), dom0.upload(payload.initrd))
        with guest:
            geometry = guest.start()
            with Capture(dom0, geometry, guest.vnc_port, guest.domid, guest.slot.dir) as capture:
                round_no, worst = 0, 0.0
                print(f"frontend {cfg['frontend']}, writer {cfg['writer.kind']}/{cfg['writer.mode']}")
                for gap in gaps:
                    shown = []
                    for _ in range(args.reps):
                        time.sleep(gap)
                        expected = pattern.expected_rgb(geometry, cfg["seed"], round_no + 1,
                                                        params=writer_params(cfg))
                        guest.go(round_no, cfg["seed"])
                        start = time.monotonic()
                        capture.vnc.wait_until(lambda f: compare(expected, f, geometry, []).ok, 30)
                        shown.append(time.monotonic() - start)
                        round_no += 1
                    worst = max(worst, *shown)
                    print(f"idle {gap:5.0f} s before the round: shown {', '.join(f'{s:.2f}' for s in shown)} s "
                          f"after DONE")
                print(f"slowest: {worst:.2f} s after DONE (capture.quiet_ms is {cfg['capture.quiet_ms']} ms)")


if __name__ == "__main__":
    main()
