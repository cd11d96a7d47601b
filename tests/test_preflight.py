"""harness/hosts/preflight.py: judge() on probe outputs as the PROBE script prints them, and the real PROBE run
on this machine (no Xen here) as a negative case."""
from __future__ import annotations

import subprocess

import pytest

from xenfb_harness.hosts.preflight import DEVICE_MODELS, PROBE, TOOLS, judge

WHERE = "ssh: root@xenhost:22"
WORKDIR = "/var/tmp/xfb"
NEED = 256  # guest.memory_mb's default

# `xl info` of our nested Xen 4.17 host, as xl prints it (xl_info.c: node, physinfo, xeninfo; empty fields keep
# the space after the colon).
XL_INFO = """\
host                   : dom0
release                : 6.1.0-56-amd64
version                : #1 SMP PREEMPT_DYNAMIC Debian 6.1.140-1 (2025-05-22)
machine                : x86_64
nr_cpus                : 2
max_cpu_id             : 1
nr_nodes               : 1
cores_per_socket       : 1
threads_per_core       : 1
cpu_mhz                : 2495.998
hw_caps                : 1f8bfbff:f7fa3203:2c100800:00000121:0000000f:219c07ab:00000000:00000100
virt_caps              : pv hvm hvm_directio pv_directio hap shadow gnttab-v1 gnttab-v2
total_memory           : 2047
free_memory            : 1000
sharing_freed_memory   : 0
sharing_used_memory    : 0
outstanding_claims     : 0
free_cpus              : 0
xen_major              : 4
xen_minor              : 17
xen_extra              : .7
xen_version            : 4.17.7
xen_caps               : xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64
xen_scheduler          : credit2
xen_pagesize           : 4096
platform_params        : virt_start=0xffff800000000000
xen_changeset          : 
xen_commandline        : console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M loglvl=all
cc_compiler            : x86_64-linux-gnu-gcc (Debian 12.2.0-14+deb12u1) 12.2.0
cc_compile_by          : pkg-xen-devel
cc_compile_domain      : lists.alioth.debian.org
cc_compile_date        : Tue May 13 19:03:31 UTC 2025
build_id               : 5c1a4bd0c1ea4b1c16a0c7d2d0f9e3e3a8c1f7b2
xend_config_format     : 4
"""
XEN_DM = "/usr/libexec/xen-qemu-system-i386"


def probe(uid: str = "0", xl: str = XL_INFO, xl_rc: int = 0, kernel: str = "6.1.0-56-amd64",
          dm: list[str] | None = None, tools: dict[str, bool] | None = None, workdir: str = "writable") -> str:
    """The text PROBE prints, section by section."""
    dm = [f"{XEN_DM} vnc=yes vfb=yes"] if dm is None else dm
    tools = {t: True for t in TOOLS} | (tools or {})
    return "".join([
        f"== id\n{uid}\n",
        f"== xl\n{xl}xl-rc={xl_rc}\n",
        f"== kernel\n{kernel}\n",
        "== dm\n", "".join(f"{line}\n" for line in dm),
        "== tools\n", "".join(f"{t} {'yes' if there else 'no'}\n" for t, there in tools.items()),
        f"== workdir\n{workdir}\n",
    ])


def only_problem(text: str, need: int = NEED) -> str:
    pf = judge(text, need, WORKDIR, WHERE)
    assert len(pf.problems) == 1, pf.problems
    assert not pf.ok
    assert pf.problems[0].startswith(f"{WHERE}: ")  # every message names the host
    return pf.problems[0]


def test_all_good():
    pf = judge(probe(), NEED, WORKDIR, WHERE)
    assert pf.ok and pf.problems == []
    assert pf.facts == {"xen_version": "4.17.7", "free_memory_mb": 1000, "dom0_kernel": "6.1.0-56-amd64",
                        "device_model": XEN_DM}
    assert pf.report() == ("xen_version: 4.17.7\nfree_memory_mb: 1000\ndom0_kernel: 6.1.0-56-amd64\n"
                           f"device_model: {XEN_DM}")


def test_exactly_enough_memory_is_enough():
    assert judge(probe(), 1000, WORKDIR, WHERE).ok


def test_an_empty_field_does_not_swallow_the_next_one():
    # xl prints "xen_extra              : " when Xen was built without an extra version; the line after it
    # (xen_version) must still be read, or a working host would look like one where xl info failed.
    xl = XL_INFO.replace("xen_extra              : .7", "xen_extra              : ").replace(
        "xen_version            : 4.17.7", "xen_version            : 4.17")
    xl = xl.replace("total_memory           : 2047\nfree_memory", "total_memory           : \nfree_memory")
    pf = judge(probe(xl=xl), NEED, WORKDIR, WHERE)
    assert pf.ok, pf.problems
    assert pf.facts["xen_version"] == "4.17" and pf.facts["free_memory_mb"] == 1000


def test_first_usable_device_model_is_chosen():
    pf = judge(probe(dm=["/usr/lib/xen/bin/qemu-system-i386 vnc=yes vfb=no", f"{XEN_DM} vnc=yes vfb=yes"]),
               NEED, WORKDIR, WHERE)
    assert pf.ok and pf.facts["device_model"] == XEN_DM


def test_not_root():
    message = only_problem(probe(uid="1000"))
    assert "not root (uid 1000)" in message and "host.user" in message


