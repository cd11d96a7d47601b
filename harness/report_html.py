"""Self-contained HTML reports: one page per run (report.html beside its result.json) and one per matrix (a
verdict grid over summary.json).

Both must read offline and from a CI artifact store, so a page fetches nothing from the network: inline CSS, a
little inline JS, images referenced by relative path (they sit beside the page; a run may have many rounds, so
they are not embedded). Every string from the JSON is escaped, and every link is a percent-quoted relative path,
so not even a hostile result.json can add a tag, a scheme or a remote fetch.
"""
from __future__ import annotations

import html
import itertools
import json
import os
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from .matrix import cell_id

# Shared look. Colours carry the verdicts: green as expected / PASS, red not / FAIL, orange ERROR, grey not run.
CSS = """
body{font:14px/1.4 "DejaVu Sans",sans-serif;margin:16px 24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 8px} h2{font-size:17px;margin:22px 0 8px;border-bottom:1px solid #ccc}
h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;margin:4px 0} th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;
vertical-align:top} th{background:#f0f0f0} td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;padding:6px 8px;margin:4px 0}
.verdict{display:inline-block;padding:1px 9px;border-radius:3px;color:#fff;font-weight:bold}
.v-PASS{background:#2e8b3e} .v-FAIL{background:#d03030} .v-ERROR{background:#e08000} .v-none{background:#999}
.facts th{width:11em}
.shots{display:flex;gap:10px;flex-wrap:wrap} .shots figure{margin:0;flex:1 1 30%;min-width:260px}
figcaption{font-weight:bold;margin-bottom:2px}
.frame{position:relative;line-height:0;border:1px solid #888}
.frame img{width:100%;height:auto;display:block}
/* Each missed region is outlined outside its own box (black, red, black rings, in screen pixels), so a 2-pixel-high
   band stays visible however far the image is shrunk and its pixels are not covered. */
.frame a.miss{position:absolute;display:block;box-shadow:0 0 0 1px #000,0 0 0 3px #ff1a1a,0 0 0 4px #000;
cursor:zoom-in}
.frame a.miss.sel{box-shadow:0 0 0 1px #000,0 0 0 3px #ffe000,0 0 0 4px #000}
.rects a{font:12px monospace;margin:2px;padding:1px 4px;border:1px solid #888;border-radius:3px;color:#000;
text-decoration:none;display:inline-block;cursor:zoom-in} .rects a.sel{background:#ffe000}
.zoom{display:flex;gap:10px;flex-wrap:wrap;margin-top:6px} .zoom[hidden]{display:none}
.zoom figure{margin:0} .zcap{flex-basis:100%;margin:0;font-weight:bold}
.zbox{position:relative;width:400px;height:200px;border:1px solid #888;background-color:#000;
background-repeat:no-repeat;image-rendering:pixelated;overflow:hidden}
.zmark{position:absolute;border:2px solid #ff1a1a;box-shadow:0 0 0 1px #000;margin:-2px}
.grid td.cell{text-align:center;min-width:9em;padding:6px} .grid th{vertical-align:middle}
.grid td.cell a{color:inherit;text-decoration:none;display:block}
.cell.ok{background:#5cb85c;color:#fff} .cell.bad{background:#e05050;color:#fff}
.cell.notrun{background:#e4e4e4;color:#888}
.cell .v{font-weight:bold;font-size:15px;display:block} .cell .x{font-size:12px}
.banner{padding:6px 10px;color:#fff;font-weight:bold;display:inline-block;border-radius:3px}
.banner{background:#888} .banner.ok{background:#2e8b3e} .banner.bad{background:#d03030}
.muted{color:#777}
"""

# Sets <body data-images-loaded="N/M"> after load: a headless browser's DOM dump shows whether images rendered.
LOADED_JS = """
window.addEventListener('load', function () {
  var im = document.images, n = 0;
  for (var i = 0; i < im.length; i++) if (im[i].complete && im[i].naturalWidth > 0) n++;
  document.body.setAttribute('data-images-loaded', n + '/' + im.length);
});
"""

