"""Matrices (harness/matrix.py): loading and checking a matrix file, cell names and directories, shards, host
groups, summary.json and junit.xml from real result.json files, merging shard outputs, and the command line's
`matrix --list` and `merge`. Nothing here boots anything: run directories are written by xenfb_harness.result.write
from Result objects, as a run would leave them."""
from __future__ import annotations

import faulthandler
import itertools
import json
import random
import re
import signal
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from PIL import Image

from xenfb_harness import cli
from xenfb_harness.config import SCHEMA, ConfigError, shipped
from xenfb_harness.matrix import (cell_entry, exit_code, host_groups, load_matrix, merge, new_summary, parse_shard,
                            run_matrix, shard, times_from, totals, write_junit, write_reports)
from xenfb_harness.result import ERROR, FAIL, PASS, Result, RoundResult, write

REPO = Path(__file__).resolve().parent.parent
HOST_SOURCES = Path(SCHEMA["apt"]["sources"].default)
needs_host_sources = pytest.mark.skipif(not HOST_SOURCES.is_file(),
                                        reason=f"default apt.sources {HOST_SOURCES} does not exist on this host")
SAFE_COMPONENT = re.compile(r"[A-Za-z0-9._-]+")


# --- helpers ---------------------------------------------------------------------------------------------------------


def write_matrix(d: Path, text: str, name: str = "m.yaml") -> Path:
    """A matrix file in d; unless it names its own base, its base is d/base.yaml, whose apt.sources is a file
    beside it (no test depends on the host's apt setup)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "test.sources").write_text("deb http://mirror.invalid/debian bookworm main\n")
    if not re.search(r"^base:", text, re.M):
        (d / "base.yaml").write_text("apt:\n  sources: test.sources\n")
        text = "base: base.yaml\n" + text
    p = d / name
    p.write_text(text)
    return p


def load_error(path: Path, host_file: Path | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_matrix(path, host_file)
    return info.value


def ids(cells) -> list[str]:
    return [c.id for c in cells]


def seeds_matrix(d: Path, n: int, name: str = "m.yaml") -> Path:
    """A matrix of n cells: seed 1..n."""
    return write_matrix(d, f"axes:\n  seed: {list(range(1, n + 1))}\nexpect:\n  - verdict: PASS\n", name)


# The matrix of the summary, junit and merge tests: two frontends x two seeds x two writers, one cell excluded, the
# legacy frontend with a widened window expected to FAIL.
FOUR_WAY = """\
set:
  rounds: 2
axes:
  frontend:
    upstream: {frontend: upstream}
    legacy-race: {frontend: legacy, legacy.race_window_ms: 300}
  seed: [1, 2]
  writer:
    mmap: {writer.kind: mmap}
    xorg: {writer.kind: xorg}
exclude:
  - {frontend: upstream, seed: 2, writer: xorg}
expect:
  - when: {frontend: legacy-race}
    verdict: FAIL
  - verdict: PASS
"""


def png(path: Path) -> None:
    Image.new("RGB", (4, 4), (255, 0, 0)).save(path)


def write_result(run_dir: Path, verdict: str, rounds: int = 3) -> Result:
    """A run directory as a run of that verdict leaves it: result.json, junit.xml, report.html, and for a FAIL
    the expected/seen/diff images of every round that missed (rounds 1 and later)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rs = []
    for n in range(rounds):
        missed = verdict == FAIL and n >= 1
        images = {}
        if missed:
            images = {k: f"round-{n:03d}-{k}.png" for k in ("expected", "seen", "diff")}
            for f in images.values():
                png(run_dir / f)
        rs.append(RoundResult(round=n, compared_pixels=1000, missed_pixels=7 * n if missed else 0,
                              rects=[{"x": 1, "y": n, "w": 4, "h": 2}] if missed else [],
                              pages=[n, n + 10] if missed else [], duration_s=1.5, images=images))
    res = Result(config=f"{run_dir.name}.yaml", frontend="legacy", seed=1, rounds_planned=rounds - 1, rounds=rs,
                 timings={"total": 10.0 + len(run_dir.name)})
    if verdict == ERROR:
        res.error = "TimeoutError: the guest did not print READY within 180 s\nlast console lines: ..."
    res.decide()
    assert res.verdict == verdict, res.reason
    write(res, run_dir)
    return res


def fake_output(out: Path, matrix, cells, outcomes: dict, shard_label: str | None = None) -> dict:
    """What run_matrix leaves in `out` for these cells, without running them: each cell's run directory with the
    result.json of its outcome (None: no result.json, as when a run never ended), then summary.json, junit.xml and
    report.html written by the matrix's own code."""
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for c in cells:
        run_dir = out / "cells" / c.slug
        run_dir.mkdir(parents=True, exist_ok=True)
        if outcomes.get(c.id) is not None:
            write_result(run_dir, outcomes[c.id])
        result = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").exists() else None
        entries.append(cell_entry(c, result, f"cells/{c.slug}"))
    summary = new_summary(matrix, shard_label, entries, "2025-01-01T00:00:00+0000", 3.0)
    write_reports(out, summary)
    return summary


def as_expected(matrix) -> dict:
    """Every cell gives its expected verdict."""
    return {c.id: c.expected for c in matrix.cells}


def junit(path: Path) -> ET.Element:
    return ET.parse(path).getroot()


def suites(root: ET.Element) -> dict[str, ET.Element]:
    return {s.get("name"): s for s in root.iter("testsuite")}


# --- the shipped matrices --------------------------------------------------------------------------------------------


SHIPPED_MATRICES = shipped(REPO / "configs")[1]


def test_there_are_shipped_matrices():
    assert REPO / "configs" / "matrix.yaml" in SHIPPED_MATRICES
    assert all(p.name.startswith("matrix") for p in SHIPPED_MATRICES)


@needs_host_sources
@pytest.mark.parametrize("path", SHIPPED_MATRICES, ids=lambda p: p.name)
def test_shipped_matrices_load(path):
    m = load_matrix(path)
    assert m.name == path.stem and m.source == str(path)
    assert m.cells and [c.index for c in m.cells] == list(range(len(m.cells)))
    assert len(set(ids(m.cells))) == len(m.cells) and len({c.slug for c in m.cells}) == len(m.cells)
    raw = yaml.safe_load(path.read_text())
    labels = {a: [str(v) if isinstance(v, str) else json.dumps(v) for v in vals] for a, vals in raw["axes"].items()}
    product = [",".join(f"{a}={v}" for a, v in zip(labels, combo)) for combo in itertools.product(*labels.values())]
    assert set(ids(m.cells)) <= set(product) and ids(m.cells) == [i for i in product if i in set(ids(m.cells))]
    if not raw.get("exclude"):
        assert ids(m.cells) == product
    for c in m.cells:
        assert c.expected in (PASS, FAIL, ERROR)
        assert c.cfg.source == (str((path.parent / raw["base"]).resolve()) if raw.get("base") else "(defaults)")
        for key, value in c.settings.items():  # what the cell says is what its config holds
            if key != "apt.sources":
                assert c.cfg[key] == value, (c.id, key)
        check_component(c.slug, REPO / "runs")


@needs_host_sources
def test_shipped_matrix_cells_and_verdicts():
    m = load_matrix(REPO / "configs" / "matrix.yaml")
    assert {c.id: c.expected for c in m.cells} == {
        "frontend=upstream,writer=mmap": PASS,
        "frontend=upstream,writer=xorg": PASS,
        "frontend=legacy-race,writer=mmap": FAIL,
        "frontend=legacy-race,writer=xorg": FAIL,
        "frontend=legacy-fixed-race,writer=mmap": PASS,
        "frontend=legacy-fixed-race,writer=xorg": PASS,
    }
    assert ids(m.cells) == list({c.id: 0 for c in m.cells})  # in the file's order: frontends, then writers
    by = {c.id: c.cfg for c in m.cells}
    assert by["frontend=legacy-race,writer=xorg"]["frontend"] == "legacy"
    assert by["frontend=legacy-race,writer=xorg"]["legacy.race_window_ms"] == 300
    assert by["frontend=legacy-race,writer=xorg"]["writer.kind"] == "xorg"
    assert by["frontend=legacy-fixed-race,writer=mmap"]["frontend"] == "legacy-fixed"
    assert by["frontend=upstream,writer=mmap"]["legacy.race_window_ms"] == 0
    for cfg in by.values():  # `set` reaches every cell; the base's own keys stay
        assert (cfg["rounds"], cfg["writer.mode"], cfg["writer.pages"], cfg["guest.memory_mb"]) == (4, "sparse", 8, 384)
        assert cfg["seed"] == 1
    assert m.axes == {"frontend": {"upstream": {"frontend": "upstream"},
                                   "legacy-race": {"frontend": "legacy", "legacy.race_window_ms": 300},
                                   "legacy-fixed-race": {"frontend": "legacy-fixed", "legacy.race_window_ms": 300}},
                      "writer": {"mmap": {"writer.kind": "mmap"}, "xorg": {"writer.kind": "xorg"}}}


