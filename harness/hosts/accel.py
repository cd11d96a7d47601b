"""Whether KVM can run Xen on this machine, asked once: the answer of nested.py's probe (Xen booted alone under KVM)
is kept in the artifact cache as `kvm-probe-<key>` and read by every later run.

/dev/kvm can be there and still not run Xen (kvm_pvm: QEMU cannot even set up the vCPU), so only booting Xen tells.
What decides the answer is the key: this machine's kernel (which KVM it has), its CPU (model and flags: what
`-cpu host` passes through), the outer QEMU, the Xen binary probed, and whether /dev/kvm is usable at all. Any
change there probes again. The answer for a missing /dev/kvm needs no boot; it is kept like the others all the
same (it costs a few milliseconds), so that every answer is found, keyed and reported the same way.

This module is the pure part (the key, the cached answer); nested.py runs the probe.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable

from ..artifacts.cache import Cache, _human_age, hash_files
from ..progress import say

ENTRY = "kvm-probe"
ANSWER = "answer.json"
KVM = "/dev/kvm"
NO_KVM = (False, f"{KVM} is missing or not accessible")


def probe_inputs(xen: str, qemu: str, kernel: str, cpuinfo: str, kvm: bool) -> dict:
    """The probe answer's cache key, from its facts: xen, a hash of the Xen binary; qemu, the outer QEMU's version;
    kernel, this machine's release; cpuinfo, the text of /proc/cpuinfo, of which the first CPU's model name and flags
    count (not its MHz, which changes all the time); kvm, whether /dev/kvm is there and usable."""
    first = dict(line.split(":", 1) for line in cpuinfo.split("\n\n")[0].splitlines() if ":" in line)
    first = {name.strip(): value.strip() for name, value in first.items()}
    return {"xen": xen, "qemu": qemu, "kernel": kernel, "cpu": first.get("model name", ""),
            "cpu_flags": hashlib.sha256(first.get("flags", "").encode()).hexdigest()[:16], "kvm": kvm}


def inputs_here(xen: Path, qemu: str) -> dict:
    """probe_inputs of this machine, now."""
    return probe_inputs(hash_files(xen), qemu, os.uname().release, Path("/proc/cpuinfo").read_text(),
                        os.access(KVM, os.R_OK | os.W_OK))


def kvm_answer(cache: Cache | None, inputs: dict, probe: Callable[[], tuple[bool, str]]) -> tuple[bool, str]:
    """Whether KVM runs Xen, and why, saying where the answer comes from: the cache's answer for these inputs if
    it has one, else probe()'s (not called when /dev/kvm is unusable), which the cache then keeps."""
    ask = probe if inputs["kvm"] else lambda: NO_KVM
    if cache is None:
        return ask()
    entry = cache.find(ENTRY, inputs)
    if entry is not None:
        try:
            answer = json.loads((entry / ANSWER).read_text())
            age = _human_age(time.time() - answer["probed_at"])
            return answer["ok"], f"{answer['why']} (probed {age} ago, cached in {entry.name})"
        except (OSError, ValueError, KeyError, TypeError) as e:
            say(f"{entry.name} is unreadable ({type(e).__name__}: {e}); probing again")
            cache.discard(entry)
    start = time.monotonic()
    ok, why = ask()
    took = time.monotonic() - start
    with cache.saving(ENTRY, inputs) as tmp:
        if tmp is not None:  # else another run has just saved it, or is saving it
            (tmp / ANSWER).write_text(json.dumps({"ok": ok, "why": why, "probed_at": time.time()}) + "\n")
    return ok, f"{why} (probed now in {took:.1f} s, cached in {cache.path(ENTRY, inputs).name})"
