"""The deterministic test pattern, in Python; harness/writer/xfb-writer.c is its C twin.

This docstring is the specification. The C writer draws it into the guest's mapped framebuffer; the harness
draws it here into a plain buffer and compares. tests/test_pattern.py proves the two agree byte for byte.

All arithmetic is on unsigned 64-bit integers (mod 2**64).

PRNG (splitmix64)::

    state += 0x9E3779B97F4A7C15
    z = state
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    return z ^ (z >> 31)

Round r of seed s starts from ``state = s ^ (r * 0xD1B54A32D192ED03)``.

Drawable area: rows [0, D) with D = height - TICKER_ROWS. Nothing ever writes rows >= D (the ticker lives
there) nor the padding bytes between width*Bpp and stride of any row. A pixel is stored as
``geometry.pack(r8, g8, b8)`` (each channel keeps its top `length` bits, shifted to `offset`), little-endian,
in Bpp = bpp/8 bytes.

Round 0 (baseline): every drawable pixel becomes 0 (black). It draws no random numbers.

Round r >= 1: ``n = 1 + next() % 12`` ops, each drawn in this order:

* ``kind = next() % 2``; ``c = next()``; colour ``r8 = (c >> 16) & 255, g8 = (c >> 8) & 255, b8 = c & 255``.
* kind 0 (rect): ``x = next() % width; y = next() % D; w = 1 + next() % (width - x);
  h = 1 + next() % min(D - y, 128)``; fill the rectangle (x, y, w, h).
* kind 1 (page): ``npages = ceil(D * stride / 4096); p = next() % npages``; fill every pixel (x < width, y < D)
  whose first byte, at offset ``y*stride + x*Bpp``, lies in [p*4096, (p+1)*4096). This is the page-granular
  write that the frontend's dirty tracking sees; with 24 bpp the last such pixel may spill into the next page.

Ticker (guest mode only, never part of a round): pixels x = 0 .. TICKER_BITS-1 of row height-1 (clipped to the
width) show the low TICKER_BITS bits of the writer's tick counter, bit i at x = i, white (pack(255, 255, 255))
for 1 and black for 0. A reader decides bit i is set iff any channel of that pixel is >= 128.
"""
from __future__ import annotations

import numpy as np

from harness.geometry import PAGE_SIZE, TICKER_BITS, Geometry, Rect

# The spec's numbers, once. xfb-writer.c has its own copies; the byte-for-byte test keeps them in step.
MASK64 = (1 << 64) - 1
SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
SPLITMIX_MUL1 = 0xBF58476D1CE4E5B9
SPLITMIX_MUL2 = 0x94D049BB133111EB
ROUND_MUL = 0xD1B54A32D192ED03
MAX_OPS = 12  # a round draws 1..MAX_OPS ops
OP_KINDS = 2  # 0 = rect, 1 = page
MAX_RECT_H = 128  # rect heights stay small so a round touches a bounded, varied set of pages


class SplitMix64:
    """The spec's PRNG; Python ints are masked to 64 bits after every step that can overflow."""

    def __init__(self, state: int) -> None:
        self.state = state & MASK64

    def next(self) -> int:
        self.state = (self.state + SPLITMIX_GAMMA) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * SPLITMIX_MUL1) & MASK64
        z = ((z ^ (z >> 27)) * SPLITMIX_MUL2) & MASK64
        return z ^ (z >> 31)


def round_state(seed: int, round_no: int) -> int:
    return (seed ^ (round_no * ROUND_MUL)) & MASK64


def _as_array(buf: bytearray | np.ndarray, geometry: Geometry) -> np.ndarray:
    """A writable flat uint8 view of buf (never a copy: drawing must land in the caller's buffer)."""
    if isinstance(buf, np.ndarray):
        if buf.dtype != np.uint8 or not buf.flags.c_contiguous:
            raise TypeError("framebuffer array must be C-contiguous uint8")
        arr = buf.reshape(-1)
    else:
        arr = np.frombuffer(buf, dtype=np.uint8)
    if not arr.flags.writeable:
        raise TypeError("framebuffer buffer is read-only")
    need = geometry.height * geometry.stride
    if arr.size < need:
        raise ValueError(f"framebuffer buffer has {arr.size} bytes, geometry needs {need}")
    return arr


def _pixel_bytes(geometry: Geometry, value: int) -> np.ndarray:
    return np.frombuffer(value.to_bytes(geometry.bytes_per_pixel, "little"), dtype=np.uint8)


def _fill(lines: np.ndarray, geometry: Geometry, rect: Rect, pixel: np.ndarray) -> None:
    """Fill rect with one pixel value; pixel bytes broadcast over an (h, w, Bpp) view of the lines."""
    bpp = geometry.bytes_per_pixel
    view = lines[rect.y: rect.y + rect.h, rect.x * bpp: (rect.x + rect.w) * bpp]
    view.reshape(rect.h, rect.w, bpp)[:] = pixel


