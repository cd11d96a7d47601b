from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from xenfb_harness.artifacts.cpio import CpioWriter

FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor",
          "rdevmajor", "rdevminor", "namesize", "check")


@dataclass
class Entry:
    name: str
    data: bytes
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    filesize: int
    devmajor: int
    devminor: int
    rdevmajor: int
    rdevminor: int
    namesize: int
    check: int


def align4(n: int) -> int:
    return (n + 3) & ~3


def read_newc(blob: bytes) -> list[Entry]:
    """An independent reader of the 'newc' format, strict about everything the kernel relies on."""
    entries = []
    pos = 0
    while True:
        assert pos % 4 == 0, f"entry at {pos} is not 4-byte aligned"
        assert blob[pos:pos + 6] == b"070701", f"bad magic at {pos}: {blob[pos:pos + 6]!r}"
        raw = blob[pos + 6:pos + 110]
        assert len(raw) == 104, "truncated header"
        assert all(c in b"0123456789abcdefABCDEF" for c in raw), raw
        values = {name: int(raw[i * 8:(i + 1) * 8], 16) for i, name in enumerate(FIELDS)}
        name_start = pos + 110
        name_end = name_start + values["namesize"]
        name_raw = blob[name_start:name_end]
        assert name_raw.endswith(b"\0") and b"\0" not in name_raw[:-1], name_raw
        pad = blob[name_end:pos + align4(110 + values["namesize"])]
        assert pad == b"\0" * len(pad), "header+name padding is not NULs"
        data_start = pos + align4(110 + values["namesize"])
        data_end = data_start + values["filesize"]
        data = blob[data_start:data_end]
        assert len(data) == values["filesize"], "truncated data"
        next_pos = align4(data_end)
        assert blob[data_end:next_pos] == b"\0" * (next_pos - data_end), "data padding is not NULs"
        entry = Entry(name=name_raw[:-1].decode(), data=data, **values)
        entries.append(entry)
        pos = next_pos
        if entry.name == "TRAILER!!!":
            assert pos == len(blob), f"{len(blob) - pos} bytes after the trailer"
            return entries


def archive(build) -> bytes:
    buf = io.BytesIO()
    w = CpioWriter(buf)
    build(w)
    w.close()
    return buf.getvalue()


def by_name(entries: list[Entry]) -> dict[str, Entry]:
    return {e.name: e for e in entries}


def sample(w: CpioWriter) -> None:
    for d in ("bin", "dev", "proc"):
        w.directory(d)
    w.directory("secret", 0o700)
    w.char_device("dev/console", 5, 1)
    w.char_device("dev/null", 1, 3, 0o666)
    w.file("bin/busybox", b"\x7fELF" + bytes(range(256)) * 3 + b"odd", 0o755)
    w.file("init", b"#!/bin/sh\necho hi\n", 0o755)
    w.file("empty", b"")
    w.file("etc-motd", b"abc")  # lengths 0..3 mod 4 exercise the data padding
    w.file("a", b"ab")
    w.symlink("bin/sh", "busybox")
    w.symlink("/lib64", "/lib")


def test_round_trip():
    entries = read_newc(archive(sample))
    names = [e.name for e in entries]
    assert names == ["bin", "dev", "proc", "secret", "dev/console", "dev/null", "bin/busybox", "init", "empty",
                     "etc-motd", "a", "bin/sh", "lib64", "TRAILER!!!"]
    e = by_name(entries)

    for d in ("bin", "dev", "proc"):
        assert e[d].mode == stat.S_IFDIR | 0o755 and e[d].filesize == 0
    assert e["secret"].mode == stat.S_IFDIR | 0o700

    busybox = e["bin/busybox"]
    assert busybox.mode == stat.S_IFREG | 0o755
    assert busybox.data == b"\x7fELF" + bytes(range(256)) * 3 + b"odd"
    assert e["init"].data == b"#!/bin/sh\necho hi\n" and e["init"].mode == stat.S_IFREG | 0o755
    assert e["empty"].data == b"" and e["empty"].mode == stat.S_IFREG | 0o644
    assert e["etc-motd"].data == b"abc" and e["a"].data == b"ab"

    sh = e["bin/sh"]
    assert stat.S_ISLNK(sh.mode) and sh.data == b"busybox" and sh.filesize == 7
    assert e["lib64"].data == b"/lib"  # leading slash of the name stripped, target kept as given

    console = e["dev/console"]
    assert stat.S_ISCHR(console.mode) and stat.S_IMODE(console.mode) == 0o600
    assert (console.rdevmajor, console.rdevminor) == (5, 1) and console.filesize == 0
    null = e["dev/null"]
    assert stat.S_ISCHR(null.mode) and stat.S_IMODE(null.mode) == 0o666
    assert (null.rdevmajor, null.rdevminor) == (1, 3)


