"""Which files a program needs at run time, for a small guest root filesystem.

The guest's root filesystem starts as Debian packages unpacked with ``dpkg-deb -x`` into a directory
(the *tree*). Most of what that unpacks (documentation, headers, tools we never run) is dead weight in
the guest, so we copy into a fresh tree only the programs we run, their ELF interpreter and, transitively,
every shared library their DT_NEEDED entries name, found the way the dynamic loader would find them.

Everything here reads the tree as a chroot would see it: symlinks inside the tree (absolute ones mean
the tree's root, not the host's) are followed by us, never by the host, and ``..`` stops at the root.
The ELF parsing is ours (``struct`` only) so no host tool (ldd would *run* the guest's loader; readelf
is not always installed) and no host library cache gets a say in what goes into the guest.
"""
from __future__ import annotations

import os
import posixpath
import shutil
import stat
import struct
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Sequence

ELF_MAGIC = b"\x7fELF"

# The loader's default directories on Debian x86_64, in the order we search them. Bookworm packages
# still ship some libraries under /lib, so both halves of the usr merge are searched.
DEFAULT_LIB_DIRS: tuple[str, ...] = (
    "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
)

MAX_SYMLINKS = 40  # as the Linux kernel's path walk: more than this is taken for a loop

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 14, 15, 29
PN_XNUM = 0xFFFF


@dataclass
class ElfInfo:
    """What the dynamic loader reads from one ELF file before it can load it."""
    elfclass: int                      # 1: 32-bit, 2: 64-bit (EI_CLASS)
    machine: int                       # e_machine; the loader skips libraries of another class/machine
    interpreter: str | None = None     # PT_INTERP
    needed: list[str] = field(default_factory=list)
    soname: str | None = None
    rpath: list[str] = field(default_factory=list)
    runpath: list[str] = field(default_factory=list)


class _Reader:
    """Bounds-checked reads, so a short or corrupt file is a ValueError naming it, not a struct.error."""

    def __init__(self, path: Path, f: BinaryIO):
        self.path, self.f = path, f
        self.size = os.fstat(f.fileno()).st_size

    def read(self, offset: int, n: int, what: str) -> bytes:
        if offset < 0 or n < 0 or offset + n > self.size:
            raise ValueError(f"{self.path}: truncated or corrupt ELF: {what} wants {n} bytes at offset "
                             f"{offset:#x}, the file has {self.size}")
        self.f.seek(offset)
        data = self.f.read(n)
        if len(data) != n:
            raise ValueError(f"{self.path}: short read of {what} at offset {offset:#x}")
        return data

    def cstring(self, offset: int, limit: int, what: str) -> str:
        """A NUL-terminated string of at most limit bytes (terminator included) from offset."""
        limit = min(limit, self.size - offset)
        data = self.read(offset, max(limit, 0), what) if limit > 0 else b""
        end = data.find(b"\0")
        if end < 0:
            raise ValueError(f"{self.path}: corrupt ELF: {what} at offset {offset:#x} is not NUL-terminated")
        return os.fsdecode(data[:end])


