from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from xenfb_harness.artifacts.cache import Cache, EntryInfo, disk_usage, format_entries, hash_files, human_size, key_of
from xenfb_harness.artifacts.mounts import mounts_under

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


class Builder:
    """A build function that records its calls and writes a file into the entry."""

    def __init__(self, content: str = "built"):
        self.calls: list[Path] = []
        self.content = content
        self.lock = threading.Lock()

    def __call__(self, out: Path) -> None:
        with self.lock:
            self.calls.append(out)
        assert out.is_dir() and not any(out.iterdir())
        (out / "artifact").write_text(self.content)


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".tmp-"))


def entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def test_root_is_created(tmp_path):
    Cache(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()


def test_first_entry_builds_second_reuses(tmp_path):
    cache = Cache(tmp_path)
    build = Builder()
    inputs = {"package": "linux-image", "version": "6.1.0-56"}
    first = cache.entry("kernel", inputs, build)
    assert len(build.calls) == 1
    assert first == tmp_path / f"kernel-{key_of(inputs)}"
    assert first.is_dir() and (first / "artifact").read_text() == "built"
    assert build.calls[0] != first and build.calls[0].parent == tmp_path  # built elsewhere, then renamed
    assert not build.calls[0].exists()
    assert leftovers(tmp_path) == []

    def must_not_build(out: Path) -> None:
        raise AssertionError("built twice")

    second = cache.entry("kernel", dict(inputs), must_not_build)
    assert second == first
    # A fresh Cache object on the same root (another run) also reuses it.
    assert Cache(tmp_path).entry("kernel", dict(inputs), must_not_build) == first


def test_inputs_json_written(tmp_path):
    inputs = {"b": [1, 2], "a": {"z": "x", "y": None}}
    path = Cache(tmp_path).entry("thing", inputs, Builder())
    assert json.loads((path / "inputs.json").read_text()) == inputs


def test_different_inputs_different_dirs(tmp_path):
    cache = Cache(tmp_path)
    a = cache.entry("kernel", {"version": "1"}, Builder("one"))
    b = cache.entry("kernel", {"version": "2"}, Builder("two"))
    c = cache.entry("initrd", {"version": "1"}, Builder("three"))  # same inputs, other name
    assert len({a, b, c}) == 3
    assert (a / "artifact").read_text() == "one"
    assert (b / "artifact").read_text() == "two"
    assert (c / "artifact").read_text() == "three"
    assert entries(tmp_path) == sorted(p.name for p in (a, b, c))


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()], ids=["exception", "keyboardinterrupt"])
def test_failed_build_leaves_nothing(tmp_path, exc):
    cache = Cache(tmp_path)
    seen = []

    def build(out: Path) -> None:
        seen.append(out)
        (out / "half").write_text("partial")
        (out / "sub").mkdir()
        (out / "sub" / "f").write_text("x")
        raise exc

    with pytest.raises(type(exc)):
        cache.entry("kernel", {"v": 1}, build)
    assert seen and not seen[0].exists()
    assert leftovers(tmp_path) == []
    assert entries(tmp_path) == []
    final = tmp_path / f"kernel-{key_of({'v': 1})}"
    assert not final.exists()

    # The next attempt builds from scratch, and the lock was released.
    build2 = Builder()
    assert cache.entry("kernel", {"v": 1}, build2) == final
    assert len(build2.calls) == 1


def test_concurrent_requests_build_once(tmp_path):
    cache = Cache(tmp_path)
    started = threading.Event()
    calls = []
    calls_lock = threading.Lock()

    def build(out: Path) -> None:
        with calls_lock:
            calls.append(out)
        started.set()
        time.sleep(0.3)  # long enough for the second thread to arrive while this one is building
        (out / "artifact").write_text("once")

    results: dict[str, Path] = {}
    errors: list[BaseException] = []

    def worker(tag: str) -> None:
        try:
            results[tag] = cache.entry("writer", {"source": "abc"}, build)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    first = threading.Thread(target=worker, args=("first",))
    first.start()
    assert started.wait(5)
    second_started = time.monotonic()
    second = threading.Thread(target=worker, args=("second",))
    second.start()
    first.join(10)
    second.join(10)
    assert not errors
    assert len(calls) == 1
    assert results["first"] == results["second"]
    assert (results["second"] / "artifact").read_text() == "once"
    assert leftovers(tmp_path) == []
    assert time.monotonic() - second_started < 5