# A missed region (its outline or its button) links to #zoom-ROUND-I; that shows the region enlarged, pixel for
# pixel, in each of the round's images: CSS background size and position on a fixed box, no canvas. Being a URL,
# a zoom can be shared, and a headless browser can be pointed at one.
ZOOM_JS = """
function zoomTo(hash) {
  var m = /^#zoom-(\\d+)-(\\d+)$/.exec(hash), sec = m && document.getElementById('round-' + m[1]);
  var t = sec && sec.querySelector('[data-i="' + m[2] + '"]');
  if (!t) return;
  var z = sec.querySelector('.zoom'), x = +t.dataset.x, y = +t.dataset.y, w = +t.dataset.w, h = +t.dataset.h;
  var W = +sec.dataset.w, H = +sec.dataset.h, VW = 400, VH = 200;
  // as large as the region's height allows (a wide band may overflow sideways: the view centres on it)
  var s = Math.max(2, Math.min(16, Math.floor(Math.min(VH / (h + 8), Math.max(VW / (w + 8), 8)))));
  var x0 = Math.floor(Math.max(0, Math.min(W - VW / s, x + w / 2 - VW / s / 2)));
  var y0 = Math.floor(Math.max(0, Math.min(H - VH / s, y + h / 2 - VH / s / 2)));
  z.querySelectorAll('.zbox').forEach(function (b) {
    b.style.backgroundImage = 'url("' + b.dataset.src + '")';
    b.style.backgroundSize = (W * s) + 'px ' + (H * s) + 'px';
    b.style.backgroundPosition = (-x0 * s) + 'px ' + (-y0 * s) + 'px';
    var k = b.firstElementChild;
    k.style.left = ((x - x0) * s) + 'px'; k.style.top = ((y - y0) * s) + 'px';
    k.style.width = (w * s) + 'px'; k.style.height = (h * s) + 'px';
  });
  z.querySelector('.zcap').textContent = 'round ' + m[1] + ': ' + w + 'x' + h + '+' + x + '+' + y + ', ' + s
    + ' times, from (' + x0 + ',' + y0 + ')';
  document.querySelectorAll('.sel').forEach(function (e) { e.classList.remove('sel'); });
  sec.querySelectorAll('[data-i="' + m[2] + '"]').forEach(function (e) { e.classList.add('sel'); });
  z.hidden = false;
  z.scrollIntoView({block: 'nearest'});
}
window.addEventListener('hashchange', function () { zoomTo(location.hash); });
window.addEventListener('load', function () { zoomTo(location.hash); });
"""

IMAGE_ORDER = ("expected", "seen-vnc", "diff")  # left to right; any other image of a round follows


def e(value) -> str:
    """Escaped text for HTML content and attributes."""
    return html.escape(str(value), quote=True)


def _url(target: Path, base: Path) -> str:
    """A relative, percent-quoted URL from base's directory to target, ready for an attribute: never a scheme."""
    return e(quote(Path(os.path.relpath(target, base)).as_posix()))


def _first_line(s) -> str:
    return str(s or "").strip().splitlines()[0] if str(s or "").strip() else ""


def _secs(v) -> str:
    """Seconds as text (not yet escaped); anything else as it is."""
    return f"{v:.2f} s" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _dict(v) -> dict:
    return v if isinstance(v, dict) else {}


def _list(v) -> list:
    return v if isinstance(v, list) else []


def _page(title: str, body: str, script: str = "") -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{e(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n"
            f"<script>{LOADED_JS}{script}</script>\n</body></html>\n")


def _verdict(v) -> str:
    cls = f"v-{v}" if v in ("PASS", "FAIL", "ERROR") else "v-none"
    return f'<span class="verdict {cls}">{e(v or "not run")}</span>'


def _kv_table(d: dict, cls: str = "") -> str:
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in d.items())
    return f'<table class="{cls}">{rows}</table>' if rows else '<p class="muted">none</p>'


def _image_size(path: Path) -> tuple[int, int] | None:
    """Width and height from an image's header (Pillow reads no more); None if it is not a readable image or
    has no area."""
    try:
        with Image.open(path) as im:
            return im.size if all(im.size) else None
    except OSError:
        return None


def _inside(run_dir: Path, name) -> Path | None:
    """A file named by result.json, only if it is a plain relative path inside the run directory."""
    if not isinstance(name, str) or not name or "\\" in name:
        return None
    inside = not Path(name).is_absolute() and (run_dir / name).resolve().is_relative_to(run_dir.resolve())
    return run_dir / name if inside else None


def _rect(r) -> tuple[int, int, int, int] | None:
    try:
        x, y, w, h = (int(r[k]) for k in ("x", "y", "w", "h"))
    except (KeyError, TypeError, ValueError):
        return None
    return (x, y, w, h) if w > 0 and h > 0 else None


