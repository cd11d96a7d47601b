"""What the backend shows (VNC) and what the guest memory holds (QMP screendump on the device model).

Settling: QEMU's backend only acts on queued update events at its display refresh, which slows to about 3 s
when nothing changes. The writer therefore keeps a heartbeat ("ticker") running in the bottom rows, which the
comparison excludes. It keeps the refresh fast, and it tells us the pipeline has moved on: an update the
frontend sent for a round reaches the screen in one deferred-I/O batch (50 ms upstream) plus one refresh. We
stop waiting as soon as the view matches the expected frame (a miss never matches, so this cannot hide one), or
once settle_window_ms have passed and the view shows a heartbeat newer than the round. Seeing a newer heartbeat
alone is not enough: we measured the heartbeat's batch on screen one refresh before the round's own. If the
heartbeat stalls (a frontend that misses its updates, or one whose faults are slowed down on purpose), we wait
the settle timeout, longer than the slowest idle refresh, and say so in the report.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from qemu.qmp.legacy import QEMUMonitorProtocol

from .geometry import Geometry
from .hosts.base import HostError, XenHost
from .images import load_ppm
from .pattern import decode_ticker
from .rfb import RFBClient
from .signals import deferring

QMP_RELAY_PORT = 4444
REMOTE_DUMP = "/tmp/xfb-screendump.ppm"


@dataclass
class Settled:
    frame: np.ndarray
    how: str  # "match", "window" (a newer heartbeat shown after the settle window) or "timeout"
    waited_s: float
    ticker_seen: int


class Capture:
    def __init__(self, host: XenHost, geometry: Geometry, vnc_port: int, domid: int):
        self.host, self.geometry, self.domid = host, geometry, domid
        addr, port = host.forward(vnc_port)
        # One connection for the whole run: a new client can make QEMU repaint everything and hide misses.
        self.vnc = deferring(RFBClient.connect)(addr, port, timeout=30)
        self.qmp: QEMUMonitorProtocol | None = None

    def close(self) -> None:
        self.vnc.close()
        if self.qmp is not None:
            self.qmp.close()

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def settle(self, done_tick: int, converged: Callable[[np.ndarray], bool], window_s: float,
               timeout: float) -> Settled:
        """The backend's view once it matches, or once it has surely processed every update of the round."""
        start = time.monotonic()
        window_end = start + window_s

        def settled(f: np.ndarray) -> bool:
            # +2: one tick may already have been in flight when the round ended.
            return converged(f) or (decode_ticker(f, self.geometry) >= done_tick + 2
                                    and time.monotonic() >= window_end)
        try:
            frame = self.vnc.wait_until(settled, timeout)
            how = "match" if converged(frame) else "window"
        except TimeoutError:
            _, frame = self.vnc.snapshot()
            how = "timeout"
        return Settled(frame, how, round(time.monotonic() - start, 3), decode_ticker(frame, self.geometry))

    @deferring
    def _connect_qmp(self) -> QEMUMonitorProtocol:
        socket_path = f"/var/run/xen/qmp-libxl-{self.domid}"
        # A relay in dom0 from TCP to the device model's QMP socket, so the QMP client runs here.
        self.host.exec(["sh", "-c", 'setsid "$@" </dev/null >/dev/null 2>&1 &', "sh",
                        "socat", f"TCP-LISTEN:{QMP_RELAY_PORT},reuseaddr,fork", f"UNIX-CONNECT:{socket_path}"])
        addr, port = self.host.forward(QMP_RELAY_PORT)
        deadline = time.monotonic() + 20
        while True:
            qmp = QEMUMonitorProtocol((addr, port))
            try:
                qmp.connect()
                qmp.settimeout(30)
                return qmp
            except Exception as e:
                qmp.close()
                if time.monotonic() > deadline:
                    raise HostError(f"cannot reach the device model's QMP socket {socket_path}: {e}") from None
                time.sleep(0.5)

    @deferring
    def screendump(self, local: Path) -> np.ndarray:
        """The device model's own view of the guest framebuffer (live guest memory at 16/32 bpp)."""
        if self.qmp is None:
            self.qmp = self._connect_qmp()
        reply = self.qmp.cmd_raw("screendump", {"filename": REMOTE_DUMP})
        if "error" in reply:
            raise HostError(f"screendump failed: {reply['error']}")
        self.host.get(REMOTE_DUMP, local)
        return load_ppm(local)