def test_many_threads_build_once(tmp_path):
    cache = Cache(tmp_path)
    calls = []
    barrier = threading.Barrier(6)

    def build(out: Path) -> None:
        calls.append(out)
        time.sleep(0.1)
        (out / "artifact").write_text("x")

    results = []

    def worker():
        barrier.wait()
        results.append(cache.entry("rootfs", {"k": 1}, build))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls) == 1 and len(results) == 6 and len(set(results)) == 1


def test_prune_stale_tmp_removes_unlocked_leftovers(tmp_path):
    cache = Cache(tmp_path)
    stale = tmp_path / ".tmp-dom0-initrd-k3j_x9ab"  # name with a dash, like tempfile makes it
    (stale / "deep").mkdir(parents=True)
    (stale / "deep" / "f").write_text("half built")
    kept = cache.entry("dom0-initrd", {"v": 1}, Builder())
    cache.prune_stale_tmp()
    assert not stale.exists()
    assert kept.is_dir() and (kept / "artifact").exists()


def test_prune_stale_tmp_keeps_dir_being_built(tmp_path):
    cache = Cache(tmp_path)
    busy = tmp_path / ".tmp-kernel-abcd1234"
    busy.mkdir()
    (busy / "f").write_text("in progress")
    # Another run holds the lock of 'kernel' while it builds.
    with open(tmp_path / ".kernel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cache.prune_stale_tmp()
        assert busy.is_dir() and (busy / "f").exists()
    cache.prune_stale_tmp()
    assert not busy.exists()


def test_prune_during_build_leaves_build_alone(tmp_path):
    cache = Cache(tmp_path)
    in_build = threading.Event()
    release = threading.Event()
    result = {}

    def build(out: Path) -> None:
        (out / "artifact").write_text("x")
        in_build.set()
        assert release.wait(5)

    t = threading.Thread(target=lambda: result.setdefault("path", cache.entry("writer", {"a": 1}, build)))
    t.start()
    assert in_build.wait(5)
    assert len(leftovers(tmp_path)) == 1
    cache.prune_stale_tmp()
    assert len(leftovers(tmp_path)) == 1  # still building: not touched
    release.set()
    t.join(5)
    assert (result["path"] / "artifact").read_text() == "x"


def test_key_of_order_independent():
    a = {"package": "p", "version": "1", "nested": {"x": 1, "y": [1, 2]}}
    b = {"nested": {"y": [1, 2], "x": 1}, "version": "1", "package": "p"}
    assert key_of(a) == key_of(b)
    assert len(key_of(a)) == 16 and all(c in "0123456789abcdef" for c in key_of(a))


def test_key_of_distinguishes_values():
    base = {"package": "p", "version": "1"}
    keys = {key_of(base), key_of({**base, "version": "2"}), key_of({"package": "p"}),
            key_of({**base, "extra": None}), key_of({"package": "p", "version": 1}),
            key_of({"l": [1, 2]}), key_of({"l": [2, 1]})}
    assert len(keys) == 7


def test_hash_files(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("one")
    b.write_text("two")
    h1 = hash_files(a, b)
    assert h1 == hash_files(a, b) == hash_files(b, a)  # stable, order-independent
    assert len(h1) == 16
    a.write_text("one!")
    h2 = hash_files(a, b)
    assert h2 != h1
    a.write_text("one")
    assert hash_files(a, b) == h1
    assert hash_files(a) != hash_files(b) != hash_files(a, b)


def test_hash_files_boundary_between_files(tmp_path):
    # Moving bytes from one file to the next must change the hash.
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"xy")
    b.write_bytes(b"z")
    h1 = hash_files(a, b)
    a.write_bytes(b"x")
    b.write_bytes(b"yz")
    assert hash_files(a, b) != h1


def test_hash_files_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        hash_files(tmp_path / "nope")


@pytest.fixture
def unmount_leftovers(tmp_path):
    yield
    for point in mounts_under(tmp_path):
        subprocess.run(["umount", "--lazy", point], check=True)


def mount_tmpfs(point: Path) -> None:
    point.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "test-tmpfs", str(point)], check=True)
    (point / "inside").write_text("on the mounted file system")


@needs_root
def test_interrupted_build_unmounts_what_it_mounted(tmp_path, unmount_leftovers):
    def build(out: Path) -> None:  # like mmdebstrap interrupted before its own clean-up
        mount_tmpfs(out / "proc")
        mount_tmpfs(out / "dev" / "pts")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Cache(tmp_path).entry("dom0-image", {"v": 1}, build)
    assert mounts_under(tmp_path) == []
    assert leftovers(tmp_path) == [] and entries(tmp_path) == []