def _log_files(run_dir: Path) -> list[Path]:
    """Console and host logs: the run's own, its host's (host/ beside it or one level up for a run of several
    configs) and a matrix's hosts/<n>/ two levels up; whatever exists."""
    places = [run_dir, run_dir / "host", run_dir / "dom0-logs", run_dir.parent / "host"]
    for top in (run_dir.parent, run_dir.parent.parent):
        if (top / "hosts").is_dir():
            places += sorted(p for p in (top / "hosts").iterdir() if p.is_dir())
    seen, files = set(), []
    for place in places:
        if place.is_dir():
            for f in sorted(place.iterdir()):
                if f.suffix in (".log", ".txt") and f.is_file() and f.resolve() not in seen:
                    seen.add(f.resolve())
                    files.append(f)
    return files


# --- run page ------------------------------------------------------------------------------------------------


def write_run_page(run_dir: Path) -> Path:
    """run_dir/result.json -> run_dir/report.html; returns the page's path."""
    run_dir = Path(run_dir)
    res = json.loads((run_dir / "result.json").read_text())
    out = run_dir / "report.html"
    out.write_text(render_run(res, run_dir), encoding="utf-8")
    return out


def render_run(res: dict, run_dir: Path) -> str:
    page = run_dir / "report.html"
    rounds = [r for r in _list(res.get("rounds")) if isinstance(r, dict)]
    geo = _dict(res.get("geometry"))
    parts = [f'<h1>{_verdict(res.get("verdict"))} {e(res.get("config", ""))}</h1>',
             f'<pre class="reason">{e(res.get("reason", ""))}</pre>']
    if res.get("error") and res.get("error") != res.get("reason"):
        parts.append(f'<h3>error</h3><pre class="error">{e(res["error"])}</pre>')

    guest = _dict(res.get("guest"))
    facts = {"config": res.get("config", ""), "frontend": res.get("frontend", ""), "seed": res.get("seed", ""),
             "host": res.get("host", ""), "started": res.get("started", ""),
             "rounds": f'{len(rounds)} judged ({res.get("rounds_planned", "?")} planned + the baseline round 0)',
             "framebuffer": (f'{geo.get("width")}x{geo.get("height")}x{geo.get("bpp")}, stride {geo.get("stride")}'
                             if geo else ""),
             "guest": ", ".join(f"{k} {v}" for k, v in guest.items()), "exit code": res.get("exit_code", "")}
    if res.get("checks"):
        facts["mapping checks"] = ", ".join(str(_dict(c).get("name", c)) for c in _list(res["checks"]))
    if res.get("unloaded"):
        facts["unloaded"] = res["unloaded"]
    parts.append(_kv_table({k: v for k, v in facts.items() if v != ""}, "facts"))

    logs = _log_files(run_dir)
    parts.append("<h2>Logs</h2>" + (" · ".join(f'<a href="{_url(f, run_dir)}">{e(os.path.relpath(f, run_dir))}</a>'
                                               for f in logs) or '<p class="muted">no log files found</p>'))
    timings = _dict(res.get("timings"))
    parts.append("<h2>Timings</h2>" + _kv_table({k: _secs(v) for k, v in timings.items()}))
    parts.append("<h2>Rounds</h2>" + _rounds_table(rounds, run_dir))
    for r in rounds:
        if _dict(r.get("images")):
            parts.append(_round_images(r, run_dir, geo))
    final = run_dir / "final-seen-vnc.png"
    if final.is_file():
        src = _url(final, run_dir)
        parts.append(f'<h2>Final view (VNC)</h2><a href="{src}"><img src="{src}" alt="final view" '
                     f'style="max-width:420px;border:1px solid #888"></a>')
    parts.append("<h2>Frontend counters at the end</h2>" + _kv_table(_dict(res.get("counters"))))
    parts.append("<h2>Versions</h2>" + _kv_table(_dict(res.get("versions"))))
    for side, packages in _dict(res.get("packages")).items():  # everything the run was built from
        if _dict(packages):
            parts.append(f"<details><summary>Debian packages of the {e(side)} ({len(packages)})</summary>"
                         f"{_kv_table(_dict(packages))}</details>")
    for key in ("xorg", "effective_config"):
        if res.get(key):
            parts.append(f"<details><summary>{e(key)}</summary><pre>{e(json.dumps(res[key], indent=2))}</pre>"
                         f"</details>")
    parts.append(f'<p class="muted">{e(page.name)} for {e(run_dir.name)}; data: '
                 f'<a href="{_url(run_dir / "result.json", run_dir)}">result.json</a></p>')
    title = f'{res.get("verdict", "")} {Path(str(res.get("config", ""))).stem} seed {res.get("seed", "")}'
    return _page(title, "\n".join(parts), ZOOM_JS)


