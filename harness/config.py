"""Scenario configuration: one schema, every default written down here, every key checked.

A config file is YAML. Keys not in SCHEMA, values of the wrong type and paths that do not exist are errors
that name the file, the dotted key and what was expected; nothing is guessed.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .artifacts.kernel_build import SOURCE_PACKAGE, patch_series
from .frontends import FRONTENDS
from .pattern import DEFAULT_PARAMS

# Bumped whenever a key changes meaning or goes away; result.json records it with the effective config.
SCHEMA_VERSION = 6
MAX_COMMAND = 2000  # bytes of command.run: it reaches the guest hex-encoded in one line of its console tty, whose
#                     canonical mode takes at most 4095 characters a line
DEBIAN_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
MODULE_NAME = re.compile(r"[A-Za-z0-9_]+")
MODULE_PARAMS = re.compile(r"([A-Za-z0-9_.,:=-]+( [A-Za-z0-9_.,:=-]+)*)?")  # the guest's init splits them at '+'

class ConfigError(ValueError):
    def __init__(self, source: str, key: str, message: str):
        super().__init__(f"{source}: {key or '(top level)'}: {message}")
        self.source, self.key = source, key


@dataclass(frozen=True)
class Field:
    default: Any
    kind: str  # int | str | bool | enum | path (an existing file; "" when that is the default) | file (a file that
    #            may not exist yet) | rects | kernel_source (a kernel tree or linux-source-X.Y) | patches (a directory
    #            or a list of patch files, resolved to the files in order)
    #            | dir (an existing directory; "" keeps the default meaning) | packages (Debian package names)
    doc: str
    choices: tuple = ()
    minimum: int | None = None
    maximum: int | None = None


# Every key, its default and what it means. `xenfb-harness --help` and the README point here.
SCHEMA: dict[str, Any] = {
    "frontend": Field("upstream", "enum", "guest framebuffer frontend: " +
                      "; ".join(f"'{f.name}' is {f.doc}" for f in FRONTENDS.values()), choices=tuple(FRONTENDS)),
    "legacy": {
        "race_window_ms": Field(0, "int", "legacy frontends: sleep this long between the fault handler dropping "
                                "its lock and returning the page, widening the real race window (0 = natural)",
                                minimum=0),
        "unload_at_end": Field(False, "bool", "legacy frontends: after the last round, unbind the device and "
                               "unload the module (nothing maps it then); the run is an ERROR if that fails"),
        "source": Field("", "dir", "legacy frontends: the directory their modules are built from ('' is the "
                        "harness's own guest-kernels/xenfb-legacy); e.g. a copy with a backported patch. It must "
                        "build xenfb-legacy.ko and/or xenfb-legacy-fixed.ko (modules xenfb_legacy, "
                        "xenfb_legacy_fixed), whichever the frontend loads"),
    },
    "module": {
        "source": Field("", "dir", "frontend 'module': your frontend module's source tree, which `make -C <kernel "
                        "headers> M=<a copy of it> modules` builds (a Kbuild file, as for any out-of-tree module); "
                        "built against the guest kernel's Debian headers"),
        "name": Field("", "str", "frontend 'module': the module to load, as lsmod names it (its .ko file with '-' "
                      "as '_')"),
        "params": Field("", "str", "frontend 'module': insmod parameters, e.g. 'debug=1 delay_ms=20'"),
    },
    "rounds": Field(10, "int", "pattern rounds after the baseline (round 0 clears the screen)", minimum=1),
    "seed": Field(1, "int", "pattern seed; the same seed draws the same frames", minimum=0),
    "writer": {
        "kind": Field("mmap", "enum", "who draws: 'mmap' is xfb-writer writing through its own mmap of /dev/fb0; "
                      "'xorg' is an X server (fbdev driver, ShadowFB off) drawing into the framebuffer for an X "
                      "client, xfb-xwriter, that draws the same pattern with XFillRectangle; 'command' is any "
                      "workload you give (command.run), judged against guest memory at the points where the "
                      "harness freezes it (no expected frame: the other writer.* keys do not apply)",
                      choices=("mmap", "xorg", "command")),
        "lifecycle": Field("persistent", "enum", "how the drawing program uses the framebuffer: 'persistent' "
                           "opens and maps it once; 'per-round' is a new process each round that opens, maps, "
                           "draws, unmaps, closes and exits (a splash screen, an image viewer, cat > /dev/fb0; with "
                           "the X writer, a client that connects, draws and disconnects); 'second-opener' adds, each "
                           "round, another process that opens the device, queries it as fbset does and closes it "
                           "while the round is drawn. What is drawn is the same",
                           choices=("persistent", "per-round", "second-opener")),
        "mode": Field(DEFAULT_PARAMS.mode, "enum", "what a round draws: 'mixed' rectangles and pages, or 'sparse' pages, "
                      "each touched a few times (a miss stays on screen until compared)",
                      choices=("mixed", "sparse")),
        "pages": Field(DEFAULT_PARAMS.pages, "int", "sparse mode: pages written per round", minimum=1),
        "touches": Field(DEFAULT_PARAMS.touches, "int", "sparse mode: times each page is written per round", minimum=1),
        "order": Field(DEFAULT_PARAMS.order, "enum", "sparse mode: page order within a round", choices=("random", "ascending")),
        "mappings": Field(1, "int", "map the framebuffer as this many mmap()s of consecutive chunks at their own "
                          "file offsets (the frontend serves faults at non-zero offsets and tracks each mapping); "
                          "0 maps every page on its own", minimum=0, maximum=65536),
        "workers": Field(1, "int", "sparse mode: split each round's pages among this many workers (page % workers "
                         "picks the worker, so the frame drawn is the same)", minimum=1, maximum=16),
        "worker_kind": Field("thread", "enum", "what a worker is: a thread of the writer, or a process forked for "
                             "the round (its mapping is fork's copy)", choices=("thread", "process")),
        "touch_gap_us": Field(0, "int", "sparse mode: pause between two touches of a page (timing only)",
                              minimum=0),
        "final_gap_us": Field(0, "int", "sparse mode: if not 0, the last touches of every other page (pages that "
                              "share no screen row) wait for a final pass: after the other touches and half a "
                              "second, one page at a time in ascending order, this many microseconds apart; it adds "
                              "about pages/2 x this to a round, which must stay within timeouts.round (timing only; "
                              "see README 'The natural race on screen')",
                              minimum=0, maximum=10_000_000),
    },
    "command": {
        "run": Field("", "str", "writer.kind 'command': the shell command line (/bin/sh -c, busybox) the guest runs "
                     "as the workload, e.g. a loop of X clients. It must keep running: its exit is an ERROR. It runs "
                     "with PATH=/usr/bin:/bin, HOME=/tmp and, with command.xorg, DISPLAY=:0; its output is kept as "
                     "workload.log", maximum=MAX_COMMAND),
        "xorg": Field(True, "bool", "writer.kind 'command': start the X server (fbdev driver, ShadowFB off) "
                      "before the workload; it is frozen with it"),
        "packages": Field([], "packages", "writer.kind 'command': Debian packages whose files the guest gets "
                          "(from the guest's apt sources), e.g. [x11-apps] for x11perf; their programs bring the "
                          "shared libraries they load (documentation is left out)"),
        "interval_ms": Field(2000, "int", "writer.kind 'command': how long the workload runs between two freezes",
                             minimum=10),
        "timing": Field("random", "enum", "writer.kind 'command': 'periodic' freezes every interval_ms; "
                        "'random' draws each interval from 0.5..1.5 x interval_ms with the seed",
                        choices=("periodic", "random")),
    },
    "compare": {
        "exclude": Field([], "rects", "extra areas left out of the comparison, as {x, y, w, h}"),
    },
    "guest": {
        "memory_mb": Field(256, "int", "guest memory", minimum=64),
        "mapping_checks": Field(False, "bool", "before the rounds, check that the frontend survives and keeps "
                                "tracking split, forked, moved and partly unmapped mappings (xfb-mapcheck; counters "
                                "are checked where the frontend has them)"),
        "vcpus": Field(1, "int", "guest virtual CPUs; with 2 or more, the frontend's thread can run while a fault "
                       "is in flight on another CPU (the natural race needs that)", minimum=1, maximum=64),
        "kernel_package": Field("linux-image-amd64", "str", "Debian package of the guest kernel; a metapackage "
                                "such as linux-image-amd64 (the default) stands for the kernel it depends on when "
                                "the artifacts are built, and the run names it. A versioned one "
                                "(linux-image-<ABI>-amd64, as a run names it) pins that ABI until the archive drops "
                                "it, which Debian does at its next ABI: it keeps only each release's current kernels"),
        "kernel_source": Field("", "kernel_source", "build the guest kernel from source instead of using "
                               "guest.kernel_package: a kernel tree (a directory; a git work tree is taken as git "
                               "sees it, uncommitted changes included; a directory named like the package is "
                               "./linux-source-X.Y) or a Debian package linux-source-X.Y (from "
                               "guest.kernel_suite's release). Configured as `make tinyconfig` plus the harness's "
                               "Xen PV guest fragment (guest-kernels/xen-pv-guest.config) plus guest.kernel_config; "
                               "built once per source, config, patches and compiler, then cached"),
        "kernel_config": Field("", "path", "guest.kernel_source: your Kconfig fragment (CONFIG_X=y lines), merged "
                               "on top of the harness's; an option that does not survive `make olddefconfig` is "
                               "an ERROR that names it"),
        "kernel_patches": Field([], "patches", "guest.kernel_source: patches applied in order with `patch -p1` "
                                "(`git format-patch` or `diff -u` files): a list of files, or a directory (the "
                                "order of its quilt `series` file, else its *.patch and *.diff files by name)"),
        "kernel_image": Field("", "path", "a guest kernel you built, instead of guest.kernel_package: a vmlinux, or "
                              "a bzImage compressed with gzip, xz or zstd. It needs CONFIG_XEN_PV, "
                              "CONFIG_XEN_FBDEV_FRONTEND and what guest-kernels/xen-pv-guest.config lists"),
        "kernel_build_tree": Field("", "dir", "guest.kernel_image: its build tree (after `make modules`), which "
                                   "the frontend modules (legacy, legacy-fixed, module) build against"),
        "kernel_suite": Field("", "str", "Debian release the guest kernel (and the headers our frontend modules "
                              "build against) come from, e.g. bullseye (5.10) or trixie (6.12): the apt.sources "
                              "file with its codename replaced. '' takes them from apt.sources as it is; the "
                              "guest's userspace (busybox, X) always does"),
        "extra_cmdline": Field("", "str", "appended to the guest kernel command line"),
        "boot_timeout": Field(180, "int", "seconds from 'xl create' to the writer's READY line", minimum=1),
    },
    "host": {
        "kind": Field("nested", "enum", "where Xen runs: 'nested' boots Xen and dom0 under QEMU here; 'ssh' uses "
                      "a running dom0 reached over SSH (a real Xen host, or one started by `xenfb-harness host up`)",
                      choices=("nested", "ssh")),
        "accel": Field("auto", "enum", "nested: outer QEMU accelerator: auto probes KVM and falls back to TCG",
                       choices=("auto", "tcg", "kvm")),
        "memory_mb": Field(2048, "int", "nested: outer QEMU memory", minimum=512),
        "cpus": Field(2, "int", "nested: outer QEMU virtual CPUs", minimum=1),
        "dom0_memory_mb": Field(1024, "int", "nested: dom0 memory", minimum=256),
        "xen_package": Field("xen-hypervisor-4.17-amd64", "str", "nested: Debian package of the Xen hypervisor"),
        "dom0_kernel_package": Field("linux-image-amd64", "str",
                                     "nested: Debian package of the dom0 kernel; a metapackage stands for the kernel "
                                     "it depends on when the artifacts are built, as for guest.kernel_package"),
        "xen_cmdline": Field("", "str", "nested: appended to Xen's command line"),
        "boot_timeout": Field(600, "int", "nested: seconds for Xen and dom0 to boot to a ready SSH server",
                              minimum=1),
        "snapshot": Field(True, "bool", "nested: restore Xen and dom0 from a snapshot in the artifact cache (about "
                          "2 s instead of a 12 s boot); the first boot of the same host artifacts, outer QEMU and "
                          "machine settings saves it. A snapshot that cannot be used is said why, and a boot "
                          "follows. false: always boot, save nothing"),
        "idle_timeout_min": Field(30, "int", "nested, `host up`: a host nobody has used for this long stops "
                                  "itself", minimum=1),
        "address": Field("", "str", "ssh: the dom0's address (name or IP)"),
        "port": Field(22, "int", "ssh: the dom0's SSH port", minimum=1, maximum=65535),
        "user": Field("root", "str", "ssh: the user to log in as (xl needs root)"),
        "key": Field("~/.ssh/id_ed25519", "file", "ssh: private key file (Ed25519, ECDSA or RSA)"),
        "known_hosts": Field("~/.ssh/known_hosts", "file", "ssh: known_hosts file holding the dom0's host key; "
                             "checked strictly (an unknown key is accepted only with --accept-new-host-key)"),
        "workdir": Field("/tmp", "str", "ssh: directory in dom0 under which the run keeps its files, in one "
                         "directory of its own that is removed at the end"),
        "share_dir": Field("", "dir", "ssh: a directory of this machine that dom0 has mounted at host.share_mount "
                           "(read-only is enough): guest payloads are linked there instead of sent over SSH, which "
                           "carries 1-2 MB/s into a nested dom0. `host up` sets it for its host"),
        "share_mount": Field("", "str", "ssh: where dom0 has host.share_dir mounted"),
    },
    "apt": {
        "sources": Field("/etc/apt/sources.list.d/debian.sources", "path",
                         "apt sources file (one-line or deb822) used for every package; defaults to the host's"),
        "suite": Field("bookworm", "str", "Debian suite of the dom0 root filesystem"),
        "snapshot": Field("", "str", "with `--lock FILE`: the base URL of an archive snapshot service laid out as "
                          "Debian's own snapshot archive (BASE/mr/binary/NAME/VERSION/binfiles, BASE/file/HASH), "
                          "where a locked package version the archive no longer has is fetched from; '' makes such "
                          "a version an ERROR that names it"),
    },
    "capture": {
        "quiet_ms": Field(3500, "int", "after a round's DONE nothing in the guest draws; the round is judged as "
                          "soon as the backend's view equals the expected frame, else after this long. Longer than "
                          "the backend's slowest idle refresh (measured: benchmarks/idle_refresh.py); shorter risks "
                          "calling a late update a miss", minimum=100),
    },
    "timeouts": {
        "round": Field(120, "int", "seconds for the writer to finish one round", minimum=1),
    },
}


def workdir_problem(path: str) -> str:
    """What a dom0 work directory must be and is not ("" if fine): it goes into xl's configuration file."""
    if not path.startswith("/") or any(c in path for c in "\"\\\n"):
        return "an absolute path without quotes, backslashes or newlines"
    return ""