@needs_root
def test_prune_stale_tmp_unmounts_leftovers(tmp_path, unmount_leftovers):
    cache = Cache(tmp_path)
    stale = tmp_path / ".tmp-dom0-image-x1y2z3ab"
    mount_tmpfs(stale / "proc")
    mount_tmpfs(stale / "sys")
    cache.prune_stale_tmp()
    assert mounts_under(tmp_path) == [] and not stale.exists()


def test_used_records_what_this_run_returned(tmp_path):
    first = Cache(tmp_path)
    built = first.entry("kernel", {"v": 1}, Builder())
    other = first.entry("xen", {"v": 1}, Builder())
    assert first.used == {built, other}
    second = Cache(tmp_path)  # another run: finds kernel built
    assert second.entry("kernel", {"v": 1}, Builder()) == built
    assert second.used == {built}


def make_cache(tmp_path) -> tuple[Cache, dict[str, Path]]:
    cache = Cache(tmp_path)
    made = {
        "k1": cache.entry("kernel", {"package": "linux-image", "version": "1"}, Builder("a" * 10000)),
        "k2": cache.entry("kernel", {"package": "linux-image", "version": "2"}, Builder()),
        "xen": cache.entry("xen", {"package": "xen-hypervisor", "version": "4.17"}, Builder()),
    }
    old = time.time() - 3 * 86400
    os.utime(made["k1"], (old, old))
    (tmp_path / "apt" / "debs").mkdir(parents=True)
    (tmp_path / "apt" / "debs" / "a.deb").write_bytes(b"x" * 20000)
    (tmp_path / ".tmp-xen-abcd1234").mkdir()  # a build in progress, or a leftover: not an entry
    (tmp_path / "no-key-here").mkdir()
    return cache, made


def test_entries(tmp_path):
    cache, made = make_cache(tmp_path)
    (made["xen"] / "inputs.json").unlink()
    found = cache.entries()
    assert [(e.name, e.path) for e in found] == [("kernel", made["k1"]), ("kernel", made["k2"]), ("xen", made["xen"])]
    k1 = found[0]
    assert k1.key == key_of({"package": "linux-image", "version": "1"})
    assert k1.inputs == {"package": "linux-image", "version": "1"}
    assert found[2].inputs == {}
    assert k1.size_bytes == disk_usage(made["k1"]) and k1.size_bytes >= 10000
    assert abs(k1.mtime - (time.time() - 3 * 86400)) < 5
    others = cache.other_sizes()
    assert sorted(others) == ["apt", "no-key-here"] and others["apt"] >= 20000


def test_disk_usage_counts_blocks_and_hard_links_once(tmp_path):
    sparse = tmp_path / "disk.img"
    with open(sparse, "wb") as f:
        f.truncate(100 << 20)  # like a fresh mkfs image: 100 MiB long, almost nothing on disk
    assert disk_usage(tmp_path) < 1 << 20
    data = tmp_path / "data"
    data.write_bytes(os.urandom(1 << 20))
    once = disk_usage(tmp_path)
    os.link(data, tmp_path / "same-data")
    (tmp_path / "link").symlink_to("/usr")
    assert once + 4096 >= disk_usage(tmp_path) >= once >= 1 << 20


def test_prune_removes_what_is_not_kept(tmp_path):
    cache, made = make_cache(tmp_path)
    would = cache.prune({made["k2"]}, dry_run=True)
    assert [e.path for e in would] == [made["k1"], made["xen"]]
    assert all(p.is_dir() for p in made.values())

    removed = cache.prune({made["k2"]})
    assert removed == would
    assert not made["k1"].exists() and not made["xen"].exists() and (made["k2"] / "artifact").exists()
    assert (tmp_path / "apt" / "debs" / "a.deb").exists() and (tmp_path / "no-key-here").is_dir()
    assert leftovers(tmp_path) == [".tmp-xen-abcd1234"]  # the prune left no .tmp- of its own
    assert cache.prune({made["k2"]}) == []


def test_prune_keeps_what_this_run_used(tmp_path):
    _, made = make_cache(tmp_path)
    run = Cache(tmp_path)
    run.entry("xen", {"package": "xen-hypervisor", "version": "4.17"}, Builder())
    assert [e.path for e in run.prune(run.used)] == [made["k1"], made["k2"]]
    assert [e.path for e in run.entries()] == [made["xen"]]


