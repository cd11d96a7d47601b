"""The X writer (xfb-writer.c built with -DXFB_X11) against a real X server on this machine (Xvfb): it draws the
pattern's exact bytes through X, and has drawn them when it says DONE."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from xenfb_harness import pattern, protocol
from xenfb_harness.geometry import Geometry

from .test_pattern import LIFECYCLES, WRITER_SRC, geom, geometry_arg, pixel_bytes

XVFB = shutil.which("Xvfb")
pytestmark = pytest.mark.skipif(XVFB is None, reason="Xvfb not installed (scripts/install installs it)")

# Xvfb screens and the framebuffer layout each one has (rows padded to 32 bits).
SCREENS = {
    "800x600x24": geom(800, 600, 32, 3200, (16, 8), (8, 8), (0, 8)),
    "333x201x16": geom(333, 201, 16, 668, (11, 5), (5, 6), (0, 5)),
}


@pytest.fixture(scope="module")
def xwriter(tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("xwriter") / "xfb-xwriter"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-DXFB_X11", "-o", str(exe), str(WRITER_SRC),
                    "-lX11"], check=True)
    return exe


class Xvfb:
    """A real X server whose screen is a file we can read (XWD format, -fbdir)."""

    def __init__(self, tmp: Path, screen: str):
        self.dir = tmp
        self.display = self._free_display()
        # -noreset as in the guest (harness/files/guest-init): a server that resets when its last client leaves
        # repaints the screen, which per-round clients do after every round.
        self.proc = subprocess.Popen([XVFB, self.display, "-screen", "0", screen, "-fbdir", str(tmp),
                                      "-nolisten", "tcp", "-nocursor", "-noreset"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not Path(f"/tmp/.X11-unix/X{self.display[1:]}").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Xvfb did not start: {self.proc.stderr.read().decode(errors='replace')}")
            time.sleep(0.05)

    @staticmethod
    def _free_display() -> str:
        for n in range(90, 190):
            if not Path(f"/tmp/.X{n}-lock").exists() and not Path(f"/tmp/.X11-unix/X{n}").exists():
                return f":{n}"
        raise RuntimeError("no free X display number")

    def screen(self, g: Geometry) -> bytes:
        """The screen's pixel bytes, laid out as g (rows of g.stride bytes)."""
        raw = (self.dir / "Xvfb_screen0").read_bytes()
        header_size, version = struct.unpack(">II", raw[:8])
        fields = struct.unpack(">25I", raw[:100])
        ncolors, bytes_per_line, width, height = fields[19], fields[12], fields[4], fields[5]
        assert version == 7 and (width, height, bytes_per_line) == (g.width, g.height, g.stride)
        start = header_size + 12 * ncolors  # XWDColor entries are 12 bytes
        return raw[start:start + g.height * g.stride]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def xvfb(request, tmp_path):
    server = Xvfb(tmp_path, request.param)
    yield server, SCREENS[request.param]
    server.close()


