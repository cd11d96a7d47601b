"""harness/hosts/snapshot.py, the pure part of nested-host snapshots: what a snapshot is keyed by, whether one in
the cache can be restored, and the facts a restored dom0 must report again. No QEMU: the host artifacts are small
files laid out like cache entries, and a snapshot entry is a state.bin of a few bytes."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from xenfb_harness.artifacts.host import HostArtifacts
from xenfb_harness.config import defaults
from xenfb_harness.hosts import snapshot
from xenfb_harness.hosts.snapshot import (ARTIFACTS, MACHINE_KEYS, META, STATE, age, facts_differ, parse_facts, saved_facts,
                                    snapshot_inputs, unusable, write_meta)

from .test_preflight import XL_INFO

QEMU = "QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u13)"
FACTS = {"xen_version": "4.17.7", "free_memory_mb": "1000"}  # of test_preflight's XL_INFO


def fake_artifacts(root: Path, **keys: str) -> HostArtifacts:
    """Host artifacts as build_host returns them: each file in a cache entry of its own, named <name>-<key>."""
    layout = {"xen": ("xen", "xen"), "dom0_kernel": ("kernel", "vmlinuz"),
              "dom0_initrd": ("dom0-initrd", "initrd.cpio"), "dom0_image": ("dom0-image", "dom0.img")}
    paths = {}
    for field, (entry, name) in layout.items():
        path = root / f"{entry}-{keys.get(field, '0123456789abcdef')}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_bytes(f"{field} contents\n".encode())
        paths[field] = path
    dom0 = paths["dom0_image"].parent
    return HostArtifacts(**paths, ssh_host_key_pub="ssh-ed25519 AAAAC3Nza", ssh_client_key=dom0 / "client_key",
                         xen_version="4.17", versions={})


@pytest.fixture
def art(tmp_path) -> HostArtifacts:
    return fake_artifacts(tmp_path / "cache")


@pytest.fixture
def entry(tmp_path, art) -> Path:
    """A complete snapshot entry of art: a state.bin and its snapshot.json."""
    path = tmp_path / "cache" / "host-snapshot-fedcba9876543210"
    path.mkdir()
    (path / STATE).write_bytes(os.urandom(4096))
    write_meta(path, art, FACTS)
    return path


# -- what a snapshot is keyed by ------------------------------------------------------------------------------------
def test_snapshot_inputs_name_each_artifact_by_its_entry(art):
    inputs = snapshot_inputs(defaults()["host"], art, "tcg", QEMU)
    assert inputs["artifacts"] == {"xen": "xen-0123456789abcdef", "dom0_kernel": "kernel-0123456789abcdef",
                                   "dom0_initrd": "dom0-initrd-0123456789abcdef",
                                   "dom0_image": "dom0-image-0123456789abcdef"}
    assert (inputs["qemu"], inputs["accel"]) == (QEMU, "tcg")
    assert inputs["machine"] == {k: defaults()["host"][k] for k in MACHINE_KEYS}
    json.dumps(inputs)  # a cache key is made of it


@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_snapshot_inputs_change_with_each_artifact_entry(tmp_path, art, artifact):
    other = fake_artifacts(tmp_path / "cache", **{artifact: "aaaaaaaaaaaaaaaa"})
    host = defaults()["host"]
    assert snapshot_inputs(host, other, "tcg", QEMU) != snapshot_inputs(host, art, "tcg", QEMU)


def test_snapshot_inputs_change_with_qemu_and_accel(art):
    host = defaults()["host"]
    base = snapshot_inputs(host, art, "tcg", QEMU)
    assert snapshot_inputs(host, art, "kvm", QEMU) != base
    assert snapshot_inputs(host, art, "tcg", QEMU.replace("7.2.15", "7.2.16")) != base


def test_a_kvm_snapshot_is_keyed_by_this_machines_cpu_too(art, monkeypatch):
    """Under KVM the guest sees the host's CPU (-cpu host), which the migration stream does not carry."""
    host = defaults()["host"]
    assert "host_cpu" not in snapshot_inputs(host, art, "tcg", QEMU)
    kvm = snapshot_inputs(host, art, "kvm", QEMU)
    assert kvm["host_cpu"] == snapshot.host_cpu()
    monkeypatch.setattr(snapshot, "host_cpu", lambda: "another cpu")
    assert snapshot_inputs(host, art, "kvm", QEMU) != kvm


@pytest.mark.parametrize("key, value", [("memory_mb", 4096), ("cpus", 4), ("dom0_memory_mb", 768),
                                        ("xen_cmdline", "loglvl=all")])
def test_snapshot_inputs_change_with_each_machine_setting(art, key, value):
    host = defaults()["host"]
    assert host[key] != value
    assert snapshot_inputs({**host, key: value}, art, "tcg", QEMU) != snapshot_inputs(host, art, "tcg", QEMU)


@pytest.mark.parametrize("key, value", [("boot_timeout", 60), ("idle_timeout_min", 5), ("snapshot", False),
                                        ("accel", "kvm"), ("workdir", "/var/tmp"), ("share_mount", "/mnt")])
def test_snapshot_inputs_ignore_host_keys_that_do_not_shape_the_machine(art, key, value):
    host = defaults()["host"]
    assert host[key] != value
    assert snapshot_inputs({**host, key: value}, art, "tcg", QEMU) == snapshot_inputs(host, art, "tcg", QEMU)


