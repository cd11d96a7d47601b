"""The guest framebuffer frontends the harness can test: one registry, read by the config schema, the payload
build, the guest's xl config and command line, and the rounds."""
from __future__ import annotations

from dataclasses import dataclass

# The built-in xen-fbfront registers with this initcall; blacklisting it keeps the driver off the device so an
# out-of-tree module can bind it instead (the symbol exists once in 6.1's System.map).
BUILTIN_OFF = "initcall_blacklist=xenfb_init"


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
)}


def frontend(name: str) -> Frontend:
    return FRONTENDS[name]


def modules() -> list[str]:
    """Every module name our own frontend sources build (guest-kernels/xenfb-legacy)."""
    return [f.module for f in FRONTENDS.values() if f.module]
