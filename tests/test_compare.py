from __future__ import annotations

import numpy as np
import pytest

from xenfb_harness.compare import MAX_RECTS, compare
from xenfb_harness.geometry import PAGE_SIZE, Channel, Geometry, Rect

W, H = 200, 100
RGB888 = Geometry(W, H, 32, W * 4, Channel(16, 8), Channel(8, 8), Channel(0, 8))
RGB565 = Geometry(W, H, 16, W * 2 + 64, Channel(11, 5), Channel(5, 6), Channel(0, 5))


def frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def pages_of(geometry: Geometry, rect: Rect) -> list[int]:
    return sorted({(y * geometry.stride + x * geometry.bytes_per_pixel) // PAGE_SIZE
                   for y in range(rect.y, rect.y + rect.h) for x in range(rect.x, rect.x + rect.w)})


def test_identical_frames_are_ok():
    f = frame()
    res = compare(f, f.copy(), RGB888)
    assert res.ok and res.compared_pixels == W * H and res.missed_pixels == 0
    assert res.rects == [] and res.pages == [] and not res.mask.any() and res.mask.shape == (H, W)
    assert res.as_dict() == {"ok": True, "compared_pixels": W * H, "missed_pixels": 0, "rects": [],
                             "rects_truncated": False, "regions": 0, "pages": []}


@pytest.mark.parametrize("geometry", [RGB888, RGB565])
def test_altered_rect_is_reported_exactly(geometry):
    expected = frame()
    seen = expected.copy()
    rect = Rect(37, 11, 23, 9)  # crosses page boundaries
    seen[rect.y:rect.y + rect.h, rect.x:rect.x + rect.w] ^= 0x80  # top bit: a colour bit in every format
    res = compare(expected, seen, geometry)
    assert not res.ok
    assert res.missed_pixels == rect.w * rect.h and res.compared_pixels == W * H
    assert res.rects == [rect] and res.regions == 1 and not res.rects_truncated
    assert res.pages == pages_of(geometry, rect) and len(res.pages) > 1
    assert res.mask.sum() == rect.w * rect.h and res.mask[rect.y, rect.x] and not res.mask[rect.y - 1, rect.x]
    d = res.as_dict()
    assert "mask" not in d and d["rects"] == [{"x": 37, "y": 11, "w": 23, "h": 9}] and d["ok"] is False


def test_non_colour_bits_are_ignored():
    expected = frame()
    seen = expected.copy()
    seen[:, :, 0] ^= 0x07  # 5-bit red: low 3 bits carry nothing
    seen[:, :, 1] ^= 0x03  # 6-bit green
    seen[:, :, 2] ^= 0x07
    assert compare(expected, seen, RGB565).ok
    # ... but with 8-bit channels those same bits are colour.
    assert compare(expected, seen, RGB888).missed_pixels == W * H
    seen[5, 6, 1] ^= 0x04  # lowest green colour bit of 5/6/5
    res = compare(expected, seen, RGB565)
    assert res.missed_pixels == 1 and res.rects == [Rect(6, 5, 1, 1)]


def test_exclude_areas_are_not_compared():
    expected = frame()
    seen = expected.copy()
    seen[H - 2:] = 0  # as if a clock in the bottom rows had changed
    seen[0:5, 0:5] ^= 0xFF
    bottom = Rect(0, H - 2, W, 2)
    res = compare(expected, seen, RGB888, exclude=[bottom, Rect(-3, -3, 8, 8)])  # second one sticks out
    assert res.ok and res.compared_pixels == W * H - W * 2 - 25
    res = compare(expected, seen, RGB888, exclude=[bottom])
    assert res.missed_pixels == 25 and res.rects == [Rect(0, 0, 5, 5)]
    assert res.compared_pixels == W * (H - 2)


def test_separate_regions_give_separate_rects_largest_first():
    expected = frame()
    seen = expected.copy()
    seen[2:4, 2:4] ^= 1  # 4 pixels
    seen[50:60, 100:130] ^= 1  # 300 pixels
    seen[4, 4] ^= 1  # touches (3, 3) only diagonally: 8-connected, so it joins that region
    seen[6, 6] ^= 1  # (5, 5) is unchanged, so this is a region of its own
    res = compare(expected, seen, RGB888)
    assert res.rects == [Rect(100, 50, 30, 10), Rect(2, 2, 3, 3), Rect(6, 6, 1, 1)]
    assert res.missed_pixels == 306 and res.regions == 3


def test_many_regions_are_capped():
    expected = frame()
    seen = expected.copy()
    seen[0:H:3, 0:W:3] ^= 1  # isolated single pixels
    res = compare(expected, seen, RGB888)
    n = len(range(0, H, 3)) * len(range(0, W, 3))
    assert res.regions == n and res.missed_pixels == n
    assert len(res.rects) == MAX_RECTS and res.rects_truncated
    assert res.rects[0] == Rect(0, 0, 1, 1)  # equal sizes: top-left first


def test_fully_excluded_frame_is_not_ok():
    f = frame()
    res = compare(f, f, RGB888, exclude=[Rect(0, 0, W, H)])
    assert res.compared_pixels == 0 and res.missed_pixels == 0 and not res.ok


def test_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(100, 200, 3\).*\(99, 200, 3\)"):
        compare(frame(), frame()[:99], RGB888)
    with pytest.raises(ValueError, match="geometry is 200x100"):
        compare(frame()[:99], frame()[:99], RGB888)
    with pytest.raises(ValueError, match="uint8"):
        compare(frame().astype(np.int16), frame().astype(np.int16), RGB888)