# -- whether a snapshot can be restored ----------------------------------------------------------------------------
def test_a_saved_snapshot_is_usable_and_keeps_its_facts(entry, art):
    assert unusable(entry, art) == ""
    assert saved_facts(entry) == FACTS
    meta = json.loads((entry / META).read_text())
    assert meta["size"] == 4096 and len(meta["sha256"]) == 64
    assert set(meta["artifacts"]) == set(ARTIFACTS)


@pytest.mark.parametrize("text", [None, "{not json", "[]", "{}", '{"size": 4096, "sha256": "00"}'],
                         ids=["missing", "not-json", "a-list", "empty", "no-artifacts"])
def test_a_missing_or_unreadable_meta_is_said(entry, art, text):
    if text is None:
        (entry / META).unlink()
    else:
        (entry / META).write_text(text)
    assert unusable(entry, art).startswith(f"its {META} is missing or unreadable (")


def test_a_missing_state_is_said(entry, art):
    (entry / STATE).unlink()
    assert unusable(entry, art) == f"its {STATE} is missing (No such file or directory)"


def test_a_truncated_state_names_both_sizes(entry, art):
    with open(entry / STATE, "r+b") as f:
        f.truncate(1000)
    why = unusable(entry, art)
    assert "truncated" in why and "1000" in why and "4096" in why
    assert why == f"{STATE} is truncated: 1000 of 4096 bytes"


def test_a_longer_state_is_said(entry, art):
    with open(entry / STATE, "ab") as f:
        f.write(b"\0")
    assert unusable(entry, art) == f"{STATE} is longer than saved: 4097 of 4096 bytes"


@pytest.mark.parametrize("artifact", ARTIFACTS)
@pytest.mark.parametrize("change", ["time", "size"])
def test_a_changed_artifact_is_named(entry, art, artifact, change):
    path = Path(getattr(art, artifact))
    if change == "time":
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    else:
        with open(path, "ab") as f:
            f.write(b"x")
    assert unusable(entry, art) == f"the host artifacts changed since it was saved ({artifact})"


def test_artifacts_at_other_paths_are_changed_artifacts(tmp_path, entry, art):
    moved = fake_artifacts(tmp_path / "elsewhere")
    assert unusable(entry, moved) == ("the host artifacts changed since it was saved "
                                      "(xen, dom0_kernel, dom0_initrd, dom0_image)")


def test_same_size_other_bytes_is_corrupt(entry, art):
    with open(entry / STATE, "r+b") as f:
        f.seek(2048)
        byte = f.read(1)
        f.seek(2048)
        f.write(bytes([byte[0] ^ 1]))
    assert os.path.getsize(entry / STATE) == 4096
    why = unusable(entry, art)
    assert "corrupt" in why and why.startswith(STATE)


def test_write_meta_after_a_new_state_makes_it_usable_again(entry, art):
    (entry / STATE).write_bytes(b"a smaller stream")
    assert "truncated" in unusable(entry, art)
    write_meta(entry, art, {**FACTS, "free_memory_mb": "900"})
    assert unusable(entry, art) == ""
    assert saved_facts(entry)["free_memory_mb"] == "900"


def test_age_is_said_in_the_largest_unit(entry):
    assert age(entry).endswith(" s")
    meta = json.loads((entry / META).read_text())
    meta["saved_at"] = time.time() - 2 * 3600 - 60
    (entry / META).write_text(json.dumps(meta))
    assert age(entry) == "2 h"


# -- what a restored dom0 must report again --------------------------------------------------------------------------
def test_parse_facts_from_xl_info():
    assert parse_facts(XL_INFO) == FACTS


def test_parse_facts_from_the_preflight_probe_around_xl_info():
    probe = f"== id\n0\n== xl\n{XL_INFO}xl-rc=0\n== kernel\n6.1.0-56-amd64\n== workdir\nwritable\n"
    assert parse_facts(probe) == FACTS


def test_parse_facts_does_not_take_look_alike_lines():
    text = "sharing_freed_memory   : 0\nmax_free_memory: 12\nxen_version_extra : 9\nxen_major : 4\n"
    assert parse_facts(text) == {"xen_version": None, "free_memory_mb": None}
    assert parse_facts("") == {"xen_version": None, "free_memory_mb": None}
    assert parse_facts("xl: command not found\n") == {"xen_version": None, "free_memory_mb": None}


def test_facts_differ_says_what_differs():
    assert facts_differ(FACTS, dict(FACTS)) == ""
    assert facts_differ(FACTS, {**FACTS, "free_memory_mb": "985"}) == "free_memory_mb 985 (saved: 1000)"
    assert facts_differ(FACTS, {"xen_version": "4.17.6", "free_memory_mb": None}) == \
        "xen_version 4.17.6 (saved: 4.17.7), free_memory_mb None (saved: 1000)"
    assert facts_differ(FACTS, {**FACTS, "extra": "x"}) == ""  # only what was saved is checked


def test_snapshot_inputs_read_only_the_artifacts_paths():
    p = Path("/nonexistent")  # no file needs to exist: only the names of their entries count
    art = HostArtifacts(xen=p / "xen-1/xen", dom0_kernel=p / "kernel-2/vmlinuz", dom0_initrd=p / "i-3/initrd.cpio",
                        dom0_image=p / "d-4/dom0.img", ssh_host_key_pub="", ssh_client_key=p / "k",
                        xen_version="4.17", versions={})
    inputs = snapshot_inputs(defaults()["host"], art, "tcg", QEMU)
    assert inputs["artifacts"] == {"xen": "xen-1", "dom0_kernel": "kernel-2", "dom0_initrd": "i-3",
                                   "dom0_image": "d-4"}
    assert inputs["recipe"] == snapshot.RECIPE and len(snapshot.RECIPE) == 16
