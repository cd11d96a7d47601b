"""The pattern spec (harness/pattern.py) and its C twin (harness/writer/xfb-writer.c) agree, and keep its rules."""
from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from harness import pattern, protocol
from harness.geometry import TICKER_BITS, Channel, Geometry

WRITER_SRC = Path(__file__).resolve().parent.parent / "harness" / "writer" / "xfb-writer.c"


def geom(w, h, bpp, stride, red, green, blue) -> Geometry:
    return Geometry(w, h, bpp, stride, Channel(*red), Channel(*green), Channel(*blue))


RGB32 = geom(800, 600, 32, 3200, (16, 8), (8, 8), (0, 8))
GEOMETRIES = {
    "800x600x32-rgb": RGB32,
    "800x600x32-bgr": geom(800, 600, 32, 3200, (0, 8), (8, 8), (16, 8)),
    "333x201x16-565-padded": geom(333, 201, 16, 700, (11, 5), (5, 6), (0, 5)),
    "640x480x32": geom(640, 480, 32, 2560, (16, 8), (8, 8), (0, 8)),
    "101x77x24-padded": geom(101, 77, 24, 304, (16, 8), (8, 8), (0, 8)),  # pixels straddle page boundaries
    "7x3x32-one-drawable-row": geom(7, 3, 32, 32, (16, 8), (8, 8), (0, 8)),
}
SEEDS = [0, 1, 0xDEADBEEF, 2**64 - 1]


def geometry_arg(g: Geometry) -> str:
    return f"{g.width},{g.height},{g.bpp},{g.stride},{g.red.offset}/{g.red.length}," \
           f"{g.green.offset}/{g.green.length},{g.blue.offset}/{g.blue.length}"


