"""The test guest: a PV domU with a vfb, started with `xl create` and its console attached (xenconsoled keeps
every line from the first), and the writer on that console driven round by round (lockstep; see
harness/protocol.py).

A guest lives in a slot its host gives it (a domain name and a directory unique to the run), so one host runs
many guests one after another, and nothing of one guest is seen by the next."""
from __future__ import annotations

import re
import time
from pathlib import Path

from .config import Config, ConfigError
from .frontends import frontend, module_frontend
from .geometry import Geometry
from .progress import record
from .pattern import WriterParams
from .hosts.base import Console, HostError
from .hosts.dom0 import Dom0, GuestSlot
from .protocol import (Bye, Check, Done, ProtocolError, Ready, Stats, Unloaded, WriterError, format_freeze,
                       format_go, format_quit, format_start, format_stats, format_thaw, parse_line, section_marker)

KERNEL_FATAL = re.compile(r"Kernel panic.*|BUG: .*|Oops: .*")
GUEST_FATAL = re.compile(KERNEL_FATAL.pattern + r"|XFB-GUEST-WRITER-EXIT.*|XFB-GUEST-FAIL.*")
INIT_UPTIME = re.compile(r"XFB-GUEST-UPTIME (\d+(?:\.\d+)?)")  # guest-init's first line: the kernel is done
XORG_CONF = Path(__file__).resolve().parent / "files" / "xorg.conf"


def console_section(run_dir: Path, name: str) -> str | None:
    """The last log the guest printed on its console between XFB-<NAME>-LOG-BEGIN and -END, or None."""
    console = run_dir / "guest-console.log"
    text = console.read_text(errors="replace") if console.exists() else ""
    begin, end = f"XFB-{name}-LOG-BEGIN", f"XFB-{name}-LOG-END"
    if begin not in text or end not in text.rsplit(begin, 1)[1]:
        return None
    return text.rsplit(begin, 1)[1].split(end, 1)[0].replace("\r\n", "\n").lstrip("\n")


def save_xorg_config(run_dir: Path) -> dict:
    """Keep the X server's configuration and its log (the guest prints it on the console once X is up) in the run
    directory, and say whether the fbdev driver really runs with ShadowFB off."""
    (run_dir / "xorg.conf").write_text(XORG_CONF.read_text())
    info = {"config": "xorg.conf"}
    body = console_section(run_dir, "XORG")
    if body is not None:
        (run_dir / "Xorg.0.log").write_text(body)
        info["log"] = "Xorg.0.log"
        m = re.search(r'FBDEV\(0\): Option "ShadowFB" "(\w+)"', body)
        info["shadowfb"] = m.group(1) if m else "unknown"
    return info


def save_workload_log(run_dir: Path) -> str:
    """writer.kind command: keep the workload's output as workload.log; its name, or "" if none came."""
    body = console_section(run_dir, "WORKLOAD")
    if body is None:
        return ""
    (run_dir / "workload.log").write_text(body)
    return "workload.log"


class GuestError(RuntimeError):
    """The guest, its kernel or the writer broke: an ERROR verdict, with the console tail."""


def writer_params(cfg: Config) -> WriterParams:
    """The pattern options from the config: the guest's writer gets them, the expected frames use them."""
    return WriterParams(mode=cfg["writer.mode"], pages=cfg["writer.pages"], touches=cfg["writer.touches"],
                        order=cfg["writer.order"])


