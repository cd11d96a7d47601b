"""The archive moves under us: packages get new revisions, kernel ABIs leave. Each test builds a small Debian
archive of its own (tests/local_archive.py) in the state the real one was or will be in, and runs the harness's
own resolution against it with the real apt: what a build needs is what apt resolves, a kernel that left is an
error naming today's, and a metapackage that moved is followed, keyed and named. Nothing reaches a mirror."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from xenfb_harness import config
from xenfb_harness.artifacts import apt as apt_module
from xenfb_harness.artifacts import common
from xenfb_harness.artifacts.cache import Cache
from xenfb_harness.artifacts.payload import build_payload, debian_header_packages
from xenfb_harness.result import ERROR
from xenfb_harness.run import Job, run_jobs

from .local_archive import BUSYBOX, LocalArchive, headers_of

ABI56, ABI57, ABI58 = "6.1.0-56-amd64", "6.1.0-57-amd64", "6.1.0-58-amd64"
@pytest.fixture
def archive(tmp_path) -> LocalArchive:
    """bookworm as the issue found it: the image and headers at 6.1.192-2, their build tools only at 6.1.192-3
    (security) and 6.1.176-1 (the point release): 6.1.192-2's kbuild is gone."""
    archive = LocalArchive(tmp_path / "archive")
    headers_of(archive, ABI56, "6.1.192-2")
    archive.add("linux-kbuild-6.1", "6.1.192-3")
    archive.add("linux-kbuild-6.1", "6.1.176-1")
    archive.add("linux-compiler-gcc-12-x86", "6.1.192-3")
    archive.add("busybox-static", "1:1.35.0-4+b3", files=BUSYBOX)
    return archive


@pytest.fixture(autouse=True)
def fresh_lists(monkeypatch):
    """Each test's archive is new: its lists are read at once, and no Apt is kept from another test."""
    monkeypatch.setattr(common, "_APTS", {})


def apt_of(archive: LocalArchive, tmp_path: Path) -> apt_module.Apt:
    return common.apt_for(Cache(tmp_path / "cache"), archive.publish(), tmp_path / "apt.log")


def scenario(tmp_path: Path, archive: LocalArchive, **data) -> config.Config:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump({"apt": {"sources": str(archive.publish())}, **data}))
    return config.load(path)


def test_build_tools_newer_than_the_headers_are_taken_as_apt_resolves_them(archive, tmp_path):
    apt = apt_of(archive, tmp_path)
    assert debian_header_packages(apt, f"linux-image-{ABI56}", ABI56) == {
        f"linux-headers-{ABI56}": "6.1.192-2", "linux-headers-6.1.0-56-common": "6.1.192-2",
        "linux-kbuild-6.1": "6.1.192-3"}  # >= 6.1.192-2: the newest there is, never the image's own version


def test_headers_of_the_images_version_that_left_are_an_error_naming_what_the_archive_has(archive, tmp_path):
    archive.remove(f"linux-headers-{ABI56}", "6.1.192-2")
    archive.add(f"linux-headers-{ABI56}", "6.1.192-3")
    apt = apt_of(archive, tmp_path)
    with pytest.raises(LookupError) as info:
        debian_header_packages(apt, f"linux-image-{ABI56}", ABI56)
    assert str(info.value) == (f"linux-headers-{ABI56} 6.1.192-2 is not in bookworm's archive (apt sources "
                               f"{archive.root / 'bookworm.list'}); it has 6.1.192-3")


def test_a_pinned_kernel_that_left_the_archive_is_an_error_naming_todays(archive, tmp_path):
    archive.remove(f"linux-image-{ABI56}", "6.1.192-2")  # bookworm's next ABI came
    headers_of(archive, ABI57, "6.1.192-3")
    archive.add("linux-image-amd64", "6.1.192-3", depends=f"linux-image-{ABI57} (= 6.1.192-3)")
    cfg = scenario(tmp_path, archive, guest={"kernel_package": f"linux-image-{ABI56}"})
    [result] = run_jobs([Job(cfg, tmp_path / "run")], Cache(tmp_path / "cache"), tmp_path / "host")
    assert result.verdict == ERROR
    assert result.error == (f"the guest's artifacts: LookupError: guest.kernel_package: linux-image-{ABI56} is no "
                            f"longer in bookworm's archive (Debian keeps only its current kernels); its current "
                            f"kernel is linux-image-{ABI57} (linux-image-amd64 stands for it, and follows it)")
    assert json.loads((tmp_path / "run" / "result.json").read_text())["error"] == result.error


def unreachable_host(tmp_path: Path) -> dict:
    """An SSH host nobody listens for: the run builds its payload, then its host breaks, without booting one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {"kind": "ssh", "address": "127.0.0.1", "port": port, "key": str(tmp_path / "no-key"),
            "known_hosts": str(tmp_path / "known_hosts")}


def test_a_metapackage_that_moved_to_a_new_abi_is_resolved_keyed_and_named(archive, tmp_path, monkeypatch):
    headers_of(archive, ABI57, "6.1.192-3")
    archive.add("linux-image-amd64", "6.1.192-3", depends=f"linux-image-{ABI57} (= 6.1.192-3)")
    cache = Cache(tmp_path / "cache")

    def run_default(name: str) -> dict:
        """The default kernel (the metapackage) in a run whose host breaks after the build: result.json."""
        cfg = scenario(tmp_path, archive, host=unreachable_host(tmp_path))
        assert cfg["guest.kernel_package"] == "linux-image-amd64"
        [result] = run_jobs([Job(cfg, tmp_path / name)], cache, tmp_path / f"{name}-host")
        assert result.verdict == ERROR and result.error.startswith("the host: ")
        return json.loads((tmp_path / name / "result.json").read_text())

    before = run_default("before")
    assert before["versions"]["guest.kernel_package"] == f"linux-image-amd64 -> linux-image-{ABI57}"
    assert before["versions"]["guest_kernel"] == ABI57
    assert before["packages"]["guest"][f"linux-image-{ABI57}"] == "6.1.192-3"

    # The archive moves on: a new ABI, the metapackage with it; our lists are refreshed on the next run.
    headers_of(archive, ABI58, "6.1.200-1")
    archive.add("linux-image-amd64", "6.1.200-1", depends=f"linux-image-{ABI58} (= 6.1.200-1)")
    archive.publish()
    monkeypatch.setattr(apt_module, "LISTS_MAX_AGE", 0)
    monkeypatch.setattr(common, "_APTS", {})
    after = run_default("after")
    assert after["versions"]["guest.kernel_package"] == f"linux-image-amd64 -> linux-image-{ABI58}"
    assert after["versions"]["guest_kernel"] == ABI58
    assert after["packages"]["guest"][f"linux-image-{ABI58}"] == "6.1.200-1"
    kernels = sorted(json.loads((p / "inputs.json").read_text())["package"] for p in cache.root.glob("kernel-*"))
    assert kernels == [f"linux-image-{ABI57}", f"linux-image-{ABI58}"]  # each its own entry, keyed by its package


def test_the_payload_names_every_package_it_was_built_from(archive, tmp_path):
    cfg = scenario(tmp_path, archive, guest={"kernel_package": f"linux-image-{ABI56}"}, frontend="upstream")
    payload = build_payload(cfg, Cache(tmp_path / "cache"), tmp_path / "build.log")
    assert payload.packages == {f"linux-image-{ABI56}": "6.1.192-2", "busybox-static": "1:1.35.0-4+b3"}
    assert payload.versions == {f"linux-image-{ABI56}": "6.1.192-2", "guest_kernel": ABI56}  # pinned: no arrow
