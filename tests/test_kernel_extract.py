from __future__ import annotations

import gzip
import lzma
import random
import shutil
import subprocess

import pytest

import zstandard

from xenfb_harness.artifacts.kernel import GZIP_MAGIC, XZ_MAGIC, ZSTD_MAGIC, extract_vmlinux, kernel_version


def fake_elf(size: int = 200_000, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    # Partly compressible, partly random, like a real kernel image.
    body = b"".join(rng.randbytes(64) + bytes(192) for _ in range(size // 256))
    return b"\x7fELF\x02\x01\x01" + bytes(9) + body


def junk(n: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(n)
    assert XZ_MAGIC not in data
    return data


def fake_bzimage(elf: bytes) -> bytes:
    setup = b"MZ" + junk(4000, 2) + b"HdrS" + junk(3000, 3)  # boot sector and setup code
    bogus = XZ_MAGIC + junk(500, 4)                           # a magic that starts no valid stream
    payload = lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    trailer = junk(777, 5)                                    # the decompressor stub's tail, padding
    return setup + bogus + payload + trailer


def test_extracts_elf_exactly(tmp_path):
    elf = fake_elf()
    bz = tmp_path / "vmlinuz-6.1.0-56-amd64"
    bz.write_bytes(fake_bzimage(elf))
    out = tmp_path / "vmlinux"
    extract_vmlinux(bz, out)
    assert out.read_bytes() == elf


def test_payload_right_after_bogus_magic(tmp_path):
    elf = fake_elf(seed=9)
    # Two bogus magics in a row, the second immediately followed by the real stream's magic.
    data = junk(100, 6) + XZ_MAGIC + XZ_MAGIC + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"\0" * 64
    bz = tmp_path / "bz"
    bz.write_bytes(data)
    extract_vmlinux(bz, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == elf


def test_skips_xz_stream_that_is_not_elf(tmp_path):
    elf = fake_elf(seed=3)
    not_elf = lzma.compress(b"just some compressed firmware blob" * 100, format=lzma.FORMAT_XZ)
    bz = tmp_path / "bz"
    bz.write_bytes(junk(300, 7) + not_elf + junk(300, 8) + lzma.compress(elf, format=lzma.FORMAT_XZ))
    extract_vmlinux(bz, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == elf


def test_overwrites_existing_output(tmp_path):
    elf = fake_elf(size=4096)
    bz = tmp_path / "bz"
    bz.write_bytes(fake_bzimage(elf))
    out = tmp_path / "vmlinux"
    out.write_bytes(b"stale" * 100_000)
    extract_vmlinux(bz, out)
    assert out.read_bytes() == elf


@pytest.mark.parametrize("contents", [
    pytest.param(lambda: junk(10_000, 10), id="no-magic"),
    pytest.param(lambda: junk(100, 11) + XZ_MAGIC + junk(1000, 12), id="bogus-magic-only"),
    pytest.param(lambda: junk(100, 13) + lzma.compress(b"not an elf" * 50, format=lzma.FORMAT_XZ), id="xz-not-elf"),
    pytest.param(lambda: junk(100, 14) + lzma.compress(fake_elf(4096), format=lzma.FORMAT_ALONE), id="lzma-not-xz"),
    pytest.param(lambda: b"", id="empty"),
])
def test_no_payload_raises_naming_file(tmp_path, contents):
    bz = tmp_path / "vmlinuz-broken"
    bz.write_bytes(contents())
    out = tmp_path / "vmlinux"
    with pytest.raises(ValueError) as info:
        extract_vmlinux(bz, out)
    assert str(bz) in str(info.value)
    assert not out.exists()


def test_missing_input_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        extract_vmlinux(tmp_path / "nope", tmp_path / "out")


def test_truncated_payload_is_rejected(tmp_path):
    elf = fake_elf(size=400_000)
    stream = lzma.compress(elf, format=lzma.FORMAT_XZ)
    bz = tmp_path / "vmlinuz-truncated"
    bz.write_bytes(junk(1000, 15) + stream[:len(stream) // 2])
    out = tmp_path / "vmlinux"
    with pytest.raises(ValueError, match="vmlinuz-truncated"):
        extract_vmlinux(bz, out)
    assert not out.exists()


def test_extracts_a_zstd_payload(tmp_path):
    # Debian 13's kernels: the same bzImage layout, a zstd frame instead of an xz stream.
    elf = fake_elf(seed=11)
    bz = tmp_path / "vmlinuz-6.12.118+deb13-amd64"
    frame = zstandard.ZstdCompressor(level=3).compress(elf)
    bz.write_bytes(b"MZ" + junk(4000, 12) + ZSTD_MAGIC + junk(300, 13) + frame + junk(500, 14))
    extract_vmlinux(bz, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == elf


def test_a_truncated_zstd_payload_is_refused(tmp_path):
    frame = zstandard.ZstdCompressor(level=3).compress(fake_elf(seed=15))
    bz = tmp_path / "bz"
    bz.write_bytes(junk(100, 16) + frame[: len(frame) // 2])
    with pytest.raises(ValueError, match="no xz-, zstd- or gzip-compressed ELF payload found"):
        extract_vmlinux(bz, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_extracts_a_gzip_payload(tmp_path):
    # kbuild's default compression (CONFIG_KERNEL_GZIP), what a kernel built from source or by a user may use:
    # the stream is followed by the uncompressed size (4 bytes), then the decompressor's tail.
    elf = fake_elf(seed=21)
    payload = gzip.compress(elf, 9, mtime=0)
    bz = tmp_path / "bzImage"
    bz.write_bytes(b"MZ" + junk(4000, 22) + GZIP_MAGIC + junk(300, 23) + payload + len(elf).to_bytes(4, "little")
                   + junk(500, 24))
    extract_vmlinux(bz, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == elf


@pytest.mark.skipif(shutil.which("gzip") is None, reason="needs the gzip program")
def test_extracts_what_the_gzip_program_compressed(tmp_path):
    elf = fake_elf(seed=25)
    piggy = subprocess.run(["gzip", "-n", "-f", "-9"], input=elf, capture_output=True, check=True).stdout  # kbuild's
    bz = tmp_path / "bzImage"
    bz.write_bytes(junk(2000, 26) + piggy + len(elf).to_bytes(4, "little"))
    extract_vmlinux(bz, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == elf


def test_skips_a_gzip_stream_that_is_not_elf(tmp_path):
    elf = fake_elf(seed=27)
    bz = tmp_path / "bz"
    bz.write_bytes(junk(300, 28) + gzip.compress(b"an embedded firmware blob" * 100) + junk(300, 29)
                   + gzip.compress(elf))
    extract_vmlinux(bz, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == elf


def test_a_truncated_gzip_payload_is_refused(tmp_path):
    stream = gzip.compress(fake_elf(seed=30))
    bz = tmp_path / "vmlinuz-truncated-gzip"
    bz.write_bytes(junk(100, 31) + stream[: len(stream) // 2])
    with pytest.raises(ValueError, match="vmlinuz-truncated-gzip: no xz-, zstd- or gzip-compressed ELF payload"):
        extract_vmlinux(bz, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("modules", ["lib/modules", "usr/lib/modules"])
def test_kernel_version_in_either_layout(tmp_path, modules):
    # Debian 13's packages are merged-/usr: their modules are under usr/lib/modules.
    (tmp_path / modules / "6.12.118+deb13-amd64").mkdir(parents=True)
    assert kernel_version(tmp_path) == "6.12.118+deb13-amd64"
    assert (tmp_path / "lib/modules/6.12.118+deb13-amd64").is_dir()  # one layout for depmod and modprobe