def read_elf(path: Path) -> ElfInfo:
    """Parse the parts of an ELF file the dynamic loader uses: PT_INTERP and the dynamic section."""
    path = Path(path)
    with open(path, "rb") as f:
        r = _Reader(path, f)
        if r.size < 4 or r.read(0, 4, "ELF magic") != ELF_MAGIC:
            raise ValueError(f"{path}: not an ELF file")
        ident = r.read(0, 16, "e_ident")
        elfclass, data = ident[4], ident[5]
        if elfclass not in (1, 2) or data not in (1, 2):
            raise ValueError(f"{path}: corrupt ELF: unknown class {elfclass} or data encoding {data}")
        e = "<" if data == 1 else ">"
        if elfclass == 2:
            hdr_fmt, ph_fmt, dyn_fmt, sh_info_at = "HHIQQQIHHHHHH", "IIQQQQQQ", "qQ", 44
        else:
            hdr_fmt, ph_fmt, dyn_fmt, sh_info_at = "HHIIIIIHHHHHH", "IIIIIIII", "iI", 28
        hdr = struct.unpack(e + hdr_fmt, r.read(16, struct.calcsize(e + hdr_fmt), "ELF header"))
        machine, phoff, shoff, phentsize, phnum = hdr[1], hdr[4], hdr[5], hdr[8], hdr[9]
        info = ElfInfo(elfclass=elfclass, machine=machine)
        if phnum == PN_XNUM:  # too many program headers for e_phnum: the count is in section 0's sh_info
            (phnum,) = struct.unpack(e + "I", r.read(shoff + sh_info_at, 4, "section header 0"))
        if phoff == 0 or phnum == 0:
            return info  # e.g. a relocatable object: nothing to load, nothing needed
        ph_size = struct.calcsize(e + ph_fmt)
        if phentsize < ph_size:
            raise ValueError(f"{path}: corrupt ELF: e_phentsize {phentsize} < {ph_size}")
        table = r.read(phoff, phentsize * phnum, "program header table")
        loads, dynamic = [], None
        for i in range(phnum):
            fields = struct.unpack_from(e + ph_fmt, table, i * phentsize)
            if elfclass == 2:
                p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = fields
            else:
                p_type, p_offset, p_vaddr, _, p_filesz, _, _, _ = fields
            if p_type == PT_LOAD:
                loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == PT_DYNAMIC:
                dynamic = (p_offset, p_filesz)
            elif p_type == PT_INTERP:
                info.interpreter = r.cstring(p_offset, p_filesz, "PT_INTERP")
        if dynamic is None:
            return info  # statically linked

        dyn_size = struct.calcsize(e + dyn_fmt)
        blob = r.read(dynamic[0], dynamic[1] - dynamic[1] % dyn_size, "PT_DYNAMIC")
        entries: list[tuple[int, int]] = []
        for tag, val in struct.iter_unpack(e + dyn_fmt, blob):
            if tag == DT_NULL:
                break
            entries.append((tag, val))
        tags = dict(entries)  # the last of a repeated tag wins; only DT_STRTAB/DT_STRSZ are looked up
        strings = [(tag, val) for tag, val in entries if tag in (DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH)]
        if not strings:
            return info
        if DT_STRTAB not in tags:
            raise ValueError(f"{path}: corrupt ELF: dynamic section has strings but no DT_STRTAB")
        strtab = _file_offset(path, loads, tags[DT_STRTAB])
        strsz = tags.get(DT_STRSZ, r.size - strtab)
        for tag, val in strings:
            if val >= strsz:
                raise ValueError(f"{path}: corrupt ELF: string offset {val:#x} beyond DT_STRSZ {strsz:#x}")
            s = r.cstring(strtab + val, strsz - val, "dynamic string")
            if tag == DT_NEEDED:
                info.needed.append(s)
            elif tag == DT_SONAME:
                info.soname = s
            elif tag == DT_RPATH:
                info.rpath += s.split(":")
            else:
                info.runpath += s.split(":")
        return info


def _file_offset(path: Path, loads: list[tuple[int, int, int]], vaddr: int) -> int:
    """The file offset the loader maps at vaddr (dynamic entries hold addresses, not offsets)."""
    for p_vaddr, p_offset, p_filesz in loads:
        if p_vaddr <= vaddr < p_vaddr + p_filesz:
            return p_offset + (vaddr - p_vaddr)
    raise ValueError(f"{path}: corrupt ELF: address {vaddr:#x} is in no PT_LOAD segment's file image")


def needed(path: Path) -> list[str]:
    """The DT_NEEDED sonames of an ELF file, in order; [] when it is statically linked."""
    return read_elf(path).needed


def interpreter(path: Path) -> str | None:
    """The PT_INTERP path (the dynamic loader the kernel starts for it), None when there is none."""
    return read_elf(path).interpreter


def is_elf(path: Path) -> bool:
    """True for a regular file (symlinks followed, on the host) that starts with the ELF magic."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == ELF_MAGIC


def _resolve_parts(tree: Path, path: str) -> list[str]:
    """The components, below the tree's root, of path with every symlink in it followed in the tree."""
    done: list[str] = []
    todo = deque(p for p in path.split("/"))
    links = 0
    while todo:
        part = todo.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if done:
                done.pop()  # at the root, .. is the root: as in a chroot
            continue
        here = tree.joinpath(*done, part)  # done holds no symlinks, so the host follows none here
        if here.is_symlink():
            links += 1
            if links > MAX_SYMLINKS:
                raise ValueError(f"too many levels of symbolic links (a loop?) resolving {path} in {tree}")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            todo.extendleft(reversed(target.split("/")))
        else:
            done.append(part)
    return done


def resolve(tree: Path, path: str) -> Path:
    """The real file inside tree that path names when tree is the root (like realpath in a chroot).

    Absolute link targets mean the tree's root, relative ones the link's directory; links anywhere in
    the path are followed, ``..`` never climbs out of the tree. A missing file is no error here (the
    path is returned as far as it resolves); a symlink loop is a ValueError.
    """
    tree = Path(tree)
    return tree.joinpath(*_resolve_parts(tree, path))


