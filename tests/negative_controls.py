"""Negative controls: deliberately broken builds of our legacy frontend module, for the tests that prove a verdict
taken at a quiet point cannot be healed by activity.

Each is a copy of guest-kernels/xenfb-legacy whose Kbuild adds one `-DXENFB_BREAK_...` (see the top of
xenfb_legacy.c): the last update of a burst of writes is never delivered while the guest stays quiet, and any later
drawing delivers it. A scenario selects one through `legacy.source` (never through `frontend:`, which offers only
what the harness ships):

    variant = make_variant(tmp_path, "unnotified-last")
    data = {**config_fragment(variant), "rounds": 3}   # frontend legacy-fixed, legacy.source the copy
    # write it as YAML and run it: the verdict must be FAIL

Both modules of the copy (xenfb_legacy and xenfb_legacy_fixed) carry the break; the fixed one has no race of its
own, so a FAIL with it is the break's alone. The guest's console shows "negative control: NAME" when the module
loads, `/sys/module/<module>/parameters/negative_control` holds NAME, and `modinfo -F negative_control` gives it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "guest-kernels" / "xenfb-legacy"

# Negative-control name (as the module reports it) -> the compile-time switch.
BREAKS = {
    "unnotified-last": "XENFB_BREAK_UNNOTIFIED_LAST",    # published, notify withheld
    "unpublished-last": "XENFB_BREAK_UNPUBLISHED_LAST",  # written to its slot, out_prod not advanced
    "dropped-last": "XENFB_BREAK_DROPPED_LAST",          # kept back by the frontend, never put on the ring
}
NAMES = tuple(BREAKS)

# What an in-place build leaves in the module folder; never copied.
_BUILD_PRODUCTS = ("*.ko", "*.o", "*.mod", "*.mod.c", ".*.cmd", ".*.d", "modules.order", "Module.symvers",
                   ".tmp_versions")


def make_variant(tmp_path: Path, name: str) -> Path:
    """A copy of guest-kernels/xenfb-legacy at tmp_path/xenfb-legacy-<name> whose Kbuild defines the break `name`
    (one of NAMES); returns the copy's directory, for `legacy.source`. An existing copy there is replaced."""
    if name not in BREAKS:
        raise ValueError(f"unknown negative control {name!r}; expected one of {', '.join(NAMES)}")
    dest = Path(tmp_path) / f"xenfb-legacy-{name}"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(SOURCE, dest, ignore=shutil.ignore_patterns(*_BUILD_PRODUCTS))
    kbuild = dest / "Kbuild"
    text = kbuild.read_text()
    kbuild.write_text(f"{text}{'' if text.endswith(chr(10)) else chr(10)}"
                      f"# Negative control {name}: deliberately broken, never shipped.\n"
                      f"ccflags-y += -D{BREAKS[name]}\n")
    return dest


def config_fragment(variant: Path, frontend: str = "legacy-fixed", **legacy) -> dict:
    """The config keys that run `variant` (a make_variant directory), as a scenario's data (a dict to dump as
    YAML); other `legacy.*` keys may be given too, e.g. unload_at_end=True."""
    return {"frontend": frontend, "legacy": {"source": str(Path(variant).resolve()), **legacy}}
