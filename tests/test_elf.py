from __future__ import annotations

import glob
import os
import random
import re
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from xenfb_harness.artifacts.elf import closure, copy_closure, interpreter, is_elf, needed, read_elf, resolve

LOADER = "/lib64/ld-linux-x86-64.so.2"
MULTIARCH = "usr/lib/x86_64-linux-gnu"
HAVE_GCC = shutil.which("gcc") is not None
HAVE_READELF = shutil.which("readelf") is not None
needs_gcc = pytest.mark.skipif(not HAVE_GCC, reason="gcc not installed")
needs_readelf = pytest.mark.skipif(not HAVE_READELF, reason="readelf (binutils) not installed")


def host_lib(name: str) -> Path:
    """A host library's real file (the host is merged-/usr Debian: /lib -> usr/lib)."""
    for d in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/lib64"):
        if os.path.exists(f"{d}/{name}"):
            return Path(os.path.realpath(f"{d}/{name}"))
    pytest.skip(f"no host {name}")


def readelf(args: list[str], path: Path) -> str:
    return subprocess.run(["readelf", *args, str(path)], check=True, capture_output=True, text=True,
                          env={**os.environ, "LC_ALL": "C"}).stdout


def readelf_needed(path: Path) -> list[str]:
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.*)\]", readelf(["-d", "-W"], path))


def readelf_interp(path: Path) -> str | None:
    m = re.search(r"\[Requesting program interpreter: (.*)\]", readelf(["-l", "-W"], path))
    return m.group(1) if m else None


def gcc(src: str, out: Path, *flags: str) -> Path:
    c = out.with_suffix(".c")
    c.write_text(src)
    subprocess.run(["gcc", "-O1", "-o", str(out), str(c), *flags], check=True, capture_output=True)
    return out


HELLO = '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n'
CBRT = r'''
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) { printf("cbrt=%.1f\n", cbrt(atof(argc > 1 ? argv[1] : "27"))); return 0; }
'''
MODULE = '#include <math.h>\ndouble module_fn(double x) { return cbrt(x); }\n'


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """Host-compiled programs, built once: static, dynamic, dynamic with libm, a libm-using module."""
    if not HAVE_GCC:
        pytest.skip("gcc not installed")
    d = tmp_path_factory.mktemp("built")
    return {
        "static": gcc(HELLO, d / "static", "-static"),
        "dynamic": gcc(HELLO, d / "dynamic"),
        "cbrt": gcc(CBRT, d / "cbrt", "-Wl,--no-as-needed", "-lm"),
        "module": gcc(MODULE, d / "module.so", "-shared", "-fPIC", "-Wl,--no-as-needed", "-lm"),
    }


# --- A synthetic ELF writer: any class and byte order, known contents, easy to corrupt ---------------

BASE = 0x400000


def make_elf(needed_: list[str] = (), *, elfclass: int = 2, endian: str = "<", machine: int = 62,
             interp: str | None = None, soname: str | None = None, runpath: str | None = None,
             rpath: str | None = None, dynamic: bool = True, strtab_vaddr: int | None = None) -> bytes:
    """A minimal loadable ELF: one PT_LOAD mapping the whole file at BASE, PT_INTERP, PT_DYNAMIC."""
    ehsize, phentsize, dynsize = (64, 56, 16) if elfclass == 2 else (52, 32, 8)
    strtab = b"\0"
    offsets: dict[str, int] = {}
    for s in [*needed_, soname, runpath, rpath]:
        if s is not None and s not in offsets:
            offsets[s] = len(strtab)
            strtab += s.encode() + b"\0"
    dyn = [(1, offsets[n]) for n in needed_]
    dyn += [(tag, offsets[s]) for tag, s in ((14, soname), (29, runpath), (15, rpath)) if s is not None]
    phnum = 1 + (interp is not None) + dynamic
    interp_off = ehsize + phnum * phentsize
    interp_b = interp.encode() + b"\0" if interp is not None else b""
    strtab_off = interp_off + len(interp_b)
    dyn_off = (strtab_off + len(strtab) + 7) & ~7
    dyn += [(5, BASE + strtab_off if strtab_vaddr is None else strtab_vaddr), (10, len(strtab)), (0, 0)]
    total = dyn_off + len(dyn) * dynsize if dynamic else dyn_off

    def phdr(p_type: int, off: int, size: int) -> bytes:
        if elfclass == 2:
            return struct.pack(endian + "IIQQQQQQ", p_type, 4, off, BASE + off, BASE + off, size, size, 8)
        return struct.pack(endian + "IIIIIIII", p_type, off, BASE + off, BASE + off, size, size, 4, 4)

    phdrs = phdr(1, 0, total)
    if interp is not None:
        phdrs += phdr(3, interp_off, len(interp_b))
    if dynamic:
        phdrs += phdr(2, dyn_off, len(dyn) * dynsize)
    ident = b"\x7fELF" + bytes([elfclass, 1 if endian == "<" else 2, 1]) + bytes(9)
    hdr_fmt = endian + ("HHIQQQIHHHHHH" if elfclass == 2 else "HHIIIIIHHHHHH")
    header = ident + struct.pack(hdr_fmt, 3, machine, 1, 0, ehsize, 0, 0, ehsize, phentsize, phnum, 0, 0, 0)
    blob = header + phdrs + interp_b + strtab
    blob += bytes(dyn_off - len(blob))
    if dynamic:
        blob += b"".join(struct.pack(endian + ("qQ" if elfclass == 2 else "iI"), t, v) for t, v in dyn)
    return blob


