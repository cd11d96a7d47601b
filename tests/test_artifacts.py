"""The two recipes: the host (Xen, dom0) is made of the host's config keys alone, a guest's payload of the guest's,
and each recipe file keys only its own entries.

The tests that build use the real cache and apt, but never build: an entry missing from the cache skips them (so
they take seconds); `pytest -m e2e tests/test_artifacts.py` builds the shipped scenarios' entries for real.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from xenfb_harness import config, frontends
from xenfb_harness.artifacts import host as host_recipe
from xenfb_harness.artifacts import payload as payload_recipe
from xenfb_harness.artifacts.cache import Cache, default_cache_dir
from xenfb_harness.artifacts.common import recipe_hash
from xenfb_harness.artifacts.host import HOST_KEYS, HostArtifacts, build_host, host_inputs
from xenfb_harness.artifacts.payload import Payload, build_payload
from tests.test_cpio import read_newc

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "harness" / "artifacts"
# Everything a guest is made of, each changed from its default.
GUEST_SIDE = """
frontend: legacy-fixed
legacy: {race_window_ms: 5, unload_at_end: true}
rounds: 3
seed: 9
writer: {kind: xorg, lifecycle: per-round, mode: sparse, pages: 3, touches: 2, order: ascending, touch_gap_us: 7}
guest: {memory_mb: 512, mapping_checks: true, vcpus: 2, kernel_package: linux-image-6.1.0-99-amd64,
        extra_cmdline: "loglevel=8", boot_timeout: 99}
capture: {quiet_ms: 500}
compare: {exclude: [{x: 0, y: 0, w: 8, h: 8}]}
"""


def load(tmp_path: Path, text: str = "", name: str = "c.yaml") -> config.Config:
    path = tmp_path / name
    path.write_text(text)
    return config.load(path)


def test_host_inputs_are_exactly_the_host_keys(tmp_path):
    inputs = host_inputs(load(tmp_path))
    assert list(inputs) == list(HOST_KEYS) == ["host.xen_package", "host.dom0_kernel_package", "apt.sources",
                                               "apt.suite", "apt.snapshot"]
    assert inputs["host.xen_package"] == "xen-hypervisor-4.17-amd64"


def test_host_inputs_ignore_writer_frontend_and_guest_keys(tmp_path):
    assert host_inputs(load(tmp_path, GUEST_SIDE, "guest.yaml")) == host_inputs(load(tmp_path))


@pytest.mark.parametrize("text", ["host: {xen_package: xen-hypervisor-4.16-amd64}",
                                  "host: {dom0_kernel_package: linux-image-6.1.0-99-amd64}",
                                  "apt: {suite: trixie}"])
def test_host_inputs_change_with_host_keys(tmp_path, text):
    assert host_inputs(load(tmp_path, text)) != host_inputs(load(tmp_path))


def test_each_recipe_keys_its_entries_with_its_own_file_and_common():
    assert host_recipe.RECIPE == recipe_hash(ARTIFACTS / "host.py")
    assert payload_recipe.RECIPE == recipe_hash(ARTIFACTS / "payload.py")
    assert host_recipe.RECIPE != payload_recipe.RECIPE
    # Neither recipe loads the other.
    for recipe, other in (("host.py", "payload"), ("payload.py", "host")):
        tree = ast.parse((ARTIFACTS / recipe).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom | ast.Import) for a in n.names}
        assert not {m for m in imported if m and m.split(".")[-1] == other}, recipe


# -- command.packages: which files of a package the guest gets ------------------------------------------------------

def build_deb(tmp_path: Path, files: dict[str, bytes | str | Path], hardlinks: dict[str, str] = {}) -> Path:
    """A real .deb (dpkg-deb --build) holding `files`: bytes are a file's content, a str a symlink's target, a
    Path a file to copy; `hardlinks` maps a name to the file it is another name of."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb not found")
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text("Package: xfb-test\nVersion: 1.0\nArchitecture: all\n"
                                             "Maintainer: test <test@example.org>\nDescription: a test package\n")
    for name, what in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(what, bytes):
            path.write_bytes(what)
        elif isinstance(what, Path):
            shutil.copy2(what, path)
        else:
            path.symlink_to(what)
    for name, target in hardlinks.items():
        os.link(root / target, root / name)
    deb = tmp_path / "xfb-test_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", str(root), str(deb)], check=True, capture_output=True)
    return deb


TRUE = Path("/bin/true").resolve()