@pytest.fixture(scope="module")
def writer(tmp_path_factory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found: cannot build xfb-writer to compare it with pattern.py")
    exe = tmp_path_factory.mktemp("writer") / "xfb-writer"
    # -Werror: the real build must be warning-free, so a warning here is a failure too.
    subprocess.run([gcc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(WRITER_SRC)], check=True)
    return exe


def padding_and_ticker(buf: bytes | bytearray, g: Geometry) -> np.ndarray:
    """All bytes a round must never write: the ticker rows, and the padding at the end of every row."""
    lines = np.frombuffer(bytes(buf), dtype=np.uint8).reshape(g.height, g.stride)
    return np.concatenate([lines[g.drawable_height:].ravel(), lines[:, g.width * g.bytes_per_pixel:].ravel()])


def drawable_pixels(buf: bytes | bytearray, g: Geometry) -> np.ndarray:
    lines = np.frombuffer(bytes(buf), dtype=np.uint8).reshape(g.height, g.stride)
    return lines[: g.drawable_height, : g.width * g.bytes_per_pixel]


# --- C and Python agree ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", GEOMETRIES)
def test_c_and_python_agree_byte_for_byte(writer, tmp_path, name):
    g = GEOMETRIES[name]
    for seed in SEEDS:
        out = tmp_path / f"dump-{seed}"
        subprocess.run([str(writer), "--dump", str(out), "--geometry", geometry_arg(g), "--seed", str(seed),
                        "--rounds", "11"], check=True, capture_output=True)
        c_bytes = out.read_bytes()
        py_bytes = pattern.render(g, seed, 11)
        assert len(c_bytes) == g.height * g.stride
        if c_bytes != py_bytes:
            diff = np.flatnonzero(np.frombuffer(c_bytes, np.uint8) != np.frombuffer(bytes(py_bytes), np.uint8))
            pytest.fail(f"{name} seed {seed}: {diff.size} bytes differ, first at offset {diff[0]}")


def test_writer_guest_loop_on_a_plain_file(writer, tmp_path):
    """The guest-mode command loop, with a file standing in for /dev/fb0 (--geometry skips the ioctls)."""
    g = GEOMETRIES["333x201x16-565-padded"]
    fb = tmp_path / "fb"
    fb.write_bytes(b"\x5a" * (g.height * g.stride))
    proc = subprocess.Popen([str(writer), "--fb", str(fb), "--geometry", geometry_arg(g), "--tick-ms", "5"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    proc.stdin.write("GO 0 99\n\n")
    proc.stdin.flush()
    time.sleep(0.2)  # let the ticker advance between rounds
    out, _ = proc.communicate("GO 1 99\nGO 2 99\nhello\nGO -1 99\nQUIT\n", timeout=10)
    assert proc.returncode == 0
    msgs = [protocol.parse_line(line) for line in out.splitlines()]
    assert msgs[0] == protocol.Ready(dataclasses.replace(g, smem=g.height * g.stride))
    assert [m.round for m in msgs[1:4]] == [0, 1, 2]
    assert 1 <= msgs[1].tick < msgs[2].tick <= msgs[3].tick
    assert msgs[4:] == [protocol.WriterError("unknown command: hello"),
                        protocol.WriterError("unknown command: GO -1 99"), protocol.Bye()]
    raw = fb.read_bytes()
    assert np.array_equal(drawable_pixels(raw, g), drawable_pixels(pattern.render(g, 99, 3), g))
    assert pattern.decode_ticker(g.raw_to_rgb(raw), g) >= msgs[3].tick
    lines = np.frombuffer(raw, np.uint8).reshape(g.height, g.stride)
    assert (lines[:, g.width * 2:] == 0x5A).all() and (lines[g.drawable_height] == 0x5A).all()


def test_writer_exits_quietly_on_eof(writer, tmp_path):
    g = GEOMETRIES["7x3x32-one-drawable-row"]
    fb = tmp_path / "fb"
    fb.write_bytes(bytes(g.height * g.stride))
    proc = subprocess.run([str(writer), "--fb", str(fb), "--geometry", geometry_arg(g)], input="",
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0
    assert [type(protocol.parse_line(x)) for x in proc.stdout.splitlines()] == [protocol.Ready]


def test_writer_reports_fatal_errors(writer, tmp_path):
    not_an_fb = tmp_path / "plain"
    not_an_fb.write_bytes(bytes(4096))
    proc = subprocess.run([str(writer), "--fb", str(not_an_fb)], input="", capture_output=True, text=True,
                          timeout=10)
    assert proc.returncode == 1
    msg = protocol.parse_line(proc.stdout.strip())
    assert isinstance(msg, protocol.WriterError) and "FBIOGET_VSCREENINFO" in msg.message


# --- the spec's rules ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", GEOMETRIES)
def test_round0_blacks_out_exactly_the_drawable_area(name):
    g = GEOMETRIES[name]
    buf = bytearray(b"\xaa" * (g.height * g.stride))
    pattern.draw_round(buf, g, 5, 0)
    assert not drawable_pixels(buf, g).any()
    assert (padding_and_ticker(buf, g) == 0xAA).all()


@pytest.mark.parametrize("name", GEOMETRIES)
def test_ops_never_touch_ticker_rows_or_padding(name):
    g = GEOMETRIES[name]
    buf = bytearray(b"\xaa" * (g.height * g.stride))
    kinds = set()
    for round_no in range(1, 200):
        for op in pattern.draw_round(buf, g, 1234, round_no):
            kinds.add(op["kind"])
            for r in [op["rect"]] if op["kind"] == "rect" else op["rects"]:
                assert 0 <= r["x"] and r["x"] + r["w"] <= g.width and 0 <= r["y"]
                assert r["y"] + r["h"] <= g.drawable_height and 1 <= r["h"] <= pattern.MAX_RECT_H
    assert kinds == {"rect", "page"}
    assert (padding_and_ticker(buf, g) == 0xAA).all()
    assert (drawable_pixels(buf, g) != 0xAA).any()


@pytest.mark.parametrize("name", GEOMETRIES)
def test_page_op_fills_pixels_by_first_byte(name):
    g = GEOMETRIES[name]
    ys, xs = np.mgrid[0: g.drawable_height, 0: g.width]
    pages = g.page_of(xs, ys)
    for page in range(int(pages.max()) + 1):
        covered = np.zeros_like(pages, dtype=bool)
        for r in pattern.page_rects(g, page):
            covered[r.y: r.y + r.h, r.x: r.x + r.w] = True
        assert np.array_equal(covered, pages == page), f"page {page}"


def test_rendering_is_deterministic():
    g = RGB32
    assert pattern.render(g, 42, 11) == pattern.render(g, 42, 11)
    assert pattern.draw_round(bytearray(g.height * g.stride), g, 42, 7) == \
        pattern.draw_round(np.zeros(g.height * g.stride, np.uint8), g, 42, 7)


def test_different_seeds_and_rounds_differ():
    g = RGB32
    frames = [bytes(pattern.render(g, seed, 4)) for seed in range(8)]
    assert len(set(frames)) == len(frames)
    ops = [pattern.draw_round(bytearray(g.height * g.stride), g, 42, r) for r in range(1, 9)]
    assert all(a != b for i, a in enumerate(ops) for b in ops[i + 1:])


def test_render_draws_over_start_buffer_and_ndarray_in_place():
    g = GEOMETRIES["333x201x16-565-padded"]
    start = bytes([0x11]) * (g.height * g.stride)
    out = pattern.render(g, 3, 2, start=start)
    assert (padding_and_ticker(out, g) == 0x11).all()
    arr = np.frombuffer(bytearray(start), np.uint8).reshape(g.height, g.stride)
    pattern.draw_round(arr, g, 3, 0)
    pattern.draw_round(arr, g, 3, 1)
    assert arr.tobytes() == bytes(out)


def test_colours_and_pixel_packing():
    g = GEOMETRIES["333x201x16-565-padded"]
    buf = bytearray(g.height * g.stride)
    pattern.draw_round(buf, g, 77, 0)
    op = pattern.draw_round(buf, g, 77, 1)[-1]
    r = op["rect"] if op["kind"] == "rect" else op["rects"][0]
    rgb = g.raw_to_rgb(buf)[r["y"], r["x"]]
    assert list(rgb) == [c & m for c, m in zip(op["colour"], g.colour_mask())]


def test_expected_rgb_matches_render():
    g = GEOMETRIES["800x600x32-bgr"]
    rgb = pattern.expected_rgb(g, 9, 5)
    assert rgb.shape == (g.height, g.width, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, g.raw_to_rgb(pattern.render(g, 9, 5)))


def test_render_is_fast():
    best = min(_timed(lambda: pattern.render(RGB32, 2024, 11)) for _ in range(3))
    assert best < 0.1, f"render of 11 rounds took {best * 1000:.0f} ms"


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --- ticker ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["800x600x32-rgb", "800x600x32-bgr", "333x201x16-565-padded", "101x77x24-padded"])
@pytest.mark.parametrize("tick", [0, 1, 2, 0x123456, 0xFFFFFF, 0xABCDEF, 2**32 - 1])
def test_decode_ticker_round_trip(name, tick):
    g = GEOMETRIES[name]
    buf = bytearray(pattern.render(g, 1, 3))
    pattern.draw_ticker(buf, g, tick)
    assert pattern.decode_ticker(g.raw_to_rgb(buf), g) == tick & (2**TICKER_BITS - 1)
    # the ticker only ever touches its own row
    assert bytes(buf[: (g.height - 1) * g.stride]) == bytes(pattern.render(g, 1, 3)[: (g.height - 1) * g.stride])


def test_decode_ticker_threshold_and_narrow_screen():
    g = GEOMETRIES["7x3x32-one-drawable-row"]
    rgb = np.zeros((g.height, g.width, 3), np.uint8)
    rgb[-1, 0] = (0, 0, 128)
    rgb[-1, 1] = (127, 127, 127)
    rgb[-1, 6] = (255, 0, 0)
    assert pattern.decode_ticker(rgb, g) == 0b1000001