def write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


# --- needed() / interpreter() against readelf on real host files -------------------------------------

def host_elves() -> list[Path]:
    paths = [Path("/bin/ls"), Path("/usr/bin/python3"), Path("/usr/bin/readelf"),
             Path("/usr/lib/x86_64-linux-gnu/libc.so.6"), Path("/usr/lib/x86_64-linux-gnu/libm.so.6"),
             Path(LOADER)]
    libs = sorted(glob.glob("/usr/lib/x86_64-linux-gnu/*.so*"))
    paths += [Path(p) for p in random.Random(0).sample(libs, min(12, len(libs)))]
    return [p for p in paths if is_elf(p)]


def test_ls_and_python_need_libc_through_the_usual_loader():
    for p in (Path("/bin/ls"), Path("/usr/bin/python3")):
        if not p.exists():
            continue
        assert "libc.so.6" in needed(p)
        assert interpreter(p) == LOADER


@needs_readelf
@pytest.mark.parametrize("path", host_elves(), ids=str)
def test_needed_and_interpreter_agree_with_readelf(path):
    assert needed(path) == readelf_needed(path)
    assert interpreter(path) == readelf_interp(path)


def test_libc_names_itself_and_needs_the_loader():
    info = read_elf(host_lib("libc.so.6"))
    assert info.soname == "libc.so.6"
    assert info.needed == ["ld-linux-x86-64.so.2"]
    assert (info.elfclass, info.machine) == (2, 62)


def test_static_program_needs_nothing(built):
    assert needed(built["static"]) == []
    assert interpreter(built["static"]) is None


def test_dynamic_program_needs_libc(built):
    assert needed(built["dynamic"]) == ["libc.so.6"]
    assert interpreter(built["dynamic"]) == LOADER
    assert needed(built["cbrt"]) == ["libm.so.6", "libc.so.6"]


@pytest.mark.parametrize("elfclass,endian", [(2, "<"), (2, ">"), (1, "<"), (1, ">")],
                         ids=["elf64le", "elf64be", "elf32le", "elf32be"])
def test_synthetic_elf_any_class_and_byte_order(tmp_path, elfclass, endian):
    p = write(tmp_path / "x", make_elf(["libfoo.so.1", "libbar.so.2"], elfclass=elfclass, endian=endian,
                                       interp="/lib/ld.so.1", soname="libx.so.1", runpath="$ORIGIN/../lib"))
    info = read_elf(p)
    assert (info.needed, info.interpreter, info.soname, info.runpath, info.elfclass) == (
        ["libfoo.so.1", "libbar.so.2"], "/lib/ld.so.1", "libx.so.1", ["$ORIGIN/../lib"], elfclass)
    if HAVE_READELF:  # the writer makes ELF that binutils reads the same way
        assert readelf_needed(p) == ["libfoo.so.1", "libbar.so.2"]
        assert readelf_interp(p) == "/lib/ld.so.1"


