"""A small RFB (VNC) client: one connection, a background reader, a framebuffer kept current as RGB.

Why our own: the harness must see every update QEMU sends over a single, long-lived connection. A reconnect makes
the server repaint the whole screen, which would paper over exactly the missed updates we are hunting, so the
client streams incremental updates forever and never reconnects.

Layers, kept apart so the parsing can be tested on plain bytes:
  * handshake() / read_server_message() / apply_update(): protocol logic over any object with recv_exact(n)
    (and sendall(b) for the handshake);
  * SocketStream: the thin socket adapter;
  * RFBClient: the thread, the lock and the public API.

Only what QEMU needs is implemented: security type None, Raw encoding, DesktopSize pseudo-encoding.
"""
from __future__ import annotations

import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

ENCODING_RAW = 0
ENCODING_DESKTOP_SIZE = -223

SEC_INVALID = 0
SEC_NONE = 1

# Client -> server message types.
MSG_SET_PIXEL_FORMAT = 0
MSG_SET_ENCODINGS = 2
MSG_FB_UPDATE_REQUEST = 3

# Server -> client message types.
MSG_FB_UPDATE = 0
MSG_SET_COLOUR_MAP = 1
MSG_BELL = 2
MSG_CUT_TEXT = 3

# 32 bpp, depth 24, little endian, true colour, 8 bits per channel at shifts 16/8/0: on the wire each pixel is the
# bytes B, G, R, X, so a raw rect turns into RGB with one reshape and a reversed slice.
PIXEL_FORMAT = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
BYTES_PER_PIXEL = 4


class RFBError(Exception):
    """The server refused us, broke the protocol, or sent something this client does not implement."""


class Reader(Protocol):
    def recv_exact(self, n: int) -> bytes: ...


