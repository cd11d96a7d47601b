"""Exact frame comparison: what the guest wrote against what VNC shows, on the colour bits only.

Only the bits the guest's pixel format can carry are compared (geometry.colour_mask()): a 5/6/5 guest cannot set
the low bits of an 8-bit channel, and how a server fills them is not our business. Everything else must match
exactly; a single differing pixel is a missed update.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from xenfb_harness.geometry import Geometry, Rect

MAX_RECTS = 64
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass
class CompareResult:
    compared_pixels: int
    missed_pixels: int
    rects: list[Rect]  # bounding boxes of the 8-connected regions of differing pixels, largest region first
    rects_truncated: bool  # True when there were more than MAX_RECTS regions
    regions: int  # number of regions, including any left out of `rects`
    pages: list[int]  # sorted framebuffer page indices holding differing pixels
    mask: np.ndarray  # H x W bool, True where the pixel differs

    @property
    def ok(self) -> bool:
        # Comparing nothing proves nothing, so it is not a pass.
        return self.missed_pixels == 0 and self.compared_pixels > 0

    def as_dict(self) -> dict:
        return {
            "ok": self.ok, "compared_pixels": self.compared_pixels, "missed_pixels": self.missed_pixels,
            "rects": [r.as_dict() for r in self.rects], "rects_truncated": self.rects_truncated,
            "regions": self.regions, "pages": list(self.pages),
        }


def _check_frame(what: str, frame: np.ndarray) -> None:
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"{what} frame must be H x W x 3 uint8, got shape {frame.shape} dtype {frame.dtype}")


def compare(expected: np.ndarray, seen: np.ndarray, geometry: Geometry,
            exclude: Sequence[Rect] = ()) -> CompareResult:
    """Compare two H x W x 3 uint8 RGB frames; pixels inside any `exclude` rect are not compared."""
    if expected.shape != seen.shape:
        raise ValueError(f"frame shapes differ: expected {expected.shape}, seen {seen.shape}")
    _check_frame("expected", expected)
    _check_frame("seen", seen)
    height, width = expected.shape[:2]
    if (width, height) != (geometry.width, geometry.height):
        raise ValueError(f"frames are {width}x{height} but the geometry is {geometry.width}x{geometry.height}")

    diff = np.bitwise_xor(expected, seen)
    diff &= geometry.colour_mask()  # broadcasts over the channel axis
    # OR-ing the three channel planes is several times faster than diff.any(axis=2) on a last axis of 3.
    mask = (diff[:, :, 0] | diff[:, :, 1] | diff[:, :, 2]).astype(bool)

    compared = width * height
    if exclude:
        keep = np.ones((height, width), dtype=bool)
        for r in exclude:
            x0, y0 = max(r.x, 0), max(r.y, 0)
            x1, y1 = min(r.x + r.w, width), min(r.y + r.h, height)
            if x0 < x1 and y0 < y1:
                keep[y0:y1, x0:x1] = False
        compared = int(np.count_nonzero(keep))
        mask &= keep

    ys, xs = np.nonzero(mask)  # row-major order
    missed = int(ys.size)
    if missed == 0:
        return CompareResult(compared, 0, [], False, 0, [], mask)

    labels, regions = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    # Bounding boxes of all regions in one vectorised pass (find_objects builds Python slices per region, which
    # is slow when noise makes tens of thousands of them).
    lab = labels[ys, xs]
    count = np.bincount(lab, minlength=regions + 1)
    big = np.iinfo(np.int64).max
    x_min, y_min = np.full(regions + 1, big), np.full(regions + 1, big)
    x_max, y_max = np.full(regions + 1, -1), np.full(regions + 1, -1)
    np.minimum.at(x_min, lab, xs)
    np.minimum.at(y_min, lab, ys)
    np.maximum.at(x_max, lab, xs)
    np.maximum.at(y_max, lab, ys)
    w, h = x_max - x_min + 1, y_max - y_min + 1
    # Largest region (most differing pixels) first; ties by box area, then top-to-bottom, left-to-right.
    ids = np.arange(1, regions + 1)
    order = ids[np.lexsort((x_min[1:], y_min[1:], -(w * h)[1:], -count[1:]))][:MAX_RECTS]
    rects = [Rect(int(x_min[i]), int(y_min[i]), int(w[i]), int(h[i])) for i in order]

    pages = np.unique(geometry.page_of(xs, ys)).tolist()
    return CompareResult(compared, missed, rects, regions > MAX_RECTS, int(regions), pages, mask)