def test_no_dynamic_segment_and_no_program_headers(tmp_path):
    assert needed(write(tmp_path / "a", make_elf(dynamic=False))) == []
    header_only = bytearray(make_elf(dynamic=False)[:64])
    struct.pack_into("<H", header_only, 56, 0)  # e_phnum
    assert needed(write(tmp_path / "b", bytes(header_only))) == []  # e_phnum 0: like a .o


def test_is_elf(tmp_path, built):
    assert is_elf(built["dynamic"])
    assert not is_elf(write(tmp_path / "text", b"#!/bin/sh\n"))
    assert not is_elf(tmp_path)
    assert not is_elf(tmp_path / "missing")
    assert not is_elf(write(tmp_path / "short", b"\x7fEL"))


# --- corrupt input: always a ValueError naming the file --------------------------------------------

def test_not_elf(tmp_path):
    for name, data in (("text", b"just text\n"), ("empty", b""), ("script", b"#!/bin/sh\necho\n")):
        with pytest.raises(ValueError, match=re.escape(str(tmp_path / name)) + ".*not an ELF"):
            needed(write(tmp_path / name, data))


def test_truncated_real_elf(tmp_path):
    p = write(tmp_path / "ls20", Path("/bin/ls").read_bytes()[:20])
    with pytest.raises(ValueError, match=re.escape(str(p)) + ".*truncated"):
        needed(p)


def test_program_headers_beyond_the_end(tmp_path):
    data = bytearray(Path("/bin/ls").read_bytes())
    struct.pack_into("<Q", data, 32, len(data) + 4096)  # e_phoff
    p = write(tmp_path / "ls-bad-phoff", bytes(data))
    with pytest.raises(ValueError, match=re.escape(str(p)) + ".*program header"):
        interpreter(p)


@pytest.mark.parametrize("corrupt,message", [
    (lambda b: b[:len(b) - 24], "PT_DYNAMIC"),                                   # dynamic section cut short
    (lambda b: make_elf(["libc.so.6"], strtab_vaddr=0x10), "no PT_LOAD"),         # DT_STRTAB maps nowhere
    (lambda b: b.replace(b"libc.so.6\0", b"libc.so.6X"), "not NUL-terminated"),  # string runs off the table
])
def test_corrupt_dynamic_section(tmp_path, corrupt, message):
    p = write(tmp_path / "bad", corrupt(make_elf(["libc.so.6"])))
    with pytest.raises(ValueError, match=re.escape(str(p)) + f".*{message}"):
        needed(p)


def test_random_damage_never_escapes_as_anything_but_value_error(tmp_path):
    rng = random.Random(1)
    good = make_elf(["libfoo.so.1"], interp="/lib/ld.so", soname="libx.so")
    p = tmp_path / "fuzz"
    for i in range(400):
        data = bytearray(good)
        if i % 2:
            data = data[:rng.randrange(len(data))]
        else:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(4, len(data))] = rng.randrange(256)
        p.write_bytes(bytes(data))
        try:
            read_elf(p)
        except ValueError as e:
            assert str(p) in str(e)


# --- resolve(): symlinks as the guest will see them ------------------------------------------------

@pytest.fixture
def tree(tmp_path) -> Path:
    t = tmp_path / "tree"
    write(t / MULTIARCH / "libfoo.so.1.2", b"foo")
    link(t / MULTIARCH / "libfoo.so.1", "libfoo.so.1.2")                              # relative
    link(t / MULTIARCH / "libabs.so", "/usr/lib/x86_64-linux-gnu/libfoo.so.1")        # absolute, a chain
    link(t / "lib", "usr/lib")                                                         # merged /usr
    link(t / "lib64", "usr/lib64")
    link(t / "usr/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libabs.so")     # through lib too
    write(t / "usr/bin/dash", b"dash", 0o755)
    link(t / "bin", "usr/bin")
    link(t / "usr/bin/sh", "/bin/dash")            # the host has a /bin/dash too: must not be it
    link(t / "usr/bin/escape", "../../../../../../etc/passwd")
    link(t / "usr/bin/root", "/")
    link(t / "loop1", "loop2")
    link(t / "loop2", "/loop1")
    link(t / "self", "self")
    return t