def xl_config(cfg: Config, name: str, kernel: str, initrd: str) -> str:
    """The guest's xl configuration. `name` and the paths are ours (no quotes inside); config values that reach
    it are checked here or in the schema."""
    extra = cfg["guest.extra_cmdline"]
    if '"' in extra or "\\" in extra:
        raise ConfigError(cfg.source, "guest.extra_cmdline", "expected no double quotes or backslashes")
    params = writer_params(cfg)
    settings = {"xfb_writer": cfg["writer.kind"], "xfb_lifecycle": cfg["writer.lifecycle"], "xfb_mode": params.mode,
                "xfb_pages": params.pages, "xfb_touches": params.touches, "xfb_order": params.order,
                "xfb_touch_gap_us": cfg["writer.touch_gap_us"], "xfb_final_gap_us": cfg["writer.final_gap_us"],
                "xfb_mappings": cfg["writer.mappings"],
                "xfb_workers": cfg["writer.workers"], "xfb_worker_kind": cfg["writer.worker_kind"],
                "xfb_mapcheck": int(cfg["guest.mapping_checks"])}
    if cfg["writer.kind"] == "command":
        settings["xfb_command_xorg"] = int(cfg["command.xorg"])
    fe, module = frontend(cfg["frontend"]), module_frontend(cfg)
    if module is not None:
        settings["xfb_module"] = module.name
        if module.ours:
            settings.update(xfb_race_window_ms=cfg["legacy.race_window_ms"], xfb_unload=int(cfg["legacy.unload_at_end"]))
        elif module.params:
            settings["xfb_module_params"] = module.params.replace(" ", "+")  # one word on the command line
    # fbcon takes over any framebuffer registered later, while the module's insmod still runs; on Debian 13's 6.12
    # that takeover kills insmod (SIGKILL, no oops). The guest's init unbinds fbcon from the framebuffer anyway:
    # with a module, map every console to a framebuffer that never exists (fb9), so fbcon never binds to it.
    no_fbcon = "fbcon=map:9" if module is not None else ""
    words = ["console=hvc0 quiet", fe.builtin_off, no_fbcon, *(f"{k}={v}" for k, v in settings.items()), extra]
    cmdline = " ".join(w for w in words if w)
    return "\n".join([
        f'name = "{name}"',
        'type = "pv"',
        f'kernel = "{kernel}"',  # uncompressed: xl create is much faster with it
        f'ramdisk = "{initrd}"',
        f'extra = "{cmdline}"',
        f"memory = {cfg['guest.memory_mb']}",
        f"vcpus = {cfg['guest.vcpus']}",
        # dom0's loopback only, on the first free display: reached through our SSH connection, never from
        # outside, and never clashing with another guest's VNC.
        'vfb = [ "vnc=1,vnclisten=127.0.0.1,vncunused=1" ]',
        'on_crash = "preserve"',
        "",
    ])