def test_user_files_split_programs_from_the_rest_and_leave_out_docs(tmp_path):
    deb = build_deb(tmp_path, {
        "usr/bin/xfb-true": TRUE,
        "usr/share/xfb-test/data.txt": b"some data\n",
        "usr/bin/xfb-true-link": "xfb-true",                      # a symlink to the program
        "usr/share/doc/xfb-test/copyright": b"(c) nobody\n",
        "usr/share/doc/xfb-test/changelog.Debian.gz": b"\x1f\x8b",
        "usr/share/man/man1/xfb-true.1.gz": b"\x1f\x8b",
    })
    programs, rest = payload_recipe._user_files(deb)
    assert programs == ["usr/bin/xfb-true"]
    assert sorted(rest) == ["usr/bin/xfb-true-link", "usr/share/xfb-test/data.txt"]


def test_user_files_elf_means_the_content_not_the_mode_or_place(tmp_path):
    script = b"#!/bin/sh\necho hi\n"
    deb = build_deb(tmp_path, {
        "usr/bin/xfb-script": script,                 # in a bin directory, but not ELF
        "usr/lib/xfb-test/plugin.so": TRUE,           # an ELF outside bin
        "usr/share/xfb-test/ELF": b"\x7fEL",          # almost
        "usr/share/xfb-test/empty": b"",
        "usr/share/xfb-test/dangling": "/nowhere",    # a symlink is a symlink, wherever it points
        "usr/share/info/xfb.info": b"info",
        "usr/share/locale/de/LC_MESSAGES/xfb.mo": b"mo",
        "usr/share/lintian/overrides/xfb-test": b"x",
        "usr/share/docs-are-not-doc/keep": b"kept",  # only the documentation directories themselves go
    })
    programs, rest = payload_recipe._user_files(deb)
    assert programs == ["usr/lib/xfb-test/plugin.so"]
    assert sorted(rest) == ["usr/bin/xfb-script", "usr/share/docs-are-not-doc/keep", "usr/share/xfb-test/ELF",
                            "usr/share/xfb-test/dangling", "usr/share/xfb-test/empty"]


def test_user_files_of_a_package_of_directories_and_docs_only(tmp_path):
    deb = build_deb(tmp_path, {"usr/share/doc/xfb-test/README": b"read me\n"})
    assert payload_recipe._user_files(deb) == ([], [])


def test_user_files_keep_every_name_of_a_hard_linked_program(tmp_path):
    deb = build_deb(tmp_path, {"usr/bin/xfb-true": TRUE}, hardlinks={"usr/bin/xfb-true-too": "usr/bin/xfb-true"})
    programs, rest = payload_recipe._user_files(deb)
    assert "usr/bin/xfb-true" in programs
    assert "usr/bin/xfb-true-too" in programs + rest


def test_user_files_rejects_what_is_not_a_deb(tmp_path):
    bad = tmp_path / "not.deb"
    bad.write_bytes(b"hello")
    with pytest.raises(subprocess.CalledProcessError):
        payload_recipe._user_files(bad)


# -- against the real cache, building nothing ---------------------------------------------------------------------

class NotCached(Exception):
    pass


class CachedOnly(Cache):
    """The real cache, but an entry that is not there is never built: NotCached instead."""
    def entry(self, name, inputs, build):
        def refuse(out: Path) -> None:
            raise NotCached(f"{name} {json.dumps(inputs, sort_keys=True)[:300]}")
        return super().entry(name, inputs, refuse)


def cached(fn, cfg: config.Config, cache: Cache, tmp_path: Path):
    try:
        return fn(cfg, cache, tmp_path / "build.log")
    except NotCached as e:
        pytest.skip(f"not in the artifact cache yet ({e}); `pytest -m e2e tests/test_artifacts.py` builds it")


@pytest.fixture(scope="module")
def cache() -> Cache:
    return CachedOnly(default_cache_dir())


def shipped(name: str) -> config.Config:
    return config.load(ROOT / "configs" / f"{name}.yaml")


def initramfs(payload: Payload) -> dict[str, bytes]:
    return {e.name: e.data for e in read_newc(payload.initrd.read_bytes())}


def test_warm_build_returns_existing_files(cache, tmp_path):
    cfg = shipped("default")
    start = time.monotonic()
    host = cached(build_host, cfg, cache, tmp_path)
    payload = cached(build_payload, cfg, cache, tmp_path)
    took = time.monotonic() - start
    assert isinstance(host, HostArtifacts) and isinstance(payload, Payload)
    for f in (host.xen, host.dom0_kernel, host.dom0_initrd, host.dom0_image, host.ssh_client_key, payload.kernel,
              payload.initrd):
        assert f.is_file(), f
    assert host.ssh_host_key_pub.startswith("ssh-ed25519 ") and host.xen_version == "4.17"
    assert payload.kernel.read_bytes()[:4] == b"\x7fELF"  # uncompressed, for a fast xl create
    assert payload.kernel.parent == payload.initrd.parent and payload.kernel.parent.name.endswith(payload.key)
    assert payload.sizes == {"vmlinux": payload.kernel.stat().st_size, "initrd.cpio": payload.initrd.stat().st_size}
    # The default metapackage stands for today's kernel, and the payload names it and its version.
    image = f"linux-image-{payload.versions['guest_kernel']}"
    assert payload.versions["guest.kernel_package"] == f"{cfg['guest.kernel_package']} -> {image}"
    assert payload.packages[image] == payload.versions[image]
    assert took < 60, f"a warm build took {took:.1f} s"