def _rounds_table(rounds: list[dict], run_dir: Path) -> str:
    if not rounds:
        return '<p class="muted">no rounds were judged</p>'
    keys = sorted({k for r in rounds for k in _dict(r.get("counters"))})
    head = ("<tr><th>round</th><th>missed pixels</th><th>compared</th><th>settle</th><th>duration</th>"
            "<th>at</th><th>regions</th><th>pages</th>" + "".join(f"<th>{e(k)}</th>" for k in keys) +
            "<th>notes</th></tr>")
    rows = []
    for r in rounds:
        n = r.get("round", "")
        missed = r.get("missed_pixels", 0)
        label = f'<a href="#round-{e(n)}">{e(n)}</a>' if _dict(r.get("images")) else e(n)
        rects = [x for x in map(_rect, _list(r.get("rects"))) if x]
        shown = ", ".join(f"{w}x{h}+{x}+{y}" for x, y, w, h in rects[:3]) + (" …" if len(rects) > 3 else "")
        pages = _list(r.get("pages"))
        page_txt = ", ".join(map(str, pages[:12])) + (f" … (+{len(pages) - 12})" if len(pages) > 12 else "")
        counters = _dict(r.get("counters"))
        notes = []
        if r.get("guest_memory_ok") is False:
            notes.append(f'guest memory differs from expected in {r.get("guest_memory_missed")} pixels')
        if r.get("guest_quiet") is False:
            notes.append(f'guest not quiet: {r.get("guest_changed_pixels")} pixels changed while frozen')
        if r.get("drawn_pixels") is not None:
            notes.append(f'workload drew {r.get("drawn_pixels")} pixels')
        # Pictures the round kept that its images do not name (a guest-side problem's screendump diff, ...)
        named = set(_dict(r.get("images")).values())
        extra = sorted(run_dir.glob(f"round-{n:03d}-*.png")) if isinstance(n, int) else []
        links = " ".join(f'<a href="{_url(f, run_dir)}">{e(f.name)}</a>' for f in extra if f.name not in named)
        cls = ' class="missed"' if missed else ""
        rows.append(f"<tr{cls}><td class=n>{label}</td>"
                    f'<td class=n style="{"color:#d03030;font-weight:bold" if missed else ""}">{e(missed)}</td>'
                    f'<td class=n>{e(r.get("compared_pixels", ""))}</td>'
                    f'<td>{e(r.get("settle", ""))} {e(_secs(r.get("settle_s", "")))}</td>'
                    f'<td class=n>{e(_secs(r.get("duration_s", "")))}</td>'
                    f'<td class=n>{e(_secs(r.get("at_s", "")))}</td>'
                    f"<td>{len(rects) or ''} {e(shown)}</td><td>{e(page_txt)}</td>" +
                    "".join(f"<td class=n>{e(counters.get(k, ''))}</td>" for k in keys) +
                    f'<td>{e("; ".join(notes))} {links}</td></tr>')
    return f'<table class="rounds">{head}{"".join(rows)}</table>'


