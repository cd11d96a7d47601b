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

Drawable area: the whole screen, rows [0, H) with H = height, pixels x < width. Nothing ever writes the padding
bytes between width*Bpp and stride of any row, nor anything past row H-1. A pixel is stored as
``geometry.pack(r8, g8, b8)`` (each channel keeps its top `length` bits, shifted to `offset`), little-endian,
in Bpp = bpp/8 bytes. Nothing else is ever drawn: after a round's DONE the writer draws nothing until the next
GO (harness/protocol.py), so what the backend shows then is the round and nothing later.

Round 0 (baseline): every pixel becomes 0 (black). It draws no random numbers.

Round r >= 1: ``n = 1 + next() % 12`` ops, each drawn in this order:

* ``kind = next() % 2``; ``c = next()``; colour ``r8 = (c >> 16) & 255, g8 = (c >> 8) & 255, b8 = c & 255``.
* kind 0 (rect): ``x = next() % width; y = next() % H; w = 1 + next() % (width - x);
  h = 1 + next() % min(H - y, 128)``; fill the rectangle (x, y, w, h).
* kind 1 (page): ``npages = ceil(H * stride / 4096); p = next() % npages``; fill every pixel (x < width, y < H)
  whose first byte, at offset ``y*stride + x*Bpp``, lies in [p*4096, (p+1)*4096). This is the page-granular
  write that the frontend's dirty tracking sees; with 24 bpp the last such pixel may spill into the next page.

