"""Headless Chromium for the HTML reports' tests: a screenshot and the DOM after load, of a local page.

Each call gets its own throwaway profile, and every host name resolves to nothing, so a page that tried to fetch
anything from the network would show it as a broken image rather than quietly succeed."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(page: Path, *args: str, fragment: str = "", timeout: float = 120) -> subprocess.CompletedProcess:
    exe = chromium()
    if not exe:
        raise FileNotFoundError("chromium is not installed (scripts/install adds it)")
    with tempfile.TemporaryDirectory(prefix="xfb-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
               "--virtual-time-budget=5000",  # let the load event and its script run before the dump/shot
               *args, Path(page).resolve().as_uri() + fragment]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def screenshot(page: Path, png: Path, size: tuple[int, int] = (1400, 2000)) -> Path:
    _run(page, f"--screenshot={Path(png).resolve()}", f"--window-size={size[0]},{size[1]}")
    if not Path(png).is_file():
        raise RuntimeError(f"chromium wrote no screenshot {png}")
    return Path(png)


def dump_dom(page: Path, fragment: str = "") -> str:
    """The page's DOM (at page#fragment), serialised after its load event, so after its inline scripts ran."""
    return _run(page, "--dump-dom", fragment=fragment).stdout


def colours(png: Path) -> dict[tuple[int, int, int], int]:
    """Pixel count per colour of a screenshot."""
    with Image.open(png) as im:
        rgb = im.convert("RGB")
        return {c: n for n, c in rgb.getcolors(rgb.width * rgb.height)}


def count(cols: dict[tuple[int, int, int], int], pred) -> int:
    return sum(n for c, n in cols.items() if pred(*c))


def reddish(r: int, g: int, b: int) -> bool:
    return r > 180 and g < 90 and b < 90


def greenish(r: int, g: int, b: int) -> bool:
    return g > 140 and g > r + 50 and g > b + 50


def outline_red(r: int, g: int, b: int) -> bool:
    """The outlines' red (#ff1a1a), brighter than the page's other reds (badges, figures: #d03030)."""
    return r >= 235 and g <= 60 and b <= 60


def magenta(r: int, g: int, b: int) -> bool:
    """A diff image's missed pixels (xenfb_harness.images.MAGENTA)."""
    return r >= 235 and g <= 40 and b >= 235


def images_loaded(dom: str) -> tuple[int, int]:
    """(loaded, all) images, as the page's own load script counted them (naturalWidth > 0)."""
    m = re.search(r'<body[^>]*\bdata-images-loaded="(\d+)/(\d+)"', dom)
    assert m, "the page's load script did not run: " + dom[:500]
    return int(m.group(1)), int(m.group(2))


def check_run_page(page: Path, screenshot_png: Path) -> dict:
    """Render a FAIL run's page: every image loads, the diff image and the outlines of its missed regions show in
    the screenshot, and a zoom link opens the zoom. Returns what was measured, for the test's message."""
    dom = dump_dom(page)
    loaded, total = images_loaded(dom)
    assert total > 0 and loaded == total, f"{loaded} of {total} images loaded"
    diff = re.search(r'<section class="round" id="round-(\d+)".*?<img src="([^"]*-diff\.png)"', dom, re.S)
    assert diff, "no diff image on the page"
    zoomed = dump_dom(page, f"#zoom-{diff.group(1)}-0")
    panel = re.search(rf'id="round-{diff.group(1)}".*?<div class="zoom"( hidden="")?>(.*?)</section>', zoomed, re.S)
    assert panel and not panel.group(1) and "background-image" in panel.group(2), "the zoom did not open"
    screenshot(page, screenshot_png)
    cols = colours(screenshot_png)
    seen = {"colours": len(cols), "outline": count(cols, outline_red), "magenta": count(cols, magenta),
            "images": f"{loaded}/{total}"}
    assert seen["colours"] > 20 and seen["outline"] > 200 and seen["magenta"] > 50, seen
    return seen


def check_matrix_page(page: Path, screenshot_png: Path) -> dict:
    """Render a matrix page with a green and a red cell: the grid is in the DOM and both colours are on screen."""
    dom = dump_dom(page)
    assert '<table class="grid">' in dom
    cells = re.findall(r'<td class="cell (ok|bad|notrun)"', dom)
    assert "ok" in cells and "bad" in cells, cells
    screenshot(page, screenshot_png)
    cols = colours(screenshot_png)
    seen = {"cells": cells, "green": count(cols, greenish), "red": count(cols, reddish)}
    assert seen["green"] > 1000 and seen["red"] > 1000, seen
    return seen
