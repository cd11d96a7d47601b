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

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from qemu.qmp.legacy import QEMUMonitorProtocol

from .geometry import Geometry
from .hosts.base import HostError
from .hosts.dom0 import Dom0
from .images import load_ppm
from .pattern import decode_ticker
from .rfb import RFBClient
from .signals import deferring



@dataclass
class Settled:
    frame: np.ndarray
    how: str  # "match", "window" (a newer heartbeat shown after the settle window) or "timeout"
    waited_s: float
    ticker_seen: int


class Capture:
    """Both views of one guest, reached through the host's SSH connection: its VNC server (on dom0's loopback)
    and its device model's QMP socket. Leaving the context closes both and their forwards."""

    def __init__(self, host: Dom0, geometry: Geometry, vnc_port: int, domid: int, remote_dir: str):
        self.host, self.geometry, self.domid = host, geometry, domid
        self.remote_dump = f"{remote_dir}/screendump.ppm"
        self.forwards = contextlib.ExitStack()
        self.qmp: QEMUMonitorProtocol | None = None
        try:
            addr, port = self.forwards.enter_context(host.forward_tcp(vnc_port))
            # One connection for the whole run: a new client can make QEMU repaint everything and hide misses.
            self.vnc = deferring(RFBClient.connect)(addr, port, timeout=30)
        except BaseException:
            self.forwards.close()
            raise

    def close(self) -> None:
        try:
            self.vnc.close()
            if self.qmp is not None:
                self.qmp.close()
        finally:
            self.forwards.close()

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
        local = self.forwards.enter_context(self.host.forward_unix(socket_path))
        deadline = time.monotonic() + 20
        while True:
            qmp = QEMUMonitorProtocol(local)
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
        reply = self.qmp.cmd_raw("screendump", {"filename": self.remote_dump})
        if "error" in reply:
            raise HostError(f"screendump failed: {reply['error']}")
        self.host.get(self.remote_dump, local)
        return load_ppm(local)