@needs_host_sources
def test_cache_prune_keeps_every_shipped_matrix_cell():
    scenarios, matrices = shipped(REPO / "configs")
    cfgs = cli._shipped_configs()
    assert len(cfgs) == len(scenarios) + sum(len(load_matrix(m).cells) for m in matrices)
    assert any("cell frontend=legacy-race" in c.source or c["legacy.race_window_ms"] == 300 for c in cfgs)


# --- load_matrix: axes and labels ------------------------------------------------------------------------------------


def test_list_axis_is_a_key_and_its_values(tmp_path):
    m = load_matrix(write_matrix(tmp_path, "axes:\n  seed: [1, 2]\n  writer.kind: [mmap, xorg]\n"
                                           "expect:\n  - verdict: PASS\n"))
    assert ids(m.cells) == ["seed=1,writer.kind=mmap", "seed=1,writer.kind=xorg",
                            "seed=2,writer.kind=mmap", "seed=2,writer.kind=xorg"]
    assert [c.cfg["seed"] for c in m.cells] == [1, 1, 2, 2]  # the value keeps its type: an int, not "1"
    assert [c.cfg["writer.kind"] for c in m.cells] == ["mmap", "xorg", "mmap", "xorg"]
    assert m.cells[3].values == {"seed": "2", "writer.kind": "xorg"}
    assert m.cells[3].settings == {"seed": 2, "writer.kind": "xorg"}
    assert m.axes == {"seed": {"1": {"seed": 1}, "2": {"seed": 2}},
                      "writer.kind": {"mmap": {"writer.kind": "mmap"}, "xorg": {"writer.kind": "xorg"}}}
    assert [c.index for c in m.cells] == [0, 1, 2, 3]


def test_mapping_axis_labels_several_keys(tmp_path):
    m = load_matrix(write_matrix(tmp_path, """\
axes:
  variant:
    plain: {writer.kind: mmap}
    x: {writer.kind: xorg, guest.memory_mb: 384}
expect:
  - verdict: PASS
"""))
    assert ids(m.cells) == ["variant=plain", "variant=x"]
    plain, x = m.cells
    assert (plain.cfg["writer.kind"], plain.cfg["guest.memory_mb"]) == ("mmap", 256)
    assert (x.cfg["writer.kind"], x.cfg["guest.memory_mb"]) == ("xorg", 384)
    assert x.settings == {"writer.kind": "xorg", "guest.memory_mb": 384}


def test_labels_of_ints_and_bools_are_stable_and_match_in_rules(tmp_path):
    """A bool is labelled as JSON spells it (true/false), whatever spelling YAML 1.1 took (yes, on); the same
    label in `when` and `exclude` matches, given as the bool or as the string."""
    text = """\
axes:
  legacy.unload_at_end: [yes, false]
  seed: [1, 2, 3]
exclude:
  - {seed: 3}
expect:
  - when: {legacy.unload_at_end: true, seed: "2"}
    verdict: ERROR
  - when: {legacy.unload_at_end: "true"}
    verdict: FAIL
  - verdict: PASS
"""
    m = load_matrix(write_matrix(tmp_path, text))
    assert ids(m.cells) == ["legacy.unload_at_end=true,seed=1", "legacy.unload_at_end=true,seed=2",
                            "legacy.unload_at_end=false,seed=1", "legacy.unload_at_end=false,seed=2"]
    assert [c.expected for c in m.cells] == [FAIL, ERROR, PASS, PASS]
    assert [c.cfg["legacy.unload_at_end"] for c in m.cells] == [True, True, False, False]
    assert [c.slug for c in m.cells][0] == "legacy.unload_at_end-true__seed-1"
    again = load_matrix(tmp_path / "m.yaml")
    assert [(c.id, c.slug) for c in again.cells] == [(c.id, c.slug) for c in m.cells]


@pytest.mark.parametrize("values", ["[1, 1]", "[1, '1']", "[true, 'true']", "[a, a]"])
def test_values_whose_labels_collide_are_an_error(tmp_path, values):
    err = load_error(write_matrix(tmp_path, f"axes:\n  seed: {values}\nexpect:\n  - verdict: PASS\n"))
    assert err.key == "axes.seed" and "distinct" in str(err) and str(tmp_path / "m.yaml") in str(err)


def test_list_axis_values_must_be_scalars(tmp_path):
    err = load_error(write_matrix(tmp_path, "axes:\n  writer: [{kind: xorg}]\nexpect:\n  - verdict: PASS\n"))
    assert err.key == "axes.writer" and "mapping of label" in str(err)


@pytest.mark.parametrize("axes, key", [
    ("axes: {}", "axes"),
    ("axes: []", "axes"),
    ("axes:", "axes"),
    ("axes: {seed: []}", "axes.seed"),
    ("axes: {seed: {}}", "axes.seed"),
    ("axes: {seed: 3}", "axes.seed"),
    ("axes: {seed: {one: 1}}", "axes.seed.one"),
    ("axes: {seed: {one: {}}}", "axes.seed.one"),
    ("axes: {'a b': [1]}", "axes.a b"),
    ("axes: {'a/b': [1]}", "axes.a/b"),
])
def test_bad_axes(tmp_path, axes, key):
    p = write_matrix(tmp_path, f"{axes}\nexpect:\n  - verdict: PASS\n")
    err = load_error(p)
    assert err.key == key and err.source == str(p)


def test_no_axes_is_an_error(tmp_path):
    err = load_error(write_matrix(tmp_path, "expect:\n  - verdict: PASS\n"))
    assert err.key == "axes"


# --- load_matrix: set, and keys two places set --------------------------------------------------------------------


def test_set_reaches_every_cell_and_an_axis_overrides_it(tmp_path):
    m = load_matrix(write_matrix(tmp_path, """\
set: {rounds: 4, seed: 7, writer.mode: sparse}
axes:
  seed: [1, 2]
  w:
    a: {writer.mode: mixed}
    b: {guest.memory_mb: 512}
expect:
  - verdict: PASS
"""))
    got = {c.id: (c.cfg["rounds"], c.cfg["seed"], c.cfg["writer.mode"], c.cfg["guest.memory_mb"]) for c in m.cells}
    assert got == {"seed=1,w=a": (4, 1, "mixed", 256), "seed=1,w=b": (4, 1, "sparse", 512),
                   "seed=2,w=a": (4, 2, "mixed", 256), "seed=2,w=b": (4, 2, "sparse", 512)}
    assert m.cells[1].settings == {"rounds": 4, "seed": 1, "writer.mode": "sparse", "guest.memory_mb": 512}


def test_nested_keys_in_set_do_not_leak_between_cells(tmp_path):
    """`set` written nested, as a scenario file nests it, and an axis that sets one key of that section: the
    axis's value is its cells' alone, and set's other keys in that section stay in every cell."""
    m = load_matrix(write_matrix(tmp_path, """\
set:
  writer: {kind: mmap, mode: sparse}
axes:
  w:
    a: {writer.kind: xorg}
    b: {rounds: 3}
    c: {writer: {kind: xorg}}
expect:
  - verdict: PASS
"""))
    got = {c.id: (c.cfg["writer.kind"], c.cfg["writer.mode"]) for c in m.cells}
    assert got == {"w=a": ("xorg", "sparse"), "w=b": ("mmap", "sparse"), "w=c": ("xorg", "sparse")}


def test_nested_keys_of_one_axis_do_not_leak_into_other_cells(tmp_path):
    m = load_matrix(write_matrix(tmp_path, """\
axes:
  a:
    x: {writer: {mode: sparse}}
    y: {rounds: 2}
  b:
    p: {writer.pages: 3}
    q: {seed: 4}
expect:
  - verdict: PASS
"""))
    got = {c.id: (c.cfg["writer.mode"], c.cfg["writer.pages"]) for c in m.cells}
    default_pages = SCHEMA["writer"]["pages"].default
    assert got == {"a=x,b=p": ("sparse", 3), "a=x,b=q": ("sparse", default_pages),
                   "a=y,b=p": ("mixed", 3), "a=y,b=q": ("mixed", default_pages)}
    # Loading did not change the matrix's own description of its axes.
    assert m.axes["a"]["x"] in ({"writer": {"mode": "sparse"}}, {"writer.mode": "sparse"})


