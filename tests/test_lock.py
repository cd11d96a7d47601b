"""Locks (harness/artifacts/lock.py): a lock recorded from a build holds every package = version with its SHA-256
and apt's answers; a build under it takes exactly those, also after the archive moved on (from a snapshot service
when the archive lost a version), and says so when it cannot. Each test's archive and snapshot service are its
own (tests/local_archive.py), driven by the real apt."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from xenfb_harness import config
from xenfb_harness.artifacts import apt as apt_module
from xenfb_harness.artifacts import common
from xenfb_harness.artifacts import lock as locks
from xenfb_harness.artifacts.cache import Cache
from xenfb_harness.artifacts.lock import LockError
from xenfb_harness.artifacts.payload import build_payload

from .local_archive import BUSYBOX, LocalArchive, headers_of, snapshot_service

ABI57, ABI58 = "6.1.0-57-amd64", "6.1.0-58-amd64"


@pytest.fixture(autouse=True)
def fresh_lists(monkeypatch):
    """Every archive here moves within a test: our lists follow at once, and no Apt is kept across tests."""
    monkeypatch.setattr(apt_module, "LISTS_MAX_AGE", 0)
    monkeypatch.setattr(common, "_APTS", {})


@pytest.fixture
def archive(tmp_path) -> LocalArchive:
    archive = LocalArchive(tmp_path / "archive")
    headers_of(archive, ABI57, "6.1.192-3")
    archive.add("linux-image-amd64", "6.1.192-3", depends=f"linux-image-{ABI57} (= 6.1.192-3)")
    archive.add("busybox-static", "1:1.35.0-4+b3", files=BUSYBOX)
    archive.publish()
    return archive


def scenario(tmp_path: Path, archive: LocalArchive, **apt) -> config.Config:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump({"apt": {"sources": str(archive.root / "bookworm.list"), **apt}}))
    return config.load(path)


def record(cfg: config.Config, tmp_path: Path) -> Path:
    """What `xenfb-harness lock` does for a payload: build it while the lock records."""
    with locks.recording() as lock:
        build_payload(cfg, Cache(tmp_path / "lock-cache"), tmp_path / "lock.log")
    path = tmp_path / "lock.json"
    path.write_text(lock.dump())
    return path


def move_on(archive: LocalArchive) -> Path:
    """bookworm's next ABI: linux-image-amd64 follows it, and the old image leaves the archive. Returns the old
    image's .deb, as a snapshot service still keeps it."""
    old = archive.pool / f"linux-image-{ABI57}_6.1.192-3_amd64.deb"
    kept = old.with_suffix(".kept")
    old.rename(kept)
    headers_of(archive, ABI58, "6.1.200-1")
    archive.add("linux-image-amd64", "6.1.200-1", depends=f"linux-image-{ABI58} (= 6.1.200-1)")
    archive.publish()
    return kept.rename(kept.parent.parent / old.name)


def test_a_lock_holds_every_package_with_its_hash_and_apts_answers(archive, tmp_path):
    lock = json.loads(record(scenario(tmp_path, archive), tmp_path).read_text())
    bookworm = lock["releases"]["bookworm"]
    assert {n: p["version"] for n, p in bookworm["packages"].items()} == {
        f"linux-image-{ABI57}": "6.1.192-3", "busybox-static": "1:1.35.0-4+b3"}
    for name, package in bookworm["packages"].items():
        deb = next((tmp_path / "lock-cache" / "apt" / "debs").glob(f"{name}_*.deb"))
        assert package["sha256"] == locks.sha256(deb)
    assert bookworm["depends"]["linux-image-amd64"] == [f"linux-image-{ABI57}"]
    assert bookworm["candidates"][f"linux-image-{ABI57}"] == "6.1.192-3"


def test_a_locked_build_takes_the_locked_kernel_from_the_snapshot_service_after_the_archive_moved_on(
        archive, tmp_path):
    lock = record(scenario(tmp_path, archive), tmp_path)
    service = snapshot_service(tmp_path / "snapshot", [move_on(archive)])
    cfg = scenario(tmp_path, archive, snapshot=service)
    today = build_payload(cfg, Cache(tmp_path / "today"), tmp_path / "today.log")
    assert today.versions["guest.kernel_package"] == f"linux-image-amd64 -> linux-image-{ABI58}"  # unlocked
    with locks.using(lock):
        locked = build_payload(cfg, Cache(tmp_path / "locked"), tmp_path / "locked.log")
    assert locked.versions["guest.kernel_package"] == f"linux-image-amd64 -> linux-image-{ABI57}"
    assert locked.packages == {f"linux-image-{ABI57}": "6.1.192-3", "busybox-static": "1:1.35.0-4+b3"}