def test_fixed_metadata_and_unique_inodes():
    entries = read_newc(archive(sample))
    for en in entries:
        assert (en.uid, en.gid, en.mtime, en.check) == (0, 0, 0, 0), en.name
        assert en.namesize == len(en.name.encode()) + 1
        if en.name != "TRAILER!!!":
            assert en.nlink == 1  # nlink > 1 would make the kernel treat same-inode entries as hard links
    inodes = [en.ino for en in entries if en.name != "TRAILER!!!"]
    assert len(set(inodes)) == len(inodes) and 0 not in inodes


def test_ends_with_trailer():
    blob = archive(sample)
    last = read_newc(blob)[-1]
    assert last.name == "TRAILER!!!" and last.mode == 0 and last.filesize == 0
    assert b"TRAILER!!!\0" in blob[-16:]
    assert len(blob) % 4 == 0


def test_empty_archive_is_just_a_trailer():
    entries = read_newc(archive(lambda w: None))
    assert [e.name for e in entries] == ["TRAILER!!!"]


def test_reproducible():
    assert archive(sample) == archive(sample)


def test_reproducible_tree(tmp_path):
    make_tree(tmp_path / "t")
    one = archive(lambda w: w.tree(tmp_path / "t", "lib"))
    # Different mtimes on the host must not change the archive.
    for p in (tmp_path / "t").rglob("*"):
        if not p.is_symlink():
            os.utime(p, (1_000_000, 1_000_000))
    two = archive(lambda w: w.tree(tmp_path / "t", "lib"))
    assert one == two


def test_utf8_names():
    e = read_newc(archive(lambda w: w.file("caf\u00e9", b"x")))
    assert e[0].name == "caf\u00e9" and e[0].namesize == len("caf\u00e9".encode()) + 1


@pytest.mark.parametrize("second", [
    lambda w: w.file("bin", b"x"),
    lambda w: w.directory("bin"),
    lambda w: w.directory("/bin/"),     # same after stripping slashes
    lambda w: w.symlink("bin", "x"),
    lambda w: w.char_device("bin", 1, 1),
])
def test_duplicate_names_raise(second):
    w = CpioWriter(io.BytesIO())
    w.directory("bin")
    with pytest.raises(ValueError, match="bin"):
        second(w)


def make_tree(root: Path) -> None:
    (root / "modules" / "6.1" / "kernel").mkdir(parents=True)
    (root / "modules" / "6.1" / "kernel" / "xen-fbfront.ko").write_bytes(b"\x7fELFmodule")
    (root / "modules" / "6.1" / "modules.dep").write_text("kernel/xen-fbfront.ko:\n")
    (root / "modules" / "6.1" / "build").symlink_to("/usr/src/linux-6.1")  # dangling on purpose
    (root / "modules" / "6.1-a").mkdir()  # sorts between "6.1" and "6.1/..." as a string
    (root / "tool").write_bytes(b"#!/bin/sh\n")
    (root / "tool").chmod(0o750)
    (root / "modules" / "6.1" / "private").mkdir(mode=0o700)
    (root / "modules" / "6.1" / "private").chmod(0o700)
    (root / "link-to-dir").symlink_to("modules")


