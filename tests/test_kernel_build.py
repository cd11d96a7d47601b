"""Guest kernels that are not a Debian package (harness/artifacts/kernel_build.py): the patch series, the config
checks, the build's error lines, the source tree's identity and copy (with real git, tar and patch), the files an
out-of-tree module build needs, the user's own image, and a whole build of a tiny make-driven stand-in for a kernel
tree through the real cache. Nothing here compiles a kernel; each test takes well under a second."""
from __future__ import annotations

import gzip
import lzma
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import zstandard

from xenfb_harness.artifacts.cache import Cache, hash_tree
from xenfb_harness.artifacts.kernel_build import (FRAGMENT, KernelBuildError, SourceSpec, _apply_patches, _copy_source,
                                            _make_progress, _module_build_files, build_tree_identity,
                                            compiler_errors, config_mismatches, image_kernel, parse_config,
                                            patch_series, source_identity, source_kernel)

needs_tools = pytest.mark.skipif(any(shutil.which(t) is None for t in ("git", "patch", "tar", "make", "diff")),
                                 reason="needs git, patch, tar, make and diff")


def write(path: Path, text: str | bytes = "", mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    if mode is not None:
        path.chmod(mode)
    return path


def files_under(root: Path) -> dict[str, str]:
    """Every file and link under root (relative path -> content, or '-> target' for a link)."""
    found = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            found[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            found[rel] = p.read_text(errors="replace")
    return found


@pytest.fixture
def git(tmp_path, monkeypatch):
    """`git` in a repository, with no user or system configuration of this machine (the harness's own git
    calls inherit the same environment)."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "Test")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "test@example.org")

    def run(repo: Path, *args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout
    return run


def git_repo(root: Path, git, files: dict[str, str], gitignore: str = "*.o\n.config\n") -> Path:
    root.mkdir(parents=True)
    git(root, "init", "-q")
    write(root / ".gitignore", gitignore)
    for name, text in files.items():
        write(root / name, text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base")
    return root


# --- the patch series ------------------------------------------------------------------------------------------------

def test_a_series_file_gives_the_order_and_comments_are_ignored(tmp_path):
    for name in ("a.patch", "b.patch", "c.diff", "unlisted.patch"):
        write(tmp_path / name, "x")
    write(tmp_path / "series", "# the order quilt applies them in\n"
                               "c.diff\n"
                               "\n"
                               "   # an indented comment\n"
                               "a.patch -p1   # options after the name are quilt's\n"
                               "b.patch#glued comment\n")
    assert patch_series(tmp_path) == [tmp_path / "c.diff", tmp_path / "a.patch", tmp_path / "b.patch"]


def test_a_series_file_naming_a_missing_patch_is_an_error_naming_it(tmp_path):
    write(tmp_path / "a.patch", "x")
    write(tmp_path / "series", "a.patch\ngone.patch\n")
    with pytest.raises(FileNotFoundError) as info:
        patch_series(tmp_path)
    assert str(tmp_path / "gone.patch") in str(info.value) and str(tmp_path / "series") in str(info.value)
    assert str(tmp_path / "a.patch") not in str(info.value).replace(str(tmp_path / "series"), "")


def test_without_a_series_file_patches_and_diffs_go_by_name(tmp_path):
    for name in ("0002-second.patch", "0010-tenth.diff", "0001-first.patch", "README", "notes.txt",
                 "0003-x.patch.orig", "0004-y.rej"):
        write(tmp_path / name, "x")
    (tmp_path / "0005-a-directory.patch").mkdir()
    assert [p.name for p in patch_series(tmp_path)] == ["0001-first.patch", "0002-second.patch", "0010-tenth.diff"]
    assert patch_series(tmp_path / "0005-a-directory.patch") == []


def test_the_shipped_series_is_in_format_patch_order():
    series = patch_series(FRAGMENT.parent / "fbdev-lastclose")
    assert [p.name[:4] for p in series] == ["0001", "0002", "0003", "0004"]
    assert "Revert" in series[1].name


# --- the config ------------------------------------------------------------------------------------------------------

def test_parse_config_reads_values_and_not_set_lines():
    text = ("#\n# Automatically generated file; DO NOT EDIT.\n#\nCONFIG_XEN=y\n  CONFIG_HZ=250  \n"
            "CONFIG_CMDLINE=\"console=hvc0 a=b\"\n# CONFIG_MODULES is not set\n# CONFIG_FOO is not set, sadly\n"
            "CONFIG_lower_ok=m\nNOT_CONFIG=y\n# a comment about CONFIG_BAR=y\n")
    assert parse_config(text) == {"CONFIG_XEN": "y", "CONFIG_HZ": "250", "CONFIG_CMDLINE": '"console=hvc0 a=b"',
                                  "CONFIG_MODULES": "n", "CONFIG_lower_ok": "m"}
    assert parse_config("CONFIG_X=y\n# CONFIG_X is not set\n") == {"CONFIG_X": "n"}  # the last line wins


def test_config_mismatches_later_fragments_win():
    ours = ("ours.config", "CONFIG_A=y\nCONFIG_B=y\n")
    users = ("mine.config", "# CONFIG_A is not set\nCONFIG_B=m\n")
    assert config_mismatches([ours, users], "CONFIG_B=m\n") == []  # A: n wanted, missing is n
    problems = config_mismatches([ours, users], "CONFIG_A=y\nCONFIG_B=y\n")
    assert problems == ["CONFIG_A=n (from mine.config): the final .config has CONFIG_A=y",
                        "CONFIG_B=m (from mine.config): the final .config has CONFIG_B=y"]
    assert config_mismatches([users, ours], "CONFIG_A=y\nCONFIG_B=y\n") == []


def test_config_mismatches_name_option_value_and_fragment():
    fragments = [("/x/xen-pv-guest.config",
                  "CONFIG_XEN_PV=y\nCONFIG_FB=y\nCONFIG_NR_CPUS=8\n# CONFIG_DEBUG is not set\n"),
                 ("/y/user.config", "CONFIG_MISSPELT=y\n")]
    final = "CONFIG_XEN_PV=y\n# CONFIG_FB is not set\nCONFIG_NR_CPUS=64\n"
    problems = config_mismatches(fragments, final)
    assert problems == [
        "CONFIG_FB=y (from /x/xen-pv-guest.config): the final .config has not set",
        "CONFIG_NR_CPUS=8 (from /x/xen-pv-guest.config): the final .config has CONFIG_NR_CPUS=64",
        "CONFIG_MISSPELT=y (from /y/user.config): the final .config has not set",
    ]
    assert config_mismatches(fragments[:1], final.replace("# CONFIG_FB is not set", "CONFIG_FB=y")
                             .replace("=64", "=8")) == []


# --- the build's output ----------------------------------------------------------------------------------------------

FAILED_BUILD = """\
  CC      init/main.o
  CC      kernel/fork.o
  AS      arch/x86/entry/entry_64.o
  CC      drivers/video/fbdev/xen-fbfront.o
drivers/video/fbdev/xen-fbfront.c: In function 'xenfb_refresh':
drivers/video/fbdev/xen-fbfront.c:123:9: error: 'y3' undeclared (first use in this function)
  123 |         y3 = y1 + h;
      |         ^~
drivers/video/fbdev/xen-fbfront.c:123:9: note: each undeclared identifier is reported only once
  CC      kernel/exit.o
make[4]: *** [scripts/Makefile.build:250: drivers/video/fbdev/xen-fbfront.o] Error 1
make[3]: *** [scripts/Makefile.build:500: drivers/video/fbdev] Error 2
  CC      kernel/panic.o
make: *** [Makefile:2012: .] Error 2
"""


def test_compiler_errors_pick_the_error_its_source_line_and_makes_stars():
    assert compiler_errors(FAILED_BUILD).splitlines() == [
        "drivers/video/fbdev/xen-fbfront.c:123:9: error: 'y3' undeclared (first use in this function)",
        "  123 |         y3 = y1 + h;",
        "      |         ^~",
        "make[4]: *** [scripts/Makefile.build:250: drivers/video/fbdev/xen-fbfront.o] Error 1",
        "make[3]: *** [scripts/Makefile.build:500: drivers/video/fbdev] Error 2",
        "make: *** [Makefile:2012: .] Error 2",
    ]


def test_compiler_errors_pick_linker_errors():
    out = ("  LD      vmlinux.o\nld: vmlinux.o: in function `xenfb_probe':\n"
           "xen-fbfront.c:(.text+0x1c): undefined reference to `fb_deferred_io_init'\n  OBJCOPY x\n")
    assert compiler_errors(out).splitlines() == [
        "xen-fbfront.c:(.text+0x1c): undefined reference to `fb_deferred_io_init'"]


def test_compiler_errors_fall_back_to_the_last_twenty_lines():
    out = "\n".join(f"  CC      file{i}.o" for i in range(50)) + "\nKilled\n"
    picked = compiler_errors(out).splitlines()
    assert len(picked) == 20 and picked[-1] == "Killed" and picked[0] == "  CC      file31.o"


def test_compiler_errors_are_limited():
    out = "\n".join(f"f{i}.c:1:1: error: e{i}\n  1 | x\n    | ^" for i in range(40))
    picked = compiler_errors(out, limit=30).splitlines()
    assert len(picked) == 30 and picked[0] == "f0.c:1:1: error: e0"


def test_make_progress_counts_compiled_files_and_names_the_last():
    lines = ["  SYNC    include/config/auto.conf\n", "  CC      init/main.o\n", "  HOSTCC  scripts/x\n",
             "  AS      arch/x86/kernel/head_64.o\n", "  CC [M]  drivers/video/fbdev/xen-fbfront.o\n",
             "  LD      vmlinux.o\n"]
    assert _make_progress(lines) == "3 files compiled, last drivers/video/fbdev/xen-fbfront.o"
    assert _make_progress(lines[:1]) == "0 files compiled, last configuring"
    assert _make_progress([]) == "0 files compiled, last configuring"


# --- the source tree: its identity -----------------------------------------------------------------------------------

@needs_tools
def test_a_git_trees_identity_is_its_commit_and_what_differs(tmp_path, git):
    repo = git_repo(tmp_path / "linux", git, {"Makefile": "all:\n", "Kconfig": "", "init/main.c": "int x;\n"})
    spec = SourceSpec(str(repo), "", ())
    base = source_identity(spec, None)
    assert set(base) == {"git", "changes"} and base["git"] == git(repo, "rev-parse", "HEAD").strip()
    assert source_identity(spec, None) == base

    write(repo / "init/main.o", "object")  # ignored: a build product
    write(repo / ".config", "CONFIG_X=y\n")
    assert source_identity(spec, None) == base

    write(repo / "init/new.c", "int y;\n")  # untracked, not ignored
    untracked = source_identity(spec, None)
    assert untracked["git"] == base["git"] and untracked["changes"] != base["changes"]
    write(repo / "init/new.c", "int z;\n")  # ... its content counts, not only its name
    assert source_identity(spec, None) not in (base, untracked)
    (repo / "init/new.c").unlink()
    assert source_identity(spec, None) == base

    write(repo / "init/main.c", "int x = 1;\n")  # an uncommitted edit
    edited = source_identity(spec, None)
    assert edited["git"] == base["git"] and edited["changes"] not in (base["changes"], untracked["changes"])
    git(repo, "add", "init/main.c")  # staged is still uncommitted
    assert source_identity(spec, None) == edited
    git(repo, "commit", "-q", "-m", "edit")
    committed = source_identity(spec, None)
    assert committed["git"] != base["git"] and committed["changes"] == base["changes"]  # nothing differs now

    (repo / "Kconfig").unlink()  # a tracked file deleted in the work tree
    assert source_identity(spec, None)["changes"] != committed["changes"]


@needs_tools
def test_a_tree_that_is_not_a_git_work_tree_is_hashed_file_by_file(tmp_path, git):
    plain = tmp_path / "plain"
    write(plain / "Makefile", "all:\n")
    write(plain / "Kconfig", "")
    assert source_identity(SourceSpec(str(plain), "", ()), None) == {"tree": hash_tree(plain)}
    before = hash_tree(plain)
    write(plain / "init/main.o", "object")  # no .gitignore to leave it out: every file counts
    assert source_identity(SourceSpec(str(plain), "", ()), None) == {"tree": hash_tree(plain)} != {"tree": before}
    # A kernel tree inside a bigger repository is not that repository's work tree: hashed as files too.
    outer = git_repo(tmp_path / "outer", git, {"linux/Makefile": "all:\n", "linux/Kconfig": ""})
    assert source_identity(SourceSpec(str(outer / "linux"), "", ()), None) == {"tree": hash_tree(outer / "linux")}


# --- the source tree: its copy ---------------------------------------------------------------------------------------

@needs_tools
def test_a_git_tree_is_copied_as_git_sees_it(tmp_path, git):
    repo = git_repo(tmp_path / "linux", git, {"Makefile": "all:\n", "Kconfig": "", "init/main.c": "int x;\n",
                                              "gone.c": "deleted later\n", "dir with space/a file.c": "s\n"})
    (repo / "link.c").symlink_to("init/main.c")
    git(repo, "add", "link.c")
    git(repo, "commit", "-q", "-m", "link")
    write(repo / "init/main.c", "int x = 2;\n")  # modified, uncommitted: copied as it is now
    write(repo / "untracked.c", "u\n")
    write(repo / "init/main.o", "ignored object")
    write(repo / ".config", "CONFIG_IGNORED=y\n")
    (repo / "gone.c").unlink()  # tracked, deleted in the work tree: skipped, no error

    dest = tmp_path / "work" / "tree"
    dest.parent.mkdir()
    _copy_source(SourceSpec(str(repo), "", ()), None, dest, tmp_path / "log")
    assert files_under(dest) == {".gitignore": "*.o\n.config\n", "Makefile": "all:\n", "Kconfig": "",
                                 "init/main.c": "int x = 2;\n", "untracked.c": "u\n",
                                 "dir with space/a file.c": "s\n", "link.c": "-> init/main.c"}
    assert not (dest / ".git").exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["tree"]  # the listing and the tarball are gone


@needs_tools
def test_a_plain_directory_is_copied_whole_and_cleaned_when_built_in_place(tmp_path):
    src = tmp_path / "linux"
    # A stand-in for the kernel's own mrproper: what a tree built in place has must go before kbuild sees it.
    write(src / "Makefile", "mrproper:\n\trm -f .config\n\trm -rf include/config\n")
    write(src / "Kconfig", "")
    write(src / "init/main.c", "int x;\n")
    write(src / ".hidden", "kept\n")
    write(src / "scripts/tool.sh", "#!/bin/sh\n", mode=0o755)
    (src / "link").symlink_to("init/main.c")
    write(src / ".config", "CONFIG_X=y\n")
    write(src / "include/config/auto.conf", "CONFIG_X=y\n")
    dest = tmp_path / "work" / "tree"
    dest.parent.mkdir()
    _copy_source(SourceSpec(str(src), "", ()), None, dest, tmp_path / "log")
    assert files_under(dest) == {"Makefile": (src / "Makefile").read_text(), "Kconfig": "",
                                 "init/main.c": "int x;\n", ".hidden": "kept\n", "scripts/tool.sh": "#!/bin/sh\n",
                                 "link": "-> init/main.c"}
    assert os.access(dest / "scripts/tool.sh", os.X_OK)
    assert (src / ".config").exists() and (src / "include/config/auto.conf").exists()  # the user's tree untouched
    assert "rm -f .config" in (tmp_path / "log").read_text()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["tree"]


# --- the patches -----------------------------------------------------------------------------------------------------

def make_series(tmp_path: Path) -> tuple[Path, list[Path], dict[str, str]]:
    """A tiny tree and three patches, each on top of the one before (diff -ruN, applied with -p1); returns the
    tree, the patches and what the tree holds with all three applied."""
    versions = [
        {"a.txt": "one\ntwo\nthree\n", "sub/b.txt": "bee\n"},
        {"a.txt": "one\n2\nthree\n", "sub/b.txt": "bee\n"},
        {"a.txt": "one\n2\nthree\n", "sub/b.txt": "bee\n", "sub/new.txt": "new file\n"},
        {"a.txt": "one\nII\nthree\n", "sub/b.txt": "buzz\n", "sub/new.txt": "new file\n"},  # on top of 1's line
    ]
    for i, files in enumerate(versions):
        for name, text in files.items():
            write(tmp_path / "v" / f"{i}" / name, text)
    patches = []
    for i in range(1, len(versions)):
        out = subprocess.run(["diff", "-ruN", f"{i - 1}", f"{i}"], cwd=tmp_path / "v", capture_output=True,
                             text=True)
        assert out.returncode == 1, out.stderr  # 1: they differ
        patches.append(write(tmp_path / "patches" / f"000{i}-step-{i}.patch", out.stdout))
    tree = tmp_path / "tree"
    shutil.copytree(tmp_path / "v" / "0", tree)
    return tree, patches, versions[-1]


@needs_tools
def test_patches_apply_in_order(tmp_path):
    tree, patches, final = make_series(tmp_path)
    _apply_patches(SourceSpec(str(tmp_path / "src"), "", tuple(map(str, patches))), tree, tmp_path / "log")
    assert files_under(tree) == final  # no .orig or .rej left either


@needs_tools
def test_a_patch_that_does_not_apply_names_its_number_and_file(tmp_path):
    tree, patches, _ = make_series(tmp_path)
    bad = write(tmp_path / "patches" / "bad.patch", "--- a/a.txt\n+++ b/a.txt\n@@ -1,3 +1,3 @@\n one\n-zwei\n"
                "+deux\n three\n")
    spec = SourceSpec("linux-source-6.1", "", (str(patches[0]), str(bad), str(patches[2])))
    with pytest.raises(KernelBuildError) as info:
        _apply_patches(spec, tree, tmp_path / "log")
    message = str(info.value)
    assert f"guest.kernel_patches: patch 2 of 3, {bad}, does not apply to linux-source-6.1" in message
    assert "FAILED" in message  # patch's own words
    assert (tree / "a.txt").read_text() == "one\n2\nthree\n"  # the first was applied, the third never tried
    assert not (tree / "sub/new.txt").exists()


@needs_tools
def test_the_order_matters_and_an_applied_patch_is_not_reversed(tmp_path):
    tree, patches, _ = make_series(tmp_path)
    with pytest.raises(KernelBuildError, match="patch 1 of 2"):
        _apply_patches(SourceSpec("src", "", (str(patches[2]), str(patches[0]))), tree, tmp_path / "log")
    tree2 = tmp_path / "tree2"
    shutil.copytree(tmp_path / "v" / "0", tree2)
    # --batch alone would take a patch that is already applied as reversed, and quietly undo it.
    with pytest.raises(KernelBuildError) as info:
        _apply_patches(SourceSpec("src", "", (str(patches[0]), str(patches[0]))), tree2, tmp_path / "log")
    assert "patch 2 of 2" in str(info.value) and "previously applied" in str(info.value)
    assert (tree2 / "a.txt").read_text() == "one\n2\nthree\n"


# --- what an out-of-tree module build needs of a built tree ----------------------------------------------------------

def test_module_build_files_are_picked_as_debian_picks_its_headers(tmp_path):
    picked = ["Makefile", ".config", "Module.symvers", "tools/objtool/objtool",
              "include/linux/fb.h", "include/generated/autoconf.h", "include/config/auto.conf",
              "include/linux/link.h",
              "scripts/Makefile.build", "scripts/mod/modpost", "scripts/basic/fixdep", "scripts/module.lds",
              "arch/x86/Makefile", "arch/x86/Makefile_32.cpu", "arch/x86/Makefile.um",
              "arch/x86/include/asm/xen/page.h", "arch/x86/include/generated/asm/syscalls_64.h",
              "arch/x86/tools/include/t.h", "arch/x86/Kbuild.platforms", "arch/x86/platform/foo/Platform"]
    left = ["vmlinux", "README", "Kconfig", "init/main.c", "init/main.o", "drivers/video/fbdev/xen-fbfront.c",
            "tools/objtool/check.c", "tools/include/linux/types.h",
            "arch/x86/Kbuild", "arch/x86/Kconfig", "arch/x86/entry/entry_64.S", "arch/x86/entry/syscalls/Makefile",
            "arch/x86/tools/relocs.c", "arch/x86/tools/Makefile", "arch/x86/boot/bzImage", "arch/arm/Makefile",
            "arch/arm/include/asm/x.h"]
    for name in picked + left:
        if name != "include/linux/link.h":
            write(tmp_path / name, name)
    (tmp_path / "include/linux/link.h").symlink_to("fb.h")
    (tmp_path / "include/empty-dir").mkdir()
    assert _module_build_files(tmp_path) == sorted(picked)


def test_module_build_files_of_a_tree_without_module_symvers(tmp_path):
    write(tmp_path / "Makefile", "")
    write(tmp_path / "include/linux/a.h", "")
    assert _module_build_files(tmp_path) == ["Makefile", "include/linux/a.h"]


# --- a kernel the user built -----------------------------------------------------------------------------------------

def fake_vmlinux(version: str = "6.1.99-test", size: int = 50_000) -> bytes:
    rng = random.Random(version)
    body = b"".join(rng.randbytes(32) + bytes(96) for _ in range(size // 128))
    banner = f"Linux version {version} (x@y) (gcc (Debian 12.2.0-14) 12.2.0) #1 SMP\n".encode()
    return b"\x7fELF\x02\x01\x01" + bytes(9) + body[: size // 2] + banner + body[size // 2:]


def fake_bzimage(payload: bytes) -> bytes:
    rng = random.Random(7)
    setup = b"MZ" + bytes(rng.randrange(1, 256) for _ in range(3000)) + b"HdrS" + bytes(500)  # boot sector, setup
    return setup + payload + (len(payload)).to_bytes(4, "little") + bytes(300)  # kbuild appends the size


def entry_names(cache: Cache) -> list[str]:
    return sorted(p.name for p in cache.root.iterdir())


def test_an_elf_image_is_taken_as_it_is_and_its_banner_gives_the_version(tmp_path):
    image = write(tmp_path / "vmlinux", fake_vmlinux())
    cache = Cache(tmp_path / "cache")
    entry = image_kernel(cache, image, tmp_path / "log")
    assert entry.name.startswith("kernel-image-") and entry.parent == cache.root
    assert (entry / "vmlinux").read_bytes() == image.read_bytes()
    assert (entry / "version").read_text() == "6.1.99-test"
    assert image_kernel(cache, image, tmp_path / "log") == entry  # found, not built again
    write(tmp_path / "vmlinux", fake_vmlinux("6.1.100-other"))
    other = image_kernel(cache, image, tmp_path / "log")  # a rebuilt image is another entry
    assert other != entry and (other / "version").read_text() == "6.1.100-other"


@pytest.mark.parametrize("compress", [
    pytest.param(lambda data: gzip.compress(data, 9, mtime=0), id="gzip"),  # kbuild's default
    pytest.param(lambda data: lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32), id="xz"),
    pytest.param(lambda data: zstandard.ZstdCompressor(level=19).compress(data), id="zstd"),
])
def test_a_bzimage_gives_the_same_vmlinux(tmp_path, compress):
    elf = fake_vmlinux()
    image = write(tmp_path / "bzImage", fake_bzimage(compress(elf)))
    entry = image_kernel(Cache(tmp_path / "cache"), image, tmp_path / "log")
    assert (entry / "vmlinux").read_bytes() == elf
    assert (entry / "version").read_text() == "6.1.99-test"


@needs_tools
def test_a_bzimage_compressed_by_the_gzip_program(tmp_path):
    elf = fake_vmlinux("5.10.250-gz")
    piggy = subprocess.run(["gzip", "-n", "-f", "-9"], input=elf, capture_output=True, check=True).stdout
    image = write(tmp_path / "bzImage", fake_bzimage(piggy))
    entry = image_kernel(Cache(tmp_path / "cache"), image, tmp_path / "log")
    assert (entry / "vmlinux").read_bytes() == elf and (entry / "version").read_text() == "5.10.250-gz"


def test_an_image_without_a_banner_is_an_error_and_leaves_no_entry(tmp_path):
    image = write(tmp_path / "vmlinux", fake_vmlinux().replace(b"Linux version", b"Linux release"))
    cache = Cache(tmp_path / "cache")
    with pytest.raises(KernelBuildError) as info:
        image_kernel(cache, image, tmp_path / "log")
    assert "guest.kernel_image" in str(info.value) and str(image) in str(info.value)
    assert "Linux version" in str(info.value)
    assert entry_names(cache) == [".kernel-image.lock"]
    bz = write(tmp_path / "bzImage", fake_bzimage(gzip.compress(image.read_bytes())))
    with pytest.raises(KernelBuildError):  # also when the banner-less ELF came out of a bzImage
        image_kernel(cache, bz, tmp_path / "log")
    assert entry_names(cache) == [".kernel-image.lock"]


def test_an_image_that_is_no_kernel_at_all_is_an_error_naming_it(tmp_path):
    image = write(tmp_path / "notes.txt", "not a kernel\n" * 100)
    cache = Cache(tmp_path / "cache")
    with pytest.raises(ValueError, match="no xz-, zstd- or gzip-compressed ELF payload") as info:
        image_kernel(cache, image, tmp_path / "log")
    assert str(image) in str(info.value)
    assert entry_names(cache) == [".kernel-image.lock"]


def test_a_build_tree_is_identified_by_its_config_symbols_and_release(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        build_tree_identity(tmp_path)
    message = str(info.value)
    assert "guest.kernel_build_tree" in message
    for name in (".config", "Module.symvers", "include/config/kernel.release"):
        assert str(tmp_path / name) in message, name
    write(tmp_path / ".config", "CONFIG_MODULES=y\n")
    write(tmp_path / "include/config/kernel.release", "6.1.99\n")
    with pytest.raises(FileNotFoundError) as info:
        build_tree_identity(tmp_path)
    assert str(tmp_path / "Module.symvers") in str(info.value)
    assert str(tmp_path / ".config") not in str(info.value)
    write(tmp_path / "Module.symvers", "0x1\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n")
    first = build_tree_identity(tmp_path)
    assert first["build_tree"] == str(tmp_path)
    write(tmp_path / "init/main.o", "a build product: not part of the identity")
    assert build_tree_identity(tmp_path) == first
    write(tmp_path / "Module.symvers", "0x2\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n")
    assert build_tree_identity(tmp_path)["files"] != first["files"]


# --- a whole build, of a stand-in for a kernel tree ------------------------------------------------------------------

# The targets source_kernel runs, in a few lines each: tinyconfig starts a .config, merge_config.sh appends the
# fragments, olddefconfig keeps each option's last value and drops the options this "kernel" does not have,
# vmlinux writes an ELF with a banner and include/config/kernel.release (or fails like gcc when the tree has a BROKEN file), modules writes
# Module.symvers and the generated headers when CONFIG_MODULES=y (without it, a no-op as in Linux 6.5 on, or
# with FAKE_KERNEL_BEFORE_6_5 an error, as in Linux 6.1's Makefile), kernelrelease prints the release.
FAKE_MAKEFILE = """\
VERSION = 6.1
EXTRAVERSION = -fake
.PHONY: tinyconfig olddefconfig vmlinux modules kernelrelease mrproper
tinyconfig:
\t@printf '# CONFIG_MODULES is not set\\nCONFIG_TINY=y\\n' > .config
olddefconfig:
\t@sh scripts/kconfig/olddefconfig.sh
vmlinux:
\t@echo built >> $(FAKE_KERNEL_BUILDS)
\t@echo '  CC      init/main.o'
\t@if [ -f BROKEN ]; then \\
\t  echo "init/main.c:10:5: error: expected ';' before '}' token"; echo '   10 | }'; echo '      | ^'; \\
\t  echo 'make[2]: *** [scripts/Makefile.build:250: init/main.o] Error 1'; exit 2; fi
\t@printf '\\177ELF\\002\\001\\001Linux version $(VERSION)$(EXTRAVERSION) (x@y) #1\\n' > vmlinux
\t@mkdir -p include/config && echo $(VERSION)$(EXTRAVERSION) > include/config/kernel.release
modules:
\t@if grep -q '^CONFIG_MODULES=y' .config; then \\
\t  echo 'printk vmlinux' > Module.symvers; mkdir -p include/generated; \\
\t  echo '#define X 1' > include/generated/autoconf.h; \\
\telif [ -n "$(FAKE_KERNEL_BEFORE_6_5)" ]; then \\
\t  echo '***' >&2; echo '*** The present kernel configuration has modules disabled.' >&2; exit 1; fi
kernelrelease:
\t@echo $(VERSION)$(EXTRAVERSION)
mrproper:
\t@rm -f .config
"""
MERGE_CONFIG = """#!/bin/sh
[ "$1" = -m ] && shift
base=$1; shift
for f in "$@"; do cat "$f" >> "$base"; done
"""
OLDDEFCONFIG = """awk '
/^CONFIG_[A-Za-z0-9_]+=/ { k = substr($0, 1, index($0, "=") - 1) }
/^# CONFIG_[A-Za-z0-9_]+ is not set$/ { k = $2 }
k != "" { if (!(k in v)) o[++n] = k; v[k] = $0; k = "" }
END { for (i = 1; i <= n; i++) if (o[i] != "CONFIG_NOT_IN_THIS_KERNEL") print v[o[i]] }
' .config > .config.new && mv .config.new .config
"""


@pytest.fixture
def fake_kernel(tmp_path, monkeypatch) -> Path:
    tree = tmp_path / "linux"
    write(tree / "Makefile", FAKE_MAKEFILE)
    write(tree / "Kconfig", "")
    write(tree / "scripts/kconfig/merge_config.sh", MERGE_CONFIG, mode=0o755)
    write(tree / "scripts/kconfig/olddefconfig.sh", OLDDEFCONFIG)
    write(tree / "include/linux/fb.h", "struct fb_info;\n")
    write(tree / "arch/x86/Makefile", "")
    write(tree / "arch/x86/include/asm/page.h", "")
    write(tree / "drivers/video/fbdev/xen-fbfront.c", "int xenfb;\n")
    monkeypatch.setenv("FAKE_KERNEL_BUILDS", str(tmp_path / "builds"))
    return tree


def builds(tmp_path: Path) -> int:
    return len((tmp_path / "builds").read_text().splitlines()) if (tmp_path / "builds").exists() else 0


@needs_tools
def test_a_source_tree_is_patched_configured_built_and_cached(tmp_path, fake_kernel):
    patch = write(tmp_path / "0001-extraversion.patch", "--- a/Makefile\n+++ b/Makefile\n@@ -1,3 +1,3 @@\n"
                  " VERSION = 6.1\n-EXTRAVERSION = -fake\n+EXTRAVERSION = -patched\n"
                  " .PHONY: tinyconfig olddefconfig vmlinux modules kernelrelease mrproper\n")
    fragment = write(tmp_path / "mine.config", "CONFIG_MINE=y\n")
    spec = SourceSpec(str(fake_kernel), str(fragment), (str(patch),))
    cache = Cache(tmp_path / "cache")
    entry = source_kernel(cache, None, spec, tmp_path / "log")
    assert entry.name.startswith("kernel-source-")
    assert (entry / "version").read_text() == "6.1-patched"
    assert (entry / "vmlinux").read_bytes().startswith(b"\x7fELF")
    assert b"Linux version 6.1-patched (" in (entry / "vmlinux").read_bytes()
    config = parse_config((entry / "config").read_text())
    assert config["CONFIG_MINE"] == "y" and config["CONFIG_MODULES"] == "y" and config["CONFIG_XEN_PV"] == "y"
    assert "init/main.o" in (entry / "build.log").read_text()
    assert sorted(files_under(entry / "build")) == [".config", "Makefile", "Module.symvers", "arch/x86/Makefile",
                                                    "arch/x86/include/asm/page.h", "include/config/kernel.release",
                                                    "include/generated/autoconf.h",
                                                    "include/linux/fb.h", "scripts/kconfig/merge_config.sh",
                                                    "scripts/kconfig/olddefconfig.sh"]
    assert sorted(p.name for p in entry.iterdir()) == ["build", "build.log", "config", "inputs.json", "version",
                                                       "vmlinux"]
    assert "-patched" in (entry / "build/Makefile").read_text()  # the patched tree's
    assert (fake_kernel / "Makefile").read_text() == FAKE_MAKEFILE and not (fake_kernel / ".config").exists()
    assert builds(tmp_path) == 1

    assert source_kernel(cache, None, spec, tmp_path / "log") == entry and builds(tmp_path) == 1  # cached
    write(fragment, "CONFIG_MINE=y\nCONFIG_MORE=y\n")
    assert source_kernel(cache, None, spec, tmp_path / "log") != entry and builds(tmp_path) == 2
    write(fake_kernel / "drivers/video/fbdev/xen-fbfront.c", "int xenfb = 1;\n")
    assert source_kernel(cache, None, spec, tmp_path / "log") != entry and builds(tmp_path) == 3
    unpatched = source_kernel(cache, None, SourceSpec(str(fake_kernel), str(fragment), ()), tmp_path / "log")
    assert (unpatched / "version").read_text() == "6.1-fake"
    assert not list(cache.root.glob(".tmp-*"))


@needs_tools
def test_a_kernel_without_modules_has_no_build_directory(tmp_path, fake_kernel):
    fragment = write(tmp_path / "tiny.config", "# CONFIG_MODULES is not set\n")
    entry = source_kernel(Cache(tmp_path / "cache"), None, SourceSpec(str(fake_kernel), str(fragment), ()),
                          tmp_path / "log")
    assert parse_config((entry / "config").read_text())["CONFIG_MODULES"] == "n"
    assert (entry / "vmlinux").is_file() and not (entry / "build").exists()


@needs_tools
def test_a_kernel_without_modules_builds_with_the_makefile_of_linux_6_1(tmp_path, fake_kernel, monkeypatch):
    monkeypatch.setenv("FAKE_KERNEL_BEFORE_6_5", "1")
    fragment = write(tmp_path / "tiny.config", "# CONFIG_MODULES is not set\n")
    entry = source_kernel(Cache(tmp_path / "cache"), None, SourceSpec(str(fake_kernel), str(fragment), ()),
                          tmp_path / "log")
    assert (entry / "vmlinux").is_file() and not (entry / "build").exists()


@needs_tools
def test_an_option_that_does_not_survive_is_an_error_naming_it(tmp_path, fake_kernel):
    fragment = write(tmp_path / "mine.config", "CONFIG_MINE=y\nCONFIG_NOT_IN_THIS_KERNEL=y\n")
    cache = Cache(tmp_path / "cache")
    with pytest.raises(KernelBuildError) as info:
        source_kernel(cache, None, SourceSpec(str(fake_kernel), str(fragment), ()), tmp_path / "log")
    message = str(info.value)
    assert f"CONFIG_NOT_IN_THIS_KERNEL=y (from {fragment}): the final .config has not set" in message
    assert "CONFIG_MINE" not in message and "CONFIG_XEN_PV" not in message
    assert builds(tmp_path) == 0  # stopped before building
    assert entry_names(cache) == [".kernel-source.lock"]


@needs_tools
def test_a_build_that_fails_is_an_error_with_the_compilers_words(tmp_path, fake_kernel):
    patch = write(tmp_path / "0001-break.patch", "--- a/BROKEN\n+++ b/BROKEN\n@@ -0,0 +1 @@\n+yes\n")
    cache = Cache(tmp_path / "cache")
    with pytest.raises(KernelBuildError) as info:
        source_kernel(cache, None, SourceSpec(str(fake_kernel), "", (str(patch),)), tmp_path / "log")
    message = str(info.value)
    assert message.startswith(f"the guest kernel ({fake_kernel} + 1 patches) did not build; the errors:\n")
    assert ("init/main.c:10:5: error: expected ';' before '}' token\n   10 | }\n      | ^\n"
            "make[2]: *** [scripts/Makefile.build:250: init/main.o] Error 1\n") in message
    assert "  CC      init/main.o" not in message
    assert f"(full output: {tmp_path / 'log'})" in message
    assert entry_names(cache) == [".kernel-source.lock"]  # no entry, no half-built tree


def test_a_missing_fragment_or_patch_is_named_before_anything_is_built(tmp_path):
    cache = Cache(tmp_path / "cache")
    for spec in (SourceSpec(str(tmp_path), str(tmp_path / "gone.config"), ()),
                 SourceSpec(str(tmp_path), "", (str(tmp_path / "gone.patch"),))):
        missing = spec.fragment or spec.patches[0]
        with pytest.raises(FileNotFoundError, match=f"{missing} does not exist"):
            source_kernel(cache, None, spec, tmp_path / "log")
    assert entry_names(cache) == []


def test_source_spec_package_and_description(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert SourceSpec("linux-source-6.1", "", ()).package == "linux-source-6.1"
    assert SourceSpec("/src/linux-source-6.1", "", ()).package is None
    assert SourceSpec("linux-source-6.1.5", "", ()).package is None
    assert SourceSpec(str(tmp_path), "", ()).package is None
    assert SourceSpec("linux-source-6.1", "", ()).describe() == "linux-source-6.1"
    assert SourceSpec("linux-source-6.1", "", ("a", "b")).describe() == "linux-source-6.1 + 2 patches"


def test_a_package_sources_identity_is_its_version():
    class Apt:
        def version(self, package):
            assert package == "linux-source-6.1"
            return "6.1.192-2"
    assert source_identity(SourceSpec("linux-source-6.1", "", ()), Apt()) == {"package": "linux-source-6.1",
                                                                              "version": "6.1.192-2"}