def test_prune_skips_a_name_being_built(tmp_path):
    cache, made = make_cache(tmp_path)
    with open(tmp_path / ".kernel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run is building a kernel entry
        assert [e.path for e in cache.prune(set(), dry_run=True)] == [made["xen"]]
        assert [e.path for e in cache.prune(set())] == [made["xen"]]
    assert made["k1"].is_dir() and made["k2"].is_dir()
    assert [e.path for e in cache.prune(set())] == [made["k1"], made["k2"]]


@pytest.mark.parametrize("size, text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"),
                                        (int(62.9 * 2**20), "62.9 MiB"), (3 * 2**30, "3.0 GiB"),
                                        (5 * 2**40, "5.0 TiB")])
def test_human_size(size, text):
    assert human_size(size) == text


def test_format_entries():
    now = 1_000_000.0
    rows = [
        EntryInfo("kernel", "fd95fd9fe42d4f7a", Path("/c/kernel-fd95fd9fe42d4f7a"), int(73.9 * 2**20),
                  {"build": "49158f96cf06db3a", "modules": ["ext4", "xenfs"], "package": "linux-image-6.1.0-56-amd64",
                   "version": "6.1.192-2"}, now - 3 * 86400 - 5),
        EntryInfo("dom0-image", "19311cc5c59e2682", Path("/c/dom0-image-19311cc5c59e2682"), int(295.7 * 2**20),
                  {"packages": {"a": "1", "b": "2"}, "sources": "Types: deb\nURIs: http://x\n", "suite": "bookworm"},
                  now - 7200),
        EntryInfo("writer", "0123456789abcdef", Path("/c/writer-0123456789abcdef"), 512,
                  {"gcc": "gcc (Debian 12.2.0-14+deb12u1) 12.2.0", "kernel": "kernel-fd95fd9fe42d4f7a", "x": None},
                  now - 30),
    ]
    assert format_entries(rows, now=now) == "\n".join([
        "NAME        KEY                    SIZE     AGE  INPUTS",
        "kernel      fd95fd9fe42d4f7a   73.9 MiB     3 d  package=linux-image-6.1.0-56-amd64, version=6.1.192-2, 2 ...",
        "dom0-image  19311cc5c59e2682  295.7 MiB     2 h  suite=bookworm, 2 packages",
        "writer      0123456789abcdef      512 B  <1 min  gcc=gcc (Debian 12.2.0-14+deb12u1) 12.2.0, kernel=kernel-...",
        "total                         369.6 MiB          3 entries",
    ])
    assert format_entries([], now=now).splitlines()[-1].split() == ["total", "0", "B", "0", "entries"]


# -- entries made by the caller's own work (a snapshot of a running VM): path, find, saving, discard ----------------
SNAP = {"artifacts": {"xen": "xen-0123456789abcdef"}, "qemu": "7.2.15", "accel": "tcg"}


def test_path_is_where_the_entry_would_be_and_makes_nothing(tmp_path):
    cache = Cache(tmp_path)
    assert cache.path("host-snapshot", SNAP) == tmp_path / f"host-snapshot-{key_of(SNAP)}"
    assert list(tmp_path.iterdir()) == [] and cache.used == set()


def test_find_a_missing_entry_is_none_and_not_used(tmp_path):
    cache = Cache(tmp_path)
    (tmp_path / f".tmp-host-snapshot-{key_of(SNAP)}").mkdir()  # one being made is not there yet
    assert cache.find("host-snapshot", SNAP) is None
    assert cache.used == set()


def test_find_a_complete_entry_marks_it_used(tmp_path):
    made = Cache(tmp_path).entry("host-snapshot", SNAP, Builder())  # another run made it
    cache = Cache(tmp_path)
    assert cache.find("host-snapshot", dict(SNAP)) == made
    assert cache.used == {made}


def test_saving_commits_what_the_block_put_in_with_its_inputs(tmp_path):
    cache = Cache(tmp_path)
    with cache.saving("host-snapshot", SNAP) as tmp:
        assert tmp.is_dir() and tmp.parent == tmp_path and tmp.name.startswith(".tmp-host-snapshot-")
        (tmp / "state.bin").write_bytes(b"stream")
        assert cache.find("host-snapshot", SNAP) is None  # not there before the block ends
    final = cache.path("host-snapshot", SNAP)
    assert (final / "state.bin").read_bytes() == b"stream"
    assert json.loads((final / "inputs.json").read_text()) == SNAP
    assert leftovers(tmp_path) == [] and cache.used == {final}
    assert Cache(tmp_path).find("host-snapshot", SNAP) == final


