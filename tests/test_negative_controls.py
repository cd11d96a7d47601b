"""Negative controls and `legacy.source`: the key, the copies tests/negative_controls.py makes, and the legacy
modules built from a tree of one's own.

The unit tests take well under a second. The real builds (`pytest -m e2e tests/test_negative_controls.py`) build
each variant's modules against the guest kernel's headers through the real cache and apt (about 15 s each on the
project's machine, most of it extracting the headers); they boot nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from xenfb_harness import config
from xenfb_harness.artifacts import payload as payload_recipe
from xenfb_harness.artifacts.cache import Cache, default_cache_dir
from xenfb_harness.artifacts.cache import hash_tree
from xenfb_harness.artifacts.payload import build_payload
from xenfb_harness.config import SCHEMA, ConfigError
from xenfb_harness.frontends import OUR_SOURCE as FRONTEND_SRC, legacy_source
from tests.negative_controls import BREAKS, NAMES, SOURCE, config_fragment, make_variant
from tests.test_cpio import read_newc


def write(tmp_path: Path, data: dict, name: str = "c.yaml", sources: bool = True) -> Path:
    """A scenario file; with its own apt sources file, so that no unit test depends on the host's apt set-up."""
    if sources:
        (tmp_path / "test.sources").write_text("deb http://mirror.invalid/debian bookworm main\n")
        data = {**data, "apt": {"sources": "test.sources"}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


# -- the key ---------------------------------------------------------------------------------------------------------

def test_legacy_source_defaults_to_ours(tmp_path):
    field = SCHEMA["legacy"]["source"]
    assert (field.default, field.kind) == ("", "dir")
    cfg = config.load(write(tmp_path, {}))
    assert cfg["legacy.source"] == ""
    assert legacy_source(cfg) == FRONTEND_SRC == SOURCE
    assert config.load(write(tmp_path, {"legacy": {"source": ""}}))["legacy.source"] == ""


def test_legacy_source_accepts_an_existing_dir_relative_to_the_config(tmp_path):
    (tmp_path / "mine").mkdir()
    sub = tmp_path / "configs"
    sub.mkdir()
    (sub / "tree").mkdir()
    cfg = config.load(write(tmp_path, {"legacy": {"source": "mine"}}))
    assert cfg["legacy.source"] == str(tmp_path.resolve() / "mine")
    assert legacy_source(cfg) == tmp_path.resolve() / "mine"
    # relative to the directory of the file that sets it, not to the working directory
    assert config.load(write(sub, {"legacy": {"source": "tree"}}))["legacy.source"] == str(sub.resolve() / "tree")
    absolute = config.load(write(tmp_path, {"legacy": {"source": str(tmp_path / "mine")}}))
    assert absolute["legacy.source"] == str(tmp_path / "mine")


@pytest.mark.parametrize("value", ["missing", "a-file", "missing/deeper"])
def test_legacy_source_rejects_what_is_not_a_dir_naming_file_and_key(tmp_path, value):
    (tmp_path / "a-file").write_text("not a directory\n")
    path = write(tmp_path, {"legacy": {"source": value}})
    with pytest.raises(ConfigError) as info:
        config.load(path)
    err = info.value
    assert err.key == "legacy.source" and err.source == str(path)
    assert str(path) in str(err) and "legacy.source" in str(err) and value in str(err)
    assert "existing directory" in str(err)


@pytest.mark.parametrize("value", [3, True, ["a"], "two\nlines"])
def test_legacy_source_rejects_what_is_not_a_path(tmp_path, value):
    with pytest.raises(ConfigError, match="legacy.source"):
        config.load(write(tmp_path, {"legacy": {"source": value}}))


def test_legacy_source_is_listed_with_its_meaning():
    text = config.describe()
    assert "  legacy.source = ''" in text and SCHEMA["legacy"]["source"].doc in text


def test_legacy_source_shapes_no_host_artifact(tmp_path):
    from xenfb_harness.artifacts.host import host_inputs
    variant = make_variant(tmp_path, "unnotified-last")
    assert host_inputs(config.load(write(tmp_path, config_fragment(variant)))) == \
        host_inputs(config.load(write(tmp_path, {"frontend": "legacy-fixed"})))


def test_no_negative_control_is_a_selectable_frontend():
    assert set(SCHEMA["frontend"].choices) == {"upstream", "legacy", "legacy-fixed", "module"}
    for name in NAMES:
        assert name not in SCHEMA["frontend"].choices
    # ... and our own tree never defines a break.
    for path in SOURCE.iterdir():
        if path.name in ("Kbuild", "Makefile"):
            assert "XENFB_BREAK" not in path.read_text()


# -- the helper ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_make_variant_copies_ours_and_adds_one_define(tmp_path, name):
    variant = make_variant(tmp_path, name)
    ours = {p.name: p.read_bytes() for p in SOURCE.iterdir() if p.is_file() and not p.name.endswith((".o", ".ko"))}
    theirs = {p.name: p.read_bytes() for p in variant.iterdir()}
    assert set(theirs) == set(ours)
    for file, data in ours.items():
        if file != "Kbuild":
            assert theirs[file] == data, file
    kbuild = theirs["Kbuild"].decode()
    assert kbuild.startswith(ours["Kbuild"].decode())
    assert kbuild.rstrip().endswith(f"ccflags-y += -D{BREAKS[name]}")
    assert kbuild.count("XENFB_BREAK_") == 1
    assert hash_tree(variant) != hash_tree(SOURCE)
    # The switch is one the module knows, and the name is the one it reports.
    source = (SOURCE / "xenfb_legacy.c").read_text()
    assert f"defined({BREAKS[name]})" in source and f'"{name}"' in source


def test_make_variant_again_replaces_the_copy_and_rejects_unknown_names(tmp_path):
    first = make_variant(tmp_path, NAMES[0])
    (first / "stray.c").write_text("x")
    assert make_variant(tmp_path, NAMES[0]) == first and not (first / "stray.c").exists()
    assert len({make_variant(tmp_path, n) for n in NAMES}) == len(NAMES)
    with pytest.raises(ValueError, match="unknown negative control"):
        make_variant(tmp_path, "fixed")


def test_config_fragment_loads(tmp_path):
    variant = make_variant(tmp_path, "dropped-last")
    data = {**config_fragment(variant, unload_at_end=True), "rounds": 2}
    cfg = config.load(write(tmp_path, data))
    assert (cfg["frontend"], cfg["legacy.source"], cfg["legacy.unload_at_end"]) == \
        ("legacy-fixed", str(variant.resolve()), True)
    assert config_fragment(variant, "legacy")["frontend"] == "legacy"


# -- the tree's hash: every file, names included ---------------------------------------------------------------------

def test_hash_tree_covers_every_file_and_name_and_nothing_else(tmp_path):
    a = tmp_path / "a"
    shutil.copytree(SOURCE, a)
    base = hash_tree(a)
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(SOURCE, b)
    assert hash_tree(b) == base  # where the tree is does not matter
    (a / "sub").mkdir()
    assert hash_tree(a) == base  # an empty directory holds no file
    (a / "sub" / "patch.h").write_text("#define X 1\n")
    with_sub = hash_tree(a)
    assert with_sub != base
    (a / "sub" / "patch.h").write_text("#define X 2\n")
    assert hash_tree(a) not in (base, with_sub)
    (a / "sub" / "patch.h").rename(a / "sub" / "other.h")
    assert hash_tree(a) not in (base, with_sub)
    (a / "sub" / "other.h").unlink()
    assert hash_tree(a) == base
    (a / "Kbuild").write_text((a / "Kbuild").read_text() + "ccflags-y += -DX\n")
    assert hash_tree(a) != base
    (b / "link").symlink_to("Kbuild")
    assert hash_tree(b) != base


# -- the payload recipe, without building ------------------------------------------------------------------------------

class RecordingCache:
    def __init__(self, root: Path):
        self.root, self.calls = root, []

    def entry(self, name, inputs, build):
        self.calls.append((name, inputs))
        return self.root


class FakeApt:
    """The archive after a drift: the headers at the image's version, their build tools at a newer one."""
    def version(self, package):
        return "2.36-9+deb12u14" if package == "libc6" else "6.1.192-2"  # the release's C library is this one's

    def install_set(self, packages):
        assert packages == ["linux-headers-6.1.0-56-amd64=6.1.192-2"]
        return {"linux-headers-6.1.0-56-amd64": "6.1.192-2", "linux-headers-6.1.0-56-common": "6.1.192-2",
                "linux-kbuild-6.1": "6.1.192-3", "linux-compiler-gcc-12-x86": "6.1.192-3", "gcc-12": "12.2.0-14",
                "libc6": "2.36-9+deb12u14"}


def test_modules_entry_is_keyed_by_the_tree(tmp_path):
    # The Debian kernel's headers, as build_payload gets them; RecordingCache builds nothing, so they are never
    # extracted.
    headers = payload_recipe._debian_headers(FakeApt(), "linux-image-6.1.0-56-amd64", "6.1.0-56-amd64",
                                             tmp_path / "log")
    cache = RecordingCache(tmp_path)
    for tree in (SOURCE, make_variant(tmp_path, "unnotified-last"), make_variant(tmp_path, "dropped-last")):
        payload_recipe._frontend_modules(cache, headers, tree, tmp_path / "log")
    sources = [inputs["source"] for name, inputs in cache.calls]
    assert [name for name, _ in cache.calls] == ["frontend-modules"] * 3
    assert len(set(sources)) == 3 and sources[0] == hash_tree(SOURCE)
    for _, inputs in cache.calls:  # ... and by the headers it builds against
        assert {k: inputs[k] for k in headers.key} == headers.key
        assert inputs["kernel"] == "6.1.0-56-amd64"
        assert inputs["packages"] == {"linux-headers-6.1.0-56-amd64": "6.1.192-2",  # what apt resolved, headers
                                      "linux-headers-6.1.0-56-common": "6.1.192-2", "linux-kbuild-6.1": "6.1.192-3"}


def test_modules_entry_is_keyed_by_the_headers(tmp_path):
    cache = RecordingCache(tmp_path)
    never = lambda scratch: pytest.fail("nothing is built")  # noqa: E731
    for key in ({"kernel_build": "kernel-source-0000000000000001"}, {"kernel_build": "kernel-source-0000000000000002"},
                {"build_tree": "/src/linux", "files": "0123456789abcdef"}):
        payload_recipe._frontend_modules(cache, payload_recipe.ModuleHeaders(key, never), SOURCE, tmp_path / "log")
    assert len({json.dumps(inputs, sort_keys=True) for _, inputs in cache.calls}) == 3
    assert {inputs["source"] for _, inputs in cache.calls} == {hash_tree(SOURCE)}
    with pytest.raises(FileNotFoundError, match="frontend module sources not found"):
        payload_recipe._frontend_modules(cache, payload_recipe.ModuleHeaders({}, never), tmp_path / "nope",
                                         tmp_path / "log")


def stub_payload_inputs(monkeypatch, tmp_path: Path, built: list[str]) -> list[Path]:
    """build_payload with everything but the legacy modules' check stubbed; the modules' entry holds `built`."""
    entry = tmp_path / "frontend-modules-0000000000000000"
    entry.mkdir()
    for name in built:
        (entry / name).write_bytes(b"\x7fELF")
    kernel = tmp_path / "kernel-0000000000000000"
    kernel.mkdir()
    (kernel / "version").write_text("6.1.0-56-amd64")
    headers = payload_recipe.ModuleHeaders({"kernel": "6.1.0-56-amd64"},
                                           lambda scratch: pytest.fail("the modules' entry is stubbed"))
    guest = payload_recipe.GuestKernel(kernel, {"guest_kernel": "6.1.0-56-amd64"}, headers, {})
    seen: list[Path] = []

    def modules(cache, given, source, log):
        assert given is headers
        seen.append(source)
        return entry
    monkeypatch.setattr(payload_recipe, "apt_for", lambda *a, **kw: FakeApt())
    monkeypatch.setattr(payload_recipe, "guest_kernel", lambda *a: guest)
    monkeypatch.setattr(payload_recipe, "_guest_tools", lambda *a: tmp_path)
    monkeypatch.setattr(payload_recipe, "_frontend_modules", modules)
    monkeypatch.setattr(payload_recipe, "_payload", lambda *a: pytest.fail("the module check should stop first"))
    return seen


def test_a_tree_without_the_frontends_module_is_a_clear_error(tmp_path, monkeypatch):
    variant = make_variant(tmp_path, "unpublished-last")
    seen = stub_payload_inputs(monkeypatch, tmp_path, ["xenfb_legacy.ko"])
    path = write(tmp_path, config_fragment(variant))
    with pytest.raises(FileNotFoundError) as info:
        build_payload(config.load(path), Cache(tmp_path / "cache"), tmp_path / "log")
    message = str(info.value)
    for part in (str(path), "legacy.source", str(variant.resolve()), "xenfb_legacy_fixed", "'legacy-fixed'",
                 "built: xenfb_legacy"):
        assert part in message, part
    assert seen == [variant.resolve()]


def test_the_default_tree_is_ours(tmp_path, monkeypatch):
    seen = stub_payload_inputs(monkeypatch, tmp_path, [])
    with pytest.raises(FileNotFoundError, match="built: none"):
        build_payload(config.load(write(tmp_path, {"frontend": "legacy"})), Cache(tmp_path / "cache"),
                      tmp_path / "log")
    assert seen == [FRONTEND_SRC]


def test_a_module_frontend_on_a_kernel_without_modules_is_a_clear_error(tmp_path, monkeypatch):
    stub_payload_inputs(monkeypatch, tmp_path, ["xenfb_legacy.ko"])
    kernel = tmp_path / "kernel-source-0000000000000000"
    kernel.mkdir()
    (kernel / "version").write_text("6.1.99-tiny")
    monkeypatch.setattr(payload_recipe, "guest_kernel", lambda *a: payload_recipe.GuestKernel(
        kernel, {"guest_kernel": "6.1.99-tiny"}, None, {}))
    monkeypatch.setattr(payload_recipe, "_frontend_modules", lambda *a: pytest.fail("no headers to build against"))
    path = write(tmp_path, {"frontend": "legacy"})
    with pytest.raises(FileNotFoundError) as info:
        build_payload(config.load(path), Cache(tmp_path / "cache"), tmp_path / "log")
    for part in (str(path), "'legacy'", "6.1.99-tiny", "CONFIG_MODULES"):
        assert part in str(info.value), part


# -- real builds -----------------------------------------------------------------------------------------------------

def modinfo_field(ko: bytes, field: str, tmp_path: Path) -> str:
    path = tmp_path / "module.ko"
    path.write_bytes(ko)
    modinfo = shutil.which("modinfo") or "/sbin/modinfo"
    if not os.path.exists(modinfo):
        pytest.skip("modinfo (kmod) is not installed")
    return subprocess.run([modinfo, "-F", field, str(path)], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.e2e
@pytest.mark.parametrize("name", [*NAMES, None], ids=[*NAMES, "ours"])
def test_real_build(name, tmp_path):
    """The payload of a scenario whose legacy.source is a variant holds that variant's module, which names its
    break; our own tree's modules name none."""
    tree = make_variant(tmp_path, name) if name else SOURCE
    cfg = config.load(write(tmp_path, config_fragment(tree), sources=False))  # the host's apt, as the cache has it
    cache = Cache(default_cache_dir())
    payload = build_payload(cfg, cache, tmp_path / "build.log")
    files = {e.name: e.data for e in read_newc(payload.initrd.read_bytes())}
    assert [n for n in files if n.startswith("modules/")] == ["modules/xenfb_legacy_fixed.ko"]
    entry = next(p for p in cache.used if p.name.startswith("frontend-modules-"))
    assert (entry / "xenfb_legacy_fixed.ko").read_bytes() == files["modules/xenfb_legacy_fixed.ko"]
    for module in ("xenfb_legacy", "xenfb_legacy_fixed"):
        ko = (entry / f"{module}.ko").read_bytes()
        assert modinfo_field(ko, "name", tmp_path) == module
        assert modinfo_field(ko, "vermagic", tmp_path).startswith(payload.versions["guest_kernel"] + " ")
        if name:
            assert modinfo_field(ko, "negative_control", tmp_path) == name
            assert b"negative control: %s" in ko and name.encode() in ko  # the load message
        else:
            assert modinfo_field(ko, "negative_control", tmp_path) == ""
            assert b"negative control" not in ko and b"negative_control" not in ko