@pytest.mark.parametrize("a, b", [
    ("{x: {seed: 1}}", "{y: {seed: 2}}"),
    ("{x: {seed: 1}}", None),  # a list axis named seed
    ("{x: {writer.kind: xorg}}", "{y: {writer: {kind: mmap}}}"),  # the same key, dotted and nested
])
def test_two_axes_setting_one_key_is_an_error_naming_both(tmp_path, a, b):
    second = f"  second: {b}\n" if b else "  seed: [1, 2]\n"
    p = write_matrix(tmp_path, f"axes:\n  first: {a}\n{second}expect:\n  - verdict: PASS\n")
    err = load_error(p)
    other = "second" if b else "seed"
    assert err.source == str(p)
    assert err.key.startswith(f"axes.{other}") or err.key.startswith("axes.first"), err
    assert "first" in str(err) and other in str(err)


def test_a_key_given_as_value_and_section_is_an_error_naming_the_cell(tmp_path):
    p = write_matrix(tmp_path, "axes:\n  w:\n    a: {writer: xorg, writer.kind: mmap}\nexpect:\n  - verdict: PASS\n")
    err = load_error(p)
    assert str(p) in str(err) and "w=a" in str(err) and "writer" in str(err)


def test_set_must_be_a_mapping(tmp_path):
    err = load_error(write_matrix(tmp_path, "set: [rounds]\naxes: {seed: [1]}\nexpect:\n  - verdict: PASS\n"))
    assert err.key == "set"


# --- load_matrix: exclude --------------------------------------------------------------------------------------------


GRID = """\
axes:
  f:
    u: {frontend: upstream}
    l: {frontend: legacy}
    x: {frontend: legacy-fixed}
  seed: [1, 2]
"""


@pytest.mark.parametrize("exclude, left", [
    ("[{f: l}]", ["f=u,seed=1", "f=u,seed=2", "f=x,seed=1", "f=x,seed=2"]),
    ("[{f: [l, x]}]", ["f=u,seed=1", "f=u,seed=2"]),
    ("[{f: l, seed: 2}]", ["f=u,seed=1", "f=u,seed=2", "f=l,seed=1", "f=x,seed=1", "f=x,seed=2"]),
    ("[{f: l, seed: '2'}, {f: u, seed: [1]}]", ["f=u,seed=2", "f=l,seed=1", "f=x,seed=1", "f=x,seed=2"]),
    ("[]", ["f=u,seed=1", "f=u,seed=2", "f=l,seed=1", "f=l,seed=2", "f=x,seed=1", "f=x,seed=2"]),
])
def test_exclude(tmp_path, exclude, left):
    m = load_matrix(write_matrix(tmp_path, GRID + f"exclude: {exclude}\nexpect:\n  - verdict: PASS\n"))
    assert ids(m.cells) == left
    assert [c.index for c in m.cells] == list(range(len(left)))  # indexes count the cells that are left


@pytest.mark.parametrize("exclude, key, words", [
    ("[{nosuch: l}]", "exclude[0].nosuch", ["unknown axis", "f, seed"]),
    ("[{f: l}, {f: nosuch}]", "exclude[1].f", ["unknown value 'nosuch'", "u, l, x"]),
    ("[{f: [u, nosuch]}]", "exclude[0].f", ["unknown value 'nosuch'"]),
    ("[{seed: 3}]", "exclude[0].seed", ["unknown value '3'"]),
    ("[{}]", "exclude[0]", ["mapping of axis"]),
    ("[f]", "exclude[0]", ["mapping of axis"]),
    ("{f: l}", "exclude", ["list"]),
])
def test_bad_exclude_names_file_and_key(tmp_path, exclude, key, words):
    p = write_matrix(tmp_path, GRID + f"exclude: {exclude}\nexpect:\n  - verdict: PASS\n")
    err = load_error(p)
    assert (err.source, err.key) == (str(p), key)
    assert str(err).startswith(f"{p}: {key}: ")
    for w in words:
        assert w in str(err)


def test_excluding_every_cell_is_an_error(tmp_path):
    p = write_matrix(tmp_path, GRID + "exclude:\n  - {seed: 1}\n  - {seed: 2}\nexpect:\n  - verdict: PASS\n")
    err = load_error(p)
    assert (err.source, err.key) == (str(p), "exclude") and "every cell" in str(err)


# --- load_matrix: expect ---------------------------------------------------------------------------------------------


def test_expect_first_matching_rule_wins(tmp_path):
    m = load_matrix(write_matrix(tmp_path, GRID + """\
expect:
  - when: {f: l, seed: 2}
    verdict: ERROR
  - when: {f: [l, x]}
    verdict: FAIL
  - when: {f: l}
    verdict: PASS
  - verdict: PASS
  - verdict: ERROR
"""))
    assert {c.id: c.expected for c in m.cells} == {
        "f=u,seed=1": PASS, "f=u,seed=2": PASS, "f=l,seed=1": FAIL, "f=l,seed=2": ERROR,
        "f=x,seed=1": FAIL, "f=x,seed=2": FAIL}


def test_a_cell_no_rule_covers_is_an_error_naming_it(tmp_path):
    p = write_matrix(tmp_path, GRID + "expect:\n  - when: {f: [u, l]}\n    verdict: PASS\n")
    err = load_error(p)
    assert (err.source, err.key) == (str(p), "expect")
    assert "f=x,seed=1" in str(err) and "without `when`" in str(err)


@pytest.mark.parametrize("expect, key", [
    ("[{verdict: pass}]", "expect[0]"),
    ("[{verdict: OK}]", "expect[0]"),
    ("[{when: {f: l}}]", "expect[0]"),
    ("[{when: {f: l}, verdict: FAIL, why: x}]", "expect[0]"),
    ("[{when: {f: l}, verdict: FAIL}, PASS]", "expect[1]"),
    ("[{when: {f: nosuch}, verdict: FAIL}, {verdict: PASS}]", "expect[0].when.f"),
    ("[{when: {g: l}, verdict: FAIL}, {verdict: PASS}]", "expect[0].when.g"),
    ("[{when: {}, verdict: FAIL}]", "expect[0].when"),
    ("[]", "expect"),
    ("{verdict: PASS}", "expect"),
    ("PASS", "expect"),
])
def test_bad_expect(tmp_path, expect, key):
    p = write_matrix(tmp_path, GRID + f"expect: {expect}\n")
    err = load_error(p)
    assert (err.source, err.key) == (str(p), key)


def test_no_expect_is_an_error(tmp_path):
    err = load_error(write_matrix(tmp_path, GRID))
    assert err.key == "expect"


# --- load_matrix: the file, its base, its paths ----------------------------------------------------------------------


@pytest.mark.parametrize("text, key, words", [
    ("axis: {seed: [1]}\nexpect: [{verdict: PASS}]\n", "axis", ["unknown key"]),
    ("axes: {seed: [1]}\nexpect: [{verdict: PASS}]\nexclude: []\nrounds: 3\n", "rounds", ["unknown key"]),
    ("- axes\n", "", ["expected a mapping"]),
    ("", "", ["expected a mapping"]),
    ("axes: {seed: [1, 2]\nexpect: [", "", ["not valid YAML"]),
    ("axes:\n\tseed: [1]\n", "", ["not valid YAML"]),
])
def test_bad_file(tmp_path, text, key, words):
    p = tmp_path / "m.yaml"
    p.write_text(text)
    err = load_error(p)
    assert (err.source, err.key) == (str(p), key)
    for w in words:
        assert w in str(err)


