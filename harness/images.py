"""Frame files: PNG in and out (Pillow), QEMU's binary PPM screendumps in, and a diff picture for people."""
from __future__ import annotations

import os
import re

import numpy as np
from PIL import Image

MAGENTA = (255, 0, 255)

# P6 header: magic, width, height, maxval, each separated by whitespace and optional '#' comments, then exactly
# one whitespace byte before the raster.
_PPM_HEADER = re.compile(rb"P6(?:\s+|#[^\n]*\n)+(\d+)(?:\s+|#[^\n]*\n)+(\d+)(?:\s+|#[^\n]*\n)+(\d+)\s")


def _check_rgb(what: str, rgb: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"{what} must be H x W x 3 uint8, got shape {rgb.shape} dtype {rgb.dtype}")


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    _check_rgb("image", rgb)
    Image.fromarray(np.ascontiguousarray(rgb)).save(path, format="PNG")


def load_png(path: str | os.PathLike) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im.convert("RGB"), dtype=np.uint8)


def load_ppm(source: str | os.PathLike | bytes) -> np.ndarray:
    """Binary P6 PPM (a path or the file's bytes) -> H x W x 3 uint8; deeper samples are scaled to 8 bits."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        with open(source, "rb") as f:
            data = f.read()
    m = _PPM_HEADER.match(data)
    if not m:
        raise ValueError(f"not a binary PPM (P6) image: starts with {data[:16]!r}")
    width, height, maxval = (int(g) for g in m.groups())
    if not 0 < maxval < 65536:
        raise ValueError(f"PPM maxval {maxval} out of range")
    sample = np.dtype(np.uint8) if maxval < 256 else np.dtype(">u2")  # 16-bit samples are big endian
    size = width * height * 3 * sample.itemsize
    raster = data[m.end():m.end() + size]
    if len(raster) < size:
        raise ValueError(f"PPM {width}x{height} is truncated: {len(raster)} of {size} raster bytes")
    pixels = np.frombuffer(raster, dtype=sample).reshape(height, width, 3)
    if maxval == 255:
        return pixels.copy()
    return ((pixels.astype(np.uint32) * 255 + maxval // 2) // maxval).astype(np.uint8)


def diff_image(expected: np.ndarray, seen: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The expected frame dimmed to a third, with every differing pixel (mask True) bright magenta.

    The dimming keeps the picture recognisable while no real colour can be mistaken for a marked miss.
    """
    _check_rgb("expected", expected)
    if seen.shape != expected.shape or mask.shape != expected.shape[:2]:
        raise ValueError(f"shapes differ: expected {expected.shape}, seen {seen.shape}, mask {mask.shape}")
    out = expected // 3
    out[mask.astype(bool)] = MAGENTA
    return out