@pytest.mark.parametrize("output, rc", [
    ("bash: line 3: xl: command not found\n", 127),
    ("xencall: error: Could not obtain handle on privileged command interface: No such file or directory\n"
     "libxl: error: libxl.c:102:libxl_ctx_alloc: cannot open libxc handle: No such file or directory\n"
     "cannot init xl context\n", 1),
])
def test_xl_failing(output, rc):
    pf = judge(probe(xl=output, xl_rc=rc), NEED, WORKDIR, WHERE)
    assert len(pf.problems) == 1, pf.problems
    message = pf.problems[0]
    assert f"`xl info` failed (exit {rc})" in message
    assert output.splitlines()[-1] in message  # what xl said
    assert "Xen dom0" in message and "xen-utils" in message and "xenstored" in message  # what to get
    assert "xen_version" not in pf.facts and "free_memory_mb" not in pf.facts
    assert pf.facts["dom0_kernel"] == "6.1.0-56-amd64"  # the rest is still judged


def test_xl_exit_0_without_xen_version_is_a_failure():
    message = only_problem(probe(xl="", xl_rc=0))
    assert "`xl info` failed (exit 0): no output" in message


def test_long_xl_error_is_cut_to_its_end():
    noise = "".join(f"libxl: warning: noise {i}\n" for i in range(100))
    message = only_problem(probe(xl=noise + "cannot init xl context\n", xl_rc=1))
    assert message.count("noise") < 20 and "cannot init xl context" in message


def test_too_little_free_memory():
    message = only_problem(probe(), need=2048)
    assert "Xen has 1000 MB free, the guest needs 2048 MB (guest.memory_mb)" in message
    assert "xl mem-set 0" in message and "lower guest.memory_mb" in message


def test_no_device_model():
    pf = judge(probe(dm=[]), NEED, WORKDIR, WHERE)
    assert len(pf.problems) == 1 and "device_model" not in pf.facts
    message = pf.problems[0]
    assert "no Xen device model found" in message
    assert all(path in message for path in DEVICE_MODELS)
    assert "vfb backend and VNC" in message and "qemu-system-xen" in message


@pytest.mark.parametrize("flags, lacks", [
    ("vnc=no vfb=yes", "lacks VNC:"),
    ("vnc=yes vfb=no", "lacks the vfb backend:"),
    ("vnc=no vfb=no", "lacks VNC and the vfb backend:"),
])
def test_device_model_without_vnc_or_vfb(flags, lacks):
    # e.g. Debian's /usr/bin/qemu-system-i386, a wrapper script once qemu-system-xen is gone
    message = only_problem(probe(dm=[f"/usr/bin/qemu-system-i386 {flags}"]))
    assert f"the device model /usr/bin/qemu-system-i386 {lacks}" in message
    assert "install a QEMU built for Xen with both (Debian: qemu-system-xen)" in message


@pytest.mark.parametrize("tool, package", [("socat", "socat"), ("gzip", "gzip"),
                                           ("xenstore-read", "xenstore-utils")])
def test_missing_tool_names_its_package(tool, package):
    message = only_problem(probe(tools={tool: False}))
    assert f"`{tool}` is not installed in dom0" in message and f"(Debian: apt install {package})" in message


def test_every_missing_tool_is_one_problem():
    pf = judge(probe(tools={t: False for t in TOOLS}), NEED, WORKDIR, WHERE)
    assert len(pf.problems) == len(TOOLS)


def test_workdir_not_writable():
    message = only_problem(probe(workdir="not writable"))
    assert f"the work directory {WORKDIR} (host.workdir)" in message
    assert "create it, or set host.workdir" in message


def test_everything_wrong_at_once_is_all_reported():
    pf = judge(probe(uid="1000", xl="sh: 1: xl: not found\n", xl_rc=127, dm=[],
                     tools={"socat": False}, workdir="not writable"), NEED, WORKDIR, WHERE)
    assert len(pf.problems) == 5
    assert pf.report().count("MISSING: ") == 5


def test_empty_output_is_not_ok():
    pf = judge("", NEED, WORKDIR, WHERE)
    assert not pf.ok
    assert any("not root (uid ?)" in p for p in pf.problems)
    assert any("`xl info` failed (exit ?): no output" in p for p in pf.problems)


# -- the real probe, here --------------------------------------------------------------------------------------
def run_probe(workdir: str) -> str:
    result = subprocess.run(["sh", "-c", PROBE, "sh", workdir], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def test_real_probe_on_a_machine_without_xen(tmp_path):
    marker = tmp_path / "pwned"
    workdir = tmp_path / f"work dir; $(touch {marker}) `touch {marker}`"  # the slashes nest it: still one path
    workdir.mkdir(parents=True)
    out = run_probe(str(workdir))
    assert [line for line in out.splitlines() if line.startswith("== ")] == [
        "== id", "== xl", "== kernel", "== dm", "== tools", "== workdir"]
    pf = judge(out, NEED, str(workdir), "this machine")
    xl_problem = [p for p in pf.problems if "`xl info` failed" in p]
    assert len(xl_problem) == 1 and "(exit 127)" in xl_problem[0] and "not found" in xl_problem[0]
    # no Xen device model here: either none of the paths exists, or only a QEMU without the vfb backend does
    # (Debian's qemu-system-i386 wrapper)
    assert "device_model" not in pf.facts
    assert any("no Xen device model found" in p or ("lacks" in p and "the vfb backend" in p)
               for p in pf.problems), pf.problems
    assert "xen_version" not in pf.facts
    assert pf.facts["dom0_kernel"] == subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
    assert not any("host.workdir" in p for p in pf.problems)  # writable, though its name is full of syntax
    assert not marker.exists()


def test_real_probe_missing_workdir(tmp_path):
    pf = judge(run_probe(str(tmp_path / "absent")), NEED, str(tmp_path / "absent"), "this machine")
    assert any(f"{tmp_path / 'absent'} (host.workdir)" in p for p in pf.problems)
