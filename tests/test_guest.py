"""The guest's xl configuration (what the harness asks Xen and the guest's init for), the logs the guest quotes on
its console, and how Guest reads protocol lines around them."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from xenfb_harness.config import ConfigError, load
from xenfb_harness.guest import Guest, GuestError, console_section, save_workload_log, xl_config
from xenfb_harness.protocol import Done, Stats, format_freeze, format_start, format_thaw


NAME = "xfb-harness-test-1"
KERNEL, INITRD = "/var/tmp/xfb-harness-s/upload-ab-vmlinux", "/var/tmp/xfb-harness-s/upload-cd-initrd.cpio"


def xl_of(cfg) -> str:
    return xl_config(cfg, NAME, KERNEL, INITRD)


def config(tmp_path, text: str):
    (tmp_path / "test.sources").write_text("deb http://mirror.invalid/debian bookworm main\n")
    p = tmp_path / "scenario.yaml"
    p.write_text(text + "\napt:\n  sources: test.sources\n")
    return load(p)


def settings(xl: str) -> dict[str, str]:
    extra = re.search(r'^extra = "(.*)"$', xl, re.M).group(1)
    return dict(item.split("=", 1) for item in extra.split() if "=" in item)


def test_defaults(tmp_path):
    xl = xl_of(config(tmp_path, ""))
    s = settings(xl)
    assert "vcpus = 1" in xl.splitlines()
    assert f'kernel = "{KERNEL}"' in xl and f'ramdisk = "{INITRD}"' in xl and f'name = "{NAME}"' in xl
    # VNC on dom0's loopback only, on a free display: several guests on one host never clash
    assert 'vfb = [ "vnc=1,vnclisten=127.0.0.1,vncunused=1" ]' in xl
    assert (s["xfb_mode"], s["xfb_mappings"], s["xfb_workers"], s["xfb_worker_kind"]) == ("mixed", "1", "1", "thread")
    assert "xfb_module" not in s and "initcall_blacklist" not in s


def test_writer_and_guest_options_reach_the_guest(tmp_path):
    cfg = config(tmp_path, "guest:\n  vcpus: 2\nwriter:\n  mode: sparse\n  pages: 5\n  touches: 3\n"
                           "  mappings: 4\n  workers: 3\n  worker_kind: process\n  touch_gap_us: 7\n")
    xl = xl_of(cfg)
    s = settings(xl)
    assert "vcpus = 2" in xl.splitlines()
    assert {k: s[k] for k in ("xfb_mode", "xfb_pages", "xfb_touches", "xfb_mappings", "xfb_workers",
                              "xfb_worker_kind", "xfb_touch_gap_us")} == {
        "xfb_mode": "sparse", "xfb_pages": "5", "xfb_touches": "3", "xfb_mappings": "4", "xfb_workers": "3",
        "xfb_worker_kind": "process", "xfb_touch_gap_us": "7"}


@pytest.mark.parametrize("frontend, module", [("legacy", "xenfb_legacy"), ("legacy-fixed", "xenfb_legacy_fixed")])
def test_legacy_frontends_load_our_module(tmp_path, frontend, module):
    s = settings(xl_of(config(tmp_path, f"frontend: {frontend}\nlegacy:\n  race_window_ms: 250\n")))
    assert (s["xfb_module"], s["initcall_blacklist"], s["xfb_race_window_ms"]) == (module, "xenfb_init", "250")


def test_quotes_in_extra_cmdline_are_refused(tmp_path):
    with pytest.raises(ConfigError) as info:
        xl_of(config(tmp_path, 'guest:\n  extra_cmdline: \'a="b"\'\n'))
    assert info.value.key == "guest.extra_cmdline"


def test_xorg_config_and_log_are_kept(tmp_path):
    from xenfb_harness.guest import save_xorg_config
    (tmp_path / "guest-console.log").write_text(
        "boot\r\nXFB-XORG-LOG-BEGIN\r\n[  1.0] (II) FBDEV(0): using /dev/fb0\r\n"
        '[  1.1] (**) FBDEV(0): Option "ShadowFB" "off"\r\nXFB-XORG-LOG-END\r\nXFB READY ...\r\n')
    info = save_xorg_config(tmp_path)
    assert info == {"config": "xorg.conf", "log": "Xorg.0.log", "shadowfb": "off"}
    assert 'Option "ShadowFB" "off"' in (tmp_path / "xorg.conf").read_text()
    assert (tmp_path / "Xorg.0.log").read_text().splitlines()[0] == "[  1.0] (II) FBDEV(0): using /dev/fb0"


def test_xorg_log_missing_is_said_not_guessed(tmp_path):
    from xenfb_harness.guest import save_xorg_config
    (tmp_path / "guest-console.log").write_text("XFB-GUEST-FAIL the X server did not come up\n")
    assert save_xorg_config(tmp_path) == {"config": "xorg.conf"}
    assert not (tmp_path / "Xorg.0.log").exists()


def test_xorg_writer_reaches_the_guest(tmp_path):
    s = settings(xl_of(config(tmp_path, "writer:\n  kind: xorg\n")))
    assert s["xfb_writer"] == "xorg"


# --- writer.kind command: the quoted logs on the console -----------------------------------------------------------


def console_log(tmp_path, text: str):
    (tmp_path / "guest-console.log").write_text(text)
    return tmp_path


def test_console_section_takes_the_last_one_and_normalises_line_ends(tmp_path):
    run_dir = console_log(tmp_path, (
        "boot\r\nXFB-WORKLOAD-LOG-BEGIN\r\nfirst log\r\nXFB-WORKLOAD-LOG-END\r\nXFB DONE 1\r\n"
        "XFB-XORG-LOG-BEGIN\r\nX says\r\nXFB-XORG-LOG-END\r\n"
        "XFB-WORKLOAD-LOG-BEGIN\r\nsecond log\r\n  indented\r\n\r\nlast line\r\nXFB-WORKLOAD-LOG-END\r\nXFB BYE\r\n"))
    assert console_section(run_dir, "WORKLOAD") == "second log\n  indented\n\nlast line\n"
    assert console_section(run_dir, "XORG") == "X says\n"


def test_console_section_with_plain_newlines_and_an_empty_log(tmp_path):
    run_dir = console_log(tmp_path, "XFB-WORKLOAD-LOG-BEGIN\nXFB-WORKLOAD-LOG-END\n")
    assert console_section(run_dir, "WORKLOAD") == ""
    run_dir = console_log(tmp_path, "XFB-WORKLOAD-LOG-BEGIN\na\nb\nXFB-WORKLOAD-LOG-END\n")
    assert console_section(run_dir, "WORKLOAD") == "a\nb\n"


@pytest.mark.parametrize("text", [
    "",
    "boot\r\nXFB READY ...\r\n",
    "XFB-WORKLOAD-LOG-BEGIN\r\ncut off by a crash\r\n",
    # a complete section, then one that never ended: the last one is cut off, not the first one's
    "XFB-WORKLOAD-LOG-BEGIN\r\nold\r\nXFB-WORKLOAD-LOG-END\r\nXFB-WORKLOAD-LOG-BEGIN\r\nnew, cut off\r\n",
    "XFB-WORKLOAD-LOG-END\r\n",
    "XFB-XORG-LOG-BEGIN\r\nother\r\nXFB-XORG-LOG-END\r\n",
])
def test_console_section_is_none_without_a_complete_last_section(tmp_path, text):
    assert console_section(console_log(tmp_path, text), "WORKLOAD") is None


def test_console_section_without_a_console_log(tmp_path):
    assert console_section(tmp_path, "WORKLOAD") is None


def test_save_workload_log(tmp_path):
    console_log(tmp_path, "XFB-WORKLOAD-LOG-BEGIN\r\nx11perf: rect10\r\nXFB-WORKLOAD-LOG-END\r\nXFB BYE\r\n")
    assert save_workload_log(tmp_path) == "workload.log"
    assert (tmp_path / "workload.log").read_text() == "x11perf: rect10\n"


def test_save_workload_log_without_one_saves_nothing(tmp_path):
    console_log(tmp_path, "XFB-GUEST-FAIL something\r\n")
    assert save_workload_log(tmp_path) == ""
    assert not (tmp_path / "workload.log").exists()


def test_the_x_log_is_found_after_a_workload_log_too(tmp_path):
    from xenfb_harness.guest import save_xorg_config
    console_log(tmp_path, "XFB-XORG-LOG-BEGIN\r\n(**) FBDEV(0): Option \"ShadowFB\" \"off\"\r\nXFB-XORG-LOG-END\r\n"
                          "XFB-WORKLOAD-LOG-BEGIN\r\nw\r\nXFB-WORKLOAD-LOG-END\r\n")
    assert save_xorg_config(tmp_path)["shadowfb"] == "off"


def test_command_writer_reaches_the_guest(tmp_path):
    cfg = config(tmp_path, "writer:\n  kind: command\ncommand:\n  run: x\n  xorg: false\n")
    s = settings(xl_of(cfg))
    assert (s["xfb_writer"], s["xfb_command_xorg"]) == ("command", "0")
    s = settings(xl_of(config(tmp_path, "writer:\n  kind: command\ncommand:\n  run: x\n")))
    assert s["xfb_command_xorg"] == "1"


class FakeConsole:
    """The console as Guest uses it: lines to read (then timeouts), lines sent."""

    def __init__(self, lines: list[str]):
        self.lines, self.sent = list(lines), []

    def read_line(self, timeout: float) -> str | None:
        return self.lines.pop(0) if self.lines else None

    def send_line(self, text: str) -> None:
        self.sent.append(text)

    def tail(self, lines: int = 30) -> str:
        return "(tail)"


@pytest.fixture
def guest(monkeypatch):
    """guest(lines) -> a Guest reading `lines` from a fake console (no host, no domain)."""
    monkeypatch.setattr("xenfb_harness.guest.time.sleep", lambda s: None)  # a panic's grace second

    def make(lines: list[str]) -> Guest:
        g = Guest.__new__(Guest)
        g.cfg = {"timeouts.round": 5}
        g.console = FakeConsole(lines)
        g._section = None
        return g
    return make


QUOTED = ["XFB-WORKLOAD-LOG-BEGIN", "XFB DONE 9", "BUG: kernel NULL pointer dereference, address: 0",
          "Kernel panic - not syncing", "XFB ERROR from the workload", "XFB nonsense", "XFB-GUEST-FAIL quoted",
          "XFB-WORKLOAD-LOG-END"]


def test_next_message_skips_a_quoted_workload_log(guest):
    g = guest(["[  1.0] boot", *QUOTED, "XFB DONE 1"])
    assert g._next_message(1, "test") == Done(1)
    assert g._section is None


def test_next_message_skips_a_quoted_x_log(guest):
    g = guest(["\rXFB-XORG-LOG-BEGIN\r", "(EE) BUG: something X says", "XFB DONE 5", "XFB-XORG-LOG-END\r",
               "XFB STATS"])
    assert g._next_message(1, "test") == Stats({})


def test_a_section_spans_reads(guest):
    g = guest(["XFB-WORKLOAD-LOG-BEGIN", "XFB DONE 9"])
    with pytest.raises(GuestError, match="timed out"):
        g._next_message(1, "test")  # nothing of ours came: the fake DONE is not taken
    assert g._section == "WORKLOAD"
    g.console.lines = ["XFB DONE 8", "XFB-WORKLOAD-LOG-END", "XFB DONE 2"]
    assert g._next_message(1, "test") == Done(2)


def test_outside_a_section_a_bug_still_breaks_the_guest(guest):
    g = guest([*QUOTED, "[  9.9] BUG: unable to handle page fault", "XFB DONE 1"])
    with pytest.raises(GuestError, match="the guest broke: BUG: unable to handle page fault"):
        g._next_message(1, "test")


def test_freeze_sends_freeze_and_returns_done(guest):
    g = guest(["FREEZE 3", *QUOTED, "XFB DONE 3"])
    assert g.freeze(3) == Done(3)
    assert g.console.sent == [format_freeze(3)]


def test_freeze_reports_the_workloads_exit(guest):
    g = guest(["XFB-WORKLOAD-LOG-BEGIN", "bye", "XFB-WORKLOAD-LOG-END",
               "XFB ERROR the workload exited with status 3 (it must run until the harness stops it)"])
    with pytest.raises(GuestError, match="the writer reported an error: the workload exited with status 3"):
        g.freeze(1)


def test_freeze_wants_its_own_round(guest):
    with pytest.raises(GuestError, match="expected DONE 2"):
        guest(["XFB DONE 1"]).freeze(2)


def test_start_and_thaw_send_without_waiting(guest):
    g = guest([])
    g.start_workload("while :; do x11perf -rect10; done")
    g.thaw()
    assert g.console.sent == [format_start("while :; do x11perf -rect10; done"), format_thaw()]


# --- guest-init's module load, with the settings xl_config passes ---------------------------------------------------


GUEST_INIT = Path(__file__).resolve().parent.parent / "harness" / "files" / "guest-init"


def module_load(settings: dict[str, str]) -> str:
    """What guest-init's module block runs with these kernel-command-line settings (its environment): the block
    itself, cut from guest-init, run by sh with insmod and poweroff stubbed to print their arguments."""
    lines = GUEST_INIT.read_text().splitlines()
    start = lines.index('if [ -n "$xfb_module" ]; then')
    block = "\n".join(lines[start:lines.index("fi", start) + 1])
    stubs = 'insmod() { echo "insmod $*"; }\npoweroff() { echo poweroff; }\n'
    out = subprocess.run(["sh", "-c", stubs + block], env={"PATH": os.environ["PATH"], **settings},
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize("text, window", [
    ("", 300),  # the mmap writer: widened from the start
    ("writer:\n  kind: xorg\n", 0),  # widened once X is up (start_xorg)
    ("writer:\n  kind: command\ncommand:\n  run: x\n", 0),
    ("writer:\n  kind: command\ncommand:\n  run: x\n  xorg: false\n", 300),
])
def test_the_module_loads_with_the_race_window_unless_x_comes_first(tmp_path, text, window):
    cfg = config(tmp_path, "frontend: legacy\nlegacy:\n  race_window_ms: 300\n" + text)
    assert module_load(settings(xl_of(cfg))) == f"insmod /modules/xenfb_legacy.ko race_window_ms={window}"


@pytest.mark.parametrize("frontend, mapped", [("upstream", False), ("legacy", True), ("legacy-fixed", True)])
def test_fbcon_never_binds_to_a_modules_framebuffer(tmp_path, frontend, mapped):
    # On 6.12, fbcon taking over a framebuffer registered during insmod kills insmod: modules boot with fbcon=map:9.
    extra = re.search(r'^extra = "(.*)"$', xl_of(config(tmp_path, f"frontend: {frontend}\n")), re.M).group(1)
    assert ("fbcon=map:9" in extra.split()) == mapped
