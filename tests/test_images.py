from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from xenfb_harness.images import MAGENTA, diff_image, load_png, load_ppm, save_png


def frame(h: int = 5, w: int = 7) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_png_round_trip(tmp_path):
    f = frame()
    save_png(tmp_path / "f.png", f)
    back = load_png(tmp_path / "f.png")
    assert back.dtype == np.uint8 and np.array_equal(back, f)
    with pytest.raises(ValueError, match="uint8"):
        save_png(tmp_path / "bad.png", f.astype(np.float32))


def test_load_png_converts_to_rgb(tmp_path):
    Image.new("RGBA", (3, 2), (10, 20, 30, 40)).save(tmp_path / "a.png")
    assert load_png(tmp_path / "a.png").tolist() == [[[10, 20, 30]] * 3] * 2


def test_load_ppm_bytes_and_path(tmp_path):
    f = frame()
    data = b"P6\n# written by qemu\n7 5\n255\n" + f.tobytes()
    assert np.array_equal(load_ppm(data), f)
    (tmp_path / "s.ppm").write_bytes(data)
    assert np.array_equal(load_ppm(tmp_path / "s.ppm"), f)
    assert np.array_equal(load_ppm(str(tmp_path / "s.ppm")), f)
    Image.fromarray(f).save(tmp_path / "pil.ppm")  # another writer's header layout
    assert np.array_equal(load_ppm(tmp_path / "pil.ppm"), f)


def test_load_ppm_16_bit_and_errors():
    samples = np.array([[[0, 65535, 32896]]], dtype=">u2")
    assert load_ppm(b"P6 1 1 65535\n" + samples.tobytes()).tolist() == [[[0, 255, 128]]]
    with pytest.raises(ValueError, match="not a binary PPM"):
        load_ppm(b"P3\n1 1\n255\n0 0 0\n")
    with pytest.raises(ValueError, match="truncated"):
        load_ppm(b"P6\n2 2\n255\n" + bytes(5))


def test_diff_image_marks_misses():
    expected = frame()
    seen = expected.copy()
    mask = np.zeros(expected.shape[:2], bool)
    mask[1, 2] = mask[4, 6] = True
    out = diff_image(expected, seen, mask)
    assert out.shape == expected.shape and out.dtype == np.uint8
    assert out[1, 2].tolist() == list(MAGENTA) and out[4, 6].tolist() == list(MAGENTA)
    assert np.array_equal(out[~mask], expected[~mask] // 3)
    assert out[~mask].max() <= 85  # nothing unmarked is anywhere near magenta's brightness
    with pytest.raises(ValueError, match="shapes differ"):
        diff_image(expected, seen, mask[:3])