def test_not_utf8_is_a_config_error(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_bytes(b"axes: {seed: [1]}\nexpect: [{verdict: PASS}]\n# caf\xe9\n")
    err = load_error(p)
    assert err.source == str(p) and "UTF-8" in str(err)


def test_missing_matrix_file(tmp_path):
    err = load_error(tmp_path / "nosuch.yaml")
    assert err.source == str(tmp_path / "nosuch.yaml") and "does not exist" in str(err)


@pytest.mark.parametrize("base", ["nosuch.yaml", "''", "3", "[a.yaml]", "."])
def test_base_that_is_not_a_file(tmp_path, base):
    p = write_matrix(tmp_path, f"base: {base}\naxes: {{seed: [1]}}\nexpect: [{{verdict: PASS}}]\n")
    err = load_error(p)
    assert (err.source, err.key) == (str(p), "base")


def test_invalid_base_is_an_error_naming_the_base_and_key(tmp_path):
    (tmp_path / "bad.yaml").write_text("rounds: 0\n")
    p = write_matrix(tmp_path, "base: bad.yaml\nset: {apt.sources: test.sources}\naxes: {seed: [1]}\n"
                               "expect: [{verdict: PASS}]\n")
    err = load_error(p)
    assert err.key == "rounds" and str(tmp_path / "bad.yaml") in str(err)


def test_base_and_paths_are_relative_to_their_files_not_the_cwd(tmp_path, monkeypatch):
    """The base is found beside the matrix, the base's own relative paths beside the base, and the matrix's
    (in `set` and in axes) beside the matrix, wherever the harness runs from."""
    scen = tmp_path / "scenarios"
    scen.mkdir()
    (scen / "scen.sources").write_text("deb http://mirror.invalid/debian bookworm main\n")
    (scen / "scen.yaml").write_text("rounds: 3\nseed: 9\napt:\n  sources: scen.sources\n")
    mdir = tmp_path / "matrices"
    (mdir / "sub").mkdir(parents=True)
    (mdir / "mine.sources").write_text("deb http://mirror.invalid/debian trixie main\n")
    (mdir / "sub" / "other.sources").write_text("deb http://mirror.invalid/debian trixie main\n")
    (mdir / "m.yaml").write_text("""\
base: ../scenarios/scen.yaml
set: {host.key: keys/id}
axes:
  src:
    base: {rounds: 2}
    mine: {apt.sources: mine.sources}
    other: {apt.sources: sub/other.sources}
expect: [{verdict: PASS}]
""")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for path in (mdir / "m.yaml", Path("../matrices/m.yaml")):
        m = load_matrix(path)
        got = {c.id: (c.cfg["rounds"], c.cfg["seed"], c.cfg["apt.sources"], c.cfg["host.key"]) for c in m.cells}
        key = str(mdir / "keys" / "id")
        assert got == {"src=base": (2, 9, str(scen / "scen.sources"), key),
                       "src=mine": (3, 9, str(mdir / "mine.sources"), key),
                       "src=other": (3, 9, str(mdir / "sub" / "other.sources"), key)}, path
    # The same file elsewhere, run from where its base would be found if it were relative to the cwd: not found.
    (elsewhere / "deep").mkdir()
    (elsewhere / "deep" / "m.yaml").write_text((mdir / "m.yaml").read_text())
    monkeypatch.chdir(mdir)
    assert (Path.cwd() / "../scenarios/scen.yaml").is_file()
    err = load_error(elsewhere / "deep" / "m.yaml")
    assert (err.source, err.key) == (str(elsewhere / "deep" / "m.yaml"), "base")


def test_a_path_in_an_axis_that_does_not_exist_names_matrix_and_cell(tmp_path):
    p = write_matrix(tmp_path, "axes:\n  src:\n    ok: {seed: 1}\n    gone: {apt.sources: nosuch.sources}\n"
                               "expect: [{verdict: PASS}]\n")
    err = load_error(p)
    assert err.key == "apt.sources"
    assert str(p) in str(err) and "cell src=gone" in str(err) and str(tmp_path / "nosuch.sources") in str(err)


@pytest.mark.parametrize("axes, cell, key", [
    ("{frontend: [upstream, nosuch]}", "frontend=nosuch", "frontend"),
    ("{seed: [1, -1]}", "seed=-1", "seed"),
    ("{rounds: [2, '3']}", "rounds=3", "rounds"),
    ("{w: {a: {writer.knd: xorg}}}", "w=a", "writer.knd"),
    ("{w: {a: {rounds: 2}, b: {writer.kind: xorg, writer.workers: 2}}}", "w=b", "writer.workers"),
])
def test_an_invalid_value_in_an_axis_names_matrix_cell_and_key(tmp_path, axes, cell, key):
    p = write_matrix(tmp_path, f"axes: {axes}\nexpect: [{{verdict: PASS}}]\n")
    err = load_error(p)
    assert err.key == key
    assert str(p) in err.source and f"cell {cell}" in err.source, err
    assert f"{p}, cell {cell}" in str(err) and key in str(err)


def test_host_file_replaces_every_cells_host(tmp_path):
    host = tmp_path / "host.yaml"
    host.write_text("host:\n  kind: ssh\n  address: 192.0.2.1\n")
    p = write_matrix(tmp_path, "axes:\n  seed: [1, 2]\nexpect: [{verdict: PASS}]\n")
    m = load_matrix(p, host)
    assert [c.cfg["host.kind"] for c in m.cells] == ["ssh", "ssh"]
    assert all(c.cfg.host_source == str(host) for c in m.cells)
    assert len(host_groups(m.cells)) == 1
    bad = tmp_path / "bad-host.yaml"
    bad.write_text("rounds: 3\n")
    assert load_error(p, bad).source == str(bad)


def test_host_file_with_host_keys_in_the_matrix_is_refused(tmp_path):
    """--host would silently replace what the cells set for their host (a cell named xen=4.20 on a 4.17 host)."""
    host = tmp_path / "host.yaml"
    host.write_text("host:\n  kind: ssh\n  address: 192.0.2.1\n")
    p = write_matrix(tmp_path, "axes:\n  host.memory_mb: [1024, 4096]\nexpect: [{verdict: PASS}]\n")
    assert len(host_groups(load_matrix(p).cells)) == 2
    err = load_error(p, host)
    assert (err.source, err.key) == (str(p), "host.memory_mb") and "--host" in str(err)


# --- Cell.id and Cell.slug -------------------------------------------------------------------------------------------


HOSTILE = ["a/b", "..", ".", "../../etc/passwd", "/", "", " ", "a b", "ünïcödé", "日本", "a\\b", "x:y*?<>|",
           "-rf", "~", "$HOME", "a\tb", "'\"", "a,b=c", "%2F"]


def check_component(slug: str, out: Path) -> None:
    assert slug and slug not in (".", "..") and "/" not in slug and "\\" not in slug and "\0" not in slug, slug
    assert SAFE_COMPONENT.fullmatch(slug), slug
    assert len(slug.encode()) <= 255, slug
    assert (out / "cells" / slug).parent == out / "cells"
    assert (out / "cells" / slug).resolve().parent == (out / "cells").resolve()


@pytest.mark.parametrize("label", HOSTILE, ids=lambda s: repr(s))
def test_slug_is_one_safe_path_component(tmp_path, label):
    p = write_matrix(tmp_path, "axes:\n  x: " + json.dumps({label: {"seed": 1}, "plain": {"seed": 2}}) +
                     "\nexpect: [{verdict: PASS}]\n")
    m = load_matrix(p)
    assert m.cells[0].values == {"x": label} and m.cells[0].id == f"x={label}"
    for c in m.cells:
        check_component(c.slug, tmp_path / "out")
    (tmp_path / "out" / "cells" / m.cells[0].slug).mkdir(parents=True)  # the filesystem takes it as one directory
    assert [d.name for d in (tmp_path / "out" / "cells").iterdir()] == [m.cells[0].slug]


@pytest.mark.parametrize("axis", ["..", ".", "-", "_", "a.b"])
def test_slug_of_odd_axis_names(tmp_path, axis):
    p = write_matrix(tmp_path, f"axes:\n  '{axis}': {{'..': {{seed: 1}}}}\nexpect: [{{verdict: PASS}}]\n")
    check_component(load_matrix(p).cells[0].slug, tmp_path)


def test_slug_and_id_of_several_axes(tmp_path):
    m = load_matrix(write_matrix(tmp_path, GRID + "expect: [{verdict: PASS}]\n"))
    c = m.cells[3]
    assert (c.id, c.slug) == ("f=l,seed=2", "f-l__seed-2")
    assert [c.slug for c in m.cells] == [c.slug for c in load_matrix(tmp_path / "m.yaml").cells]


@pytest.mark.parametrize("labels", [
    ["a/b", "a-b"],
    ["a b", "a_b", "a-b"],
    ["ü", "é"],
    ["a/b", "a:b"],
])
def test_two_cells_never_share_a_directory(tmp_path, labels):
    """Labels that differ only where the slug replaces characters: either the matrix is refused, naming both
    cells, or their directories differ. Two cells in one directory would overwrite each other's results."""
    axis = json.dumps({label: {"seed": i + 1} for i, label in enumerate(labels)})
    p = write_matrix(tmp_path, f"axes:\n  x: {axis}\nexpect: [{{verdict: PASS}}]\n")
    try:
        m = load_matrix(p)
    except ConfigError as e:
        assert e.source == str(p)
        assert sum(f"x={label}" in str(e) for label in labels) >= 2, e
    else:
        assert len({c.slug for c in m.cells}) == len(m.cells), [c.slug for c in m.cells]


def test_two_cells_never_share_a_directory_across_axes(tmp_path):
    """"__" joins the axes' parts of a slug, and a label may hold "__" itself."""
    p = write_matrix(tmp_path, """\
axes:
  f: {"a__w-b": {seed: 1}, "a": {seed: 2}}
  w: {"c": {rounds: 1}, "b__w-c": {rounds: 2}}
expect: [{verdict: PASS}]
""")
    try:
        m = load_matrix(p)
    except ConfigError as e:
        assert "f=a__w-b,w=c" in str(e) and "f=a,w=b__w-c" in str(e), e
    else:
        assert len({c.slug for c in m.cells}) == len(m.cells), [c.slug for c in m.cells]


def test_two_cells_never_share_a_name(tmp_path):
    """Labels holding ',' and '=' could make two cells' ids equal: CI would merge their histories, shards and
    merge would confuse them."""
    p = write_matrix(tmp_path, """\
axes:
  f: {"a,w=b": {seed: 1}, "a": {seed: 2}}
  w: {"c": {rounds: 1}, "b,w=c": {rounds: 2}}
expect: [{verdict: PASS}]
""")
    try:
        m = load_matrix(p)
    except ConfigError as e:
        assert e.source == str(p) and "f=a,w=b,w=c" in str(e)
    else:
        assert len(set(ids(m.cells))) == len(m.cells), ids(m.cells)


def test_a_slug_too_long_for_a_directory_name_is_refused(tmp_path):
    label = "x" * 300
    p = write_matrix(tmp_path, f"axes:\n  v: {{{label}: {{seed: 1}}}}\nexpect: [{{verdict: PASS}}]\n")
    try:
        m = load_matrix(p)
    except ConfigError as e:
        assert e.source == str(p) and "v=x" in str(e)
    else:
        check_component(m.cells[0].slug, tmp_path)


# --- shards ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def matrices(tmp_path_factory) -> list:
    """Matrices of 1..13 cells, and one whose cells are a product with a hole in it."""
    d = tmp_path_factory.mktemp("shards")
    out = [load_matrix(seeds_matrix(d / str(n), n)).cells for n in range(1, 14)]
    out.append(load_matrix(write_matrix(d / "grid", GRID + "exclude: [{f: l, seed: 1}]\n"
                                                          "expect: [{verdict: PASS}]\n")).cells)
    return out


def check_partition(cells, parts) -> None:
    got = [c.id for p in parts for c in p]
    assert sorted(got) == sorted(ids(cells)) and len(got) == len(cells), "every cell in exactly one shard"
    for p in parts:
        assert [c.index for c in p] == sorted(c.index for c in p), "each shard in matrix order"


@pytest.mark.parametrize("n", range(1, 8))
def test_shards_partition_the_cells_in_equal_counts(matrices, n):
    for cells in matrices:
        parts = [shard(cells, i, n) for i in range(1, n + 1)]
        check_partition(cells, parts)
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1, sizes
        assert parts == [shard(cells, i, n, {}) for i in range(1, n + 1)]  # no times is equal counts
        assert parts == [cells[i - 1::n] for i in range(1, n + 1)]  # dealt out in turn, as --list shows them


def test_one_shard_is_every_cell(matrices):
    for cells in matrices:
        assert shard(cells, 1, 1) == cells
        assert shard(cells, 1, 1, {c.id: float(c.index) + 1 for c in cells}) == cells


def times_for(cells, seed: int) -> dict[str, float]:
    rnd = random.Random(seed)
    return {c.id: rnd.choice([1.0, 2.0, 5.0, 30.0, 60.0, 300.0]) * rnd.uniform(0.5, 1.5) for c in cells}


def loads(parts, times) -> list[float]:
    return [sum(times[c.id] for c in p) for p in parts]


def best_makespan(costs: list[float], n: int) -> float:
    best = float("inf")
    for assign in itertools.product(range(n), repeat=len(costs)):
        load = [0.0] * n
        for cost, k in zip(costs, assign):
            load[k] += cost
        best = min(best, max(load))
    return best


@pytest.mark.parametrize("n", range(1, 8))
def test_shards_with_times_partition_and_are_deterministic(matrices, n):
    for cells in matrices:
        times = times_for(cells, len(cells) * 10 + n)
        parts = [shard(cells, i, n, times) for i in range(1, n + 1)]
        check_partition(cells, parts)
        shuffled = list(times.items())
        random.Random(n).shuffle(shuffled)
        assert parts == [shard(cells, i, n, dict(shuffled)) for i in range(1, n + 1)], "independent of dict order"
        assert parts == [shard(list(cells), i, n, dict(times)) for i in range(1, n + 1)], "the same twice"


@pytest.mark.parametrize("n", [2, 3])
def test_shards_with_times_are_within_the_lpt_bound(matrices, n):
    """Longest processing time first is within (4/3 - 1/(3n)) of the best split."""
    for cells in matrices:
        if len(cells) > 9:
            continue  # the brute-force optimum stays cheap
        times = times_for(cells, len(cells) + 100 * n)
        worst = max(loads([shard(cells, i, n, times) for i in range(1, n + 1)], times))
        best = best_makespan([times[c.id] for c in cells], n)
        assert worst <= (4 / 3 - 1 / (3 * n)) * best + 1e-9, (worst, best)


def test_times_balance_better_than_equal_counts(tmp_path):
    cells = load_matrix(seeds_matrix(tmp_path, 6)).cells
    times = dict(zip(ids(cells), [10.0, 1.0, 10.0, 1.0, 1.0, 1.0]))
    by_count = [shard(cells, i, 2) for i in (1, 2)]
    by_time = [shard(cells, i, 2, times) for i in (1, 2)]
    assert max(loads(by_count, times)) == 21.0  # cells 1, 3 and 5 of 6 in one shard: both long ones
    assert max(loads(by_time, times)) == 12.0
    assert {c.id for c in by_time[0]} & {"seed=1", "seed=3"} != {"seed=1", "seed=3"}


def test_a_cell_never_measured_costs_the_median(tmp_path):
    cells = load_matrix(seeds_matrix(tmp_path, 7)).cells
    measured = dict(zip(ids(cells)[:5], [100.0, 1.0, 3.0, 50.0, 2.0]))  # median 3
    with_median = {**measured, "seed=6": 3.0, "seed=7": 3.0}
    for n in (2, 3, 4):
        assert [shard(cells, i, n, measured) for i in range(1, n + 1)] == \
               [shard(cells, i, n, with_median) for i in range(1, n + 1)]
    # Times of cells that are not in this matrix (a removed cell, another matrix) change nothing.
    noisy = {**measured, "seed=99": 1e6, "frontend=legacy": 1e-3, "seed=98": 1e6}
    assert [shard(cells, i, 3, noisy) for i in (1, 2, 3)] == [shard(cells, i, 3, measured) for i in (1, 2, 3)]


def test_more_shards_than_cells(tmp_path):
    cells = load_matrix(seeds_matrix(tmp_path, 2)).cells
    parts = [shard(cells, i, 5) for i in range(1, 6)]
    check_partition(cells, parts)
    assert sorted(len(p) for p in parts) == [0, 0, 0, 1, 1]


@pytest.mark.parametrize("text, want", [("1/2", (1, 2)), ("2/2", (2, 2)), ("1/1", (1, 1)), ("7/12", (7, 12))])
def test_parse_shard(text, want):
    assert parse_shard(text) == want


@pytest.mark.parametrize("text", ["0/2", "3/2", "a/b", "1/0", "", "1", "/2", "1/", "-1/2", "1/2/3", " 1/2", "1 / 2",
                                  "1.0/2"])
def test_parse_shard_rejects(text):
    with pytest.raises(ValueError, match="I/N"):
        parse_shard(text)


# --- times_from ------------------------------------------------------------------------------------------------------


def test_times_from_a_summary(tmp_path):
    p = tmp_path / "summary.json"
    p.write_text(json.dumps({"cells": [
        {"id": "seed=1", "timings": {"total": 12.5, "boot": 3}},
        {"id": "seed=2", "timings": {}},
        {"id": "seed=3"},
        {"id": "seed=4", "timings": {"total": 0}},
        {"id": "seed=5", "timings": {"total": 7}},
    ]}))
    assert times_from(p) == {"seed=1": 12.5, "seed=5": 7.0}
    p.write_text("{}")
    assert times_from(p) == {}


def test_times_from_a_written_summary_balances_shards(tmp_path):
    m = load_matrix(write_matrix(tmp_path / "m", FOUR_WAY))
    outcomes = as_expected(m)
    outcomes[m.cells[0].id] = None  # no result.json: no time
    summary = fake_output(tmp_path / "out", m, m.cells, outcomes)
    times = times_from(tmp_path / "out" / "summary.json")
    assert set(times) == {c.id for c in m.cells[1:]}
    for c in summary["cells"][1:]:
        assert times[c["id"]] == 10.0 + len(c["slug"])  # write_result's total: the result.json's own
    check_partition(m.cells, [shard(m.cells, i, 3, times) for i in (1, 2, 3)])


# --- host groups -----------------------------------------------------------------------------------------------------


def test_host_groups(tmp_path):
    m = load_matrix(write_matrix(tmp_path, """\
axes:
  host:
    small: {host.memory_mb: 2048}
    big: {host.memory_mb: 4096}
  seed: [1, 2]
  suite:
    bookworm: {apt.suite: bookworm}
    trixie: {apt.suite: trixie}
  guest.memory_mb: [256, 512]
exclude:
  - {host: big, suite: trixie}
expect: [{verdict: PASS}]
"""))
    groups = host_groups(m.cells)
    assert [[c.id for c in g] for g in groups] == [
        [f"host=small,seed={s},suite=bookworm,guest.memory_mb={g}" for s in (1, 2) for g in (256, 512)],
        [f"host=small,seed={s},suite=trixie,guest.memory_mb={g}" for s in (1, 2) for g in (256, 512)],
        [f"host=big,seed={s},suite=bookworm,guest.memory_mb={g}" for s in (1, 2) for g in (256, 512)],
    ]
    for g in groups:
        assert len({(c.cfg["host.memory_mb"], c.cfg["apt.suite"]) for c in g}) == 1
        assert [c.index for c in g] == sorted(c.index for c in g)
    assert len({(g[0].cfg["host.memory_mb"], g[0].cfg["apt.suite"]) for g in groups}) == 3
    assert sorted(c.index for g in groups for c in g) == list(range(len(m.cells)))


def test_one_host_for_a_matrix_that_varies_only_the_guest(tmp_path):
    m = load_matrix(write_matrix(tmp_path, GRID + "expect: [{verdict: PASS}]\n"))
    assert host_groups(m.cells) == [m.cells]
    assert host_groups([]) == []


def test_cells_of_two_apt_sources_files_get_two_hosts(tmp_path):
    (tmp_path / "other.sources").write_text("deb http://mirror.invalid/debian trixie main\n")
    m = load_matrix(write_matrix(tmp_path, "axes:\n  src:\n    a: {seed: 1}\n    b: {apt.sources: other.sources}\n"
                                           "    c: {seed: 3}\nexpect: [{verdict: PASS}]\n"))
    assert [[c.id for c in g] for g in host_groups(m.cells)] == [["src=a", "src=c"], ["src=b"]]


# --- summary.json ----------------------------------------------------------------------------------------------------


@pytest.fixture
def four_way(tmp_path):
    return load_matrix(write_matrix(tmp_path / "matrix", FOUR_WAY, "four.yaml"))


def test_four_way_matrix(four_way):
    assert len(four_way.cells) == 7 and four_way.name == "four"
    assert [c.expected for c in four_way.cells] == [PASS] * 3 + [FAIL] * 4


def test_summary_of_green_and_red_cells(tmp_path, four_way):
    cells = {c.id: c for c in four_way.cells}
    outcomes = as_expected(four_way)
    red_fail = "frontend=upstream,seed=1,writer=xorg"  # expected PASS, FAILed
    red_pass = "frontend=legacy-race,seed=2,writer=mmap"  # expected FAIL, PASSed
    red_none = "frontend=legacy-race,seed=2,writer=xorg"  # no result.json
    outcomes.update({red_fail: FAIL, red_pass: PASS, red_none: None})
    out = tmp_path / "out"
    summary = fake_output(out, four_way, four_way.cells, outcomes, "1/1")
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "junit.xml").is_file() and (out / "report.html").is_file()
    assert summary["kind"] == "xenfb-harness matrix" and summary["schema_version"] == 1
    assert (summary["name"], summary["matrix"], summary["shard"]) == ("four", four_way.source, "1/1")
    assert summary["axes"] == {"frontend": ["upstream", "legacy-race"], "seed": ["1", "2"], "writer": ["mmap", "xorg"]}
    assert [c["id"] for c in summary["cells"]] == ids(four_way.cells)
    assert [c["index"] for c in summary["cells"]] == list(range(7))
    by = {c["id"]: c for c in summary["cells"]}
    for cid, c in by.items():
        assert c["slug"] == cells[cid].slug and c["values"] == cells[cid].values
        assert c["expected"] == cells[cid].expected
        assert c["run_dir"] == f"cells/{cells[cid].slug}" and not Path(c["run_dir"]).is_absolute()
        assert (out / c["run_dir"]).is_dir()
        if cid != red_none:
            assert (out / c["run_dir"] / "result.json").is_file()
            assert c["timings"]["total"] == 10.0 + len(cells[cid].slug)
        ok = cid not in (red_fail, red_pass, red_none)
        assert c["ok"] is ok and (c["why_red"] == "") is ok, cid
    assert by[red_fail]["verdict"] == FAIL
    assert by[red_fail]["why_red"].startswith("expected PASS, got FAIL: 2 of 3 rounds show missed updates")
    assert by[red_pass]["why_red"].startswith("expected FAIL, got PASS: all 3 rounds matched")
    assert by[red_none]["verdict"] == ERROR and by[red_none]["timings"] == {}
    assert by[red_none]["why_red"] == "did not run to its end: no result.json: the run of this cell did not end"
    assert "\n" not in by["frontend=legacy-race,seed=1,writer=mmap"]["why_red"]
    assert summary["totals"] == {"cells": 7, "green": 4, "red": 3, PASS: 3, FAIL: 3, ERROR: 1}
    assert exit_code(summary) == 1