def closure(tree: Path, roots: Sequence[str], lib_dirs: Sequence[str] = DEFAULT_LIB_DIRS) -> dict[str, Path]:
    """Every file the roots need at run time: {path as the program asks for it: real file in tree}.

    Roots are paths in the tree; a directory root stands for every ELF file under it (e.g. X server
    modules, which nothing names as DT_NEEDED). Each ELF file brings its PT_INTERP and, recursively,
    its DT_NEEDED libraries, looked up by soname in its DT_RPATH (only when it has no DT_RUNPATH) or
    DT_RUNPATH, then in lib_dirs, the first ELF file of the same class and machine winning, as the
    loader does. A DT_NEEDED naming an interpreter's soname is that interpreter, already loaded (libc
    needs ld-linux-x86-64.so.2). A soname found nowhere is a LookupError naming it and its needer.
    Simplifications: RPATH is not inherited from the executable, $LIB/$PLATFORM are not expanded.
    """
    tree = Path(tree)
    files: dict[str, Path] = {}
    infos: dict[Path, ElfInfo] = {}
    queue: deque[tuple[str, Path]] = deque()

    def info_of(real: Path) -> ElfInfo:
        if real not in infos:
            infos[real] = read_elf(real)
        return infos[real]

    def add(asked: str, real: Path, elf: bool = True) -> None:
        if asked not in files:
            files[asked] = real
            if elf:
                queue.append((asked, real))

    # The roots, and before any library lookup their interpreters, so sonames naming an interpreter
    # are satisfied by it whatever the order of the roots.
    elf_roots: list[tuple[str, Path]] = []
    for root in roots:
        asked = "/" + "/".join(p for p in root.split("/") if p not in ("", "."))  # not normpath: .. after
        real = resolve(tree, asked)                                              # a symlink is not lexical
        if real.is_dir():
            elf_roots += [(p, r) for p, r in _walk(tree, asked, real) if is_elf(r)]
        elif real.is_file():
            if is_elf(real):
                elf_roots.append((asked, real))
            else:
                add(asked, real, elf=False)
        else:
            raise FileNotFoundError(f"root {root} is not in the tree {tree}")
    root_paths = {asked for asked, _ in elf_roots}
    interp_sonames: dict[str, str] = {}
    for asked, real in elf_roots:
        add(asked, real)
        interp = info_of(real).interpreter
        if interp is not None:
            interp_real = resolve(tree, interp)
            if not is_elf(interp_real):
                raise LookupError(f"interpreter {interp} of {asked} is not an ELF file in the tree {tree}")
            add(interp, interp_real)
            soname = info_of(interp_real).soname
            if soname:
                interp_sonames.setdefault(soname, interp)

    while queue:
        asked, real = queue.popleft()
        info = info_of(real)  # a library's own PT_INTERP (libc has one) only matters when it is run
        # $ORIGIN: a program's real directory (the kernel's /proc/self/exe), a library's as opened.
        origin = ("/" + "/".join(real.relative_to(tree).parts[:-1]) if asked in root_paths
                  else "/" + "/".join(_resolve_parts(tree, posixpath.dirname(asked))))
        search = [*_expand(info.runpath or info.rpath, origin), *lib_dirs]
        for soname in info.needed:
            if soname in interp_sonames:
                continue
            found = _find_library(tree, soname, search, info, info_of)
            if found is None:
                raise LookupError(f"library {soname}, needed by {asked} ({real}), is not in {tree} "
                                  f"(searched {', '.join(search)})")
            add(*found)
    return files


def _walk(tree: Path, asked: str, real: Path):
    """(path in tree, real file) for everything under a directory, its symlinks resolved in the tree.

    Our own walk: os.walk would ask the host about symlinks (an absolute target is the host's file).
    """
    for entry in sorted(os.scandir(real), key=lambda e: e.name):
        sub = posixpath.join(asked, entry.name)
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(tree, sub, Path(entry.path))
        else:
            target = resolve(tree, sub) if entry.is_symlink() else Path(entry.path)
            if target.is_file():  # symlinks to directories are not descended into: no cycles
                yield sub, target


def _expand(entries: list[str], origin: str) -> list[str]:
    """DT_RUNPATH/DT_RPATH directories with $ORIGIN expanded; relative (cwd-relative) ones dropped."""
    out = []
    for d in entries:
        d = d.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)
        if d.startswith("/"):
            out.append(posixpath.normpath(d))
    return out


def _find_library(tree: Path, soname: str, search: list[str], needer: ElfInfo, info_of):
    """(path the loader opens, real file) for soname, or None; skips files of another class/machine."""
    if "/" in soname:  # a DT_NEEDED with a slash is a path, not searched for
        candidates = [posixpath.normpath(soname)] if soname.startswith("/") else []
    else:
        candidates = [posixpath.join(d, soname) for d in search]
    for asked in candidates:
        real = resolve(tree, asked)
        if is_elf(real):
            lib = info_of(real)
            if (lib.elfclass, lib.machine) == (needer.elfclass, needer.machine):
                return asked, real
    return None


def copy_closure(files: dict[str, Path], dest: Path) -> int:
    """Copy each real file to dest/<path as asked for>, mode bits kept; the total bytes copied.

    Plain files at every asked-for path (no symlinks): simpler than reproducing the tree's links, and
    the few duplicates (a library under two names) cost little. Refuses to write through a symlink
    that already exists in dest and leads out of it.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    top = os.path.realpath(dest)
    total = 0
    for asked, real in sorted(files.items()):
        target = dest / asked.lstrip("/")
        if os.path.commonpath([top, os.path.realpath(target.parent)]) != top:
            raise ValueError(f"{target} would be written outside {dest}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        shutil.copyfile(real, target)
        mode = stat.S_IMODE(os.stat(real).st_mode)
        os.chmod(target, mode)
        total += os.stat(target).st_size
    return total