def test_resolve_relative_absolute_and_chained_links(tree):
    real = tree / MULTIARCH / "libfoo.so.1.2"
    assert resolve(tree, "/usr/lib/x86_64-linux-gnu/libfoo.so.1") == real
    assert resolve(tree, "/usr/lib/x86_64-linux-gnu/libabs.so") == real
    assert resolve(tree, "usr/lib/x86_64-linux-gnu/libfoo.so.1.2") == real  # relative = from the root


def test_resolve_links_in_directory_components(tree):
    real = tree / MULTIARCH / "libfoo.so.1.2"
    assert resolve(tree, "/lib/x86_64-linux-gnu/libabs.so") == real
    assert resolve(tree, LOADER) == real
    assert resolve(tree, "/bin/sh") == tree / "usr/bin/dash"
    assert resolve(tree, "/lib/../bin/dash") == tree / "usr/bin/dash"  # .. after a link is physical


def test_resolve_stays_in_the_tree(tree):
    assert resolve(tree, "/usr/bin/escape") == tree / "etc/passwd"
    assert resolve(tree, "/../../../etc/passwd") == tree / "etc/passwd"
    assert resolve(tree, "/usr/bin/root/usr/bin/dash") == tree / "usr/bin/dash"
    assert resolve(tree, "/usr/bin/root") == tree
    assert resolve(tree, "/") == tree


def test_resolve_missing_is_not_an_error(tree):
    assert resolve(tree, "/lib/nothing/here") == tree / "usr/lib/nothing/here"


def test_resolve_loops(tree):
    for p in ("/loop1", "/self", "/usr/../loop2/x"):
        with pytest.raises(ValueError, match="loop"):
            resolve(tree, p)


# --- closure() and copy_closure() on a tree of real host files --------------------------------------

