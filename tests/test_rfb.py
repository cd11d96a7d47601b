"""RFB client tests against a tiny scripted server on 127.0.0.1 (one thread per test, no sleeps beyond a few ms)."""
from __future__ import annotations

import io
import socket
import struct
import threading

import numpy as np
import pytest

from xenfb_harness.rfb import (RFBClient, RFBError, apply_update, negotiate_version, read_server_message,
                         RectUpdate, FramebufferUpdate)

SERVER_PIXEL_FORMAT = struct.pack(">BBBBHHHBBB3x", 16, 16, 0, 1, 31, 63, 31, 11, 5, 0)
# What the client must send after ServerInit, byte for byte.
SET_PIXEL_FORMAT = bytes.fromhex("00000000" "20180001" "00ff00ff00ff" "100800" "000000")
SET_ENCODINGS = bytes.fromhex("02" "00" "0002" "00000000" "ffffff21")  # Raw, DesktopSize (-223)


def request(incremental: bool, w: int, h: int, x: int = 0, y: int = 0) -> bytes:
    return struct.pack(">BBHHHH", 3, int(incremental), x, y, w, h)


def raw_rect(x: int, y: int, rgb: np.ndarray) -> bytes:
    h, w = rgb.shape[:2]
    bgrx = np.zeros((h, w, 4), dtype=np.uint8)
    bgrx[:, :, :3] = rgb[:, :, ::-1]
    bgrx[:, :, 3] = 0xEE  # padding byte: must be ignored
    return struct.pack(">HHHHi", x, y, w, h, 0) + bgrx.tobytes()


def update(*rects: bytes) -> bytes:
    return struct.pack(">BxH", 0, len(rects)) + b"".join(rects)


def desktop_size(w: int, h: int) -> bytes:
    return struct.pack(">HHHHi", 0, 0, w, h, -223)


def solid(w: int, h: int, rgb) -> np.ndarray:
    return np.tile(np.array(rgb, dtype=np.uint8), (h, w, 1))


