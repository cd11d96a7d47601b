"""The HTML reports, read back with html.parser: a run page (facts, rounds, images with their missed regions
outlined) and a matrix page (the verdict grid), self-contained and safe against whatever result.json holds."""
from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from xenfb_harness import report_html
from xenfb_harness.result import FAIL, PASS, Result, RoundResult, write

W, H = 64, 48
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict, parent: Node | None):
        self.tag, self.attrs, self.parent, self.children, self.parts = tag, attrs, parent, [], []

    def text(self) -> str:
        return "".join(p if isinstance(p, str) else p.text() for p in self.parts)

    def iter(self):
        yield self
        for c in self.children:
            yield from c.iter()

    def find_all(self, tag: str, **attrs) -> list[Node]:
        return [n for n in self.iter() if n.tag == tag and all(attr_has(n, k, v) for k, v in attrs.items())]

    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())


def attr_has(node: Node, key: str, value: str) -> bool:
    key = key.rstrip("_").replace("_", "-")
    return value in node.classes() if key == "class" else node.attrs.get(key) == value


class Tree(HTMLParser):
    """A small DOM: enough to find elements and read their text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.root = self.cur = Node("#root", {}, None)
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        self.cur.parts.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_endtag(self, tag):
        n = self.cur
        while n.parent is not None and n.tag != tag:
            n = n.parent
        if n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.parts.append(data)


def parse(path: Path) -> Node:
    return Tree(path.read_text(encoding="utf-8")).root


def assert_self_contained(page: Path) -> None:
    """Nothing that a browser would fetch from the network; every local reference stays relative."""
    text = page.read_text(encoding="utf-8")
    root = parse(page)
    assert not root.find_all("link"), "no <link>: styles are inline"
    for script in root.find_all("script"):
        assert "src" not in script.attrs
    for node in root.iter():
        for key in ("src", "href", "action", "data", "poster", "srcset"):
            value = (node.attrs.get(key) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//", "javascript:", "data:", "file:", "/")), \
                (node.tag, key, value)
    low = text.lower()
    assert "@import" not in low and "url(http" not in low and "url(//" not in low
    assert 'src="http' not in low and 'href="http' not in low


def png(path: Path, colour=(0, 0, 0), band: tuple[int, int, int, int] | None = None,
        band_colour=(255, 0, 255)) -> None:
    im = Image.new("RGB", (W, H), colour)
    if band:
        x, y, w, h = band
        im.paste(band_colour, (x, y, x + w, y + h))
    im.save(path)


BAND = {"x": 0, "y": 10, "w": W, "h": 2}  # the legacy race's typical miss: a 2-pixel-high band, full width
SMALL = {"x": 40, "y": 30, "w": 8, "h": 4}


def fail_run(run_dir: Path, reason: str | None = None) -> Result:
    """A FAIL run written as the harness writes it: result.json and the PNGs of the round that differed."""
    run_dir.mkdir(parents=True)
    res = Result(config="configs/legacy-race.yaml", frontend="legacy", seed=1, rounds_planned=2)
    res.host, res.versions = "nested: QEMU (TCG), Xen 4.17", {"xen": "4.17.7", "guest_kernel": "6.1.0-56-amd64"}
    res.geometry = {"width": W, "height": H, "bpp": 32, "stride": W * 4}
    res.timings = {"start guest": 6.778, "rounds": 63.735, "total": 74.565}
    res.counters = {"race_hits": 8, "faults": 8}
    for r in range(3):
        rr = RoundResult(round=r, compared_pixels=W * H, missed_pixels=0, settle="match", settle_s=0.004,
                         duration_s=0.4 + r, at_s=1.0 * r, counters={"race_hits": 0, "faults": 0})
        if r == 1:
            rr.missed_pixels, rr.rects, rr.pages = W * 2 + 32, [BAND, SMALL], [2, 7]
            rr.settle, rr.settle_s, rr.counters = "quiet", 3.506, {"race_hits": 8, "faults": 8}
            rr.images = {k: f"round-001-{k}.png" for k in ("expected", "seen-vnc", "diff")}
            png(run_dir / "round-001-expected.png", (10, 20, 30), (0, 10, W, 2), (200, 180, 40))
            png(run_dir / "round-001-seen-vnc.png", (10, 20, 30))
            png(run_dir / "round-001-diff.png", (3, 7, 10), (0, 10, W, 2))
        res.rounds.append(rr)
    png(run_dir / "final-seen-vnc.png")
    res.decide()
    if reason is not None:
        res.reason = reason
    write(res, run_dir)
    (run_dir / "guest-console.log").write_text("XFB READY\n")
    (run_dir / "host").mkdir()
    (run_dir / "host" / "serial.log").write_text("Xen\n")
    (run_dir / "host" / "qemu.pid").write_text("1\n")
    return res


# --- run page ------------------------------------------------------------------------------------------------


def test_run_page_shows_the_facts_and_rounds(tmp_path):
    res = fail_run(tmp_path / "run")
    page = report_html.write_run_page(tmp_path / "run")
    assert page == tmp_path / "run" / "report.html" and page.is_file()
    root = parse(page)
    text = root.text()
    assert res.verdict == FAIL
    assert root.find_all("span", class_="v-FAIL")[0].text() == "FAIL"
    for fact in (res.reason, "legacy", "configs/legacy-race.yaml", "nested: QEMU (TCG), Xen 4.17", "4.17.7",
                 "6.1.0-56-amd64", "64x48x32"):
        assert fact in text, fact
    for key, shown in (("start guest", "6.78 s"), ("rounds", "63.73 s"), ("total", "74.56 s")):
        assert key in text and shown in text
    table = root.find_all("table", class_="rounds")[0]
    rows = table.find_all("tr")[1:]
    assert len(rows) == 3
    missed = [tr for tr in rows if "missed" in tr.classes()]
    assert len(missed) == 1
    cells = [td.text().strip() for td in missed[0].find_all("td")]
    assert cells[:3] == ["1", str(W * 2 + 32), str(W * H)]
    assert "quiet 3.51 s" in cells and "2, 7" in cells and "8" in cells  # settle, pages, race hits
    assert "64x2+0+10" in " ".join(cells)
    # the round's number links to its images
    assert missed[0].find_all("a")[0].attrs["href"] == "#round-1"


def test_run_page_images_are_referenced_beside_it_and_exist(tmp_path):
    fail_run(tmp_path / "run")
    page = report_html.write_run_page(tmp_path / "run")
    root = parse(page)
    section = root.find_all("section", id="round-1")[0]
    srcs = [img.attrs["src"] for img in section.find_all("img")]
    assert srcs == ["round-001-expected.png", "round-001-seen-vnc.png", "round-001-diff.png"]
    for src in srcs + [img.attrs["src"] for img in root.find_all("img")]:
        assert (page.parent / src).is_file()
    assert "base64" not in page.read_text()
    # only the round that differed has images
    assert [s.attrs["id"] for s in root.find_all("section")] == ["round-1"]


def test_missed_regions_are_outlined_where_they_are_on_every_image(tmp_path):
    fail_run(tmp_path / "run")
    root = parse(report_html.write_run_page(tmp_path / "run"))
    section = root.find_all("section", id="round-1")[0]
    assert (section.attrs["data-w"], section.attrs["data-h"]) == (str(W), str(H))
    frames = section.find_all("div", class_="frame")
    assert len(frames) == 3
    for frame in frames:
        outlines = frame.find_all("a", class_="miss")
        assert len(outlines) == 2
        for outline, rect in zip(outlines, (BAND, SMALL)):
            style = dict(kv.split(":") for kv in outline.attrs["style"].rstrip(";").split(";"))
            assert float(style["left"].rstrip("%")) == pytest.approx(100 * rect["x"] / W, abs=1e-3)
            assert float(style["top"].rstrip("%")) == pytest.approx(100 * rect["y"] / H, abs=1e-3)
            assert float(style["width"].rstrip("%")) == pytest.approx(100 * rect["w"] / W, abs=1e-3)
            assert float(style["height"].rstrip("%")) == pytest.approx(100 * rect["h"] / H, abs=1e-3)
            assert [outline.attrs[f"data-{k}"] for k in "xywh"] == [str(rect[k]) for k in "xywh"]
    # A 2-pixel band is drawn with rings outside its box, in screen pixels: visible at any scale.
    css = report_html.CSS
    assert ".frame a.miss{" in css and "box-shadow:0 0 0 1px #000,0 0 0 3px #ff1a1a" in css


def test_each_missed_region_zooms(tmp_path):
    fail_run(tmp_path / "run")
    page = report_html.write_run_page(tmp_path / "run")
    root = parse(page)
    section = root.find_all("section", id="round-1")[0]
    buttons = section.find_all("div", class_="rects")[0].find_all("a")
    assert [b.attrs["href"] for b in buttons] == ["#zoom-1-0", "#zoom-1-1"]
    assert [b.text() for b in buttons] == ["64x2+0+10", "8x4+40+30"]
    zoom = section.find_all("div", class_="zoom")[0]
    assert "hidden" in zoom.attrs
    assert [z.attrs["data-src"] for z in zoom.find_all("div", class_="zbox")] == \
        ["round-001-expected.png", "round-001-seen-vnc.png", "round-001-diff.png"]
    assert "image-rendering:pixelated" in report_html.CSS
    assert "hashchange" in page.read_text()


def test_run_page_links_logs_that_exist(tmp_path):
    fail_run(tmp_path / "run")
    root = parse(report_html.write_run_page(tmp_path / "run"))
    hrefs = {a.attrs["href"] for a in root.find_all("a")}
    assert {"guest-console.log", "host/serial.log", "result.json"} <= hrefs
    assert "host/qemu.pid" not in hrefs
    for href in hrefs:
        if not href.startswith("#"):
            assert (tmp_path / "run" / href).exists(), href


def test_pictures_a_round_kept_beyond_its_images_are_linked(tmp_path):
    fail_run(tmp_path / "run")
    png(tmp_path / "run" / "round-001-diff-screendump.png")
    root = parse(report_html.write_run_page(tmp_path / "run"))
    row = [tr for tr in root.find_all("table", class_="rounds")[0].find_all("tr") if "missed" in tr.classes()][0]
    assert [a.attrs["href"] for a in row.find_all("a")] == ["#round-1", "round-001-diff-screendump.png"]


def test_run_page_links_a_matrix_hosts_logs(tmp_path):
    fail_run(tmp_path / "out" / "cells" / "c1")
    (tmp_path / "out" / "hosts" / "1").mkdir(parents=True)
    (tmp_path / "out" / "hosts" / "1" / "build.log").write_text("built\n")
    root = parse(report_html.write_run_page(tmp_path / "out" / "cells" / "c1"))
    assert "../../hosts/1/build.log" in {a.attrs["href"] for a in root.find_all("a")}


HOSTILE = ('</pre><script>alert(1)</script><img src="http://evil.example/x.png" onerror="alert(2)">'
           '<a href="https://evil.example/">x</a> & "quotes" \'too\'')


def test_a_hostile_result_is_escaped_and_fetches_nothing(tmp_path):
    fail_run(tmp_path / "run", reason=HOSTILE)
    data = json.loads((tmp_path / "run" / "result.json").read_text())
    data["versions"][HOSTILE] = HOSTILE
    data["host"] = HOSTILE
    data["rounds"][1]["images"]["remote"] = "http://evil.example/y.png"
    data["rounds"][1]["images"]["escape"] = "../../etc/passwd"
    data["rounds"][1]["rects"].append({"x": "1\" onclick=\"alert(3)", "y": 0, "w": 1, "h": 1})
    (tmp_path / "run" / "result.json").write_text(json.dumps(data))
    page = report_html.write_run_page(tmp_path / "run")
    root = parse(page)
    assert len(root.find_all("script")) == 1  # our own inline one
    assert not any("onerror" in n.attrs or "onclick" in n.attrs for n in root.iter())
    assert HOSTILE in root.find_all("pre", class_="reason")[0].text()  # shown as text, whole
    assert root.text().count(HOSTILE) >= 3
    assert "evil.example" not in {img.attrs.get("src") for img in root.find_all("img")}
    assert "missing: http://evil.example/y.png" in root.text() and "missing: ../../etc/passwd" in root.text()
    assert_self_contained(page)


def test_run_page_of_a_pass_without_images(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    res = Result(config="configs/default.yaml", frontend="upstream", seed=3, rounds_planned=1)
    res.rounds = [RoundResult(round=r, compared_pixels=100, missed_pixels=0, settle="match") for r in range(2)]
    res.decide()
    write(res, run)
    root = parse(report_html.write_run_page(run))
    assert res.verdict == PASS and root.find_all("span", class_="v-PASS")
    assert not root.find_all("section") and not root.find_all("img")
    assert "no log files found" in root.text()


def test_run_page_is_self_contained(tmp_path):
    fail_run(tmp_path / "run")
    assert_self_contained(report_html.write_run_page(tmp_path / "run"))


# --- matrix page ---------------------------------------------------------------------------------------------


def cell(values: dict, expected: str, verdict: str, reason: str = "", run_dir: str | None = None, **extra) -> dict:
    cid = ",".join(f"{k}={v}" for k, v in values.items())
    slug = "__".join(f"{k}-{v}" for k, v in values.items())
    return {"id": cid, "slug": slug, "values": values, "expected": expected, "verdict": verdict,
            "ok": verdict == expected, "reason": reason or f"{verdict} because\nsecond line",
            "timings": {"total": 61.25}, "run_dir": run_dir if run_dir is not None else f"cells/{slug}", **extra}


def matrix(out: Path, axes: dict, cells: list[dict], shard: str | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    totals = {"cells": len(cells), "green": sum(c["ok"] for c in cells), "red": sum(not c["ok"] for c in cells),
              **{v: sum(c["verdict"] == v for c in cells) for v in ("PASS", "FAIL", "ERROR")}}
    summary = {"schema_version": 1, "kind": "xenfb-harness matrix", "matrix": "configs/matrix.yaml",
               "name": "matrix", "axes": axes, "shard": shard, "started": "2026-11-26T05:00:00+0000",
               "cells": cells, "totals": totals, "timings": {"total": 170.3}}
    (out / "summary.json").write_text(json.dumps(summary))
    return report_html.write_matrix_page(out)


def grid(root: Node) -> list[list[Node]]:
    """The grid's body rows, each its row headers and cells."""
    table = root.find_all("table", class_="grid")[0]
    return [[n for n in tr.children if n.tag in ("th", "td")] for tr in table.find_all("tr")
            if tr.find_all("td")]


