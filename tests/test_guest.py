"""The guest's xl configuration: what the harness asks Xen and the guest's init for."""
from __future__ import annotations

import re
import pytest

from harness.config import ConfigError, load
from harness.guest import xl_config


NAME = "xfb-harness-test-1"
KERNEL, INITRD = "/var/tmp/xfb-harness-s/upload-ab-vmlinux", "/var/tmp/xfb-harness-s/upload-cd-initrd.cpio"


def xl_of(cfg) -> str:
    return xl_config(cfg, NAME, KERNEL, INITRD)


def config(tmp_path, text: str):
    (tmp_path / "test.sources").write_text("deb http://deb.debian.org/debian bookworm main\n")
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
    from harness.guest import save_xorg_config
    (tmp_path / "guest-console.log").write_text(
        "boot\r\nXFB-XORG-LOG-BEGIN\r\n[  1.0] (II) FBDEV(0): using /dev/fb0\r\n"
        '[  1.1] (**) FBDEV(0): Option "ShadowFB" "off"\r\nXFB-XORG-LOG-END\r\nXFB READY ...\r\n')
    info = save_xorg_config(tmp_path)
    assert info == {"config": "xorg.conf", "log": "Xorg.0.log", "shadowfb": "off"}
    assert 'Option "ShadowFB" "off"' in (tmp_path / "xorg.conf").read_text()
    assert (tmp_path / "Xorg.0.log").read_text().splitlines()[0] == "[  1.0] (II) FBDEV(0): using /dev/fb0"


def test_xorg_log_missing_is_said_not_guessed(tmp_path):
    from harness.guest import save_xorg_config
    (tmp_path / "guest-console.log").write_text("XFB-GUEST-FAIL the X server did not come up\n")
    assert save_xorg_config(tmp_path) == {"config": "xorg.conf"}
    assert not (tmp_path / "Xorg.0.log").exists()


def test_xorg_writer_reaches_the_guest(tmp_path):
    s = settings(xl_of(config(tmp_path, "writer:\n  kind: xorg\n")))
    assert s["xfb_writer"] == "xorg"