def test_an_error_expected_is_green(tmp_path):
    m = load_matrix(write_matrix(tmp_path, "axes: {seed: [1, 2]}\nexpect:\n  - when: {seed: 1}\n"
                                           "    verdict: ERROR\n  - verdict: PASS\n"))
    a, b = m.cells
    assert cell_entry(a, {"verdict": ERROR, "reason": "the backend's screen is 640x480"}, "x")["ok"] is True
    # An ERROR made up for a cell that never ran (no result.json, no shard ran it) is never the one expected.
    never = cell_entry(a, None, "", "not run by any shard")
    assert (never["verdict"], never["ok"], never["why_red"]) == (ERROR, False, "did not run to its end: not run by "
                                                                 "any shard")
    entry = cell_entry(b, {"verdict": ERROR, "reason": "TimeoutError: boot\nlast lines", "timings": {"total": 3}},
                       "cells/x")
    assert (entry["ok"], entry["why_red"], entry["reason"]) == (False, "expected PASS, got ERROR: TimeoutError: boot",
                                                                "TimeoutError: boot\nlast lines")
    assert cell_entry(b, {"verdict": PASS, "reason": ""}, "x")["why_red"] == ""
    assert cell_entry(a, {"verdict": PASS, "reason": ""}, "x")["why_red"] == "expected ERROR, got PASS: "