def runs_x_server(cfg) -> bool:
    """Whether the guest runs an X server: the X writer's, or one a command workload draws through."""
    return cfg["writer.kind"] == "xorg" or (cfg["writer.kind"] == "command" and cfg["command.xorg"])


def _walk(schema: dict, prefix: str = ""):
    for key, value in schema.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _walk(value, dotted + ".")
        else:
            yield dotted, value


def defaults() -> dict:
    def build(schema):
        return {k: build(v) if isinstance(v, dict) else _copy(v.default) for k, v in schema.items()}
    return build(SCHEMA)


def _copy(v):
    return list(v) if isinstance(v, list) else v


def describe() -> str:
    """Every key with its default and meaning, for --help."""
    lines = []
    for dotted, f in _walk(SCHEMA):
        extra = f" (one of: {', '.join(f.choices)})" if f.choices else ""
        if f.kind == "str" and f.maximum is not None:
            extra = f" (at most {f.maximum} bytes)"
        elif f.maximum is not None:
            extra = f" ({f.minimum}..{f.maximum})"
        elif f.minimum is not None:
            extra = f" (>= {f.minimum})"
        lines.append(f"  {dotted} = {f.default!r}{extra}\n      {f.doc}")
    return "\n".join(lines)


def _check(source: str, dotted: str, f: Field, value: Any, base: Path) -> Any:
    def fail(expected: str):
        raise ConfigError(source, dotted, f"expected {expected}, got {value!r}")

    if f.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        if f.minimum is not None and value < f.minimum:
            fail(f"an integer >= {f.minimum}")
        if f.maximum is not None and value > f.maximum:
            fail(f"an integer <= {f.maximum}")
        return value
    if f.kind == "bool":
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if f.kind == "kernel_source":
        if not isinstance(value, str) or "\n" in value:
            fail("a kernel source directory or a Debian package linux-source-X.Y")
        if not value or SOURCE_PACKAGE.fullmatch(value):
            return value  # Debian's package, always: a directory of that name is ./linux-source-X.Y
        path = _resolve(value, base)
        if not (path / "Makefile").is_file() or not (path / "Kconfig").is_file():
            raise ConfigError(source, dotted, f"expected a kernel source directory (with a Makefile and Kconfig) "
                              f"or a Debian package linux-source-X.Y, got {value!r}")
        return str(path)
    if f.kind == "patches":
        return _patches(source, dotted, value, base)
    if f.kind in ("str", "enum", "path", "file", "dir"):
        if not isinstance(value, str):
            fail("a string")
        if "\n" in value or "\0" in value:
            fail("a single line")
        if f.kind == "str" and f.maximum is not None and len(value.encode()) > f.maximum:
            fail(f"at most {f.maximum} bytes")
        if f.kind == "enum" and value not in f.choices:
            fail("one of " + ", ".join(repr(c) for c in f.choices))
        if f.kind == "file":
            return str(_resolve(value, base))
        if f.kind == "dir":
            if not value:
                return ""
            path = _resolve(value, base)
            if not path.is_dir():
                raise ConfigError(source, dotted, f"expected an existing directory, {str(path)!r} is not one")
            return str(path)
        if f.kind == "path":
            if not value and f.default == "":
                return ""
            path = _resolve(value, base)
            if not path.is_file():
                raise ConfigError(source, dotted, f"expected an existing file, {str(path)!r} does not exist")
            return str(path)
        return value
    if f.kind == "packages":
        if not isinstance(value, list) or not all(isinstance(v, str) and DEBIAN_PACKAGE.fullmatch(v) for v in value):
            fail("a list of Debian package names (lower case letters, digits, '+', '-', '.')")
        return list(value)
    if f.kind == "rects":
        if not isinstance(value, list):
            fail("a list of {x, y, w, h} mappings")
        for i, item in enumerate(value):
            if not isinstance(item, dict) or set(item) != {"x", "y", "w", "h"} or not all(
                    isinstance(item[k], int) and not isinstance(item[k], bool) and item[k] >= 0
                    for k in item):
                raise ConfigError(source, f"{dotted}[{i}]",
                                  f"expected a mapping with non-negative integers x, y, w, h, got {item!r}")
        return [dict(item) for item in value]
    raise AssertionError(f.kind)