def _round_images(r: dict, run_dir: Path, geo: dict) -> str:
    """The round's images side by side, its missed regions outlined on each, and a zoom on a clicked region."""
    n = r.get("round", "")
    images = _dict(r.get("images"))
    names = [k for k in IMAGE_ORDER if k in images] + [k for k in images if k not in IMAGE_ORDER]
    rects = [x for x in map(_rect, _list(r.get("rects"))) if x]
    files = {k: _inside(run_dir, images[k]) for k in names}
    # The outlines' coordinates are framebuffer pixels: the image's own size, else the recorded geometry.
    size = next((s for f in files.values() if f and (s := _image_size(f))), None)
    width, height = size or (int(geo.get("width") or 1), int(geo.get("height") or 1))

    def pct(v: int, whole: int) -> str:
        return f"{100 * v / whole:.4f}%"

    outlines = "".join(f'<a class="miss" href="#zoom-{e(n)}-{i}" data-i="{i}" data-x="{x}" data-y="{y}" '
                       f'data-w="{w}" data-h="{h}" title="{w}x{h}+{x}+{y}" style="left:{pct(x, width)};'
                       f'top:{pct(y, height)};width:{pct(w, width)};height:{pct(h, height)}"></a>'
                       for i, (x, y, w, h) in enumerate(rects))
    figures, zooms = [], []
    for k in names:
        f = files[k]
        if f is None or not f.is_file():
            figures.append(f"<figure><figcaption>{e(k)}</figcaption><p class=muted>missing: {e(images[k])}</p>"
                           f"</figure>")
            continue
        src = _url(f, run_dir)
        figures.append(f'<figure><figcaption>{e(k)} <a href="{src}">{e(images[k])}</a></figcaption>'
                       f'<div class="frame"><img src="{src}" alt="{e(k)}, round {e(n)}" width="{width}" '
                       f'height="{height}">{outlines}</div></figure>')
        zooms.append(f'<figure><figcaption>{e(k)}</figcaption><div class="zbox" data-src="{src}">'
                     f'<div class="zmark"></div></div></figure>')
    buttons = "".join(f'<a href="#zoom-{e(n)}-{i}" data-i="{i}" data-x="{x}" data-y="{y}" data-w="{w}" data-h="{h}">'
                      f"{w}x{h}+{x}+{y}</a>" for i, (x, y, w, h) in enumerate(rects))
    return (f'<section class="round" id="round-{e(n)}" data-w="{width}" data-h="{height}">'
            f'<h3>Round {e(n)}: {e(r.get("missed_pixels", 0))} missed pixels in {len(rects)} regions</h3>'
            f'<div class="shots">{"".join(figures)}</div>'
            f'<div class="rects">{"Missed regions (click one, or its outline, to zoom): " + buttons if rects else ""}'
            f'</div><div class="zoom" hidden><p class="zcap"></p>{"".join(zooms)}</div></section>')


# --- matrix page ---------------------------------------------------------------------------------------------


def write_matrix_page(out_dir: Path) -> Path:
    """out_dir/summary.json -> out_dir/report.html; returns the page's path. A cell whose run directory has a
    result.json but no report.html gets its run page written too, so every link of the grid leads somewhere."""
    out_dir = Path(out_dir)
    summary = json.loads((out_dir / "summary.json").read_text())
    for cell in _list(summary.get("cells")):
        run_dir = out_dir / str(_dict(cell).get("run_dir") or "")
        named = bool(_dict(cell).get("run_dir"))
        if named and (run_dir / "result.json").is_file() and not (run_dir / "report.html").exists():
            try:
                write_run_page(run_dir)
            except (OSError, ValueError, TypeError, AttributeError):
                pass  # a cell's broken result.json must not cost the matrix its page; the cell links to its dir
    out = out_dir / "report.html"
    out.write_text(render_matrix(summary, out_dir), encoding="utf-8")
    return out


def _cell_state(cell: dict | None) -> str:
    if not cell or not cell.get("verdict"):
        return "notrun"
    ok = cell.get("ok")
    return "ok" if (ok if isinstance(ok, bool) else cell.get("verdict") == cell.get("expected")) else "bad"


def _cell_link(cell: dict, out_dir: Path) -> str | None:
    if not cell.get("run_dir"):
        return None
    run_dir = out_dir / str(cell["run_dir"])
    target = run_dir / "report.html" if (run_dir / "report.html").is_file() else run_dir
    return _url(target, out_dir) if target.exists() else None