def glibc_tree(t: Path, prog: Path, merged: bool, libs=("libc.so.6", "libm.so.6")) -> Path:
    """A bookworm-like tree: glibc under lib/x86_64-linux-gnu, the loader reached through /lib64.

    merged: /lib and /lib64 are links into /usr (as after usrmerge), else libraries in /usr only and
    /lib64/ld-linux-x86-64.so.2 a relative link.
    """
    write(t / "usr/bin/prog", prog.read_bytes(), 0o755)
    for name in (*libs, "ld-linux-x86-64.so.2"):
        write(t / MULTIARCH / name, host_lib(name).read_bytes(), 0o755 if name.startswith("ld-") else 0o644)
    if merged:
        link(t / "lib", "usr/lib")
        link(t / "lib64", "usr/lib64")
        link(t / "usr/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    else:
        link(t / "lib64/ld-linux-x86-64.so.2", "../usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    return t


@needs_gcc
@pytest.mark.parametrize("merged", [True, False], ids=["merged-usr", "split"])
def test_closure_of_a_libm_program_and_running_its_copy(tmp_path, built, merged):
    t = glibc_tree(tmp_path / "tree", built["cbrt"], merged)
    libdir = "/lib/x86_64-linux-gnu" if merged else "/usr/lib/x86_64-linux-gnu"
    files = closure(t, ["/usr/bin/prog"])
    real = t / MULTIARCH
    assert files == {
        "/usr/bin/prog": t / "usr/bin/prog",
        LOADER: real / "ld-linux-x86-64.so.2",
        f"{libdir}/libm.so.6": real / "libm.so.6",
        f"{libdir}/libc.so.6": real / "libc.so.6",  # whose own need of the loader is the loader
    }

    dest = tmp_path / "small"
    total = copy_closure(files, dest)
    assert total == sum(p.stat().st_size for p in files.values())
    for asked, src in files.items():
        copied = dest / asked.lstrip("/")
        assert not copied.is_symlink() and copied.read_bytes() == src.read_bytes()
        assert stat.S_IMODE(copied.stat().st_mode) == stat.S_IMODE(src.stat().st_mode)

    loader, lib_path = dest / LOADER.lstrip("/"), str(dest / libdir.lstrip("/"))
    listing = subprocess.run([loader, "--inhibit-cache", "--library-path", lib_path, "--list",
                              dest / "usr/bin/prog"], check=True, capture_output=True, text=True).stdout
    for name in ("libm.so.6", "libc.so.6"):  # the copies are what gets loaded, not the host's
        assert re.search(rf"{name} => {re.escape(lib_path)}/{name} ", listing), listing
    run = subprocess.run([loader, "--inhibit-cache", "--library-path", lib_path, dest / "usr/bin/prog", "8"],
                         check=True, capture_output=True, text=True, timeout=30)
    assert run.stdout == "cbrt=2.0\n"


@needs_gcc
def test_closure_missing_library_names_it_and_its_needer(tmp_path, built):
    t = glibc_tree(tmp_path / "tree", built["cbrt"], merged=True, libs=("libc.so.6",))
    with pytest.raises(LookupError, match=r"libm\.so\.6.*/usr/bin/prog"):
        closure(t, ["/usr/bin/prog"])


@needs_gcc
def test_closure_of_a_directory_takes_only_its_elf_files(tmp_path, built):
    t = glibc_tree(tmp_path / "tree", built["dynamic"], merged=True)
    mods = t / "usr/lib/xorg/modules"
    write(mods / "drivers/fbdev_drv.so", built["module"].read_bytes())
    write(mods / "README", b"not ELF")
    link(mods / "libalias.so", "/usr/lib/xorg/modules/drivers/fbdev_drv.so")
    link(mods / "dirlink", "drivers")  # a link to a directory: not walked twice
    write(t / "usr/bin/startx", b"#!/bin/sh\nexec Xorg\n", 0o755)
    files = closure(t, ["/usr/bin/prog", "/lib/xorg/modules", "/usr/bin/startx"])
    assert files["/lib/xorg/modules/drivers/fbdev_drv.so"] == mods / "drivers/fbdev_drv.so"
    assert files["/lib/xorg/modules/libalias.so"] == mods / "drivers/fbdev_drv.so"
    assert files["/lib/x86_64-linux-gnu/libm.so.6"] == t / MULTIARCH / "libm.so.6"  # for the module
    assert files["/usr/bin/startx"] == t / "usr/bin/startx"   # an explicit non-ELF root is kept
    assert not any("README" in k or "dirlink" in k for k in files)
    assert all(p.is_relative_to(t) for p in files.values())


def test_closure_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="/usr/bin/nothing"):
        closure(tmp_path, ["/usr/bin/nothing"])


def test_closure_runpath_origin_and_wrong_class(tmp_path):
    t = tmp_path / "tree"
    write(t / "opt/app/bin/app", make_elf(["libpriv.so.1", "libx.so.1"], runpath="$ORIGIN/../lib"), 0o755)
    link(t / "usr/bin/app", "/opt/app/bin/app")  # $ORIGIN is the program's real directory
    write(t / "opt/app/lib/libpriv.so.1", make_elf(soname="libpriv.so.1"))
    write(t / MULTIARCH / "libpriv.so.1", make_elf(["libdecoy.so"]))         # shadowed by the runpath
    write(t / "lib/x86_64-linux-gnu/libx.so.1", make_elf(elfclass=1))       # 32-bit: the loader skips it
    write(t / MULTIARCH / "libx.so.1", make_elf(["libdep.so.3"], rpath="/nonexistent"))
    write(t / "usr/lib/libdep.so.3", make_elf())
    files = closure(t, ["/usr/bin/app"])
    assert files == {
        "/usr/bin/app": t / "opt/app/bin/app",
        "/opt/app/lib/libpriv.so.1": t / "opt/app/lib/libpriv.so.1",
        "/usr/lib/x86_64-linux-gnu/libx.so.1": t / MULTIARCH / "libx.so.1",
        "/usr/lib/libdep.so.3": t / "usr/lib/libdep.so.3",
    }


def test_copy_closure_will_not_write_through_a_link_out_of_dest(tmp_path):
    src = write(tmp_path / "lib.so", b"data")
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    link(dest / "lib64", str(outside))
    with pytest.raises(ValueError, match="outside"):
        copy_closure({"/lib64/lib.so": src}, dest)
    assert list(outside.iterdir()) == []