class Stream(Reader, Protocol):
    def sendall(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class PixelFormat:
    bpp: int
    depth: int
    big_endian: bool
    true_colour: bool
    red_max: int
    green_max: int
    blue_max: int
    red_shift: int
    green_shift: int
    blue_shift: int

    @classmethod
    def unpack(cls, data: bytes) -> "PixelFormat":
        f = struct.unpack(">BBBBHHHBBB3x", data)
        return cls(f[0], f[1], bool(f[2]), bool(f[3]), *f[4:])


@dataclass(frozen=True)
class ServerInit:
    version: tuple[int, int]  # the protocol version we agreed on
    width: int
    height: int
    pixel_format: PixelFormat  # the server's native format (we replace it with PIXEL_FORMAT right after)
    name: str


@dataclass
class RectUpdate:
    x: int
    y: int
    w: int
    h: int
    encoding: int
    pixels: np.ndarray | None = None  # h x w x 3 RGB for Raw, None for DesktopSize


@dataclass
class FramebufferUpdate:
    rects: list[RectUpdate]


@dataclass
class OtherMessage:
    """A server message we read and ignore (its payload has been consumed)."""
    type: int


# --- protocol logic over a Reader --------------------------------------------------------------------------------

def _u8(r: Reader) -> int:
    return r.recv_exact(1)[0]


def _u16(r: Reader) -> int:
    return struct.unpack(">H", r.recv_exact(2))[0]


def _u32(r: Reader) -> int:
    return struct.unpack(">I", r.recv_exact(4))[0]


def _reason(r: Reader) -> str:
    return r.recv_exact(_u32(r)).decode("utf-8", "replace")


def _skip(r: Reader, n: int) -> None:
    while n > 0:  # in chunks, so a huge length does not mean a huge allocation
        n -= len(r.recv_exact(min(n, 65536)))


def negotiate_version(banner: bytes) -> tuple[int, int]:
    """Server's ProtocolVersion banner -> the version we reply with: min(server, 3.8), and 3.3 below 3.7."""
    m = re.fullmatch(rb"RFB (\d{3})\.(\d{3})\n", banner)
    if not m:
        raise RFBError(f"not an RFB server (greeting {banner!r})")
    major, minor = int(m.group(1)), int(m.group(2))
    if (major, minor) < (3, 3):
        raise RFBError(f"server speaks RFB {major}.{minor}, older than 3.3")
    if major > 3 or minor >= 8:
        return (3, 8)
    # 3.4-3.6 are not real versions (some servers announce them); the spec says to treat them as 3.3.
    return (3, 7) if minor == 7 else (3, 3)


def handshake(stream: Stream) -> ServerInit:
    """Version, security (None only), ClientInit(shared) and ServerInit."""
    version = negotiate_version(stream.recv_exact(12))
    stream.sendall(b"RFB %03d.%03d\n" % version)

    if version == (3, 3):
        sec = _u32(stream)  # the server picks the type
        if sec == SEC_INVALID:
            raise RFBError(f"server refused the connection: {_reason(stream)}")
        if sec != SEC_NONE:
            raise RFBError(f"server requires security type {sec}; only None (1) is supported")
    else:
        count = _u8(stream)
        if count == 0:
            raise RFBError(f"server refused the connection: {_reason(stream)}")
        offered = list(stream.recv_exact(count))
        if SEC_NONE not in offered:
            raise RFBError(f"server offers security types {offered}; only None (1) is supported")
        stream.sendall(bytes([SEC_NONE]))
        if version == (3, 8):  # 3.8 sends SecurityResult even for None; 3.7 does not
            if _u32(stream) != 0:
                raise RFBError(f"security handshake failed: {_reason(stream)}")

    stream.sendall(b"\x01")  # ClientInit: shared, so we never kick another viewer off
    width, height = struct.unpack(">HH", stream.recv_exact(4))
    pixel_format = PixelFormat.unpack(stream.recv_exact(16))
    name = _reason(stream)
    return ServerInit(version, width, height, pixel_format, name)


def set_pixel_format_msg() -> bytes:
    return struct.pack(">B3x", MSG_SET_PIXEL_FORMAT) + PIXEL_FORMAT


def set_encodings_msg(encodings: tuple[int, ...] = (ENCODING_RAW, ENCODING_DESKTOP_SIZE)) -> bytes:
    return struct.pack(f">BxH{len(encodings)}i", MSG_SET_ENCODINGS, len(encodings), *encodings)


def update_request_msg(incremental: bool, x: int, y: int, w: int, h: int) -> bytes:
    return struct.pack(">BBHHHH", MSG_FB_UPDATE_REQUEST, int(incremental), x, y, w, h)


def read_server_message(r: Reader) -> FramebufferUpdate | OtherMessage:
    """Read one whole server message (assumes our PIXEL_FORMAT is in force)."""
    kind = _u8(r)
    if kind == MSG_FB_UPDATE:
        r.recv_exact(1)
        rects = []
        for _ in range(_u16(r)):
            x, y, w, h, enc = struct.unpack(">HHHHi", r.recv_exact(12))
            if enc == ENCODING_RAW:
                data = r.recv_exact(w * h * BYTES_PER_PIXEL)
                bgrx = np.frombuffer(data, dtype=np.uint8).reshape(h, w, BYTES_PER_PIXEL)
                rects.append(RectUpdate(x, y, w, h, enc, bgrx[:, :, 2::-1]))
            elif enc == ENCODING_DESKTOP_SIZE:
                rects.append(RectUpdate(x, y, w, h, enc))
            else:  # the payload length is unknown, so the stream cannot be followed any further
                raise RFBError(f"server sent unsupported encoding {enc} (rect {w}x{h}+{x}+{y})")
        return FramebufferUpdate(rects)
    if kind == MSG_SET_COLOUR_MAP:
        r.recv_exact(1)
        _first, count = struct.unpack(">HH", r.recv_exact(4))
        _skip(r, 6 * count)
    elif kind == MSG_BELL:
        pass
    elif kind == MSG_CUT_TEXT:
        r.recv_exact(3)
        _skip(r, _u32(r))
    else:
        raise RFBError(f"server sent unknown message type {kind}")
    return OtherMessage(kind)


def apply_update(fb: np.ndarray, rects: list[RectUpdate]) -> tuple[np.ndarray, bool]:
    """Apply the rects of one FramebufferUpdate to fb (in place where possible).

    Returns (framebuffer, resized); after a DesktopSize the framebuffer is a new black array of the new size.
    """
    resized = False
    for rect in rects:
        if rect.encoding == ENCODING_DESKTOP_SIZE:
            fb = np.zeros((rect.h, rect.w, 3), dtype=np.uint8)
            resized = True
            continue
        height, width = fb.shape[:2]
        if rect.x + rect.w > width or rect.y + rect.h > height:
            raise RFBError(f"rect {rect.w}x{rect.h}+{rect.x}+{rect.y} lies outside the {width}x{height} screen")
        fb[rect.y:rect.y + rect.h, rect.x:rect.x + rect.w] = rect.pixels
    return fb, resized


# --- socket layer ---------------------------------------------------------------------------------------------

class SocketStream:
    """recv_exact/sendall over a socket, buffered so the many tiny header reads cost few system calls."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._file = sock.makefile("rb")

    def recv_exact(self, n: int) -> bytes:
        data = self._file.read(n)
        if data is None or len(data) < n:
            raise RFBError("server closed the connection")
        return data

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv: it sees end of stream
        except OSError:
            pass

    def close(self) -> None:
        self.shutdown()
        self._file.close()
        self.sock.close()


# --- the client -----------------------------------------------------------------------------------------------

class RFBClient:
    """One VNC connection with a reader thread that keeps `snapshot()` current.

    After each complete FramebufferUpdate the reader asks for the next incremental one, so updates stream
    continuously. Frames are published whole: readers never see half an update.
    """

    def __init__(self, sock: socket.socket, timeout: float = 10.0):
        self._stream = SocketStream(sock)
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._updates = 0
        self._error: RFBError | None = None
        self._closed = False
        try:
            sock.settimeout(timeout)  # bounds the handshake only
            init = handshake(self._stream)
            self.version = init.version
            self.name = init.name
            self.server_pixel_format = init.pixel_format
            self._fb = np.zeros((init.height, init.width, 3), dtype=np.uint8)
            # The first request is non-incremental: we hold no picture yet.
            self._send(set_pixel_format_msg() + set_encodings_msg()
                       + update_request_msg(False, 0, 0, init.width, init.height))
            sock.settimeout(None)  # from here the server may rightly stay silent for a long time
        except BaseException:
            self._stream.close()
            raise
        self._thread = threading.Thread(target=self._run, name="rfb-reader", daemon=True)
        self._thread.start()

    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 10.0) -> "RFBClient":
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # requests are tiny; send them at once
        return cls(sock, timeout)

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._stream.shutdown()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        self._stream.close()  # after the join: the reader must not be inside the buffered file any more

    def __enter__(self) -> "RFBClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- state ---------------------------------------------------------------------------------------------------

    @property
    def width(self) -> int:
        with self._cond:
            return self._fb.shape[1]

    @property
    def height(self) -> int:
        with self._cond:
            return self._fb.shape[0]

    @property
    def updates(self) -> int:
        with self._cond:
            return self._updates

    @property
    def last_error(self) -> RFBError | None:
        with self._cond:
            return self._error

    def _check(self) -> None:  # caller holds the lock
        if self._error is not None:
            raise self._error
        if self._closed:
            raise RFBError("client is closed")

    def snapshot(self) -> tuple[int, np.ndarray]:
        """(number of completed updates, copy of the framebuffer as H x W x 3 RGB)."""
        with self._cond:
            self._check()
            return self._updates, self._fb.copy()

    def wait_for_update(self, after: int, timeout: float) -> int:
        """Block until more than `after` updates have completed; returns the new count."""
        with self._cond:
            done = self._cond.wait_for(
                lambda: self._updates > after or self._error is not None or self._closed, timeout)
            self._check()
            if not done:
                raise TimeoutError(f"no framebuffer update after #{after} within {timeout:g} s")
            return self._updates

    def wait_until(self, predicate: Callable[[np.ndarray], bool], timeout: float) -> np.ndarray:
        """Evaluate predicate on the current frame, then on each newer complete frame; return the first match.

        The predicate runs outside the lock on a copy. If several updates complete while it runs, the newest
        frame is evaluated next (the framebuffer is cumulative, so the newest state is the one that counts).
        """
        deadline = time.monotonic() + timeout
        count, frame = self.snapshot()
        while not predicate(frame):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"frame condition not met within {timeout:g} s ({count} updates seen)")
            try:
                self.wait_for_update(count, remaining)
            except TimeoutError:
                raise TimeoutError(f"frame condition not met within {timeout:g} s ({count} updates seen)") from None
            count, frame = self.snapshot()
        return frame

    # -- reader thread -------------------------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self._stream.sendall(data)

    def _run(self) -> None:
        try:
            while True:
                msg = read_server_message(self._stream)
                if not isinstance(msg, FramebufferUpdate):
                    continue
                with self._cond:
                    self._fb, resized = apply_update(self._fb, msg.rects)
                    self._updates += 1
                    height, width = self._fb.shape[:2]
                    self._cond.notify_all()
                # After a resize our picture is blank, so ask for all of it; otherwise only for changes.
                self._send(update_request_msg(not resized, 0, 0, width, height))
        except Exception as exc:
            with self._cond:
                if not self._closed:  # errors caused by our own close() are not failures
                    self._error = exc if isinstance(exc, RFBError) else RFBError(f"RFB reader failed: {exc!r}")
                self._cond.notify_all()
