"""Guest kernels that are not a Debian package: one built here from source (a directory, or Debian's
linux-source-X.Y), or one the user built (vmlinux or bzImage).

From source: the tree is copied (a git work tree as `git ls-files` sees it: tracked and untracked files, no build
products, no .git), the patches are applied in order with `patch -p1`, `make tinyconfig` gets our Xen PV guest
fragment (guest-kernels/xen-pv-guest.config) and the user's merged on top, and `make vmlinux modules` builds it
(`modules` only with CONFIG_MODULES).
The entry is keyed by the source (package version, or git commit plus a hash of the uncommitted changes, or every
file), both fragments, the patches and the compiler; the tree is built in the entry's temporary directory, so an
interrupted or failed build leaves nothing in the cache.

A built kernel's entry holds what a Debian kernel's holds (vmlinux, version), its .config and build log, and
build/: the files an out-of-tree module build needs, picked as Debian's linux-headers packages pick them, so a
frontend module builds against it as against Debian's headers.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..progress import CommandError, run, step
from ..resources import GUEST_KERNELS
from .apt import Apt
from .cache import Cache, hash_files, hash_tree
from .common import HERE, _binutils, _gcc
from .kernel import extract_vmlinux

FRAGMENT = GUEST_KERNELS / "xen-pv-guest.config"
RECIPE = hash_files(Path(__file__), HERE / "kernel.py", HERE / "common.py")
# Variables kbuild reads from the environment that change what it builds: never taken from the caller's.
KBUILD_ENVIRONMENT = ("ARCH", "CROSS_COMPILE", "LLVM", "LLVM_IAS", "CC", "LD", "KCFLAGS", "KCPPFLAGS", "KAFLAGS",
                      "KRUSTFLAGS", "LOCALVERSION", "KCONFIG_CONFIG", "INSTALL_MOD_PATH", "MAKEFLAGS", "MFLAGS",
                      "O", "W", "C", "V")
SOURCE_PACKAGE = re.compile(r"linux-source-\d+\.\d+")
# Reproducible builds: the same inputs give the same vmlinux, whenever and wherever built.
REPRODUCIBLE = ("KBUILD_BUILD_TIMESTAMP=@0", "KBUILD_BUILD_USER=xenfb-harness", "KBUILD_BUILD_HOST=xenfb-harness")
ERROR_CONTEXT = 2  # lines after a compiler error: the source line and the caret


class KernelBuildError(RuntimeError):
    """A patch that does not apply, a config option that did not survive, or a build that failed."""


@dataclass(frozen=True)
class SourceSpec:
    """guest.kernel_source, guest.kernel_config and guest.kernel_patches, resolved."""
    source: str  # a directory, or a linux-source-X.Y package
    fragment: str  # the user's config fragment, or ""
    patches: tuple[str, ...]  # patch files, in the order they are applied

    @property
    def package(self) -> str | None:
        """The Debian package, when the source is one (a directory is always a path with a '/')."""
        return self.source if SOURCE_PACKAGE.fullmatch(self.source) else None

    def describe(self) -> str:
        extra = f" + {len(self.patches)} patches" if self.patches else ""
        return f"{self.source}{extra}"


def patch_series(directory: Path) -> list[Path]:
    """The patches of a directory, in order: the order of its `series` file (quilt's; '#' comments), else its
    *.patch and *.diff files by name (as `git format-patch` numbers them)."""
    series = directory / "series"
    if series.is_file():
        names = [line.split("#", 1)[0].split()[0] for line in series.read_text().splitlines()
                 if line.split("#", 1)[0].strip()]
        paths = [directory / name for name in names]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{series} names patches that do not exist: {', '.join(missing)}")
        return paths
    return sorted(p for p in directory.iterdir() if p.suffix in (".patch", ".diff") and p.is_file())


# --- the config --------------------------------------------------------------------------------------------------

def parse_config(text: str) -> dict[str, str]:
    """CONFIG_X -> value of a .config or fragment ('# CONFIG_X is not set' is 'n')."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if m := re.fullmatch(r"(CONFIG_[A-Za-z0-9_]+)=(.*)", line):
            values[m[1]] = m[2]
        elif m := re.fullmatch(r"# (CONFIG_[A-Za-z0-9_]+) is not set", line):
            values[m[1]] = "n"
    return values


def config_mismatches(fragments: list[tuple[str, str]], final: str) -> list[str]:
    """What the fragments (name, text; later ones win) asked for and the final .config does not have: an option
    `make olddefconfig` dropped (an unmet dependency, a name this kernel does not know) or changed."""
    wanted: dict[str, tuple[str, str]] = {}
    for name, text in fragments:
        for option, value in parse_config(text).items():
            wanted[option] = (value, name)
    have = parse_config(final)
    problems = []
    for option, (value, name) in wanted.items():
        got = have.get(option, "n")
        if got != value:
            shown = "not set" if got == "n" else f"{option}={got}"
            problems.append(f"{option}={value} (from {name}): the final .config has {shown}")
    return problems


def compiler_errors(output: str, limit: int = 30) -> str:
    """The lines of a failed build that say why: compiler and linker errors with the source line after each,
    and make's own '***' lines (which name the object that failed)."""
    lines = output.splitlines()
    picked: list[int] = []
    for i, line in enumerate(lines):
        if re.search(r"\berror:|undefined reference|\*\*\*", line, re.I):
            picked.extend(range(i, min(i + 1 + (ERROR_CONTEXT if "error:" in line else 0), len(lines))))
    seen = sorted(set(picked))[:limit]
    return "\n".join(lines[i] for i in seen) or "\n".join(lines[-20:])


def _make_progress(lines: list[str]) -> str:
    compiled = [line for line in lines if line.startswith(("  CC ", "  AS "))]
    last = compiled[-1].split()[-1] if compiled else "configuring"
    return f"{len(compiled)} files compiled, last {last}"


# --- the source tree ---------------------------------------------------------------------------------------------

def _git_tree(path: Path) -> bool:
    if shutil.which("git") is None:
        return False
    out = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    return out.returncode == 0 and Path(out.stdout.strip()).resolve() == path.resolve()


def _git_files(path: Path) -> list[str]:
    """What the work tree holds as git sees it: tracked files as they are now (deleted ones left out) and
    untracked ones that are not ignored."""
    out = subprocess.run(["git", "-C", str(path), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout
    return sorted({name for name in out.decode(errors="surrogateescape").split("\0")
                   if name and os.path.lexists(path / name)})


def source_identity(spec: SourceSpec, apt: Apt) -> dict:
    """What the entry is keyed by for the tree: the package's version; a git tree's commit and a hash of what
    differs from it; else a hash of every file."""
    if spec.package:
        return {"package": spec.package, "version": apt.version(spec.package)}
    path = Path(spec.source)
    if _git_tree(path):
        head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        # Plumbing, so the user's diff settings (external diff, textconv) cannot hide a change.
        h = hashlib.sha256(subprocess.run(["git", "-C", str(path), "diff-index", "-p", "--binary", "--no-ext-diff",
                                           "--no-textconv", "HEAD"], capture_output=True, check=True).stdout)
        untracked = subprocess.run(["git", "-C", str(path), "ls-files", "-z", "--others", "--exclude-standard"],
                                   capture_output=True, check=True).stdout.decode(errors="surrogateescape")
        for name in sorted(n for n in untracked.split("\0") if n):
            h.update(name.encode(errors="surrogateescape") + b"\0")
            if (path / name).is_symlink():  # copied as a link: its target is what counts
                h.update(b"L" + os.readlink(path / name).encode(errors="surrogateescape") + b"\0")
            elif (path / name).is_file():
                h.update((path / name).read_bytes())
        return {"git": head, "changes": h.hexdigest()[:16]}
    with step(f"hash the kernel tree {path}"):
        return {"tree": hash_tree(path)}


def _copy_source(spec: SourceSpec, apt: Apt, dest: Path, log: Path) -> None:
    if spec.package:
        deb = apt.download(spec.package)
        series = spec.package.removeprefix("linux-source-")
        tarball = f"usr/src/linux-source-{series}.tar.xz"
        unpacked = dest.parent / "deb"
        run(["dpkg-deb", "-x", str(deb), str(unpacked)], log)
        run(["tar", "-xJf", str(unpacked / tarball), "-C", str(dest.parent)], log)
        (dest.parent / f"linux-source-{series}").rename(dest)
        shutil.rmtree(unpacked)
        return
    path = Path(spec.source)
    _tar_copy(path, dest, _git_files(path) if _git_tree(path) else None, log)
    if (dest / ".config").exists() or (dest / "include/config").exists():
        run(["make", "-C", str(dest), "mrproper"], log)  # built in place before: kbuild wants it clean


def _tar_copy(src: Path, dest: Path, names: list[str] | None, log: Path) -> None:
    """src's files (every one, or the given relative names) into the new directory dest, links and modes kept,
    through one tar pipe: no archive on disk (a kernel tree is 1.5 GB). The paths reach the shell as arguments."""
    dest.mkdir()
    select = ["."]
    if names is not None:
        listing = dest.parent / f".{dest.name}.files"
        listing.write_bytes(b"\0".join(name.encode(errors="surrogateescape") for name in names))
        select = ["--null", "-T", str(listing)]
    script = 'set -o pipefail; src=$1 dest=$2; shift 2; tar -C "$src" -cf - "$@" | tar -C "$dest" -xf -'
    try:
        run(["bash", "-c", script, "tar-copy", str(src), str(dest), *select], log)
    finally:
        if names is not None:
            listing.unlink()


def _apply_patches(spec: SourceSpec, tree: Path, log: Path) -> None:
    for i, patch in enumerate(spec.patches, 1):
        try:
            # No fuzz, as `git am`: a patch that applies only loosely may land in the wrong place.
            run(["patch", "-p1", "--forward", "--batch", "--fuzz=0", "--no-backup-if-mismatch", "-i", patch], log,
                cwd=tree)
        except CommandError as e:
            raise KernelBuildError(f"guest.kernel_patches: patch {i} of {len(spec.patches)}, {patch}, does not "
                                   f"apply to {spec.source} (with those before it applied):\n"
                                   f"{e.output.strip()}") from None


def _configure(spec: SourceSpec, tree: Path, log: Path) -> None:
    run(["make", "-C", str(tree), "tinyconfig"], log)
    fragments = [str(FRAGMENT)] + ([spec.fragment] if spec.fragment else [])
    run([str(tree / "scripts/kconfig/merge_config.sh"), "-m", ".config", *fragments], log, cwd=tree)
    run(["make", "-C", str(tree), "olddefconfig"], log)
    problems = config_mismatches([(f, Path(f).read_text()) for f in fragments], (tree / ".config").read_text())
    if problems:
        raise KernelBuildError("the guest kernel's config lost options its fragments ask for (an unmet "
                               "dependency, or a name this kernel does not have):\n  " + "\n  ".join(problems))


def _make_vars(cache: Cache, tree: Path) -> tuple[list[str], dict]:
    """make's variables and environment: ccache when this machine has it (a bisect's steps differ in a few
    files; each step's kernel is still built whole, from a clean tree)."""
    env = {k: v for k, v in os.environ.items() if k not in KBUILD_ENVIRONMENT and not k.startswith("KBUILD_")}
    if shutil.which("ccache"):
        env.update(CCACHE_DIR=str(cache.root / "ccache"), CCACHE_BASEDIR=str(tree), CCACHE_NOHASHDIR="1")
        return ["CC=ccache gcc", *REPRODUCIBLE], env
    return ["CC=gcc", *REPRODUCIBLE], env


def _module_build_files(tree: Path) -> list[str]:
    """What `make -C <dir> M=...` needs of a kernel built in place, as Debian's builddeb picks it for
    linux-headers: the top and arch Makefiles, include/, scripts/, the arch's include and scripts directories,
    the generated headers, Module.symvers, .config and objtool."""
    arch = "arch/x86"
    picked = {p for p in ("Makefile", ".config", "Module.symvers", "tools/objtool/objtool") if (tree / p).exists()}
    picked |= {str(p.relative_to(tree)) for p in (tree / arch).glob("Makefile*")}
    for top in ("include", "scripts"):
        picked |= {str(p.relative_to(tree)) for p in (tree / top).rglob("*") if p.is_file() or p.is_symlink()}
    for p in (tree / arch).rglob("*"):
        if p.is_dir() and p.name in ("include", "scripts"):
            picked |= {str(f.relative_to(tree)) for f in p.rglob("*") if f.is_file() or f.is_symlink()}
        elif p.name in ("Kbuild.platforms", "Platform"):
            picked.add(str(p.relative_to(tree)))
    return sorted(picked)


def source_kernel(cache: Cache, apt: Apt, spec: SourceSpec, log: Path) -> Path:
    """Build (or find) the kernel of a source tree: an entry with vmlinux, version, config, build.log and build/
    (for out-of-tree modules, when the kernel has modules)."""
    for f in ([spec.fragment] if spec.fragment else []) + list(spec.patches):
        if not Path(f).is_file():
            raise FileNotFoundError(f"{f} does not exist")

    def build(out: Path) -> None:
        tree = out / "tree"
        with step(f"unpack the kernel source {spec.source}"):
            _copy_source(spec, apt, tree, log)
        _apply_patches(spec, tree, log)
        _configure(spec, tree, log)
        make, env = _make_vars(cache, tree)
        modules = parse_config((tree / ".config").read_text()).get("CONFIG_MODULES") == "y"
        # Before 6.5, `make modules` fails in a kernel without module support.
        cmd = ["make", "-C", str(tree), f"-j{os.cpu_count() or 1}", *make, "vmlinux", *(["modules"] if modules else [])]
        with step(f"build the guest kernel ({spec.describe()})"):
            try:
                output = run(cmd, log, progress=_make_progress, env=env)
            except CommandError as e:
                raise KernelBuildError(f"the guest kernel ({spec.describe()}) did not build; the errors:\n"
                                       f"{compiler_errors(e.output)}\n(full output: {log})") from None
        (out / "build.log").write_text(output)
        (out / "version").write_text((tree / "include/config/kernel.release").read_text().strip())
        shutil.copyfile(tree / ".config", out / "config")
        shutil.copyfile(tree / "vmlinux", out / "vmlinux")
        if (tree / "Module.symvers").exists():
            _tar_copy(tree, out / "build", _module_build_files(tree), log)
        shutil.rmtree(tree)
    inputs = {"source": source_identity(spec, apt),
              "fragments": [hash_files(FRAGMENT)] + ([hash_files(Path(spec.fragment))] if spec.fragment else []),
              "patches": [[Path(p).name, hash_files(Path(p))] for p in spec.patches],
              "gcc": _gcc(), "binutils": _binutils(), "build": RECIPE}
    return cache.entry("kernel-source", inputs, build)


# --- a kernel the user built -------------------------------------------------------------------------------------

BANNER = re.compile(rb"Linux version (\S+) \(")


def image_kernel(cache: Cache, image: Path, log: Path) -> Path:
    """A kernel the user built (vmlinux, or a bzImage compressed with gzip, xz or zstd) -> an entry with vmlinux
    and version (read from its banner)."""
    def build(out: Path) -> None:
        if image.read_bytes()[:4] == b"\x7fELF":
            shutil.copyfile(image, out / "vmlinux")
        else:
            extract_vmlinux(image, out / "vmlinux")
        m = BANNER.search((out / "vmlinux").read_bytes())
        if not m:
            raise KernelBuildError(f"guest.kernel_image: {image} has no 'Linux version' banner: not a Linux kernel?")
        (out / "version").write_text(m[1].decode())
    inputs = {"image": hash_files(image), "build": RECIPE}
    return cache.entry("kernel-image", inputs, build)


def build_tree_identity(tree: Path) -> dict:
    """A user's kernel build tree, for the key of the modules built against it: its config, its exported symbols
    and its release."""
    files = [tree / name for name in (".config", "Module.symvers", "include/config/kernel.release")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"guest.kernel_build_tree: {tree} is not a built kernel tree (`make modules` "
                                f"leaves these, and they are missing: {', '.join(missing)})")
    return {"build_tree": str(tree), "files": hash_files(*files)}
