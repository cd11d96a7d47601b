"""The pattern spec (harness/pattern.py) and its C twin (harness/writer/xfb-writer.c) agree, and keep its rules."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from xenfb_harness import pattern, protocol
from xenfb_harness.geometry import Channel, Geometry

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
    "7x3x32-tiny": geom(7, 3, 32, 32, (16, 8), (8, 8), (0, 8)),
    "9x1x32-one-row-padded": geom(9, 1, 32, 40, (16, 8), (8, 8), (0, 8)),
}
TINY = "7x3x32-tiny"
WIDE32 = geom(1280, 64, 32, 5120, (16, 8), (8, 8), (0, 8))  # a row longer than a page: final_step 3
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
    subprocess.run([gcc, "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", str(exe), str(WRITER_SRC)], check=True)
    return exe


def padding(buf: bytes | bytearray, g: Geometry) -> np.ndarray:
    """All bytes a round must never write: the padding at the end of every row."""
    lines = np.frombuffer(bytes(buf), dtype=np.uint8).reshape(g.height, g.stride)
    return lines[:, g.width * g.bytes_per_pixel:].ravel()


def pixel_bytes(buf: bytes | bytearray, g: Geometry) -> np.ndarray:
    """The bytes of every pixel (the whole screen is drawable), rows without their padding."""
    lines = np.frombuffer(bytes(buf), dtype=np.uint8).reshape(g.height, g.stride)
    return lines[:, : g.width * g.bytes_per_pixel]


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
    start = b"\x5a" * (g.height * g.stride)
    fb.write_bytes(start)
    proc = subprocess.run([str(writer), "--fb", str(fb), "--geometry", geometry_arg(g)],
                          input="GO 0 99\n\nGO 1 99\nGO 2 99\nhello\nGO -1 99\nQUIT\n", capture_output=True,
                          text=True, timeout=10)
    assert proc.returncode == 0
    msgs = [protocol.parse_line(line) for line in proc.stdout.splitlines()]
    assert msgs == [protocol.Ready(dataclasses.replace(g, smem=g.height * g.stride)),
                    protocol.Done(0), protocol.Done(1), protocol.Done(2),
                    protocol.WriterError("unknown command: hello"),
                    protocol.WriterError("unknown command: GO -1 99"), protocol.Bye()]
    # Every row is the pattern's (no heartbeat rows), and the padding is as it was.
    assert fb.read_bytes() == pattern.render(g, 99, 3, start=start)


def test_writer_exits_quietly_on_eof(writer, tmp_path):
    g = GEOMETRIES[TINY]
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
def test_round0_blacks_out_every_pixel_and_no_padding(name):
    g = GEOMETRIES[name]
    buf = bytearray(b"\xaa" * (g.height * g.stride))
    pattern.draw_round(buf, g, 5, 0)
    assert not pixel_bytes(buf, g).any()
    assert (padding(buf, g) == 0xAA).all()


@pytest.mark.parametrize("name", GEOMETRIES)
def test_ops_stay_on_screen_and_never_touch_padding(name):
    g = GEOMETRIES[name]
    buf = bytearray(b"\xaa" * (g.height * g.stride))
    kinds = set()
    for round_no in range(1, 200):
        for op in pattern.draw_round(buf, g, 1234, round_no):
            kinds.add(op["kind"])
            for r in [op["rect"]] if op["kind"] == "rect" else op["rects"]:
                assert 0 <= r["x"] and r["x"] + r["w"] <= g.width and 0 <= r["y"]
                assert r["y"] + r["h"] <= g.height and 1 <= r["h"] <= pattern.MAX_RECT_H
    assert kinds == {"rect", "page"}
    assert (padding(buf, g) == 0xAA).all()
    assert (pixel_bytes(buf, g) != 0xAA).any()


@pytest.mark.parametrize("name", GEOMETRIES)
def test_page_op_fills_pixels_by_first_byte(name):
    g = GEOMETRIES[name]
    ys, xs = np.mgrid[0: g.height, 0: g.width]
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
    assert (padding(out, g) == 0x11).all()
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


# --- writer parameters and the sparse mode ---------------------------------------------------------------------

SPARSE = [
    pattern.WriterParams("sparse", 1, 1, "random"),
    pattern.WriterParams("sparse"),  # 8 pages, 1 touch
    pattern.WriterParams("sparse", 8, 3, "ascending"),
    pattern.WriterParams("sparse", 40, 2, "random"),  # more entries than some geometries have pages: repeats
    pattern.WriterParams("sparse", 40, 2, "ascending"),
    pattern.WriterParams("sparse", 5, 4, "random"),
]


def test_writer_params_defaults_and_validation():
    p = pattern.WriterParams()
    assert (p.mode, p.pages, p.touches, p.order) == ("mixed", 8, 1, "random")
    assert p.writer_args() == ["--mode", "mixed", "--pages", "8", "--touches", "1", "--order", "random"]
    assert hash(p) == hash(pattern.WriterParams("mixed", 8, 1, "random"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.pages = 3
    for bad in [dict(mode="dense"), dict(order="descending"), dict(pages=0), dict(touches=0), dict(pages=-1),
                dict(pages=pattern.MAX_SPARSE_PAGES + 1), dict(touches=pattern.MAX_TOUCHES + 1), dict(pages=2.0),
                dict(touches=True)]:
        with pytest.raises(ValueError):
            pattern.WriterParams(**bad)


def test_default_params_are_todays_pattern():
    g = GEOMETRIES["333x201x16-565-padded"]
    mixed_other = pattern.WriterParams("mixed", 3, 5, "ascending")  # pages/touches/order do not matter in mixed
    assert pattern.render(g, 7, 6) == pattern.render(g, 7, 6, params=pattern.WriterParams()) == \
        pattern.render(g, 7, 6, params=mixed_other)
    assert np.array_equal(pattern.expected_rgb(g, 7, 6), pattern.expected_rgb(g, 7, 6, params=mixed_other))
    assert pattern.render(g, 7, 6) != pattern.render(g, 7, 6, params=pattern.WriterParams("sparse"))


def test_c_mixed_with_explicit_options_is_the_default(writer, tmp_path):
    g = GEOMETRIES["101x77x24-padded"]
    outs = []
    for extra in [[], pattern.WriterParams().writer_args(), ["--mode", "mixed", "--pages", "3", "--touches", "2",
                                                              "--order", "ascending"]]:
        out = tmp_path / f"dump-{len(outs)}"
        subprocess.run([str(writer), "--dump", str(out), "--geometry", geometry_arg(g), "--seed", "5",
                        "--rounds", "9", *extra], check=True, capture_output=True)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2] == bytes(pattern.render(g, 5, 9))


@pytest.mark.parametrize("params", SPARSE, ids=lambda p: f"{p.pages}p{p.touches}t-{p.order}")
@pytest.mark.parametrize("name", GEOMETRIES)
def test_c_and_python_agree_byte_for_byte_sparse(writer, tmp_path, name, params):
    g = GEOMETRIES[name]
    for seed in [1, 0xDEADBEEF, 2**64 - 1]:
        out = tmp_path / f"dump-{seed}"
        subprocess.run([str(writer), "--dump", str(out), "--geometry", geometry_arg(g), "--seed", str(seed),
                        "--rounds", "7", *params.writer_args()], check=True, capture_output=True)
        c_bytes = out.read_bytes()
        py_bytes = pattern.render(g, seed, 7, params=params)
        if c_bytes != py_bytes:
            diff = np.flatnonzero(np.frombuffer(c_bytes, np.uint8) != np.frombuffer(bytes(py_bytes), np.uint8))
            pytest.fail(f"{name} {params} seed {seed}: {diff.size} bytes differ, first at offset {diff[0]}")


def chosen_pages(g: Geometry, seed: int, round_no: int, params: pattern.WriterParams) -> dict[int, list[int]]:
    """Straight from the spec: page -> final colour, i.e. the last touch of the last entry generated for it."""
    rng = pattern.SplitMix64(pattern.round_state(seed, round_no))
    npages = -(-g.height * g.stride // 4096)
    final = {}
    for _ in range(params.pages):
        page = rng.next() % npages
        for _ in range(params.touches):
            c = rng.next()
        final[page] = [(c >> 16) & 255, (c >> 8) & 255, c & 255]
    return final


@pytest.mark.parametrize("params", SPARSE, ids=lambda p: f"{p.pages}p{p.touches}t-{p.order}")
@pytest.mark.parametrize("name", GEOMETRIES)
def test_sparse_round_writes_only_the_chosen_pages(name, params):
    g = GEOMETRIES[name]
    ys, xs = np.mgrid[0: g.height, 0: g.width]
    page_of = g.page_of(xs, ys)
    noise = np.random.default_rng(0).integers(0, 256, g.height * g.stride, dtype=np.uint8)
    for round_no in range(1, 6):
        before = bytearray(noise.tobytes())
        if round_no == 1:  # over the baseline clear as in a run; later rounds over noise
            pattern.draw_round(before, g, 99, 0, params=params)
        after = bytearray(before)
        ops = pattern.draw_round(after, g, 99, round_no, params=params)
        final = chosen_pages(g, 99, round_no, params)
        assert len(ops) == params.pages * params.touches and {op["kind"] for op in ops} == {"page"}
        assert {op["page"] for op in ops} == set(final)

        bpp = g.bytes_per_pixel
        px_before = pixel_bytes(before, g).reshape(g.height, g.width, bpp)
        px_after = pixel_bytes(after, g).reshape(g.height, g.width, bpp)
        changed = (px_before != px_after).any(axis=2)
        in_chosen = np.isin(page_of, list(final))
        assert changed.any()
        assert not (changed & ~in_chosen).any(), "a pixel outside the chosen pages changed"
        assert changed.sum() <= in_chosen.sum()
        for page, colour in final.items():
            want = np.frombuffer(g.pack(*colour).to_bytes(bpp, "little"), np.uint8)
            assert (px_after[page_of == page] == want).all(), f"page {page} does not show its last touch"
        assert np.array_equal(padding(after, g), padding(before, g))


def test_sparse_ops_list_every_touch_and_keep_rects_in_bounds():
    g = GEOMETRIES["101x77x24-padded"]
    params = pattern.WriterParams("sparse", 6, 3)
    buf = bytearray(b"\xaa" * (g.height * g.stride))
    for round_no in range(1, 30):
        ops = pattern.draw_round(buf, g, 4, round_no, params=params)
        assert [(op["entry"], op["touch"]) for op in ops] == [(e, t) for e in range(6) for t in range(3)]
        for op in ops:
            assert op["pixel"] == g.pack(*op["colour"])
            for r in op["rects"]:
                assert 0 <= r["x"] and r["x"] + r["w"] <= g.width and 0 <= r["y"]
                assert r["y"] + r["h"] <= g.height
    assert (padding(buf, g) == 0xAA).all()


@pytest.mark.parametrize("name", GEOMETRIES)
def test_ascending_and_random_write_the_same_pages(name):
    g = GEOMETRIES[name]
    for pages, touches in [(1, 1), (8, 1), (8, 3), (40, 2)]:
        rnd = pattern.WriterParams("sparse", pages, touches, "random")
        asc = pattern.WriterParams("sparse", pages, touches, "ascending")
        for round_no in range(1, 8):
            e_rnd = pattern.sparse_entries(g, 11, round_no, rnd)
            e_asc = pattern.sparse_entries(g, 11, round_no, asc)
            assert e_asc == sorted(e_rnd, key=lambda e: e[0])  # a stable sort of the same entries
            buf_rnd, buf_asc = bytearray(g.height * g.stride), bytearray(g.height * g.stride)
            ops_rnd = pattern.draw_round(buf_rnd, g, 11, round_no, params=rnd)
            ops_asc = pattern.draw_round(buf_asc, g, 11, round_no, params=asc)
            assert {op["page"] for op in ops_rnd} == {op["page"] for op in ops_asc}
            assert sorted((op["page"], op["touch"], op["colour"]) for op in ops_rnd) == \
                sorted((op["page"], op["touch"], op["colour"]) for op in ops_asc)
            pages_asc = [op["page"] for op in ops_asc]
            assert pages_asc == sorted(pages_asc)
            if len({e[0] for e in e_rnd}) == pages:  # no page in two entries: the order cannot show
                assert buf_rnd == buf_asc


def test_sparse_rounds_are_sparse_and_seeded():
    g = RGB32
    params = pattern.WriterParams("sparse")
    npages = -(-g.height * g.stride // 4096)
    seen = set()
    for round_no in range(1, 50):
        pages = {op["page"] for op in pattern.draw_round(bytearray(g.height * g.stride), g, 3, round_no,
                                                         params=params)}
        assert 1 <= len(pages) <= 8
        seen |= pages
    assert len(seen) > npages // 3  # rounds move around the screen
    assert pattern.render(g, 3, 5, params=params) != pattern.render(g, 4, 5, params=params)


def test_writer_guest_loop_sparse_with_touch_gap(writer, tmp_path):
    g = GEOMETRIES["333x201x16-565-padded"]
    params = pattern.WriterParams("sparse", 2, 3, "ascending")
    fb = tmp_path / "fb"
    fb.write_bytes(b"\x5a" * (g.height * g.stride))
    proc = subprocess.Popen([str(writer), "--fb", str(fb), "--geometry", geometry_arg(g), *params.writer_args(),
                             "--touch-gap-us", "20000"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert isinstance(protocol.parse_line(proc.stdout.readline()), protocol.Ready)
        durations = []
        for r in range(4):
            t0 = time.monotonic()
            proc.stdin.write(protocol.format_go(r, 42))
            proc.stdin.flush()
            assert protocol.parse_line(proc.stdout.readline()).round == r
            durations.append(time.monotonic() - t0)
        out, _ = proc.communicate(protocol.format_quit(), timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and protocol.parse_line(out.strip()) == protocol.Bye()
    # 2 pages x (3 - 1) gaps of 20 ms in every sparse round; none in the baseline
    assert all(d >= 0.08 for d in durations[1:]), durations
    assert fb.read_bytes() == pattern.render(g, 42, 4, start=b"\x5a" * (g.height * g.stride), params=params)


@pytest.mark.parametrize("mappings, workers, kind", [(1, 3, "thread"), (1, 4, "process"), (5, 1, "thread"),
                                                      (7, 2, "process")])
def test_writer_guest_mappings_and_workers_draw_the_same_bytes(writer, tmp_path, mappings, workers, kind):
    """Splitting the mapping and the round's pages among workers changes how the bytes are written, never which."""
    g = GEOMETRIES["333x201x16-565-padded"]
    params = pattern.WriterParams("sparse", 40, 3, "random")  # 40 pages in ~33: some pages in two entries
    fb = tmp_path / "fb"
    fb.write_bytes(b"\x5a" * (g.height * g.stride))
    commands = [protocol.format_go(r, 9) for r in range(6)] + [protocol.format_quit()]
    proc = subprocess.run([str(writer), "--fb", str(fb), "--geometry", geometry_arg(g), *params.writer_args(),
                           "--mappings", str(mappings), "--workers", str(workers), "--worker-kind", kind],
                          input="".join(commands), capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stdout
    msgs = [protocol.parse_line(x) for x in proc.stdout.splitlines()]
    assert [m.round for m in msgs if isinstance(m, protocol.Done)] == list(range(6))
    raw = fb.read_bytes()
    assert np.array_equal(pixel_bytes(raw, g), pixel_bytes(pattern.render(g, 9, 6, params=params), g))


@pytest.mark.parametrize("mappings, workers, extra", [(0, 1, []), (0, 3, []), (1, 4, []),
                                                      (0, 3, ["--worker-kind", "process"]),
                                                      (0, 4, ["--lifecycle", "per-round"])])
def test_writer_final_pass_draws_the_same_bytes(writer, tmp_path, mappings, workers, extra):
    """--final-gap-us changes when the last touches are made, never which bytes end up drawn; --mappings 0 maps
    each page on its own."""
    g = GEOMETRIES["333x201x16-565-padded"]
    params = pattern.WriterParams("sparse", 60, 3, "random")  # 60 entries in ~33 pages: most pages twice
    fb = tmp_path / "fb"
    fb.write_bytes(b"\x5a" * (g.height * g.stride))
    commands = [protocol.format_go(r, 5) for r in range(3)] + [protocol.format_quit()]
    proc = subprocess.run([str(writer), "--fb", str(fb), "--geometry", geometry_arg(g), *params.writer_args(),
                           "--mappings", str(mappings), "--workers", str(workers), "--final-gap-us", "1000", *extra],
                          input="".join(commands), capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stdout
    assert np.array_equal(pixel_bytes(fb.read_bytes(), g), pixel_bytes(pattern.render(g, 5, 3, params=params), g))


def watch_round(cmd: list[str], fb: Path, seed: int, pages: dict, timeout: float = 10) -> dict[int, float]:
    """Start the writer (cmd), have it draw round 1 of `seed` and poll `fb` meanwhile: when each page of `pages`
    (page -> test(raw bytes of the file, page)) first passed its test. Insertion order is the order seen."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    seen: dict[int, float] = {}
    try:
        assert isinstance(protocol.parse_line(proc.stdout.readline()), protocol.Ready)
        proc.stdin.write(protocol.format_go(1, seed))
        proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while len(seen) < len(pages) and time.monotonic() < deadline:
            raw, now = fb.read_bytes(), time.monotonic()
            for page, test in pages.items():
                if page not in seen and test(raw, page):
                    seen[page] = now
            time.sleep(0.002)
        assert protocol.parse_line(proc.stdout.readline()).round == 1
        proc.communicate(protocol.format_quit(), timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    return seen


def test_final_step_keeps_final_pages_off_each_others_rows():
    for g in [*GEOMETRIES.values(), WIDE32]:
        step = pattern.final_step(g)
        rows = lambda page: {r.y for r in pattern.page_rects(g, page)}  # noqa: E731
        for page in range(0, pattern._npages(g) - step, step):
            assert not rows(page) & rows(page + step), (g, page)
    assert pattern.final_step(RGB32) == 2  # every other page at 800x600x32


@pytest.mark.parametrize("g, seed", [(RGB32, 4), (WIDE32, 2)],
                         ids=["stride-3200", "stride-5120"])
def test_writer_final_pass_writes_its_pages_last_one_at_a_time(writer, tmp_path, g, seed):
    """The final pass's pages (pattern.final_step apart: every other page at 800x600x32, every third at a stride
    of 5120) get their last colour only after every other page has its own, in ascending order, a gap apart."""
    params = pattern.WriterParams("sparse", 12, 2, "random")
    final = {}  # page -> its last colour's bytes, in drawing order: the last entry of a page wins
    for page, colours in pattern.sparse_entries(g, seed, 1, params):
        end = min((page + 1) * 4096, g.height * g.stride)
        final[page] = g.pack(*colours[-1]).to_bytes(4, "little") * ((end - page * 4096) // 4)
    last_pass = sorted(p for p in final if p % pattern.final_step(g) == 0)
    assert len(last_pass) >= 3 and len(final) > len(last_pass)  # seed 4 has both kinds
    fb = tmp_path / "fb"
    fb.write_bytes(bytes(g.height * g.stride))
    cmd = [str(writer), "--fb", str(fb), "--geometry", geometry_arg(g), *params.writer_args(), "--final-gap-us",
           "150000"]
    done_at = watch_round(cmd, fb, seed, {page: lambda raw, page, want=want: raw[page * 4096:
                                                                                page * 4096 + len(want)] == want
                                          for page, want in final.items()})
    assert set(done_at) == set(final)
    others = max(t for p, t in done_at.items() if p not in last_pass)
    times = [done_at[p] for p in last_pass]
    assert times[0] - others >= 0.4  # the half-second pause after the workers
    assert times == sorted(times) and all(b - a >= 0.1 for a, b in zip(times, times[1:]))


def test_writer_guest_rejects_more_mappings_than_pages(writer, tmp_path):
    g = GEOMETRIES[TINY]  # 84 bytes: one page
    fb = tmp_path / "fb"
    fb.write_bytes(bytes(g.height * g.stride))
    proc = subprocess.run([str(writer), "--fb", str(fb), "--geometry", geometry_arg(g), "--mappings", "2"],
                          input=protocol.format_quit(), capture_output=True, text=True, timeout=10)
    assert proc.returncode == 1
    assert "exceeds the framebuffer's 1 pages" in protocol.parse_line(proc.stdout.strip()).message


# --- lifecycles and idleness -------------------------------------------------------------------------------------

LIFECYCLES = ["persistent", "per-round", "second-opener"]
LIFECYCLE_PATTERNS = {  # what is drawn, and the mmap writer's options of how
    "mixed": (pattern.WriterParams(), []),
    "sparse-workers": (pattern.WriterParams("sparse", 40, 3, "random"),
                       ["--mappings", "3", "--workers", "3", "--worker-kind", "process"]),
    "sparse-threads": (pattern.WriterParams("sparse", 12, 2, "ascending"),
                       ["--mappings", "2", "--workers", "2", "--worker-kind", "thread"]),
}


class Session:
    """A guest-mode writer on a plain file (file mode), driven one command at a time."""

    def __init__(self, writer: Path, fb: Path, g: Geometry, args: list[str]):
        self.proc = subprocess.Popen([str(writer), "--fb", str(fb), "--geometry", geometry_arg(g), *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = self.read()

    def read(self):
        return protocol.parse_line(self.proc.stdout.readline())

    def send(self, command: str):
        self.proc.stdin.write(command)
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> str:
        """QUIT, and what the writer said after it ("" if it had exited already)."""
        if self.proc.poll() is not None:
            return ""
        try:
            return self.proc.communicate(protocol.format_quit(), timeout=10)[0]
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture
def session(writer, tmp_path):
    sessions = []

    def start(g: Geometry, args: list[str], fill: bytes = b"\x5a") -> tuple[Session, Path]:
        fb = tmp_path / f"fb{len(sessions)}"
        fb.write_bytes(fill * (g.height * g.stride))
        sessions.append(Session(writer, fb, g, args))
        return sessions[-1], fb

    yield start
    for s in sessions:
        s.close()


@pytest.mark.parametrize("what", LIFECYCLE_PATTERNS)
@pytest.mark.parametrize("lifecycle", LIFECYCLES)
def test_writer_lifecycles_draw_the_same_bytes(session, lifecycle, what):
    """A lifecycle changes how the framebuffer is used, never what is drawn; DONE means drawn in each of them."""
    g = GEOMETRIES["333x201x16-565-padded"]
    params, how = LIFECYCLE_PATTERNS[what]
    start = b"\x5a" * (g.height * g.stride)
    for seed in [5, 2**64 - 1]:
        s, fb = session(g, ["--lifecycle", lifecycle, *params.writer_args(), *how])
        assert isinstance(s.ready, protocol.Ready), s.ready
        for r in range(5):
            assert s.send(protocol.format_go(r, seed)) == protocol.Done(r)
            assert fb.read_bytes() == pattern.render(g, seed, r + 1, start=start, params=params), f"round {r}"
        assert protocol.parse_line(s.close().strip()) == protocol.Bye()


def _holds(pid: int, fb: Path) -> tuple[bool, bool]:
    """Whether process pid has fb mapped, and whether it has it open."""
    mapped = str(fb) in Path(f"/proc/{pid}/maps").read_text()
    fds = Path(f"/proc/{pid}/fd")
    opened = any(os.readlink(fds / fd) == str(fb) for fd in os.listdir(fds))
    return mapped, opened


@pytest.mark.parametrize("lifecycle", LIFECYCLES)
def test_writer_holds_the_framebuffer_only_as_its_lifecycle_says(session, lifecycle):
    g = GEOMETRIES["333x201x16-565-padded"]
    s, fb = session(g, ["--lifecycle", lifecycle, "--mappings", "2"])
    holds = [_holds(s.proc.pid, fb)]
    for r in range(3):
        assert s.send(protocol.format_go(r, 1)) == protocol.Done(r)
        holds.append(_holds(s.proc.pid, fb))
    # Persistent writers keep their mapping (which keeps the file open, not a descriptor); per-round keeps nothing.
    assert holds == [(lifecycle != "per-round", False)] * 4


@pytest.mark.parametrize("lifecycle", LIFECYCLES)
def test_writer_lifecycle_opens_the_device_again_each_round(session, lifecycle):
    """per-round and second-opener open --fb on every GO; if that fails, it is an error, not a DONE."""
    g = GEOMETRIES["333x201x16-565-padded"]
    s, fb = session(g, ["--lifecycle", lifecycle])
    assert s.send(protocol.format_go(0, 3)) == protocol.Done(0)
    fb.unlink()  # a persistent mapping still works; opening the device again does not
    msg = s.send(protocol.format_go(1, 3))
    if lifecycle == "persistent":
        assert msg == protocol.Done(1)
        return
    assert isinstance(msg, protocol.WriterError) and msg.message.startswith(f"cannot open {fb}"), msg
    who = "the round's process" if lifecycle == "per-round" else "the second opener"
    assert s.read() == protocol.WriterError(f"{who} exited with status 1")
    assert s.proc.wait(10) == 1


def _asleep_switches(pid: int) -> int:
    """Once process pid sleeps: how often it has gone to sleep so far (a sleeper that wakes up adds one)."""
    deadline = time.monotonic() + 5
    while True:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        if fields["State"].split()[0] == "S" or time.monotonic() > deadline:
            return int(fields["voluntary_ctxt_switches"])
        time.sleep(0.01)


@pytest.mark.parametrize("lifecycle", LIFECYCLES)
def test_writer_does_nothing_between_commands(session, lifecycle):
    """No heartbeat: after READY, and after each DONE, the writer draws nothing and never wakes up until told."""
    g = GEOMETRIES[TINY]
    s, fb = session(g, ["--lifecycle", lifecycle])
    assert isinstance(s.ready, protocol.Ready)
    for r in [None, 0, 1]:
        if r is not None:
            assert s.send(protocol.format_go(r, 8)) == protocol.Done(r)
        before, switches = fb.read_bytes(), _asleep_switches(s.proc.pid)
        time.sleep(0.3)
        assert fb.read_bytes() == before, f"drawn while idle after {r}"
        assert _asleep_switches(s.proc.pid) == switches, f"woke up while idle after {r}"
    assert fb.read_bytes() == pattern.render(g, 8, 2, start=b"\x5a" * (g.height * g.stride))


@pytest.mark.parametrize("order", pattern.ORDERS)
def test_writer_guest_touches_pages_in_the_chosen_order(writer, tmp_path, order):
    """Order never shows in a round's final bytes (the sort is stable), only in time: watch the file mid-round."""
    g = RGB32
    params = pattern.WriterParams("sparse", 3, 2, order)
    rnd = dataclasses.replace(params, order="random")

    def telling(s):  # 3 distinct pages, not generated in ascending order, never drawn black
        e = pattern.sparse_entries(g, s, 1, rnd)
        pages = [page for page, _ in e]
        return len(set(pages)) == 3 and pages != sorted(pages) and all(g.pack(*c) for _, cs in e for c in cs)

    seed = next(s for s in range(100) if telling(s))
    entries = pattern.sparse_entries(g, seed, 1, params)
    fb = tmp_path / "fb"
    fb.write_bytes(bytes(g.height * g.stride))
    cmd = [str(writer), "--fb", str(fb), "--geometry", geometry_arg(g), *params.writer_args(), "--touch-gap-us",
           "60000"]
    started = list(watch_round(cmd, fb, seed, {page: lambda raw, page: any(raw[page * 4096: (page + 1) * 4096])
                                               for page, _ in entries}, timeout=5))
    assert started == [page for page, _ in entries]  # first touches, one gap apart, in the entries' order


@pytest.mark.parametrize("args, needle", [
    (["--mode", "dense"], "--mode"),
    (["--order", "descending"], "--order"),
    (["--pages", "0"], "--pages"),
    (["--touches", "0"], "--touches"),
    (["--pages", str(pattern.MAX_SPARSE_PAGES + 1)], "--pages"),
    (["--touches", "-1"], "--touches"),
    (["--touch-gap-us", "5"], "guest mode only"),
    (["--stats-dir", "/tmp"], "guest mode only"),
    (["--mappings", "2"], "guest mode only"),
    (["--mode", "sparse", "--workers", "2"], "guest mode only"),
    (["--mode", "sparse", "--worker-kind", "process"], "guest mode only"),
    (["--lifecycle", "per-round"], "guest mode only"),
    (["--lifecycle", "persistent"], "guest mode only"),
    (["--lifecycle", "forever"], "--lifecycle"),
    (["--tick-ms", "10"], "usage"),  # the heartbeat is gone
    (["--worker-kind", "fibre"], "--worker-kind"),
    (["--mappings", "65537"], "--mappings"),
    (["--mode", "sparse", "--final-gap-us", "5"], "guest mode only"),
    (["--final-gap-us", "5"], "needs --mode sparse"),
    (["--mode", "sparse", "--final-gap-us", "10000001"], "--final-gap-us"),
    (["--workers", "17"], "--workers"),
    (["--workers", "2"], "needs --mode sparse"),
])
def test_writer_rejects_bad_pattern_options(writer, tmp_path, args, needle):
    g = GEOMETRIES[TINY]
    proc = subprocess.run([str(writer), "--dump", str(tmp_path / "out"), "--geometry", geometry_arg(g),
                           "--seed", "1", "--rounds", "2", *args], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 1
    msg = protocol.parse_line(proc.stdout.strip())
    assert isinstance(msg, protocol.WriterError) and needle in msg.message
    assert not (tmp_path / "out").exists()


# --- STATS -------------------------------------------------------------------------------------------------------

def _guest_session(writer, tmp_path, extra, commands):
    g = GEOMETRIES[TINY]
    fb = tmp_path / "fb"
    fb.write_bytes(bytes(g.height * g.stride))
    proc = subprocess.run([str(writer), "--fb", str(fb), "--geometry", geometry_arg(g), *extra],
                          input="".join(commands), capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stdout
    msgs = [protocol.parse_line(x) for x in proc.stdout.splitlines()]
    assert isinstance(msgs[0], protocol.Ready) and msgs[-1] == protocol.Bye()
    return msgs[1:-1]


def test_writer_stats_from_a_directory(writer, tmp_path):
    stats = tmp_path / "stats"
    stats.mkdir()
    (stats / "faults").write_text("12\n")
    (stats / "race_hits").write_text("0")
    (stats / "notes").write_text("hello\n")  # not a number: skipped
    (stats / "empty").write_text("")
    (stats / "negative").write_text("-3\n")
    (stats / "two_numbers").write_text("1 2\n")
    (stats / "two_newlines").write_text("4\n\n")
    (stats / "too_big").write_text(str(2**64) + "\n")
    (stats / "huge").write_text("1" * 100)
    (stats / "max_u64").write_text(str(2**64 - 1) + "\n")
    (stats / "bad-name").write_text("5\n")  # not a protocol name: skipped
    (stats / "subdir").mkdir()
    os.mkfifo(stats / "fifo")  # not a regular file: skipped, and never opened for a blocking read
    (stats / "Zeta_9").write_text("007\n")
    msgs = _guest_session(writer, tmp_path, ["--stats-dir", str(stats)],
                          [protocol.format_stats(), " STATS \n", "STATS now\n", protocol.format_quit()])
    want = protocol.Stats({"Zeta_9": 7, "faults": 12, "max_u64": 2**64 - 1, "race_hits": 0})
    assert msgs[:2] == [want, want]
    assert list(msgs[0].values) == ["Zeta_9", "faults", "max_u64", "race_hits"]  # sorted by name (bytes)
    assert msgs[2] == protocol.WriterError("unknown command: STATS now")


def test_writer_stats_are_read_afresh_and_capped(writer, tmp_path):
    stats = tmp_path / "stats"
    stats.mkdir()
    for i in range(40):
        (stats / f"c{i:02d}").write_text(f"{i}\n")
    g = GEOMETRIES[TINY]
    fb = tmp_path / "fb"
    fb.write_bytes(bytes(g.height * g.stride))
    proc = subprocess.Popen([str(writer), "--fb", str(fb), "--geometry", geometry_arg(g), "--stats-dir", str(stats)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert isinstance(protocol.parse_line(proc.stdout.readline()), protocol.Ready)
        proc.stdin.write(protocol.format_stats())
        proc.stdin.flush()
        first = protocol.parse_line(proc.stdout.readline())
        (stats / "c00").write_text("1000\n")
        proc.stdin.write(protocol.format_stats())
        proc.stdin.flush()
        second = protocol.parse_line(proc.stdout.readline())
        proc.communicate(protocol.format_quit(), timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert first == protocol.Stats({f"c{i:02d}": i for i in range(32)})
    assert second.values["c00"] == 1000 and len(second.values) == 32


@pytest.mark.parametrize("extra", [[], ["--stats-dir", "/nonexistent/xfb-stats"], ["--stats-dir", "FILE"]])
def test_writer_stats_without_counters_is_empty(writer, tmp_path, extra):
    extra = [str(tmp_path / "plain") if x == "FILE" else x for x in extra]
    (tmp_path / "plain").write_text("3\n")  # a file, not a directory: cannot be read as one
    msgs = _guest_session(writer, tmp_path, extra, [protocol.format_stats(), protocol.format_quit()])
    assert msgs == [protocol.Stats({})]