def test_exit_code(tmp_path, four_way):
    green = fake_output(tmp_path / "green", four_way, four_way.cells, as_expected(four_way))
    assert green["totals"]["red"] == 0 and exit_code(green) == 0
    one_red = {**as_expected(four_way), four_way.cells[-1].id: ERROR}
    assert exit_code(fake_output(tmp_path / "red", four_way, four_way.cells, one_red)) == 1
    empty = new_summary(four_way, None, [], "", 0)
    assert empty["totals"] == {"cells": 0, "green": 0, "red": 0, PASS: 0, FAIL: 0, ERROR: 0}
    assert exit_code(empty) == 0  # a shard with no cell (more shards than cells): its merge gates


def test_totals():
    entries = [{"ok": True, "verdict": PASS}, {"ok": True, "verdict": FAIL}, {"ok": False, "verdict": ERROR}]
    assert totals(entries) == {"cells": 3, "green": 2, "red": 1, PASS: 1, FAIL: 1, ERROR: 1}


# --- junit.xml -------------------------------------------------------------------------------------------------------


def test_junit_suite_per_cell_case_per_round(tmp_path, four_way):
    out = tmp_path / "out"
    outcomes = {**as_expected(four_way), "frontend=upstream,seed=1,writer=xorg": FAIL,
                "frontend=legacy-race,seed=2,writer=xorg": None}
    summary = fake_output(out, four_way, four_way.cells, outcomes)
    root = junit(out / "junit.xml")
    assert root.tag == "testsuites" and root.get("name") == "xenfb-harness.four"
    by = suites(root)
    assert list(by) == [f"four.{c.id}" for c in four_way.cells]
    for c in summary["cells"]:
        suite = by[f"four.{c['id']}"]
        cases = suite.findall("testcase")
        rounds = [] if c["id"] == "frontend=legacy-race,seed=2,writer=xorg" else ["round_000", "round_001", "round_002"]
        assert [k.get("name") for k in cases] == rounds + ["verdict"]
        assert {k.get("classname") for k in cases} == {f"four.{c['id']}"}
        assert suite.get("tests") == str(len(cases))
        assert suite.get("failures") == str(len(suite.findall("testcase/failure")))
        assert suite.get("errors") == "0"
        assert float(suite.get("time")) == c["timings"].get("total", 0)


def test_junit_green_cell_expected_to_fail_has_no_failures(tmp_path, four_way):
    out = tmp_path / "out"
    fake_output(out, four_way, four_way.cells, as_expected(four_way))
    cid = "frontend=legacy-race,seed=1,writer=mmap"
    suite = suites(junit(out / "junit.xml"))[f"four.{cid}"]
    assert suite.findall(".//failure") == [] and suite.get("failures") == "0"
    outs = {k.get("name"): k.findtext("system-out") for k in suite.findall("testcase")}
    assert outs["round_000"] is None and outs["verdict"] is None
    for r in ("round_001", "round_002"):
        assert "missed pixels" in outs[r] and "expected: this cell should FAIL" in outs[r]
        assert f"cells/{four_way.cells[3].slug}/{r.replace('_', '-')}-diff.png" in outs[r]
    assert junit(out / "junit.xml").findall(".//failure") == []  # every cell green: nothing fails