AXES = {"frontend": ["upstream", "legacy", "legacy-fixed"], "writer.kind": ["mmap", "xorg"]}


def test_matrix_grid_two_axes(tmp_path):
    out = tmp_path / "m"
    cells = [cell({"frontend": "upstream", "writer.kind": "mmap"}, PASS, PASS),
             cell({"frontend": "legacy", "writer.kind": "mmap"}, FAIL, FAIL),
             cell({"frontend": "legacy", "writer.kind": "xorg"}, FAIL, PASS),  # the red one
             cell({"frontend": "legacy-fixed", "writer.kind": "xorg"}, PASS, "ERROR")]
    for c in cells[:3]:
        fail_run(out / c["run_dir"])
    root = parse(matrix(out, AXES, cells, shard="1/2"))
    rows = grid(root)
    assert [[n.text().strip() for n in row if n.tag == "th"] for row in rows] == [["upstream"], ["legacy"],
                                                                                   ["legacy-fixed"]]
    header = root.find_all("table", class_="grid")[0].find_all("tr")
    assert "writer.kind" in header[0].text() and [th.text() for th in header[1].find_all("th")] == ["mmap", "xorg"]
    state = [[(sorted(td.classes() - {"cell"})[0], td.attrs.get("data-verdict"), td.attrs.get("data-expected"))
              for td in row if td.tag == "td"] for row in rows]
    assert state == [[("ok", "PASS", "PASS"), ("notrun", None, None)],
                     [("ok", "FAIL", "FAIL"), ("bad", "PASS", "FAIL")],
                     [("notrun", None, None), ("bad", "ERROR", "PASS")]]
    red = rows[1][2]
    assert "PASS" in red.text() and "expected FAIL" in red.text()
    assert red.attrs["title"] == "PASS because"  # the reason's first line
    # every run cell links to its run page, relative, and the page exists (written if it was missing)
    link = red.find_all("a")[0].attrs["href"]
    assert link == "cells/frontend-legacy__writer.kind-xorg/report.html" and (out / link).is_file()
    assert not rows[2][2].find_all("a")  # its run directory does not exist
    text = root.text()
    assert "2 of 4 cells not as expected" in text and "4: 2 green, 2 red, 2 not run here" in text
    assert "PASS 2, FAIL 1, ERROR 1" in text and "1/2" in text and "170.30 s" in text
    # the table below: reason's first line, time, link
    table = root.find_all("table", class_="cells")[0].find_all("tr")[1:]
    assert len(table) == 4
    tds = [td.text().strip() for td in table[2].find_all("td")]
    assert tds[:2] == ["frontend=legacy,writer.kind=xorg", "FAIL"] and "PASS because" in tds
    assert "second line" not in root.text() and "61.25 s" in tds and "NOT as expected" in tds
    assert_self_contained(out / "report.html")