class Peer:
    """The server's end of one connection, with what the client sent recorded."""

    def __init__(self, conn: socket.socket, done: threading.Event):
        self.conn = conn
        self.done = done
        self.version_reply = b""
        self.client_init = b""
        self.requests: list[bytes] = []

    def recv(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.conn.recv(n - len(data))
            if not chunk:
                raise EOFError(f"client closed after {data!r}")
            data += chunk
        return data

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def handshake(self, version: bytes = b"RFB 003.008\n", w: int = 8, h: int = 6, name: bytes = b"xenfb") -> None:
        self.send(version)
        self.version_reply = self.recv(12)
        if self.version_reply == b"RFB 003.003\n":
            self.send(struct.pack(">I", 1))
        else:
            self.send(b"\x02\x02\x01")  # offers VNC auth and None; the client must pick None
            assert self.recv(1) == b"\x01"
            if self.version_reply == b"RFB 003.008\n":
                self.send(struct.pack(">I", 0))
        self.client_init = self.recv(1)
        self.send(struct.pack(">HH", w, h) + SERVER_PIXEL_FORMAT + struct.pack(">I", len(name)) + name)
        self.set_pixel_format = self.recv(20)
        self.set_encodings = self.recv(12)
        self.next_request()

    def next_request(self) -> bytes:
        self.requests.append(self.recv(10))
        return self.requests[-1]

    def wait_closed(self) -> None:
        """End of the script: tell the test (FakeServer.sync) and wait for the client to hang up."""
        self.done.set()
        self.conn.settimeout(5)
        while self.conn.recv(4096):
            pass


class FakeServer:
    def __init__(self, script):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(5)
        self.port = self.listener.getsockname()[1]
        self.script = script
        self.peer: Peer | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.settimeout(5)
                self.peer = Peer(conn, self.done)
                self.script(self.peer)
        except BaseException as exc:  # reported by finish()
            self.error = exc
        finally:
            self.listener.close()

    def client(self) -> RFBClient:
        return RFBClient.connect("127.0.0.1", self.port, timeout=5)

    def sync(self) -> None:
        """Wait until the script has read everything it expects, so closing the client cannot race it."""
        assert self.done.wait(5), "server script did not reach its end"

    def finish(self) -> Peer:
        self.thread.join(5)
        assert not self.thread.is_alive(), "server script did not finish"
        if self.error:
            raise self.error
        return self.peer


def test_handshake_38_requests_and_pixels():
    block = np.arange(3 * 2 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10

    def script(p: Peer):
        p.handshake(w=8, h=6)
        p.send(update(raw_rect(2, 1, block), raw_rect(0, 0, solid(1, 1, (1, 2, 3)))))
        p.next_request()
        p.wait_closed()

    srv = FakeServer(script)
    with srv.client() as c:
        assert (c.width, c.height, c.name, c.version) == (8, 6, "xenfb", (3, 8))
        assert c.server_pixel_format.bpp == 16
        assert c.wait_for_update(0, 2) == 1
        count, fb = c.snapshot()
        assert count == 1 and fb.shape == (6, 8, 3) and fb.dtype == np.uint8
        assert np.array_equal(fb[1:3, 2:5], block)
        assert fb[0, 0].tolist() == [1, 2, 3]
        fb[:] = 0  # a copy: must not touch the client's frame
        assert c.snapshot()[1][0, 0].tolist() == [1, 2, 3]
        expected_rest = np.ones((6, 8), bool)
        expected_rest[1:3, 2:5] = expected_rest[0, 0] = False
        assert not c.snapshot()[1][expected_rest].any()
        srv.sync()
    p = srv.finish()
    assert p.version_reply == b"RFB 003.008\n"
    assert p.client_init == b"\x01"
    assert p.set_pixel_format == SET_PIXEL_FORMAT
    assert p.set_encodings == SET_ENCODINGS
    assert p.requests == [request(False, 8, 6), request(True, 8, 6)]


def test_rect_split_across_sends_is_published_whole():
    rgb = np.random.default_rng(1).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    data = update(raw_rect(0, 0, rgb))
    half_sent, go_on = threading.Event(), threading.Event()

    def script(p: Peer):
        p.handshake()
        p.send(data[:30])
        half_sent.set()
        assert go_on.wait(5)
        for i in range(30, len(data), 50):  # header, then the pixels in pieces
            p.send(data[i:i + 50])
            threading.Event().wait(0.002)
        p.next_request()
        p.wait_closed()

    srv = FakeServer(script)
    with srv.client() as c:
        assert half_sent.wait(5)
        threading.Event().wait(0.02)
        assert c.updates == 0 and not c.snapshot()[1].any()  # half an update is never visible
        go_on.set()
        c.wait_for_update(0, 2)
        assert np.array_equal(c.snapshot()[1], rgb)
        srv.sync()
    assert srv.finish().requests[-1] == request(True, 8, 6)


def test_desktop_size_resizes_and_rerequests_everything():
    def script(p: Peer):
        p.handshake(w=8, h=6)
        p.send(update(desktop_size(5, 4)))
        p.next_request()
        p.send(update(raw_rect(1, 1, solid(4, 3, (9, 8, 7)))))
        p.next_request()
        p.wait_closed()

    srv = FakeServer(script)
    with srv.client() as c:
        c.wait_for_update(1, 2)
        assert (c.width, c.height) == (5, 4)
        fb = c.snapshot()[1]
        assert fb.shape == (4, 5, 3)
        assert (fb[1:, 1:] == (9, 8, 7)).all() and not fb[0].any() and not fb[:, 0].any()
        srv.sync()
    assert srv.finish().requests == [request(False, 8, 6), request(False, 5, 4), request(True, 5, 4)]


def test_colour_map_bell_and_cut_text_are_skipped():
    def script(p: Peer):
        p.handshake()
        p.send(struct.pack(">BxHH", 1, 0, 2) + bytes(12))  # SetColourMapEntries, 2 entries
        p.send(b"\x02")  # Bell
        p.send(struct.pack(">B3xI", 3, 5) + b"hello")  # ServerCutText
        p.send(update(raw_rect(0, 0, solid(8, 6, (200, 100, 50)))))
        p.next_request()
        p.wait_closed()

    srv = FakeServer(script)
    with srv.client() as c:
        c.wait_for_update(0, 2)
        assert (c.snapshot()[1] == (200, 100, 50)).all()
        assert c.updates == 1 and c.last_error is None
        srv.sync()
    srv.finish()


@pytest.mark.parametrize("banner,reply", [(b"RFB 003.003\n", b"RFB 003.003\n"), (b"RFB 003.007\n", b"RFB 003.007\n")])
def test_older_protocol_versions(banner, reply):
    def script(p: Peer):
        p.handshake(version=banner, w=3, h=2, name=b"old")
        p.send(update(raw_rect(2, 1, solid(1, 1, (5, 6, 7)))))
        p.next_request()
        p.wait_closed()

    srv = FakeServer(script)
    with srv.client() as c:
        assert c.name == "old"
        c.wait_for_update(0, 2)
        assert c.snapshot()[1][1, 2].tolist() == [5, 6, 7]
        srv.sync()
    p = srv.finish()
    assert p.version_reply == reply and p.client_init == b"\x01"
    assert p.requests == [request(False, 3, 2), request(True, 3, 2)]


def reason(text: bytes) -> bytes:
    return struct.pack(">I", len(text)) + text


@pytest.mark.parametrize("banner,security,message", [
    (b"RFB 003.003\n", struct.pack(">I", 0) + reason(b"too many clients"), "too many clients"),
    (b"RFB 003.003\n", struct.pack(">I", 2), "security type 2"),
    (b"RFB 003.008\n", b"\x00" + reason(b"go away"), "go away"),
    (b"RFB 003.008\n", b"\x01\x02", r"offers security types \[2\]"),
    (b"RFB 003.008\n", b"\x01\x01" + struct.pack(">I", 1) + reason(b"blocked"), "blocked"),
])
def test_refusals_raise_with_reason(banner, security, message):
    def script(p: Peer):
        p.send(banner)
        p.recv(12)
        p.send(security)
        p.wait_closed()

    srv = FakeServer(script)
    with pytest.raises(RFBError, match=message):
        srv.client()
    srv.finish()


@pytest.mark.parametrize("payload,message", [
    (b"\x4d", "unknown message type 77"),
    (update(struct.pack(">HHHHi", 0, 0, 1, 1, 7)), "unsupported encoding 7"),
    (update(raw_rect(6, 0, solid(3, 1, (1, 1, 1)))), "outside the 8x6 screen"),
    (b"", "server closed the connection"),
])
def test_protocol_errors_fail_the_client(payload, message):
    def script(p: Peer):
        p.handshake()
        p.send(update(raw_rect(0, 0, solid(1, 1, (4, 4, 4)))))
        p.next_request()
        p.send(payload)
        if not payload:
            return  # closing the connection is the error
        p.wait_closed()

    srv = FakeServer(script)
    with srv.client() as c:
        with pytest.raises(RFBError, match=message):
            c.wait_for_update(1, 2)
        assert isinstance(c.last_error, RFBError) and message in str(c.last_error)
        with pytest.raises(RFBError, match=message):
            c.snapshot()
        with pytest.raises(RFBError, match=message):
            c.wait_until(lambda fb: True, 1)
    srv.finish()


def test_wait_until_and_timeouts():
    def script(p: Peer):
        p.handshake(w=2, h=2)
        for value in (10, 20, 30):
            p.send(update(raw_rect(0, 0, solid(1, 1, (value, 0, 0)))))
            p.next_request()
        p.wait_closed()

    srv = FakeServer(script)
    with srv.client() as c:
        seen = []

        def reached_30(fb):
            seen.append(int(fb[0, 0, 0]))
            return fb[0, 0, 0] == 30

        fb = c.wait_until(reached_30, 2)
        assert fb[0, 0, 0] == 30 and seen[0] in (0, 10, 20, 30) and seen[-1] == 30
        assert c.updates == 3
        with pytest.raises(TimeoutError):
            c.wait_for_update(3, 0.05)
        with pytest.raises(TimeoutError):
            c.wait_until(lambda fb: False, 0.05)
        srv.sync()
    assert srv.finish().requests == [request(False, 2, 2)] + [request(True, 2, 2)] * 3
    with pytest.raises(RFBError, match="closed"):
        c.snapshot()


# --- pure parsing, no sockets ---------------------------------------------------------------------------------

class BytesReader:
    def __init__(self, data: bytes):
        self.f = io.BytesIO(data)

    def recv_exact(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) < n:
            raise RFBError("short read")
        return data


def test_decoding_without_a_socket():
    rgb = solid(2, 1, (1, 2, 3))
    msg = read_server_message(BytesReader(update(raw_rect(1, 2, rgb), desktop_size(9, 9))))
    assert isinstance(msg, FramebufferUpdate)
    raw, size = msg.rects
    assert (raw.x, raw.y, raw.w, raw.h, raw.encoding) == (1, 2, 2, 1, 0) and np.array_equal(raw.pixels, rgb)
    assert (size.w, size.h, size.encoding, size.pixels) == (9, 9, -223, None)
    fb, resized = apply_update(np.zeros((4, 4, 3), np.uint8), [raw])
    assert not resized and fb[2, 1:3].tolist() == [[1, 2, 3]] * 2
    fb, resized = apply_update(fb, msg.rects)  # the raw rect, then a resize that blanks the screen
    assert resized and fb.shape == (9, 9, 3) and not fb.any()
    with pytest.raises(RFBError, match="outside"):
        apply_update(np.zeros((2, 2, 3), np.uint8), [RectUpdate(1, 1, 2, 1, 0, rgb)])


@pytest.mark.parametrize("banner,version", [
    (b"RFB 003.003\n", (3, 3)), (b"RFB 003.005\n", (3, 3)), (b"RFB 003.007\n", (3, 7)),
    (b"RFB 003.008\n", (3, 8)), (b"RFB 003.889\n", (3, 8)), (b"RFB 004.001\n", (3, 8)),
])
def test_negotiate_version(banner, version):
    assert negotiate_version(banner) == version


def test_negotiate_version_rejects_non_rfb():
    with pytest.raises(RFBError, match="not an RFB server"):
        negotiate_version(b"SSH-2.0-Open")
    with pytest.raises(RFBError, match="older than 3.3"):
        negotiate_version(b"RFB 003.002\n")