def test_junit_red_cell_fails_its_missed_rounds_and_verdict(tmp_path, four_way):
    out = tmp_path / "out"
    cid = "frontend=upstream,seed=1,writer=xorg"
    summary = fake_output(out, four_way, four_way.cells, {**as_expected(four_way), cid: FAIL})
    entry = next(c for c in summary["cells"] if c["id"] == cid)
    suite = suites(junit(out / "junit.xml"))[f"four.{cid}"]
    failed = {k.get("name"): k.find("failure") for k in suite.findall("testcase") if k.find("failure") is not None}
    assert list(failed) == ["round_001", "round_002", "verdict"]
    assert suite.get("failures") == "3"
    for r in ("round_001", "round_002"):
        message = failed[r].get("message")
        n = int(r[-1])
        assert message.startswith(f"{7 * n} missed pixels in pages [{n}, {n + 10}]")
        images = re.findall(r"cells/\S+?\.png", message)
        assert len(images) == 3 and any(i.endswith(f"round-{n:03d}-diff.png") for i in images)
        for i in images:
            assert (out / i).is_file(), i  # relative to the matrix output, where junit.xml is
    verdict = failed["verdict"]
    assert verdict.get("message") == entry["why_red"]
    assert "expected PASS, got FAIL" in verdict.get("message") and "rounds show missed updates" in verdict.get("message")
    assert f"run directory: {entry['run_dir']}" in verdict.text
    # The other cells of the matrix are untouched by this one's failure.
    assert len(junit(out / "junit.xml").findall(".//failure")) == 3


@pytest.mark.parametrize("expected, got", [(PASS, ERROR), (FAIL, PASS), (FAIL, ERROR)])
def test_junit_red_cell_without_unexpected_misses_fails_only_its_verdict(tmp_path, expected, got):
    m = load_matrix(write_matrix(tmp_path / "m", f"axes: {{seed: [1]}}\nexpect: [{{verdict: {expected}}}]\n"))
    out = tmp_path / "out"
    fake_output(out, m, m.cells, {"seed=1": got})
    suite = suites(junit(out / "junit.xml"))["m.seed=1"]
    failed = [k.get("name") for k in suite.findall("testcase") if k.find("failure") is not None]
    assert failed == ["verdict"] and suite.get("failures") == "1"
    assert f"expected {expected}, got {got}" in suite.find("testcase[@name='verdict']/failure").get("message")


def test_junit_names_are_stable(tmp_path, four_way):
    """CI follows a test by its name: the same matrix gives the same names, whatever the verdicts and wherever
    the output goes."""
    def names(out):
        return [(s.get("name"), [k.get("name") for k in s.findall("testcase")])
                for s in junit(out / "junit.xml").iter("testsuite")]
    a = fake_output(tmp_path / "a", four_way, four_way.cells, as_expected(four_way))
    b = fake_output(tmp_path / "b", four_way, four_way.cells, {c.id: FAIL for c in four_way.cells})
    assert names(tmp_path / "a") == names(tmp_path / "b")
    before = (tmp_path / "a" / "junit.xml").read_bytes()
    write_junit(tmp_path / "a", a)
    assert (tmp_path / "a" / "junit.xml").read_bytes() == before
    again = load_matrix(four_way.source)
    assert [f"four.{c.id}" for c in again.cells] == [n for n, _ in names(tmp_path / "a")]
    assert b["totals"]["red"] == 3


def test_junit_with_control_characters_in_a_reason_is_well_formed(tmp_path):
    m = load_matrix(write_matrix(tmp_path / "m", "axes: {seed: [1]}\nexpect: [{verdict: PASS}]\n"))
    entry = cell_entry(m.cells[0], {"verdict": ERROR, "reason": "RuntimeError: \x1b[31mpanic\x1b[0m\x07 in dom0"},
                       "cells/x")
    write_junit(tmp_path, new_summary(m, None, [entry], "", 0))
    message = junit(tmp_path / "junit.xml").find(".//failure").get("message")
    assert "panic" in message


# --- merge -----------------------------------------------------------------------------------------------------------


def summary_view(summary) -> list[tuple]:
    return [(c["id"], c["index"], c["expected"], c["verdict"], c["ok"], c["why_red"]) for c in summary["cells"]]


@pytest.fixture
def sharded(tmp_path, four_way):
    """Outcomes with a red cell, the unsharded output, and the two shards' outputs."""
    outcomes = {**as_expected(four_way), "frontend=upstream,seed=1,writer=xorg": FAIL,
                "frontend=legacy-race,seed=2,writer=xorg": ERROR}
    full = fake_output(tmp_path / "full", four_way, four_way.cells, outcomes)
    for i in (1, 2):
        fake_output(tmp_path / f"shard-{i}", four_way, shard(four_way.cells, i, 2), outcomes, f"{i}/2")
    return full


def test_merge_equals_the_unsharded_run(tmp_path, four_way, sharded):
    s1, s2 = tmp_path / "shard-1", tmp_path / "shard-2"
    assert json.loads((s1 / "summary.json").read_text())["cells"] and json.loads((s2 / "summary.json").read_text())
    merged = merge([s2, s1], tmp_path / "merged")  # in any order
    assert summary_view(merged) == summary_view(sharded)
    assert merged["totals"] == sharded["totals"]
    assert (merged["shard"], merged["merged_from"]) == (None, [str(s2), str(s1)])
    assert (merged["name"], merged["axes"], merged["matrix"]) == (sharded["name"], sharded["axes"], sharded["matrix"])
    assert json.loads((tmp_path / "merged" / "summary.json").read_text()) == merged
    assert (tmp_path / "merged" / "report.html").is_file()
    for c in merged["cells"]:
        assert not Path(c["run_dir"]).is_absolute()
        result = tmp_path / "merged" / c["run_dir"] / "result.json"
        assert result.is_file(), c["run_dir"]
        assert json.loads(result.read_text())["verdict"] == c["verdict"]
        assert (tmp_path / "merged" / c["run_dir"]).resolve().parent.parent in (s1.resolve(), s2.resolve())
    assert exit_code(merged) == exit_code(sharded) == 1
    # The merged junit.xml is the unsharded one's, up to the run directories its messages name.
    def cases(out):
        return [(s.get("name"), s.get("failures"), [(k.get("name"), k.find("failure") is not None)
                                                   for k in s.findall("testcase")])
                for s in junit(out / "junit.xml").iter("testsuite")]
    assert cases(tmp_path / "merged") == cases(tmp_path / "full")


def test_merge_from_another_directory_with_relative_paths(tmp_path, monkeypatch, four_way, sharded):
    monkeypatch.chdir(tmp_path)
    merged = merge([Path("shard-1"), Path("shard-2")], Path("ci/merged"))
    for c in merged["cells"]:
        assert c["run_dir"].startswith("../../shard-")
        assert (tmp_path / "ci" / "merged" / c["run_dir"] / "result.json").is_file()
    monkeypatch.chdir(tmp_path / "ci")  # the merged output is read from anywhere
    images = re.findall(r"\S+?-diff\.png", (tmp_path / "ci" / "merged" / "junit.xml").read_text())
    assert images and all((tmp_path / "ci" / "merged" / i).is_file() for i in images)


def test_merge_a_cell_in_two_shards_is_an_error(tmp_path, four_way, sharded):
    fake_output(tmp_path / "again", four_way, four_way.cells[:1], as_expected(four_way))
    with pytest.raises(ValueError, match=re.escape(four_way.cells[0].id)) as info:
        merge([tmp_path / "shard-1", tmp_path / "shard-2", tmp_path / "again"], tmp_path / "merged")
    assert str(tmp_path / "again") in str(info.value)
    with pytest.raises(ValueError):
        merge([tmp_path / "shard-1", tmp_path / "shard-1"], tmp_path / "merged2")


def test_merge_shards_of_another_matrix_is_an_error(tmp_path, four_way, sharded):
    other = load_matrix(write_matrix(tmp_path / "other", "axes: {seed: [5]}\nexpect: [{verdict: PASS}]\n", "four.yaml"))
    fake_output(tmp_path / "other-out", other, other.cells, as_expected(other))
    with pytest.raises(ValueError, match="other axes"):
        merge([tmp_path / "shard-1", tmp_path / "other-out"], tmp_path / "merged")
    renamed = write_matrix(tmp_path / "renamed", FOUR_WAY, "five.yaml")
    m5 = load_matrix(renamed)
    fake_output(tmp_path / "five-out", m5, shard(m5.cells, 2, 2), as_expected(m5))
    with pytest.raises(ValueError, match="five"):
        merge([tmp_path / "shard-1", tmp_path / "five-out"], tmp_path / "merged")