class Guest:
    def __init__(self, host: Dom0, cfg: Config, run_dir: Path, kernel: str, initrd: str):
        """kernel and initrd: the payload's paths on the host."""
        self.host, self.cfg, self.run_dir = host, cfg, run_dir
        self.kernel, self.initrd = kernel, initrd
        self.slot: GuestSlot | None = None
        self.console: Console | None = None
        self.domid: int | None = None
        self.vnc_port: int | None = None
        self.geometry: Geometry | None = None
        self.checks: list[Check] = []  # mapping checks passed before READY
        module = module_frontend(cfg)
        self.unload = module is not None and module.ours and cfg["legacy.unload_at_end"]
        self.finished = False  # the writer has said BYE, or was asked to quit after an error
        self._section: str | None = None  # inside a quoted log (e.g. the workload's): not our lines
        self._init_started: tuple[float, float] | None = None  # when init said so, and its uptime then

    def __enter__(self) -> "Guest":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> Geometry:
        created = time.monotonic()
        self.slot, self.console = self.host.start_guest(
            lambda name: xl_config(self.cfg, name, self.kernel, self.initrd), self.run_dir / "guest-console.log")
        deadline = time.monotonic() + self.cfg["guest.boot_timeout"]
        while True:
            msg = self._next_message(deadline - time.monotonic(), "the writer's READY line (guest.boot_timeout)")
            if not isinstance(msg, Check):
                break
            if not msg.ok:
                raise GuestError(f"the frontend failed the mapping check {msg.name!r}: {msg.detail}\n"
                                 f"--- last guest console lines ---\n{self.console.tail()}")
            self.checks.append(msg)
        if not isinstance(msg, Ready):
            raise GuestError(f"expected READY from the writer, got {msg}")
        self.geometry = msg.geometry
        if self._init_started is not None:  # where the start went: domain built, kernel booted, init to READY
            arrived, uptime = self._init_started
            record("start guest: xl create to kernel", arrived - created - uptime)
            record("start guest: kernel boot", uptime)
            record("start guest: init to READY", time.monotonic() - arrived)
        # The domain's id, and where libxl recorded its device model's VNC server (vncunused picked the display).
        out = self.host.exec(["sh", "-c", 'id=$(xl domid "$1") && echo "$id" && '
                              'xenstore-read "/local/domain/$id/console/vnc-port"', "sh", self.slot.name]).stdout
        self.domid, self.vnc_port = (int(x) for x in out.split())
        return msg.geometry

    def _next_message(self, timeout: float, waiting_for: str):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.console.read_line(max(left, 0)) if left > 0 else None
            except EOFError:
                raise GuestError(f"the guest console closed while waiting for {waiting_for}\n"
                                 f"--- last guest console lines ---\n{self.console.tail()}") from None
            if line is None:
                raise GuestError(f"timed out after {timeout} s waiting for {waiting_for}\n"
                                 f"--- last guest console lines ---\n{self.console.tail()}")
            if not self._ours(line):
                continue
            if (boot := INIT_UPTIME.match(line)) and self._init_started is None:
                self._init_started = (time.monotonic(), float(boot.group(1)))
                continue
            fatal = GUEST_FATAL.search(line)
            if fatal:
                time.sleep(1)  # let the rest of a panic arrive for the message
                raise GuestError(f"the guest broke: {fatal.group(0)}\n"
                                 f"--- last guest console lines ---\n{self.console.tail(60)}")
            try:
                msg = parse_line(line)
            except ProtocolError as e:
                raise GuestError(str(e)) from None
            if isinstance(msg, WriterError):
                raise GuestError(f"the writer reported an error: {msg.message}")
            if msg is not None:
                return msg

    def _ours(self, line: str) -> bool:
        """False for the lines of someone else's log the guest quotes (an X or workload log, between markers),
        which are neither protocol nor kernel messages, and for the markers themselves."""
        marker = section_marker(line)
        if marker is not None:
            name, begins = marker
            self._section = name if begins else None
            return False
        return self._section is None

    def go(self, round_no: int, seed: int) -> Done:
        self.console.send_line(format_go(round_no, seed))
        msg = self._next_message(self.cfg["timeouts.round"], f"round {round_no} (timeouts.round)")
        if not isinstance(msg, Done) or msg.round != round_no:
            raise GuestError(f"expected DONE {round_no} from the writer, got {msg}")
        return msg

    def start_workload(self, command: str) -> None:
        """writer.kind command: start the workload; it runs until freeze()."""
        self.console.send_line(format_start(command))

    def freeze(self, round_no: int) -> Done:
        """writer.kind command: freeze the workload (and the X server); returns once every process is frozen."""
        self.console.send_line(format_freeze(round_no))
        msg = self._next_message(self.cfg["timeouts.round"], f"the workload to freeze for round {round_no}")
        if not isinstance(msg, Done) or msg.round != round_no:
            raise GuestError(f"expected DONE {round_no} from the workload's controller, got {msg}")
        return msg

    def thaw(self) -> None:
        self.console.send_line(format_thaw())

    def stats(self) -> dict[str, int]:
        """The frontend module's counters (empty for the built-in frontend, which has none)."""
        self.console.send_line(format_stats())
        msg = self._next_message(30, "the writer's STATS line")
        if not isinstance(msg, Stats):
            raise GuestError(f"expected STATS from the writer, got {msg}")
        return dict(msg.values)

    def finish(self) -> str:
        """The orderly end after the last round: the writer quits, and with legacy.unload_at_end the guest's init
        unbinds and unloads the module. Returns the module unloaded ("" if none was asked for)."""
        self.console.send_line(format_quit())
        msg = self._next_message(30, "the writer's BYE line")
        if not isinstance(msg, Bye):
            raise GuestError(f"expected BYE from the writer, got {msg}")
        self.finished = True
        if not self.unload:
            return ""
        msg = self._next_message(60, "the module to be unbound and unloaded (XFB UNLOADED)")
        if not isinstance(msg, Unloaded):
            raise GuestError(f"expected XFB UNLOADED from the guest, got {msg}")
        try:  # a BUG from the unload may come a little later: read on until the guest powers off
            while (line := self.console.read_line(2)) is not None:
                if KERNEL_FATAL.search(line):
                    raise GuestError(f"the guest broke after unloading {msg.module}: {line}\n"
                                     f"--- last guest console lines ---\n{self.console.tail(60)}")
        except EOFError:
            pass
        return msg.module

    def quit(self) -> None:
        """After an error: ask the writer to finish, if finish() did not, so that what it prints on the way out
        (a workload's log) reaches the console log. Best effort: it may be gone already."""
        if self.console is not None and not self.finished:
            self.finished = True
            self._ask_to_quit()

    def stop(self) -> None:
        """Ask the writer to finish (unless finish() did), then make sure the domain and its files are gone."""
        if self.console is not None:
            self.quit()
            self.console.close()
            self.console = None
        if self.slot is not None:
            try:
                self.host.end_guest(self.slot)
            except HostError:
                pass  # the connection is gone: the host's guard destroys the domain by itself

    def _ask_to_quit(self) -> None:
        """Best effort, after an error: the writer may be gone already."""
        try:
            self.console.send_line(format_quit())
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                line = self.console.read_line(0.5)
                if line is not None and self._ours(line) and isinstance(parse_line(line), Bye):
                    break
        except (EOFError, OSError, ProtocolError):
            pass