def test_saving_an_empty_block_gives_up_and_leaves_nothing(tmp_path):
    cache = Cache(tmp_path)
    with cache.saving("host-snapshot", SNAP) as tmp:
        assert tmp is not None  # e.g. saving the VM's state failed and removed its file
    assert not tmp.exists() and entries(tmp_path) == [] and leftovers(tmp_path) == []
    with cache.saving("host-snapshot", SNAP) as again:  # the lock was released: the next run may save one
        assert again is not None
        (again / "state.bin").write_bytes(b"x")
    assert cache.find("host-snapshot", SNAP) is not None


def test_a_given_up_entry_is_not_used(tmp_path):
    cache = Cache(tmp_path)
    with cache.saving("host-snapshot", SNAP):
        pass
    assert cache.used == set()


@pytest.mark.parametrize("exc", [RuntimeError("settle failed"), KeyboardInterrupt()], ids=["exception", "interrupt"])
def test_saving_removes_its_directory_and_reraises(tmp_path, exc):
    cache = Cache(tmp_path)
    with pytest.raises(type(exc)):
        with cache.saving("host-snapshot", SNAP) as tmp:
            (tmp / "state.bin").write_bytes(b"half a stream")
            raise exc
    assert not tmp.exists() and entries(tmp_path) == [] and leftovers(tmp_path) == []
    assert cache.used == set()
    with cache.saving("host-snapshot", SNAP) as again:
        assert again is not None  # the lock was released


def test_saving_yields_none_when_the_entry_exists(tmp_path):
    made = Cache(tmp_path).entry("host-snapshot", SNAP, Builder("first"))
    with Cache(tmp_path).saving("host-snapshot", SNAP) as tmp:
        assert tmp is None
    assert (made / "artifact").read_text() == "first" and leftovers(tmp_path) == []


def test_saving_yields_none_while_another_run_holds_the_lock(tmp_path):
    cache = Cache(tmp_path)
    with open(tmp_path / ".host-snapshot.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run is saving one right now
        started = time.monotonic()
        with cache.saving("host-snapshot", SNAP) as tmp:
            assert tmp is None
        assert time.monotonic() - started < 1  # it does not wait for the other run
        with cache.saving("other-name", SNAP) as other:  # only that name's lock counts
            assert other is not None
            (other / "f").write_text("x")
    assert entries(tmp_path) == [f"other-name-{key_of(SNAP)}"] and leftovers(tmp_path) == []


def test_saving_yields_none_while_another_process_saves(tmp_path):
    """The other run is a real process, in its own saving() block until told to end it."""
    script = ("import sys; from pathlib import Path; from xenfb_harness.artifacts.cache import Cache\n"
              "with Cache(Path(sys.argv[1])).saving('host-snapshot', {'k': 1}) as tmp:\n"
              "    print(tmp is not None, flush=True); sys.stdin.read(); (tmp / 'state.bin').write_text('theirs')\n")
    other = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    try:
        assert other.stdout.readline() == "True\n"
        with Cache(tmp_path).saving("host-snapshot", {"k": 1}) as tmp:
            assert tmp is None
    finally:
        other.communicate("", timeout=10)
    assert other.returncode == 0
    assert (Cache(tmp_path).path("host-snapshot", {"k": 1}) / "state.bin").read_text() == "theirs"


def test_discard_removes_the_entry_and_leaves_no_tmp(tmp_path):
    cache = Cache(tmp_path)
    entry = cache.entry("host-snapshot", SNAP, Builder())
    (entry / "deep" / "er").mkdir(parents=True)
    (entry / "deep" / "er" / "state.bin").write_bytes(b"x" * 10000)
    kept = cache.entry("host-snapshot", {"other": 1}, Builder())
    cache.discard(entry)
    assert not entry.exists() and kept.is_dir()
    assert leftovers(tmp_path) == [] and cache.used == {kept}
    assert cache.find("host-snapshot", SNAP) is None


def test_discard_leaves_an_entry_whose_name_another_run_holds(tmp_path):
    cache = Cache(tmp_path)
    entry = cache.entry("host-snapshot", SNAP, Builder())
    with open(tmp_path / ".host-snapshot.lock", "w") as lock:  # the name, parsed from the dashed entry name
        fcntl.flock(lock, fcntl.LOCK_EX)
        cache.discard(entry)
    assert entry.is_dir() and leftovers(tmp_path) == []
    assert entry not in cache.used


def test_discard_of_an_entry_already_gone_does_nothing(tmp_path):
    first, second = Cache(tmp_path), Cache(tmp_path)
    entry = first.entry("host-snapshot", SNAP, Builder())
    assert second.find("host-snapshot", SNAP) == entry  # both runs found it broken
    first.discard(entry)
    second.discard(entry)
    assert entries(tmp_path) == [] and second.used == set()
