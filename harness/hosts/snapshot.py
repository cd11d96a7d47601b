"""Snapshots of a booted nested host: a later run restores dom0 in about 2 s instead of booting it in 12.

A snapshot is the outer QEMU's migration stream (`state.bin`), taken right after dom0 said READY (no SSH
connection yet, no guest, nothing mounted), and `snapshot.json`: the stream's size and SHA-256, fingerprints of
the host artifacts it was taken on, and what dom0 reported then (Xen version, free memory), which a restored
host must report again. It is an artifact cache entry, keyed by the host artifacts, the outer QEMU's version and
the machine settings, so any change there gives another key and a boot.

RAM alone is enough because dom0's root disk is read-only (tmpfs for what changes, dom0-init): every restore
runs on the unchanged image the snapshot was taken on, so RAM never meets a disk that moved on.

This module is the pure part (what a snapshot is keyed by, whether one can be used); NestedHost drives QEMU.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

from ..artifacts.cache import Cache, hash_files
from ..artifacts.host import HostArtifacts

ENTRY = "host-snapshot"
STATE = "state.bin"
META = "snapshot.json"
RECIPE = hash_files(Path(__file__), Path(__file__).with_name("nested.py"))  # how it is taken and restored
MACHINE_KEYS = ("memory_mb", "cpus", "dom0_memory_mb", "xen_cmdline")
ARTIFACTS = ("xen", "dom0_kernel", "dom0_initrd", "dom0_image")


def snapshot_inputs(host: dict, art: HostArtifacts, accel: str, qemu: str) -> dict:
    """What the snapshot's cache key is made of: each host artifact by its own entry's key, the outer QEMU,
    the accelerator, the machine settings and this recipe."""
    inputs = {"artifacts": {name: Path(getattr(art, name)).parent.name for name in ARTIFACTS},
              "qemu": qemu, "accel": accel, "machine": {k: host[k] for k in MACHINE_KEYS}, "recipe": RECIPE}
    if accel == "kvm":  # `-cpu host`: the CPU the snapshot ran on is not in its stream, and must not change
        inputs["host_cpu"] = host_cpu()
    return inputs


def host_cpu() -> str:
    """This machine's CPU as KVM passes it through (model, flags, microcode) and its kernel, hashed."""
    first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    wanted = [line for line in first.splitlines() if line.split(":")[0].strip() in ("model name", "flags",
                                                                                    "microcode")]
    return hashlib.sha256("\n".join(wanted + [os.uname().release]).encode()).hexdigest()[:16]


def saved_for(cache: Cache, host: dict, art: HostArtifacts, qemu: str) -> list[Path]:
    """The snapshots a nested host with these settings and artifacts would restore (either accelerator); finding
    them marks them used, so that `cache prune` keeps them."""
    return [p for accel in ("tcg", "kvm") if (p := cache.find(ENTRY, snapshot_inputs(host, art, accel, qemu)))]


def fingerprints(art: HostArtifacts) -> dict[str, list]:
    """Each artifact file's path, size and modification time: a cache entry is never written after it is made,
    so any difference means someone changed it, and the snapshot no longer matches what QEMU would load."""
    out = {}
    for name in ARTIFACTS:
        st = Path(getattr(art, name)).stat()
        out[name] = [str(getattr(art, name)), st.st_size, st.st_mtime_ns]
    return out


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_meta(entry: Path, art: HostArtifacts, facts: dict) -> None:
    state = entry / STATE
    meta = {"size": state.stat().st_size, "sha256": sha256_file(state), "artifacts": fingerprints(art),
            "facts": facts, "saved_at": time.time()}
    (entry / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def unusable(entry: Path, art: HostArtifacts) -> str:
    """Why the snapshot in entry cannot be restored ("" if it can): checked before QEMU starts, so a damaged
    or outdated snapshot costs a message and a boot, never a hang or a host in an unknown state."""
    try:
        meta = json.loads((entry / META).read_text())
        size, digest, saved = meta["size"], meta["sha256"], meta["artifacts"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its {META} is missing or unreadable ({e})"
    state = entry / STATE
    try:
        actual = state.stat().st_size
    except OSError as e:
        return f"its {STATE} is missing ({e.strerror})"
    if actual != size:
        return f"{STATE} is {'truncated' if actual < size else 'longer than saved'}: {actual} of {size} bytes"
    changed = [name for name, now in fingerprints(art).items() if saved.get(name) != now]
    if changed:
        return f"the host artifacts changed since it was saved ({', '.join(changed)})"
    if sha256_file(state) != digest:
        return f"{STATE} is corrupt (its SHA-256 differs from the one saved with it)"
    return ""


def saved_facts(entry: Path) -> dict:
    return json.loads((entry / META).read_text())["facts"]


def age(entry: Path) -> str:
    seconds = time.time() - json.loads((entry / META).read_text())["saved_at"]
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f} {unit}"
    return f"{seconds:.0f} s"


# What dom0 reports, parsed from `xl info`; a restored host must report the same as when it was saved.
FACTS = {"xen_version": re.compile(r"^xen_version\s*:\s*(\S+)", re.M),
         "free_memory_mb": re.compile(r"^free_memory\s*:\s*(\d+)", re.M)}


def parse_facts(xl_info: str) -> dict:
    return {name: (m.group(1) if (m := rx.search(xl_info)) else None) for name, rx in FACTS.items()}


def facts_differ(saved: dict, now: dict) -> str:
    """"" if the restored host is the one saved; else what differs."""
    diffs = [f"{k} {now.get(k)} (saved: {v})" for k, v in saved.items() if now.get(k) != v]
    return ", ".join(diffs)