def test_a_locked_version_the_archive_lost_without_a_snapshot_service_is_an_error_naming_it(archive, tmp_path):
    lock = record(scenario(tmp_path, archive), tmp_path)
    move_on(archive)
    with locks.using(lock), pytest.raises(LockError) as info:
        build_payload(scenario(tmp_path, archive), Cache(tmp_path / "locked"), tmp_path / "locked.log")
    assert str(info.value) == (f"linux-image-{ABI57} 6.1.192-3 (locked in {lock}) is no longer in bookworm's "
                               f"archive, which has no version of it; set apt.snapshot to an archive snapshot "
                               f"service's base URL to fetch it from there")


def test_a_file_whose_hash_is_not_the_locks_is_an_error_and_is_not_kept(archive, tmp_path):
    lock = record(scenario(tmp_path, archive), tmp_path)
    move_on(archive)
    other = LocalArchive(tmp_path / "rebuilt")  # the same name and version, other bits
    forged = other.add(f"linux-image-{ABI57}", "6.1.192-3", files={"boot/README": b"not the locked file\n"})
    cfg = scenario(tmp_path, archive, snapshot=snapshot_service(tmp_path / "snapshot", [forged]))
    cache = Cache(tmp_path / "locked")
    with locks.using(lock), pytest.raises(LockError, match=f"linux-image-{ABI57} 6.1.192-3: its .deb has SHA-256 "
                                          f"{locks.sha256(forged)}, but the lock {lock} says"):
        build_payload(cfg, cache, tmp_path / "locked.log")
    assert not list((cache.root / "apt" / "debs").glob(f"linux-image-{ABI57}_*"))
    assert not list(cache.root.glob("kernel-*"))  # nothing half-built


def test_a_question_the_lock_has_no_answer_for_is_an_error(archive, tmp_path):
    lock = record(scenario(tmp_path, archive), tmp_path)
    path = tmp_path / "pinned.yaml"
    path.write_text(yaml.safe_dump({"apt": {"sources": str(archive.root / "bookworm.list")},
                                    "guest": {"kernel_package": f"linux-image-{ABI58}"}}))
    with locks.using(lock), pytest.raises(LockError, match=f"has no answer for the version of linux-image-{ABI58}"):
        build_payload(config.load(path), Cache(tmp_path / "locked"), tmp_path / "locked.log")


@pytest.mark.parametrize("text", ["{not json", '{"lock_version": 99, "releases": {}}', '{"lock_version": 1}',
                                  '{"lock_version": 1, "releases": {"bookworm": {"packages": {"bash": {"version": '
                                  '"5.2"}}}}}'])
def test_a_file_that_is_not_a_lock_is_an_error_naming_it(tmp_path, text):
    path = tmp_path / "lock.json"
    path.write_text(text)
    with pytest.raises(LockError, match=str(path)):
        locks.load(path)


def test_the_lock_command_and_a_locked_run(archive, tmp_path):
    """`xenfb-harness lock` and `run --lock`, as typed: the run's host is one nobody listens for, so it builds its
    payload under the lock, then ERRORs without booting anything; its result names the lock and the locked kernel."""
    from .test_archive_drift import unreachable_host

    def harness(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "xenfb_harness", *args, "--cache-dir", str(tmp_path / "cache")],
                              capture_output=True, text=True, cwd=tmp_path)
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump({"apt": {"sources": str(archive.root / "bookworm.list")},
                                    "host": unreachable_host(tmp_path)}))
    made = harness("lock", str(path), "--output", "my.lock")
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines() == ["bookworm: 2 packages", "lock: my.lock"]
    locked = harness("run", str(path), "--lock", "my.lock", "--output", "run")
    assert locked.returncode == 2, locked.stderr
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["error"].startswith("the host: ")  # the payload was built, as locked; then the host broke
    assert result["versions"]["lock"] == "my.lock"
    assert result["versions"]["guest.kernel_package"] == f"linux-image-amd64 -> linux-image-{ABI57}"
    bad = harness("run", str(path), "--lock", "nope.lock")
    assert bad.returncode == 2 and "--lock: nope.lock: cannot read the lock" in bad.stderr