def test_tree(tmp_path):
    make_tree(tmp_path / "t")
    entries = read_newc(archive(lambda w: w.tree(tmp_path / "t", "lib")))
    names = [e.name for e in entries]
    e = by_name(entries)

    assert names[0] == "lib" and stat.S_ISDIR(e["lib"].mode)
    assert set(names) == {"lib", "lib/modules", "lib/modules/6.1", "lib/modules/6.1/kernel",
                          "lib/modules/6.1/kernel/xen-fbfront.ko", "lib/modules/6.1/modules.dep",
                          "lib/modules/6.1/build", "lib/modules/6.1/private", "lib/modules/6.1-a", "lib/tool",
                          "lib/link-to-dir", "TRAILER!!!"}
    # Every entry's parent directory comes before it.
    for i, name in enumerate(names[:-1]):
        parent = name.rpartition("/")[0]
        if parent:
            assert parent in names[:i], f"{name} before its parent {parent}"
            assert stat.S_ISDIR(e[parent].mode)

    assert e["lib/modules/6.1/kernel/xen-fbfront.ko"].data == b"\x7fELFmodule"
    assert e["lib/modules/6.1/kernel/xen-fbfront.ko"].mode == stat.S_IFREG | 0o644
    assert e["lib/tool"].mode == stat.S_IFREG | 0o750
    assert e["lib/modules/6.1/private"].mode == stat.S_IFDIR | 0o700
    assert stat.S_ISLNK(e["lib/modules/6.1/build"].mode)
    assert e["lib/modules/6.1/build"].data == b"/usr/src/linux-6.1"
    # A symlink to a directory is stored as a symlink, not followed.
    assert stat.S_ISLNK(e["lib/link-to-dir"].mode) and e["lib/link-to-dir"].data == b"modules"
    assert not any(n.startswith("lib/link-to-dir/") for n in names)


def test_tree_without_prefix(tmp_path):
    make_tree(tmp_path / "t")
    names = [e.name for e in read_newc(archive(lambda w: w.tree(tmp_path / "t")))]
    assert "modules" in names and "tool" in names and "modules/6.1/modules.dep" in names
    assert not any(n.startswith("/") or n == "" for n in names)
    assert names.index("modules") < names.index("modules/6.1") < names.index("modules/6.1/kernel")


def test_tree_prefix_already_added(tmp_path):
    make_tree(tmp_path / "t")

    def build(w):
        w.directory("lib", 0o700)
        w.tree(tmp_path / "t", "lib/")

    entries = read_newc(archive(build))
    assert [en.name for en in entries].count("lib") == 1
    assert by_name(entries)["lib"].mode == stat.S_IFDIR | 0o700


def test_tree_duplicate_with_earlier_entry_raises(tmp_path):
    make_tree(tmp_path / "t")
    w = CpioWriter(io.BytesIO())
    w.file("lib/tool", b"x")
    with pytest.raises(ValueError, match="lib/tool"):
        w.tree(tmp_path / "t", "lib")


def test_tree_nested_prefix_adds_its_parents(tmp_path):
    make_tree(tmp_path / "t")
    names = [e.name for e in read_newc(archive(lambda w: w.tree(tmp_path / "t", "usr/lib")))]
    assert names[:2] == ["usr", "usr/lib"]


GNU_CPIO = shutil.which("cpio")


def is_gnu_cpio() -> bool:
    if not GNU_CPIO:
        return False
    out = subprocess.run([GNU_CPIO, "--version"], capture_output=True, text=True)
    return "GNU cpio" in out.stdout


@pytest.mark.skipif(not is_gnu_cpio(), reason="GNU cpio is not installed")
def test_gnu_cpio_lists_names(tmp_path):
    make_tree(tmp_path / "t")

    def build(w):
        sample(w)
        w.tree(tmp_path / "t", "lib")

    blob = archive(build)
    out = subprocess.run([GNU_CPIO, "-t", "--quiet"], input=blob, capture_output=True, check=True, timeout=30)
    listed = out.stdout.decode().splitlines()
    expected = [e.name for e in read_newc(blob) if e.name != "TRAILER!!!"]
    assert listed == expected

    # And it extracts the contents we put in (no root needed: no device nodes in this archive).
    dest = tmp_path / "x"
    dest.mkdir()
    blob2 = archive(lambda w: (w.directory("bin"), w.file("bin/tool", b"hello", 0o751),
                               w.symlink("bin/sh", "tool")))
    subprocess.run([GNU_CPIO, "-i", "--quiet", "--no-absolute-filenames"], input=blob2, cwd=dest,
                   capture_output=True, check=True, timeout=30)
    assert (dest / "bin" / "tool").read_bytes() == b"hello"
    assert stat.S_IMODE((dest / "bin" / "tool").stat().st_mode) == 0o751
    assert os.readlink(dest / "bin" / "sh") == "tool"
