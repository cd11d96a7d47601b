"""The guest framebuffer frontends the harness can test: one registry, read by the config schema, the payload
build, the guest's xl config and command line, and the rounds."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .resources import GUEST_KERNELS

# The built-in xen-fbfront registers with this initcall; blacklisting it keeps the driver off the device so an
# out-of-tree module can bind it instead (the symbol exists once in 5.10's, 6.1's and 6.12's System.map).
BUILTIN_OFF = "initcall_blacklist=xenfb_init"
# Our old-design frontend's module tree (both builds: xenfb-legacy.ko and xenfb-legacy-fixed.ko).
OUR_SOURCE = GUEST_KERNELS / "xenfb-legacy"


@dataclass(frozen=True)
class Frontend:
    name: str
    doc: str
    # The out-of-tree module the guest's init loads (a .ko of that name in the payload); None: the kernel's
    # built-in driver.
    module: str | None = None
    # The module publishes counters (faults, zaps, updates, race_hits, ...) as files in
    # /sys/module/<module>/parameters, which the writer reads each round.
    counters: bool = False
    # Kernel command line that keeps the built-in driver off the device ("" when the built-in driver is tested).
    builtin_off: str = ""


FRONTENDS: dict[str, Frontend] = {f.name: f for f in (
    Frontend("upstream", "the guest kernel's built-in xen-fbfront (fb_deferred_io)"),
    Frontend("legacy", "our module with the 2.6.18 design and its race (guest-kernels/xenfb-legacy)",
             module="xenfb_legacy", counters=True, builtin_off=BUILTIN_OFF),
    Frontend("legacy-fixed", "that module with the backported fix", module="xenfb_legacy_fixed", counters=True,
             builtin_off=BUILTIN_OFF),
    Frontend("module", "your own out-of-tree module (module.source, module.name), built against the guest "
             "kernel; its counters are read if it has any", counters=True, builtin_off=BUILTIN_OFF),
)}


@dataclass(frozen=True)
class ModuleFrontend:
    """An out-of-tree frontend module, built against the guest kernel's headers and loaded by the guest's init with
    the built-in driver kept off the device. Our old-design module is one, from our own tree (or legacy.source)."""
    source: Path  # the Kbuild tree that `make -C <headers> M=<a copy of it> modules` builds
    name: str  # the module to load, as lsmod names it
    params: str  # insmod parameters, name=value words
    ours: bool  # our old-design module: the guest's init sets its race window (once X is up, with X)


def legacy_source(cfg) -> Path:
    """The tree our old-design frontend's modules are built from: legacy.source, or our own."""
    return Path(cfg["legacy.source"]) if cfg["legacy.source"] else OUR_SOURCE


def module_frontend(cfg) -> ModuleFrontend | None:
    """The out-of-tree module a config's frontend loads; None for the kernel's built-in driver."""
    name = cfg["frontend"]
    if name == "module":
        return ModuleFrontend(Path(cfg["module.source"]), cfg["module.name"], cfg["module.params"], ours=False)
    module = FRONTENDS[name].module
    if module is None:
        return None
    return ModuleFrontend(legacy_source(cfg), module, "", ours=True)


def frontend(name: str) -> Frontend:
    return FRONTENDS[name]