def render_matrix(summary: dict, out_dir: Path) -> str:
    axes = [(str(a), [str(v) for v in _list(vals)]) for a, vals in _dict(summary.get("axes")).items()]
    cells = [c for c in _list(summary.get("cells")) if isinstance(c, dict)]
    by_values = {tuple(str(_dict(c.get("values")).get(a)) for a, _ in axes): c for c in cells}
    # One axis: a single column. Two or more: rows are the combinations of all but the last, columns the last.
    row_axes, col_axis = (axes, None) if len(axes) <= 1 else (axes[:-1], axes[-1])
    cols = col_axis[1] if col_axis else [None]

    head = "".join(f'<th rowspan="{2 if col_axis else 1}">{e(a)}</th>' for a, _ in row_axes)
    if col_axis:
        head = f'<tr>{head}<th colspan="{len(cols)}">{e(col_axis[0])}</th></tr><tr>' + \
               "".join(f"<th>{e(v)}</th>" for v in cols) + "</tr>"
    else:
        head = f"<tr>{head}<th>verdict</th></tr>"
    body, not_run = [], 0
    for combo in itertools.product(*[vals for _, vals in row_axes]):
        tds = []
        for col in cols:
            key = combo + ((col,) if col_axis else ())
            cell = by_values.get(key)
            state = _cell_state(cell)
            not_run += state == "notrun"
            label = str(cell.get("id", "")) if cell else cell_id({a: v for (a, _), v in zip(axes, key)})
            if state == "notrun":
                tds.append(f'<td class="cell notrun" data-cell="{e(label)}"><span class="v">–</span>'
                           f'<span class="x">not run</span></td>')
                continue
            inner = (f'<span class="v">{e(cell.get("verdict"))}</span>'
                     f'<span class="x">expected {e(cell.get("expected", "?"))}</span>')
            link = _cell_link(cell, out_dir)
            if link:
                inner = f'<a href="{link}">{inner}</a>'
            tds.append(f'<td class="cell {state}" data-cell="{e(label)}" data-verdict="{e(cell.get("verdict"))}" '
                       f'data-expected="{e(cell.get("expected", ""))}" title="{e(_first_line(cell.get("reason")))}">'
                       f"{inner}</td>")
        body.append("<tr>" + "".join(f"<th>{e(v)}</th>" for v in combo) + "".join(tds) + "</tr>")

    totals = _dict(summary.get("totals")) or {
        "cells": len(cells), "green": sum(_cell_state(c) == "ok" for c in cells),
        "red": sum(_cell_state(c) == "bad" for c in cells),
        **{v: sum(c.get("verdict") == v for c in cells) for v in ("PASS", "FAIL", "ERROR")}}
    red = totals.get("red", 0)
    count = totals.get("cells", len(cells))
    banner = (f'<span class="banner bad">{e(red)} of {e(count)} cells not as expected</span>' if red else
              '<span class="banner">no cell in this shard</span>' if not count else
              f'<span class="banner ok">all {e(count)} cells as expected</span>')
    facts = {"matrix": summary.get("matrix", ""), "shard": summary.get("shard") or "all cells",
             "started": summary.get("started", ""),
             "cells": (f'{totals.get("cells", "?")}: {totals.get("green", "?")} green, {totals.get("red", "?")} red'
                       + (f", {not_run} not run here" if not_run else "")),
             "verdicts": ", ".join(f"{v} {totals.get(v, 0)}" for v in ("PASS", "FAIL", "ERROR"))}
    facts.update({f"time: {k}": _secs(v) for k, v in _dict(summary.get("timings")).items()})
    files = " · ".join(f'<a href="{_url(out_dir / f, out_dir)}">{e(f)}</a>'
                       for f in ("summary.json", "junit.xml") if (out_dir / f).is_file())

    def run_link(link: str | None) -> str:
        return f'<a href="{link}">run page</a>' if link else ""

    rows = []
    for c in cells:
        link = _cell_link(c, out_dir)
        state = _cell_state(c)
        rows.append(f'<tr class="{state}"><td>{e(c.get("id", ""))}</td><td>{e(c.get("expected", ""))}</td>'
                    f'<td>{_verdict(c.get("verdict"))}</td>'
                    f'<td>{"as expected" if state == "ok" else "NOT as expected" if state == "bad" else "not run"}'
                    f'</td><td>{e(_first_line(c.get("reason")))}</td>'
                    f'<td class=n>{e(_secs(_dict(c.get("timings")).get("total", "")))}</td>'
                    f'<td>{run_link(link)}</td></tr>')
    parts = [f'<h1>Matrix: {e(summary.get("name", ""))}</h1>', f"<p>{banner}</p>", _kv_table(facts, "facts"),
             f"<p>{files}</p>" if files else "",
             f'<h2>Verdicts</h2><table class="grid">{head}{"".join(body)}</table>'
             '<p class="muted">green: the verdict expected; red: another; grey: not run (excluded or in another '
             "shard). Each cell shows the verdict it gave over the one expected and links to its run page.</p>",
             '<h2>Cells</h2><table class="cells"><tr><th>cell</th><th>expected</th><th>verdict</th><th></th>'
             f'<th>reason</th><th>time</th><th>run</th></tr>{"".join(rows)}</table>']
    return _page(f'matrix {summary.get("name", "")}: {red} red', "\n".join(parts))