def page_rects(geometry: Geometry, page: int) -> list[Rect]:
    """The one-row spans of drawable pixels whose first byte lies in framebuffer page `page`."""
    bpp, stride, drawable = geometry.bytes_per_pixel, geometry.stride, geometry.drawable_height
    start, end = page * PAGE_SIZE, (page + 1) * PAGE_SIZE
    rects = []
    for y in range(start // stride, min(drawable, (end - 1) // stride + 1)):
        row = y * stride
        x_lo = max(0, -((row - start) // bpp))  # ceil((start - row) / bpp)
        x_hi = min(geometry.width, -((row - end) // bpp))  # first x whose first byte is >= end
        if x_lo < x_hi:
            rects.append(Rect(x_lo, y, x_hi - x_lo, 1))
    return rects


def draw_round(buf: bytearray | np.ndarray, geometry: Geometry, seed: int, round_no: int) -> list[dict]:
    """Draw round `round_no` of `seed` into buf in place; return the ops drawn, in order, for reports."""
    arr = _as_array(buf, geometry)
    lines = arr[: geometry.height * geometry.stride].reshape(geometry.height, geometry.stride)
    width, drawable = geometry.width, geometry.drawable_height
    if round_no == 0:
        full = Rect(0, 0, width, drawable)
        _fill(lines, geometry, full, _pixel_bytes(geometry, 0))
        return [{"kind": "fill", "rect": full.as_dict(), "colour": [0, 0, 0], "pixel": 0}]

    rng = SplitMix64(round_state(seed, round_no))
    npages = -(-drawable * geometry.stride // PAGE_SIZE)
    ops = []
    for _ in range(1 + rng.next() % MAX_OPS):
        kind = rng.next() % OP_KINDS
        c = rng.next()
        colour = [(c >> 16) & 0xFF, (c >> 8) & 0xFF, c & 0xFF]
        value = geometry.pack(*colour)
        pixel = _pixel_bytes(geometry, value)
        if kind == 0:
            # Separate statements: the draw order of the random numbers is part of the spec.
            x = rng.next() % width
            y = rng.next() % drawable
            w = 1 + rng.next() % (width - x)
            h = 1 + rng.next() % min(drawable - y, MAX_RECT_H)
            rect = Rect(x, y, w, h)
            _fill(lines, geometry, rect, pixel)
            ops.append({"kind": "rect", "rect": rect.as_dict(), "colour": colour, "pixel": value})
        else:
            page = rng.next() % npages
            spans = page_rects(geometry, page)
            for span in spans:
                _fill(lines, geometry, span, pixel)
            ops.append({"kind": "page", "page": page, "rects": [s.as_dict() for s in spans],
                        "colour": colour, "pixel": value})
    return ops


def render(geometry: Geometry, seed: int, rounds: int, start: bytes | None = None) -> bytearray:
    """Raw framebuffer bytes (height*stride) after rounds 0..rounds-1, drawn over `start` (default zeros)."""
    size = geometry.height * geometry.stride
    if start is None:
        buf = bytearray(size)
    else:
        if len(start) != size:
            raise ValueError(f"start buffer has {len(start)} bytes, geometry needs {size}")
        buf = bytearray(start)
    for round_no in range(rounds):
        draw_round(buf, geometry, seed, round_no)
    return buf


def expected_rgb(geometry: Geometry, seed: int, rounds_done: int) -> np.ndarray:
    """What the display should show (HxWx3 uint8) after rounds 0..rounds_done-1; ticker rows are meaningless."""
    return geometry.raw_to_rgb(render(geometry, seed, rounds_done))


def draw_ticker(buf: bytearray | np.ndarray, geometry: Geometry, tick: int) -> None:
    """Draw the ticker as the guest writer does (used by tests and for reference)."""
    arr = _as_array(buf, geometry)
    lines = arr[: geometry.height * geometry.stride].reshape(geometry.height, geometry.stride)
    white, black = _pixel_bytes(geometry, geometry.pack(255, 255, 255)), _pixel_bytes(geometry, 0)
    y = geometry.height - 1
    for i in range(min(TICKER_BITS, geometry.width)):
        _fill(lines, geometry, Rect(i, y, 1, 1), white if (tick >> i) & 1 else black)


def decode_ticker(rgb: np.ndarray, geometry: Geometry) -> int:
    """The tick value shown in an HxWx3 RGB image (as VNC shows it): bit i set iff any channel >= 128."""
    bits = min(TICKER_BITS, geometry.width)
    row = np.asarray(rgb)[geometry.height - 1, :bits, :]
    lit = (row >= 128).any(axis=1)
    return int(sum(1 << i for i in range(bits) if lit[i]))