def _resolve(value: str, base: Path) -> Path:
    """A path as a config file means it: '~' is the user's home, a relative one is relative to the file."""
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path


def _patches(source: str, dotted: str, value: Any, base: Path) -> list[str]:
    """A directory of patches, or a list of patch files -> the files, absolute, in order."""
    if isinstance(value, str):
        directory = _resolve(value, base)
        if not directory.is_dir():
            raise ConfigError(source, dotted, f"expected a directory of patches, {str(directory)!r} is not one")
        try:
            found = patch_series(directory)
        except FileNotFoundError as e:
            raise ConfigError(source, dotted, str(e)) from None
        if not found:
            raise ConfigError(source, dotted, f"expected patches in {str(directory)!r} (a series file, or *.patch "
                              "or *.diff files); found none")
        return [str(p) for p in found]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(source, dotted, f"expected a directory or a list of patch files, got {value!r}")
    paths = [_resolve(v, base) for v in value]
    for i, path in enumerate(paths):
        if not path.is_file():
            raise ConfigError(source, f"{dotted}[{i}]", f"expected an existing patch file, {str(path)!r} is not one")
    return [str(p) for p in paths]


def _merge(source: str, schema: dict, data: Any, out: dict, prefix: str, base: Path) -> None:
    if not isinstance(data, dict):
        raise ConfigError(source, prefix.rstrip("."), f"expected a mapping, got {type(data).__name__}")
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(source, dotted, "unknown key; expected one of " + ", ".join(sorted(schema)))
        spec = schema[key]
        if isinstance(spec, dict):
            _merge(source, spec, value, out[key], dotted + ".", base)
        else:
            out[key] = _check(source, dotted, spec, value, base)


