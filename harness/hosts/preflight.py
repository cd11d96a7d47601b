"""Before anything is created on a Xen host: can we run a guest there? One probe over SSH, judged here.

The probe only reads (xl info, uname, which programs exist, whether the work directory is writable). The
judging is pure, so each message is tested without a host.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

# Device models libxl is built to run, by distribution: Debian's qemu-system-xen, Xen's own default install,
# and other distributions' QEMU.
DEVICE_MODELS = ("/usr/libexec/xen-qemu-system-i386", "/usr/lib/xen/bin/qemu-system-i386",
                 "/usr/lib64/xen/bin/qemu-system-i386", "/usr/bin/qemu-system-i386")
# What the harness runs in dom0 besides xl: socat reaches the device model's QMP socket for us, gzip unpacks
# uploads, xenstore-read finds the guest's VNC port.
TOOLS = {"socat": "socat", "gzip": "gzip", "xenstore-read": "xenstore-utils"}

# $1 = the work directory. Sections start with "== name"; nothing here writes anywhere.
PROBE = r"""
echo "== id"; id -u
echo "== xl"; xl info 2>&1; echo "xl-rc=$?"
echo "== kernel"; uname -r
echo "== dm"
for dm in """ + " ".join(DEVICE_MODELS) + r"""; do
    [ -x "$dm" ] || continue
    # grep -a: the binary itself tells whether VNC and the xenfb backend are compiled in.
    vnc=no; grep -a -q "RFB 003.008" "$dm" && vnc=yes
    vfb=no; grep -a -q "feature-update" "$dm" && vfb=yes
    echo "$dm vnc=$vnc vfb=$vfb"
done
echo "== tools"
for t in """ + " ".join(TOOLS) + r"""; do command -v "$t" >/dev/null 2>&1 && echo "$t yes" || echo "$t no"; done
echo "== workdir"
if [ -d "$1" ] && [ -w "$1" ]; then echo writable; else echo "not writable"; fi
"""


@dataclass
class Preflight:
    facts: dict = field(default_factory=dict)  # xen_version, dom0_kernel, free_memory_mb, device_model
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        lines = [f"{k}: {v}" for k, v in self.facts.items()]
        lines += [f"MISSING: {p}" for p in self.problems]
        return "\n".join(lines)


def _sections(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("== "):
            current = line[3:].strip()
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return out


def judge(probe_output: str, need_memory_mb: int, workdir: str, where: str) -> Preflight:
    """The facts the probe printed, and every problem with what to do about it. `where` names the host."""
    s = _sections(probe_output)
    pf = Preflight()
    uid = (s.get("id") or ["?"])[0].strip()
    if uid != "0":
        pf.problems.append(f"{where}: the SSH user is not root (uid {uid}); xl needs root to create domains: "
                           f"set host.user to root, or a user whose commands run as root")
    xl = s.get("xl", [])
    rc = next((line.split("=", 1)[1] for line in xl if line.startswith("xl-rc=")), "?")
    # [ \t], not \s: an empty field ("xen_extra              : ") must not take the next line as its value
    info = dict(re.findall(r"^(\w+)[ \t]*:[ \t]*(.*?)[ \t]*$", "\n".join(xl), re.M))
    if rc != "0" or "xen_version" not in info:
        tail = " / ".join(line for line in xl if not line.startswith("xl-rc="))[-300:]
        pf.problems.append(f"{where}: `xl info` failed (exit {rc}): {tail or 'no output'}. Is this a Xen dom0 "
                           f"with the toolstack running (xen-utils, xenstored)?")
    else:
        pf.facts["xen_version"] = info["xen_version"]
        free = int(info.get("free_memory", "0") or 0)
        pf.facts["free_memory_mb"] = free
        if free < need_memory_mb:
            pf.problems.append(f"{where}: Xen has {free} MB free, the guest needs {need_memory_mb} MB "
                               f"(guest.memory_mb): free memory (e.g. shrink dom0 with `xl mem-set 0 ...`) or "
                               f"lower guest.memory_mb")
    pf.facts["dom0_kernel"] = (s.get("kernel") or ["?"])[0].strip()
    models = [line.split() for line in s.get("dm", []) if line.strip()]
    usable = [m[0] for m in models if "vnc=yes" in m and "vfb=yes" in m]
    if usable:
        pf.facts["device_model"] = usable[0]
    elif models:
        pf.problems.append(f"{where}: the device model {models[0][0]} lacks " +
                           " and ".join(x for x in ("VNC", "the vfb backend")
                                        if f"{'vnc' if x == 'VNC' else 'vfb'}=no" in models[0]) +
                           ": install a QEMU built for Xen with both (Debian: qemu-system-xen)")
    else:
        pf.problems.append(f"{where}: no Xen device model found (looked for {', '.join(DEVICE_MODELS)}): "
                           f"install one with the vfb backend and VNC (Debian: qemu-system-xen)")
    for line in s.get("tools", []):
        name, _, there = line.partition(" ")
        if there.strip() == "no":
            pf.problems.append(f"{where}: `{name}` is not installed in dom0; the harness needs it "
                               f"(Debian: apt install {TOOLS.get(name, name)})")
    if (s.get("workdir") or ["?"])[0].strip() != "writable":
        pf.problems.append(f"{where}: the work directory {workdir} (host.workdir) does not exist or is not "
                           f"writable: create it, or set host.workdir to a writable directory")
    return pf
