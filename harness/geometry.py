"""Framebuffer geometry as the guest reports it, and the shared layout facts built on it.

Nothing here is assumed: every number comes from the guest's FBIOGET_*SCREENINFO answer, parsed out of the
writer's READY line (see harness/protocol.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAGE_SIZE = 4096


@dataclass(frozen=True)
class Channel:
    offset: int  # bit offset of the channel inside a pixel
    length: int  # number of bits


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    w: int
    h: int

    def as_dict(self) -> dict:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h}


@dataclass(frozen=True)
class Geometry:
    width: int
    height: int
    bpp: int
    stride: int  # bytes per line
    red: Channel
    green: Channel
    blue: Channel
    smem: int = 0  # size of the framebuffer memory in bytes (0 if unknown)

    def __post_init__(self) -> None:
        if self.bpp not in (16, 24, 32):
            raise ValueError(f"unsupported bits per pixel {self.bpp} (expected 16, 24 or 32)")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"unusable framebuffer size {self.width}x{self.height}")
        if self.stride < self.width * self.bytes_per_pixel:
            raise ValueError(f"stride {self.stride} is smaller than one line of {self.width} pixels")

    @property
    def bytes_per_pixel(self) -> int:
        return self.bpp // 8

    def channels(self) -> tuple[Channel, Channel, Channel]:
        return (self.red, self.green, self.blue)

    def pack(self, r: int, g: int, b: int) -> int:
        """8-bit r, g, b -> a pixel value of this format (each channel keeps its top `length` bits)."""
        value = 0
        for ch, v in zip(self.channels(), (r, g, b)):
            value |= ((v & 0xFF) >> (8 - ch.length)) << ch.offset
        return value

    def raw_to_rgb(self, raw: bytes | np.ndarray) -> np.ndarray:
        """Raw framebuffer bytes (height*stride) -> HxWx3 uint8, each channel scaled up to 8 bits."""
        buf = np.frombuffer(raw, dtype=np.uint8) if not isinstance(raw, np.ndarray) else raw.reshape(-1)
        bpp = self.bytes_per_pixel
        lines = buf[: self.height * self.stride].reshape(self.height, self.stride)
        px = lines[:, : self.width * bpp].reshape(self.height, self.width, bpp).astype(np.uint32)
        value = np.zeros((self.height, self.width), dtype=np.uint32)
        for i in range(bpp):  # little endian
            value |= px[:, :, i] << (8 * i)
        out = np.empty((self.height, self.width, 3), dtype=np.uint8)
        for i, ch in enumerate(self.channels()):
            mask = (1 << ch.length) - 1
            out[:, :, i] = (((value >> ch.offset) & mask) << (8 - ch.length)).astype(np.uint8)
        return out

    def colour_mask(self) -> np.ndarray:
        """Per-channel 8-bit masks of the bits that carry colour (the top `length` bits of each channel)."""
        return np.array([(0xFF << (8 - ch.length)) & 0xFF for ch in self.channels()], dtype=np.uint8)

    def page_of(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Framebuffer page index of each pixel (x, y)."""
        return (y.astype(np.int64) * self.stride + x.astype(np.int64) * self.bytes_per_pixel) // PAGE_SIZE

    def as_dict(self) -> dict:
        return {
            "width": self.width, "height": self.height, "bpp": self.bpp, "stride": self.stride,
            "red": [self.red.offset, self.red.length], "green": [self.green.offset, self.green.length],
            "blue": [self.blue.offset, self.blue.length], "smem": self.smem,
        }