def _check_kernel(source: str, data: dict) -> None:
    """Where the guest kernel comes from: a Debian package (the default), a source tree, or your own image."""
    guest = data["guest"]
    if guest["kernel_source"] and guest["kernel_image"]:
        raise ConfigError(source, "guest.kernel_image", "expected either guest.kernel_source or guest.kernel_image, "
                          "not both")
    for key in ("kernel_config", "kernel_patches"):
        if guest[key] and not guest["kernel_source"]:
            raise ConfigError(source, f"guest.{key}", "expected guest.kernel_source too: it applies to a kernel "
                              "built from source")
    if guest["kernel_build_tree"] and not guest["kernel_image"]:
        raise ConfigError(source, "guest.kernel_build_tree", "expected guest.kernel_image too: it is that "
                          "kernel's build tree")
    if guest["kernel_image"] and data["frontend"] != "upstream" and not guest["kernel_build_tree"]:
        raise ConfigError(source, "guest.kernel_build_tree", f"expected the build tree of guest.kernel_image: "
                          f"frontend {data['frontend']!r} is a module built against it")


def shipped(configs_dir: Path) -> tuple[list[Path], list[Path]]:
    """The scenario files and the matrix files (named matrix*.yaml) in a configs directory."""
    files = sorted(configs_dir.glob("*.yaml"))
    matrices = [f for f in files if f.name.startswith("matrix")]
    return [f for f in files if f not in matrices], matrices


