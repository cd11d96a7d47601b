"""What the backend shows (VNC) and what the guest memory holds (QMP screendump on the device model).

A verdict at a true quiet point. A missed update is a region that stays stale when the system goes quiet, so a
round is judged with nothing in the guest drawing: after the writer's DONE, nothing draws until the round is
judged (the writer only waits for its next command; there is no heartbeat). Anything that kept drawing would
make the frontend send further updates and events, and QEMU's backend reads the whole out ring at each event,
so an update that was never notified would be carried along and the region repainted: activity the scenario
did not ask for would heal a miss.

We then watch the VNC view, and stop as soon as it equals the expected frame (a miss never matches, so stopping
then cannot hide one). Otherwise we stop after capture.quiet_ms, longer than the backend's slowest idle
refresh: the display refresh that applies queued updates slows down to about 3 s when nothing changes, so an
update the frontend did send shows within one such refresh (see benchmarks/idle_refresh.py for the figure).

Liveness. The guest's is its DONE line, taken before the quiet period. The backend's is the VNC connection
itself: our client only asks for incremental updates, which makes the server send from its own copy and never
re-reads guest memory or the frontend's ring, so it cannot repaint or deliver anything. The QMP screendump
(guest memory, the reference) is taken after the round's VNC frame is final, so it cannot change the verdict.
"""
from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from qemu.qmp.legacy import QEMUMonitorProtocol

from .geometry import Geometry
from .hosts.base import HostError
from .hosts.dom0 import Dom0
from .rfb import RFBClient
from .signals import deferring



@dataclass
class Settled:
    frame: np.ndarray
    how: str  # "match" (the view equals the expected frame) or "quiet" (the quiet time ran out)
    waited_s: float


class Capture:
    """Both views of one guest, reached through the host's SSH connection: its VNC server (on dom0's loopback)
    and its device model's QMP socket. Leaving the context closes both and their forwards."""

    def __init__(self, host: Dom0, geometry: Geometry, vnc_port: int, domid: int, remote_dir: str):
        self.host, self.geometry, self.domid = host, geometry, domid
        self.remote_dir = remote_dir
        self.fetcher = ThreadPoolExecutor(1, thread_name_prefix="screendump-fetch")
        self._dumps = 0
        self.forwards = contextlib.ExitStack()
        self.qmp: QEMUMonitorProtocol | None = None
        self._qmp_error: BaseException | None = None
        try:
            addr, port = self.forwards.enter_context(host.forward_tcp(vnc_port))
            # One connection for the whole run: a new client can make QEMU repaint everything and hide misses.
            self.vnc = deferring(RFBClient.connect)(addr, port, timeout=30)
            # QMP takes about 2 s to set up through dom0 (socat starts there): meanwhile the first round runs.
            self._qmp_thread = threading.Thread(target=self._connect_qmp, daemon=True, name="qmp-connect")
            self._qmp_thread.start()
        except BaseException:
            self.forwards.close()
            raise

    def close(self) -> None:
        try:
            self.vnc.close()
            self.fetcher.shutdown(wait=True, cancel_futures=True)
            self._qmp_thread.join(30)
            if self.qmp is not None:
                self.qmp.close()
        finally:
            self.forwards.close()

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def settle(self, matches: Callable[[np.ndarray], bool], quiet_s: float) -> Settled:
        """The backend's view as soon as it matches, or once the quiet time since the round's DONE is over."""
        start = time.monotonic()
        try:
            frame = self.vnc.wait_until(matches, quiet_s)
            how = "match"
        except TimeoutError:
            _, frame = self.vnc.snapshot()
            how = "match" if matches(frame) else "quiet"  # an update that completed on the deadline
        return Settled(frame, how, round(time.monotonic() - start, 3))

    def _connect_qmp(self) -> None:
        """In its own thread: leaves self.qmp connected, or self._qmp_error for screendump() to raise."""
        socket_path = f"/var/run/xen/qmp-libxl-{self.domid}"
        try:
            local = self.forwards.enter_context(self.host.forward_unix(socket_path))
            deadline = time.monotonic() + 20
            while True:
                qmp = QEMUMonitorProtocol(local)
                try:
                    qmp.connect()
                    qmp.settimeout(30)
                    self.qmp = qmp
                    return
                except Exception as e:
                    qmp.close()
                    if time.monotonic() > deadline:
                        raise HostError(f"cannot reach the device model's QMP socket {socket_path}: {e}") from None
                    time.sleep(0.5)
        except BaseException as e:
            self._qmp_error = e

    @deferring
    def screendump(self, local: Path) -> Future:
        """The device model's own view of the guest framebuffer (live guest memory at 16/32 bpp), taken now;
        the file is fetched to `local` in the background (a Future of `local`): the next round need not wait."""
        self._qmp_thread.join(60)
        if self.qmp is None:
            raise self._qmp_error or HostError("the device model's QMP socket did not answer in 60 s")
        # Two names in turn: the caller has checked a round's dump (so it was fetched) before the round after
        # next is dumped. The guest's directory, and these with it, goes when the guest does.
        self._dumps += 1
        remote = f"{self.remote_dir}/screendump-{self._dumps % 2}.ppm"
        reply = self.qmp.cmd_raw("screendump", {"filename": remote})
        if "error" in reply:
            raise HostError(f"screendump failed: {reply['error']}")
        return self.fetcher.submit(self._fetch, remote, local)

    def _fetch(self, remote: str, local: Path) -> Path:
        self.host.get(remote, local)
        return local
