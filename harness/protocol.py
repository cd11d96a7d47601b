"""The line protocol between the harness and xfb-writer (harness/writer/xfb-writer.c) on the guest console.

Writer -> harness, one line each, always starting with "XFB "::

    XFB READY width=800 height=600 bpp=32 stride=3200 red=16/8 green=8/8 blue=0/8 smem=2097152
    XFB DONE <round>
    XFB STATS faults=12 race_hits=0
    XFB BYE
    XFB ERROR <message>

Before READY, the mapping checks (harness/writer/xfb-mapcheck.c) may report, one line per check::

    XFB CHECK <name> ok <what was checked>
    XFB CHECK <name> FAIL <why>

and after BYE, the guest's init reports that it unloaded the frontend module: "XFB UNLOADED <module>".

Harness -> writer: "GO <round> <seed>", "STATS" and "QUIT".

With writer.kind "command" the guest runs xfb-writer --workload, a controller of someone else's workload, instead:
it says READY as above, and obeys "START <hex of the command>" (no answer), "FREEZE <round>" (answered "XFB DONE
<round>" once the workload and the X server are frozen), "THAW" (no answer), STATS and QUIT. It prints the
workload's log between "XFB-WORKLOAD-LOG-BEGIN" and "XFB-WORKLOAD-LOG-END" lines; the X log comes between
"XFB-XORG-LOG-BEGIN" and "XFB-XORG-LOG-END". Lines between such markers are someone else's text, never ours.

DONE means round <round> is drawn (with the X writer: the X server has carried it out). From then until the next
GO nothing in the guest draws: the writer only waits for its next command. There is no heartbeat, because any
further drawing would make the frontend send updates that carry along one it failed to send.

STATS asks for the counters of the frontend module under test (the files of the writer's --stats-dir); the
answer has zero or more name=value pairs, names [A-Za-z0-9_]+, values unsigned 64-bit decimal, no name twice.
The built-in frontend has no counters, so "XFB STATS" alone is a normal answer.

The console is shared with the kernel and the tty echoes our input, so anything without "XFB " is not ours
(parse_line returns None), and "XFB " may follow junk on the same line (a leading \\r, an interleaved message).
A line that has the prefix but not the expected shape raises ProtocolError: it is our writer misbehaving or a
garbled console, and a silent skip would turn that into a timeout.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from xenfb_harness.geometry import Channel, Geometry

PREFIX = "XFB "
MAX_ROUND = 2**32 - 1  # the writer parses rounds as 32-bit unsigned
MAX_SEED = 2**64 - 1


class ProtocolError(ValueError):
    pass


@dataclass(frozen=True)
class Ready:
    geometry: Geometry


@dataclass(frozen=True)
class Done:
    round: int


@dataclass(frozen=True)
class Stats:
    """The frontend's counters, in the writer's order (sorted by name). `values` is a read-only mapping."""

    values: Mapping[str, int]

    def __post_init__(self) -> None:
        # A read-only copy: the message is immutable, and the caller's dict may change afterwards.
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))

    def __hash__(self) -> int:  # a mapping is not hashable; its items are (order-free, as equality is)
        return hash(frozenset(self.values.items()))


@dataclass(frozen=True)
class Bye:
    pass


@dataclass(frozen=True)
class WriterError:
    message: str


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Unloaded:
    module: str


Message = Ready | Done | Stats | Bye | WriterError | Check | Unloaded

_READY_KEYS = ("width", "height", "bpp", "stride", "red", "green", "blue", "smem")
_NUMBER = re.compile(r"[0-9]+")
_CHANNEL = re.compile(r"([0-9]+)/([0-9]+)")
_DONE = re.compile(r"[0-9]+")
_STAT = re.compile(r"([A-Za-z0-9_]+)=([0-9]+)")
_CHECK = re.compile(r"([A-Za-z0-9_-]+)\s+(ok|FAIL)(?:\s+(.*))?")
_MODULE = re.compile(r"[A-Za-z0-9_]+")
MAX_STAT = 2**64 - 1


def _parse_ready(rest: str, line: str) -> Ready:
    expected = "READY " + " ".join(f"{k}=..." for k in _READY_KEYS)
    fields = {}
    for item in rest.split():
        key, sep, value = item.partition("=")
        if not sep or key not in _READY_KEYS or key in fields:
            raise ProtocolError(f"malformed writer line {line!r}: unexpected field {item!r}, expected {expected}")
        fields[key] = value
    missing = [k for k in _READY_KEYS if k not in fields]
    if missing:
        raise ProtocolError(f"malformed writer line {line!r}: missing {', '.join(missing)}, expected {expected}")
    values = {}
    for key, value in fields.items():
        pattern = _CHANNEL if key in ("red", "green", "blue") else _NUMBER
        m = pattern.fullmatch(value)
        if not m:
            form = "OFFSET/LENGTH" if pattern is _CHANNEL else "a decimal number"
            raise ProtocolError(f"malformed writer line {line!r}: {key}={value!r} is not {form}")
        values[key] = Channel(int(m[1]), int(m[2])) if pattern is _CHANNEL else int(value)
    try:
        return Ready(Geometry(**values))
    except ValueError as exc:  # the numbers parse but describe a framebuffer we cannot use
        raise ProtocolError(f"writer line {line!r}: {exc}") from exc


def _parse_stats(rest: str, line: str) -> Stats:
    values: dict[str, int] = {}
    for item in rest.split():
        m = _STAT.fullmatch(item)
        if not m:
            raise ProtocolError(f"malformed writer line {line!r}: {item!r} is not NAME=VALUE "
                                f"(NAME of [A-Za-z0-9_], VALUE an unsigned decimal number)")
        name, value = m[1], int(m[2])
        if name in values:
            raise ProtocolError(f"malformed writer line {line!r}: counter {name!r} appears twice")
        if value > MAX_STAT:
            raise ProtocolError(f"malformed writer line {line!r}: {name}={value} does not fit in 64 bits")
        values[name] = value
    return Stats(values)


def parse_line(line: str) -> Message | None:
    """One console line -> Message, or None if it is not a writer line. Raises ProtocolError if malformed."""
    start = line.find(PREFIX)
    if start < 0:
        return None
    text = line[start:].strip()
    word, _, rest = text[len(PREFIX):].partition(" ")
    rest = rest.strip()
    if word == "READY":
        return _parse_ready(rest, line)
    if word == "DONE":
        if not _DONE.fullmatch(rest):
            raise ProtocolError(f"malformed writer line {line!r}: expected 'XFB DONE <round>'")
        return Done(int(rest))
    if word == "STATS":
        return _parse_stats(rest, line)
    if word == "BYE":
        if rest:
            raise ProtocolError(f"malformed writer line {line!r}: expected 'XFB BYE' alone")
        return Bye()
    if word == "ERROR":
        return WriterError(rest)
    if word == "CHECK":
        m = _CHECK.fullmatch(rest)
        if not m:
            raise ProtocolError(f"malformed writer line {line!r}: expected 'XFB CHECK <name> ok|FAIL <detail>'")
        return Check(m[1], m[2] == "ok", (m[3] or "").strip())
    if word == "UNLOADED":
        if not _MODULE.fullmatch(rest):
            raise ProtocolError(f"malformed writer line {line!r}: expected 'XFB UNLOADED <module>'")
        return Unloaded(rest)
    raise ProtocolError(f"malformed writer line {line!r}: expected STATS, READY, DONE, BYE, ERROR, CHECK or "
                        f"UNLOADED after 'XFB'")


def format_go(round: int, seed: int) -> str:
    """The command that makes the writer draw round `round` of `seed`."""
    if not 0 <= round <= MAX_ROUND:
        raise ValueError(f"round {round} outside 0..{MAX_ROUND}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed {seed} outside 0..{MAX_SEED}")
    return f"GO {round} {seed}\n"


def format_stats() -> str:
    """The command that makes the writer report the frontend's counters (an "XFB STATS" line)."""
    return "STATS\n"


def format_quit() -> str:
    return "QUIT\n"


def format_start(command: str) -> str:
    """Start the workload (writer.kind command): the command travels hex-encoded, so no byte of it is special."""
    data = command.encode()
    if not data or b"\0" in data:
        raise ValueError("the workload command must be non-empty and hold no NUL byte")
    return f"START {data.hex()}\n"


def format_freeze(round: int) -> str:
    """Freeze the workload; "XFB DONE <round>" says it is frozen."""
    if not 0 <= round <= MAX_ROUND:
        raise ValueError(f"round {round} outside 0..{MAX_ROUND}")
    return f"FREEZE {round}\n"


def format_thaw() -> str:
    return "THAW\n"


SECTION = re.compile(r"XFB-([A-Z]+)-LOG-(BEGIN|END)")


def section_marker(line: str) -> tuple[str, bool] | None:
    """("WORKLOAD", True) for a line that opens a quoted log section, ("WORKLOAD", False) for one that closes it,
    else None."""
    m = SECTION.search(line)
    return (m[1], m[2] == "BEGIN") if m else None