def test_merge_with_a_shard_missing(tmp_path, four_way, sharded):
    merged = merge([tmp_path / "shard-1"], tmp_path / "merged")
    mine = {c.id for c in shard(four_way.cells, 1, 2)}
    assert [c["id"] for c in merged["cells"]] == ids(four_way.cells)  # every cell, in matrix order
    for c in merged["cells"]:
        if c["id"] in mine:
            assert (tmp_path / "merged" / c["run_dir"] / "result.json").is_file()
        else:
            assert (c["verdict"], c["reason"], c["ok"]) == (ERROR, "not run by any shard", False)
            assert c["why_red"] == "did not run to its end: not run by any shard"
    assert merged["totals"]["cells"] == 7 and merged["totals"]["red"] >= 7 - len(mine)
    assert exit_code(merged) == 1
    names = [s.get("name") for s in junit(tmp_path / "merged" / "junit.xml").iter("testsuite")]
    assert names == [f"four.{c.id}" for c in four_way.cells]


def test_merge_needs_no_matrix_file(tmp_path, four_way, sharded):
    """The shards' summaries list every cell of the matrix: a merge elsewhere still knows what no shard ran."""
    Path(four_way.source).unlink()
    merged = merge([tmp_path / "shard-1"], tmp_path / "merged")
    assert [c["id"] for c in merged["cells"]] == ids(four_way.cells) and exit_code(merged) == 1


def test_merge_of_a_summary_without_the_matrix_cells_is_refused(tmp_path, four_way, sharded):
    path = tmp_path / "shard-1" / "summary.json"
    old = json.loads(path.read_text())
    del old["all_cells"]
    path.write_text(json.dumps(old))
    with pytest.raises(ValueError, match="does not list the matrix's cells"):
        merge([tmp_path / "shard-1"], tmp_path / "merged")


def test_merge_of_green_shards_is_green(tmp_path, four_way):
    for i in (1, 2, 3):
        fake_output(tmp_path / f"s{i}", four_way, shard(four_way.cells, i, 3), as_expected(four_way), f"{i}/3")
    merged = merge([tmp_path / f"s{i}" for i in (1, 2, 3)], tmp_path / "merged")
    assert merged["totals"]["green"] == 7 and exit_code(merged) == 0
    assert merged["timings"]["total"] == 9.0  # the shards' times, added


def test_merge_a_directory_without_summary(tmp_path, four_way, sharded):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "empty"))):
        merge([tmp_path / "shard-1", tmp_path / "empty"], tmp_path / "merged")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "nosuch"))):
        merge([tmp_path / "nosuch"], tmp_path / "merged")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken"):
        merge([tmp_path / "shard-1", tmp_path / "broken"], tmp_path / "merged")


# --- the command line ------------------------------------------------------------------------------------------------


@pytest.fixture
def main(monkeypatch):
    """xenfb_harness.cli.main in this process; the signal handlers it installs are put back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield cli.main
    for s, handler in saved.items():
        signal.signal(s, handler)
    faulthandler.unregister(signal.SIGUSR1)


def test_cli_matrix_list(tmp_path, capfd, main, four_way):
    assert main(["matrix", four_way.source, "--list"]) == 0
    out, err = capfd.readouterr()
    assert out.splitlines() == ids(four_way.cells) and err == ""
    assert not (tmp_path / "runs").exists()


def test_cli_matrix_list_shards(tmp_path, capfd, main, four_way):
    listed = []
    for i in (1, 2, 3):
        assert main(["matrix", four_way.source, "--list", "--shard", f"{i}/3"]) == 0
        lines = capfd.readouterr().out.splitlines()
        assert lines == ids(shard(four_way.cells, i, 3))
        listed += lines
    assert sorted(listed) == sorted(ids(four_way.cells))


def test_cli_matrix_list_shards_by_times(tmp_path, capfd, main, four_way):
    fake_output(tmp_path / "last", four_way, four_way.cells, as_expected(four_way))
    times = times_from(tmp_path / "last" / "summary.json")
    for i in (1, 2):
        assert main(["matrix", four_way.source, "--list", "--shard", f"{i}/2", "--times",
                     str(tmp_path / "last" / "summary.json")]) == 0
        assert capfd.readouterr().out.splitlines() == ids(shard(four_way.cells, i, 2, times))


@pytest.mark.parametrize("bad", ["0/2", "3/2", "a/b", "1/0", "x"])
def test_cli_bad_shard(tmp_path, capfd, main, four_way, bad):
    assert main(["matrix", four_way.source, "--list", "--shard", bad]) == 2
    out, err = capfd.readouterr()
    assert out == "" and "--shard" in err and repr(bad) in err


def test_cli_missing_times_file(tmp_path, capfd, main, four_way):
    assert main(["matrix", four_way.source, "--list", "--shard", "1/2", "--times", str(tmp_path / "nosuch.json")]) == 2
    out, err = capfd.readouterr()
    assert out == "" and "--times" in err and "nosuch.json" in err


@pytest.mark.parametrize("text, key", [
    (GRID + "exclude: [{f: nosuch}]\nexpect: [{verdict: PASS}]\n", "exclude[0].f"),
    (GRID + "expect: [{when: {f: u}, verdict: PASS}]\n", "expect"),
    ("axes: {frontend: [nosuch]}\nexpect: [{verdict: PASS}]\n", "frontend"),
])
def test_cli_bad_matrix_is_a_bad_config(tmp_path, capfd, main, text, key):
    p = write_matrix(tmp_path, text)
    assert main(["matrix", str(p), "--list", "--output", str(tmp_path / "out")]) == 2
    out, err = capfd.readouterr()
    assert out == ""
    assert "bad config" in err and str(p) in err and key in err
    assert not (tmp_path / "out").exists()


def test_cli_matrix_file_not_utf8_is_a_bad_config(tmp_path, capfd, main):
    p = tmp_path / "m.yaml"
    p.write_bytes(b"axes: {seed: [1]}\nexpect: [{verdict: PASS}]\n# \xff\n")
    assert main(["matrix", str(p), "--list"]) == 2
    assert "bad config" in capfd.readouterr().err


def test_cli_merge(tmp_path, capfd, main, four_way, sharded):
    code = main(["merge", str(tmp_path / "shard-1"), str(tmp_path / "shard-2"), "--output", str(tmp_path / "merged")])
    out, err = capfd.readouterr()
    assert code == 1 and "5 of 7 cells green, 2 red" in out and str(tmp_path / "merged" / "report.html") in out
    for i in (1, 2):
        fake_output(tmp_path / f"g{i}", four_way, shard(four_way.cells, i, 2), as_expected(four_way), f"{i}/2")
    code = main(["merge", str(tmp_path / "g1"), str(tmp_path / "g2"), "--output", str(tmp_path / "green")])
    assert code == 0 and "7 of 7 cells green, 0 red" in capfd.readouterr().out
    assert json.loads((tmp_path / "green" / "summary.json").read_text())["totals"]["green"] == 7


def test_cli_merge_errors(tmp_path, capfd, main, four_way, sharded):
    code = main(["merge", str(tmp_path / "shard-1"), str(tmp_path / "nosuch"), "--output", str(tmp_path / "m")])
    assert code == 2 and "merge" in capfd.readouterr().err
    code = main(["merge", str(tmp_path / "shard-1"), str(tmp_path / "shard-1"), "--output", str(tmp_path / "m")])
    err = capfd.readouterr().err
    assert code == 2 and "merge" in err and "in both" in err


def test_a_run_counts_only_its_own_results_and_a_crashed_child_is_red(tmp_path):
    """run_matrix with hosts side by side whose children die at once (here `true`, which writes nothing): every
    cell is red, also the one whose directory still held a green result.json from an earlier run, and also the
    one expected to ERROR (an ERROR made up for a cell that never ran is never the expected one)."""
    p = write_matrix(tmp_path, "axes:\n  host.memory_mb: [1024, 4096]\nexpect:\n  - when: {host.memory_mb: 4096}\n"
                               "    verdict: ERROR\n  - verdict: PASS\n")
    m = load_matrix(p)
    out = tmp_path / "out"
    stale = out / "cells" / m.cells[0].slug
    stale.mkdir(parents=True)
    (stale / "result.json").write_text(json.dumps({"verdict": PASS, "reason": "an earlier run"}))
    summary = run_matrix(m, m.cells, out, cache=None, jobs=2, child_cmd=["true"])
    assert [(c["verdict"], c["ok"]) for c in summary["cells"]] == [(ERROR, False), (ERROR, False)]
    assert exit_code(summary) == 1 and (out / "summary.json").is_file() and (out / "report.html").is_file()
    assert not (stale / "result.json").exists()