def test_matrix_grid_one_axis_is_one_column(tmp_path):
    cells = [cell({"frontend": "upstream"}, PASS, PASS), cell({"frontend": "legacy"}, FAIL, FAIL)]
    root = parse(matrix(tmp_path / "m", {"frontend": ["upstream", "legacy", "legacy-fixed"]}, cells))
    rows = grid(root)
    assert [[n.tag for n in row] for row in rows] == [["th", "td"]] * 3
    assert [sorted(row[1].classes()) for row in rows] == [["cell", "ok"], ["cell", "ok"], ["cell", "notrun"]]
    assert "all 2 cells as expected" in root.text()


def test_matrix_grid_three_axes(tmp_path):
    axes = {"frontend": ["upstream", "legacy"], "writer.kind": ["mmap", "xorg"], "seed": ["1", "2", "3"]}
    cells = [cell({"frontend": "legacy", "writer.kind": "xorg", "seed": "2"}, FAIL, PASS)]
    root = parse(matrix(tmp_path / "m", axes, cells))
    rows = grid(root)
    assert [[n.text() for n in row if n.tag == "th"] for row in rows] == [
        ["upstream", "mmap"], ["upstream", "xorg"], ["legacy", "mmap"], ["legacy", "xorg"]]
    assert all(len([n for n in row if n.tag == "td"]) == 3 for row in rows)
    assert rows[3][3].attrs["data-cell"] == "frontend=legacy,writer.kind=xorg,seed=2"
    assert "bad" in rows[3][3].classes()
    assert sum("notrun" in td.classes() for row in rows for td in row if td.tag == "td") == 11
    assert rows[0][2].attrs["data-cell"] == "frontend=upstream,writer.kind=mmap,seed=1"


def test_matrix_escapes_and_quotes_what_it_is_given(tmp_path):
    c = cell({"frontend": HOSTILE}, PASS, FAIL, reason=HOSTILE, run_dir="http://evil.example/run")
    page = matrix(tmp_path / "m", {"frontend": [HOSTILE]}, [c])
    root = parse(page)
    assert len(root.find_all("script")) == 1 and not any("onerror" in n.attrs for n in root.iter())
    assert HOSTILE.splitlines()[0] in root.text()
    assert_self_contained(page)