def test_host_reads_nothing_but_its_inputs(cache, tmp_path):
    """A config holding only the host's keys builds the same host: nothing else is read."""
    cfg = shipped("default")
    data: dict = {}
    for key, value in host_inputs(cfg).items():
        section, name = key.split(".")
        data.setdefault(section, {})[name] = value
    assert cached(build_host, config.Config("host keys only", data), cache, tmp_path) == \
        cached(build_host, cfg, cache, tmp_path)


def test_payload_holds_the_frontends_module_only(cache, tmp_path):
    legacy = initramfs(cached(build_payload, shipped("legacy-race"), cache, tmp_path))
    assert legacy["modules/xenfb_legacy.ko"][:4] == b"\x7fELF"
    assert [n for n in legacy if n.startswith("modules/")] == ["modules/xenfb_legacy.ko"]
    upstream = initramfs(cached(build_payload, shipped("default"), cache, tmp_path))
    assert not [n for n in upstream if n.startswith("modules")]
    for files in (legacy, upstream):
        assert {"init", "bin/busybox", "bin/xfb-writer", "bin/xfb-mapcheck", "dev/console"} <= set(files)
        assert "usr/lib/xorg/Xorg" not in files


def test_xorg_payload_holds_the_x_server(cache, tmp_path):
    files = initramfs(cached(build_payload, shipped("xorg-upstream"), cache, tmp_path))
    assert {"usr/lib/xorg/Xorg", "usr/bin/xfb-xwriter", "etc/X11/xfb-xorg.conf"} <= set(files)


def test_guest_only_input_changes_the_payload_not_the_host(cache, tmp_path):
    default, legacy = shipped("default"), shipped("legacy-race")
    assert default["frontend"] != legacy["frontend"] and host_inputs(default) == host_inputs(legacy)
    assert cached(build_payload, default, cache, tmp_path).key != cached(build_payload, legacy, cache, tmp_path).key
    host = cached(build_host, default, cache, tmp_path)
    assert cached(build_host, legacy, cache, tmp_path) == host  # the dom0 image and every other host file


def test_editing_the_guest_recipe_rebuilds_no_host_entry(cache, tmp_path, monkeypatch):
    cfg = shipped("default")
    host = cached(build_host, cfg, cache, tmp_path)
    cached(build_payload, cfg, cache, tmp_path)
    monkeypatch.setattr(payload_recipe, "RECIPE", "edited")
    assert build_host(cfg, cache, tmp_path / "build.log") == host
    with pytest.raises(NotCached, match="guest-tools"):  # the guest's own entries are rebuilt
        build_payload(cfg, cache, tmp_path / "build.log")


def test_one_apt_update_for_host_and_payload(cache, tmp_path, monkeypatch):
    from xenfb_harness.artifacts import apt as apt_module
    cfg = shipped("default")
    cached(build_host, cfg, cache, tmp_path)  # the first call in this process may update
    calls = []
    monkeypatch.setattr(apt_module.Apt, "update", lambda self: calls.append(self))
    cached(build_host, cfg, cache, tmp_path)
    cached(build_payload, cfg, cache, tmp_path)
    assert calls == []


# -- real builds --------------------------------------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.skipif(os.geteuid() != 0, reason="building the dom0 image needs root (mmdebstrap)")
@pytest.mark.parametrize("name", ["default", "legacy-race", "xorg-upstream"])
def test_real_build_of_the_shipped_scenarios(name, tmp_path):
    cfg = shipped(name)
    cache = Cache(default_cache_dir())
    host = build_host(cfg, cache, tmp_path / "build.log")
    payload = build_payload(cfg, cache, tmp_path / "build.log")
    assert host.dom0_image.is_file() and payload.kernel.is_file() and payload.initrd.is_file()
    module = frontends.frontend(cfg["frontend"]).module
    names = set(initramfs(payload))
    assert (f"modules/{module}.ko" in names) if module else not any(n.startswith("modules") for n in names)