def session(xwriter: Path, server: Xvfb, g: Geometry, args: list[str], fb: Path):
    return subprocess.Popen([str(xwriter), "--display", server.display, "--fb", str(fb), "--geometry",
                             geometry_arg(g), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def sockets(pid: int) -> int:
    """How many sockets process pid has open (an X connection is one)."""
    fds = Path(f"/proc/{pid}/fd")
    return sum(os.readlink(fds / fd).startswith("socket:") for fd in os.listdir(fds))


@pytest.mark.parametrize("xvfb", list(SCREENS), indirect=True)
@pytest.mark.parametrize("params", [pattern.WriterParams(), pattern.WriterParams("sparse", 12, 3, "ascending")],
                         ids=["mixed", "sparse"])
@pytest.mark.parametrize("lifecycle", LIFECYCLES)
def test_x_writer_draws_the_pattern_through_x(xwriter, xvfb, tmp_path, params, lifecycle):
    server, g = xvfb
    fb = tmp_path / "geometry-only"
    fb.write_bytes(bytes(g.height * g.stride))
    proc = session(xwriter, server, g, ["--lifecycle", lifecycle, *params.writer_args()], fb)
    try:
        ready = protocol.parse_line(proc.stdout.readline())
        assert isinstance(ready, protocol.Ready), ready
        for r in range(6):
            proc.stdin.write(protocol.format_go(r, 77))
            proc.stdin.flush()
            assert protocol.parse_line(proc.stdout.readline()) == protocol.Done(r)
            # DONE means drawn: the X server's screen already shows every round so far, nothing later.
            want = pattern.render(g, 77, r + 1, params=params)
            assert np.array_equal(pixel_bytes(server.screen(g), g), pixel_bytes(want, g)), f"round {r}"
            # per-round: each round's client has connected, drawn and gone; the writer itself holds no connection.
            assert sockets(proc.pid) == (0 if lifecycle == "per-round" else 1)
        out, _ = proc.communicate(protocol.format_quit(), timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert protocol.parse_line(out.strip()) == protocol.Bye()
    assert fb.read_bytes() == bytes(g.height * g.stride), "without --baseline-device nothing touches --fb"


@pytest.mark.parametrize("xvfb", ["800x600x24"], indirect=True)
@pytest.mark.parametrize("lifecycle", LIFECYCLES)
def test_x_writer_baseline_device(xwriter, xvfb, tmp_path, lifecycle):
    """Round 0 goes to --baseline-device with pwrite(2), whole screen, in every lifecycle; nothing is drawn via X."""
    server, g = xvfb
    dev = tmp_path / "device"
    dev.write_bytes(b"\x5a" * (g.height * g.stride))
    proc = session(xwriter, server, g, ["--baseline-device", str(dev), "--lifecycle", lifecycle], dev)
    try:
        assert isinstance(protocol.parse_line(proc.stdout.readline()), protocol.Ready)
        screen = server.screen(g)
        proc.stdin.write(protocol.format_go(0, 1))
        proc.stdin.flush()
        assert protocol.parse_line(proc.stdout.readline()) == protocol.Done(0)
        time.sleep(0.2)
        assert server.screen(g) == screen, "no heartbeat, no baseline: nothing may reach the X screen"
        out, _ = proc.communicate(protocol.format_quit(), timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert protocol.parse_line(out.strip()) == protocol.Bye()
    assert dev.read_bytes() == bytes(g.height * g.stride)  # 800x600x32 has no padding: every byte is a pixel


@pytest.mark.parametrize("xvfb", ["800x600x24"], indirect=True)
def test_x_writer_second_opener_opens_fb_each_round(xwriter, xvfb, tmp_path):
    server, g = xvfb
    fb = tmp_path / "fb"
    fb.write_bytes(bytes(g.height * g.stride))
    proc = session(xwriter, server, g, ["--lifecycle", "second-opener"], fb)
    try:
        assert isinstance(protocol.parse_line(proc.stdout.readline()), protocol.Ready)
        for r in range(2):
            proc.stdin.write(protocol.format_go(r, 4))
            proc.stdin.flush()
            assert protocol.parse_line(proc.stdout.readline()) == protocol.Done(r)
        fb.unlink()
        out, _ = proc.communicate(protocol.format_go(2, 4), timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert [protocol.parse_line(x) for x in out.splitlines()] == [
        protocol.WriterError(f"cannot open {fb}: No such file or directory"),
        protocol.WriterError("the second opener exited with status 1")]


@pytest.mark.parametrize("xvfb", ["800x600x24"], indirect=True)
@pytest.mark.parametrize("args, needle", [
    (["--workers", "2", "--mode", "sparse"], "xfb-writer only"),
    (["--mappings", "2"], "xfb-writer only"),
])
def test_x_writer_refuses_mmap_only_options(xwriter, xvfb, tmp_path, args, needle):
    server, g = xvfb
    fb = tmp_path / "fb"
    fb.write_bytes(bytes(g.height * g.stride))
    proc = subprocess.run([str(xwriter), "--display", server.display, "--fb", str(fb), "--geometry",
                           geometry_arg(g), *args], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 1 and needle in protocol.parse_line(proc.stdout.strip()).message


@pytest.mark.parametrize("xvfb", ["333x201x16"], indirect=True)
def test_x_writer_refuses_a_screen_that_is_not_the_framebuffer(xwriter, xvfb, tmp_path):
    server, _ = xvfb
    g = SCREENS["800x600x24"]
    fb = tmp_path / "fb"
    fb.write_bytes(bytes(g.height * g.stride))
    proc = subprocess.run([str(xwriter), "--display", server.display, "--fb", str(fb), "--geometry",
                           geometry_arg(g)], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 1
    assert "the X screen is 333x201, the framebuffer 800x600" in protocol.parse_line(proc.stdout.strip()).message


def test_x_writer_without_a_server_says_so(xwriter, tmp_path):
    g = SCREENS["800x600x24"]
    fb = tmp_path / "fb"
    fb.write_bytes(bytes(g.height * g.stride))
    env = dict(os.environ, DISPLAY=":189")
    proc = subprocess.run([str(xwriter), "--fb", str(fb), "--geometry", geometry_arg(g)], capture_output=True,
                          text=True, timeout=10, env=env)
    assert proc.returncode == 1 and "cannot open X display" in protocol.parse_line(proc.stdout.strip()).message


@pytest.mark.parametrize("xvfb", ["800x600x24"], indirect=True)
def test_x_writer_probe_is_silent_when_the_server_answers(xwriter, xvfb, tmp_path):
    server, g = xvfb
    fb = tmp_path / "fb"
    fb.write_bytes(bytes(g.height * g.stride))
    proc = subprocess.run([str(xwriter), "--probe", "5", "--display", server.display, "--fb", str(fb),
                           "--geometry", geometry_arg(g)], capture_output=True, text=True, timeout=10)
    assert (proc.returncode, proc.stdout) == (0, "")


def test_x_writer_probe_gives_up_after_its_time(xwriter, tmp_path):
    g = SCREENS["800x600x24"]
    fb = tmp_path / "fb"
    fb.write_bytes(bytes(g.height * g.stride))
    t0 = time.monotonic()
    proc = subprocess.run([str(xwriter), "--probe", "1", "--display", ":189", "--fb", str(fb), "--geometry",
                           geometry_arg(g)], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 1 and 1 <= time.monotonic() - t0 < 5
    assert "no X server answered on ':189' within 1 s" in protocol.parse_line(proc.stdout.strip()).message