@dataclass(frozen=True)
class Config:
    source: str  # the scenario file, or "(defaults)"
    data: dict
    host_source: str = ""  # the host file (`run --host`) whose host section replaced the scenario's

    def get(self, dotted: str) -> Any:
        node = self.data
        for part in dotted.split("."):
            node = node[part]
        return node

    def __getitem__(self, dotted: str) -> Any:
        return self.get(dotted)

    def effective(self) -> dict:
        """Every key's value as the run used it, for result.json."""
        return {"schema_version": SCHEMA_VERSION, **self.data}


def read_yaml(path: str | os.PathLike, what: str = "config file") -> tuple[str, Any, Path]:
    """(source, the parsed YAML ({} for an empty file), the directory relative paths in it are relative to)."""
    source, p = str(path), Path(path)
    if not p.is_file():
        raise ConfigError(source, "", f"{what} does not exist")
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(source, "", f"not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(source, "", f"not valid UTF-8: {e}") from None
    return source, ({} if loaded is None else loaded), p.resolve().parent  # empty: all defaults; [] or 0 is not


def nest(dotted: dict[str, Any]) -> dict:
    """{"writer.kind": "xorg"} -> {"writer": {"kind": "xorg"}}: how matrices and the pytest plugin name keys."""
    out: dict = {}
    for key, value in dotted.items():
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{key}: {part} is given both as a value and as a section")
        node[last] = value
    return out


@dataclass(frozen=True)
class Overrides:
    """Settings laid over a scenario file's (a matrix cell's, a pytest test's), checked like the file's own."""
    values: dict  # nested, as in a scenario file
    source: str  # where they come from, for errors: e.g. "configs/matrix.yaml, cell frontend=legacy"
    base: Path  # what relative paths among them are relative to


def load(path: str | os.PathLike | None, host_file: str | os.PathLike | None = None,
         overrides: Overrides | None = None) -> Config:
    """Load and validate a scenario file; None gives the defaults alone. `host_file` is a config fragment with
    only a `host:` section (e.g. the host.yaml `host up` writes) that replaces the scenario's host settings.
    `overrides` replace the file's values key by key."""
    data = defaults()
    loaded: dict = {}
    source, base = "(defaults)", Path.cwd()
    if path is not None:
        source, loaded, base = read_yaml(path)
        _merge(source, SCHEMA, loaded, data, "", base)
    if overrides is not None:
        _merge(overrides.source, SCHEMA, overrides.values, data, "", overrides.base)
        if "sources" in (overrides.values.get("apt") or {}):
            loaded = {**loaded, "apt": {**(loaded.get("apt") or {}), "sources": overrides.values["apt"]["sources"]}}
    checked = source if overrides is None else f"{source} with {overrides.source}"  # what errors below name
    if host_file is not None:
        host_source, host_data, host_base = read_yaml(host_file)
        if not isinstance(host_data, dict) or set(host_data) - {"host"}:
            raise ConfigError(host_source, "", "expected a mapping with only a 'host' section")
        data["host"] = defaults()["host"]
        _merge(host_source, {"host": SCHEMA["host"]}, host_data, data, "", host_base)
    else:
        host_source = ""
    host, where = data["host"], host_source or checked
    if host["kind"] == "ssh" and not host["address"]:
        raise ConfigError(where, "host.address", "expected the dom0's address when host.kind is 'ssh'")
    if problem := workdir_problem(host["workdir"]):
        raise ConfigError(where, "host.workdir", f"expected {problem}, got {host['workdir']!r}")
    if bool(host["share_dir"]) != bool(host["share_mount"]):
        raise ConfigError(where, "host.share_mount" if host["share_dir"] else "host.share_dir",
                          "expected host.share_dir and host.share_mount together, or neither")
    if host["share_mount"] and (problem := workdir_problem(host["share_mount"])):
        raise ConfigError(where, "host.share_mount", f"expected {problem}, got {host['share_mount']!r}")
    if data["writer"]["kind"] == "xorg":
        for key in ("mappings", "workers"):
            if data["writer"][key] != 1:
                raise ConfigError(checked, f"writer.{key}", "expected 1 with writer.kind 'xorg' (the X server "
                                  "maps the framebuffer, and one X client draws)")
    if data["frontend"] == "module":
        module = data["module"]
        if not module["source"]:
            raise ConfigError(checked, "module.source", "expected your module's source directory when frontend is "
                              "'module'")
        if not MODULE_NAME.fullmatch(module["name"]):
            raise ConfigError(checked, "module.name", f"expected the module's name ([A-Za-z0-9_]+) when frontend is "
                              f"'module', got {module['name']!r}")
    if not MODULE_PARAMS.fullmatch(data["module"]["params"]):
        raise ConfigError(checked, "module.params", "expected name=value words of [A-Za-z0-9_.,:=-], separated by "
                          f"single spaces, got {data['module']['params']!r}")
    _check_kernel(checked, data)
    if data["writer"]["kind"] == "command" and not data["command"]["run"].strip():
        raise ConfigError(checked, "command.run", "expected the workload's shell command when writer.kind is "
                          "'command'")
    if data["writer"]["final_gap_us"] and data["writer"]["mode"] != "sparse":
        raise ConfigError(checked, "writer.final_gap_us", "expected 0 unless writer.mode is 'sparse' (the final pass "
                          "makes sparse pages' last touches)")
    if data["writer"]["workers"] > 1 and data["writer"]["mode"] != "sparse":
        raise ConfigError(checked, "writer.workers", "expected 1 unless writer.mode is 'sparse' (mixed rounds "
                          "overlap, so the order of their writes decides the frame)")
    if "sources" not in (loaded.get("apt") or {}):  # the default path must exist too, and say so if not
        _check(checked, "apt.sources", SCHEMA["apt"]["sources"], data["apt"]["sources"], base)
    return Config(source, data, host_source)