Writer parameters (WriterParams; the C writer's --mode, --pages, --touches, --order) choose between two modes.
Mode "mixed" (the default) is the pattern above. Mode "sparse" exists to make missed updates visible: a miss
is healed by any later write whose rectangle covers the page, so each round writes only a few seeded pages,
each a few times, and nothing else.

Mode "sparse", round 0: the same baseline as above. Round r >= 1, from the same starting state:

* for i in 0 .. pages-1: ``p = next() % npages`` (npages as for a page op); then for t in 0 .. touches-1:
  ``c = next()``, colour as above. This gives a list of entries (p, [colour_0 .. colour_{touches-1}]) in
  generation order; the same page may appear in more than one entry.
* If order is "ascending", stable-sort the entries by p (entries of one page keep their generation order);
  order "random" keeps the generation order. As the sort is stable, a page's last writer is the same either
  way: order never changes a round's final bytes, only the sequence of writes the frontend sees.
* For each entry in turn, for each of its colours in turn: fill the page exactly as a page op does. Each such
  fill is one "touch": every pixel of the page is written once per touch.

The writer may pause between two touches of one page (--touch-gap-us); that changes timing, never the bytes. Its
other guest options likewise change how the bytes are written, never which: how the framebuffer is opened and
mapped (--lifecycle, --mappings) and who draws (--workers, --worker-kind).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xenfb_harness.geometry import PAGE_SIZE, Geometry, Rect

# The spec's numbers, once. xfb-writer.c has its own copies; the byte-for-byte test keeps them in step.
MASK64 = (1 << 64) - 1
SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
SPLITMIX_MUL1 = 0xBF58476D1CE4E5B9
SPLITMIX_MUL2 = 0x94D049BB133111EB
ROUND_MUL = 0xD1B54A32D192ED03
MAX_OPS = 12  # a round draws 1..MAX_OPS ops
OP_KINDS = 2  # 0 = rect, 1 = page
MAX_RECT_H = 128  # rect heights stay small so a round touches a bounded, varied set of pages
MODES = ("mixed", "sparse")
ORDERS = ("random", "ascending")
MAX_SPARSE_PAGES = 65536  # the C writer's limits for --pages and --touches
MAX_TOUCHES = 65536


@dataclass(frozen=True)
class WriterParams:
    """What a round draws (see the module docstring); the default is the "mixed" pattern.

    pages, touches and order only matter in "sparse" mode. They are still validated in "mixed" mode, as the C
    writer validates its options whatever the mode.
    """

    mode: str = "mixed"
    pages: int = 8
    touches: int = 1
    order: str = "random"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown writer mode {self.mode!r} (expected one of {', '.join(MODES)})")
        if self.order not in ORDERS:
            raise ValueError(f"unknown page order {self.order!r} (expected one of {', '.join(ORDERS)})")
        for name, top in (("pages", MAX_SPARSE_PAGES), ("touches", MAX_TOUCHES)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                raise ValueError(f"writer {name} must be an integer in 1..{top}, got {value!r}")

    def writer_args(self) -> list[str]:
        """The xfb-writer options that draw this pattern."""
        return ["--mode", self.mode, "--pages", str(self.pages), "--touches", str(self.touches),
                "--order", self.order]


DEFAULT_PARAMS = WriterParams()


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
    """The one-row spans of pixels whose first byte lies in framebuffer page `page`."""
    bpp, stride = geometry.bytes_per_pixel, geometry.stride
    start, end = page * PAGE_SIZE, (page + 1) * PAGE_SIZE
    rects = []
    for y in range(start // stride, min(geometry.height, (end - 1) // stride + 1)):
        row = y * stride
        x_lo = max(0, -((row - start) // bpp))  # ceil((start - row) / bpp)
        x_hi = min(geometry.width, -((row - end) // bpp))  # first x whose first byte is >= end
        if x_lo < x_hi:
            rects.append(Rect(x_lo, y, x_hi - x_lo, 1))
    return rects


def _colour(c: int) -> list[int]:
    return [(c >> 16) & 0xFF, (c >> 8) & 0xFF, c & 0xFF]


def final_step(geometry: Geometry) -> int:
    """The writer's final pass (--final-gap-us, timing only) makes the last touches of the pages whose number is a
    multiple of this: 1 + ceil(stride / page size), so that whole pages between two of them hold a full screen
    row and the two share no row. xfb-writer.c's final_step is its twin."""
    return 2 + (geometry.stride - 1) // PAGE_SIZE


def _npages(geometry: Geometry) -> int:
    return -(-geometry.height * geometry.stride // PAGE_SIZE)


def draw_round(buf: bytearray | np.ndarray, geometry: Geometry, seed: int, round_no: int, *,
               params: WriterParams = DEFAULT_PARAMS) -> list[dict]:
    """Draw round `round_no` of `seed` into buf in place; return the ops drawn, in order, for reports.

    In "sparse" mode every touch is one "page" op, with its entry's index in drawing order ("entry") and the
    touch's index within the entry ("touch").
    """
    arr = _as_array(buf, geometry)
    lines = arr[: geometry.height * geometry.stride].reshape(geometry.height, geometry.stride)
    width, height = geometry.width, geometry.height
    if round_no == 0:
        full = Rect(0, 0, width, height)
        _fill(lines, geometry, full, _pixel_bytes(geometry, 0))
        return [{"kind": "fill", "rect": full.as_dict(), "colour": [0, 0, 0], "pixel": 0}]

    rng = SplitMix64(round_state(seed, round_no))
    if params.mode == "sparse":
        return _draw_sparse(lines, geometry, rng, params)
    npages = _npages(geometry)
    ops = []
    for _ in range(1 + rng.next() % MAX_OPS):
        kind = rng.next() % OP_KINDS
        colour = _colour(rng.next())
        value = geometry.pack(*colour)
        pixel = _pixel_bytes(geometry, value)
        if kind == 0:
            # Separate statements: the draw order of the random numbers is part of the spec.
            x = rng.next() % width
            y = rng.next() % height
            w = 1 + rng.next() % (width - x)
            h = 1 + rng.next() % min(height - y, MAX_RECT_H)
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


def sparse_entries(geometry: Geometry, seed: int, round_no: int, params: WriterParams) -> list[tuple[int, list]]:
    """Round round_no >= 1 of "sparse" mode as (page, [colour per touch]) entries, in drawing order."""
    if round_no < 1:
        raise ValueError("round 0 is the baseline clear; sparse entries start at round 1")
    rng = SplitMix64(round_state(seed, round_no))
    return _sparse_entries(rng, _npages(geometry), params)


def _sparse_entries(rng: SplitMix64, npages: int, params: WriterParams) -> list[tuple[int, list]]:
    entries = []
    for _ in range(params.pages):
        page = rng.next() % npages
        entries.append((page, [_colour(rng.next()) for _ in range(params.touches)]))
    if params.order == "ascending":
        entries.sort(key=lambda entry: entry[0])  # list.sort is stable
    return entries


def _draw_sparse(lines: np.ndarray, geometry: Geometry, rng: SplitMix64, params: WriterParams) -> list[dict]:
    ops = []
    for index, (page, colours) in enumerate(_sparse_entries(rng, _npages(geometry), params)):
        spans = page_rects(geometry, page)
        rects = [s.as_dict() for s in spans]
        for touch, colour in enumerate(colours):
            value = geometry.pack(*colour)
            pixel = _pixel_bytes(geometry, value)
            for span in spans:
                _fill(lines, geometry, span, pixel)
            ops.append({"kind": "page", "page": page, "rects": rects, "colour": colour, "pixel": value,
                        "entry": index, "touch": touch})
    return ops


def render(geometry: Geometry, seed: int, rounds: int, start: bytes | None = None, *,
           params: WriterParams = DEFAULT_PARAMS) -> bytearray:
    """Raw framebuffer bytes (height*stride) after rounds 0..rounds-1, drawn over `start` (default zeros)."""
    size = geometry.height * geometry.stride
    if start is None:
        buf = bytearray(size)
    else:
        if len(start) != size:
            raise ValueError(f"start buffer has {len(start)} bytes, geometry needs {size}")
        buf = bytearray(start)
    for round_no in range(rounds):
        draw_round(buf, geometry, seed, round_no, params=params)
    return buf


def expected_rgb(geometry: Geometry, seed: int, rounds_done: int, *,
                 params: WriterParams = DEFAULT_PARAMS) -> np.ndarray:
    """What the display should show (HxWx3 uint8) after rounds 0..rounds_done-1."""
    return geometry.raw_to_rgb(render(geometry, seed, rounds_done, params=params))

