"""harness/protocol.py: the writer's console line protocol."""
from __future__ import annotations

import pytest

from xenfb_harness.geometry import Channel, Geometry
from xenfb_harness.protocol import (MAX_ROUND, Bye, Check, Done, ProtocolError, Ready, Stats, Unloaded, WriterError,
                              format_freeze, format_go, format_quit, format_start, format_stats, format_thaw,
                              parse_line, section_marker)

READY = "XFB READY width=800 height=600 bpp=32 stride=3200 red=16/8 green=8/8 blue=0/8 smem=2097152"
GEOMETRY = Geometry(800, 600, 32, 3200, Channel(16, 8), Channel(8, 8), Channel(0, 8), smem=2097152)


def test_good_lines():
    assert parse_line(READY) == Ready(GEOMETRY)
    assert parse_line("XFB DONE 3") == Done(3)
    assert parse_line("XFB DONE 4294967295") == Done(2**32 - 1)
    assert parse_line("XFB BYE") == Bye()
    assert parse_line("XFB ERROR unknown command: GO x") == WriterError("unknown command: GO x")
    assert parse_line("XFB CHECK munmap-part ok a hole punched") == Check("munmap-part", True, "a hole punched")
    assert parse_line("XFB CHECK fork FAIL no zap within 200 ms") == Check("fork", False, "no zap within 200 ms")
    assert parse_line("XFB CHECK plain ok") == Check("plain", True, "")
    assert parse_line("XFB UNLOADED xenfb_legacy_fixed") == Unloaded("xenfb_legacy_fixed")


def test_ready_565():
    line = "XFB READY width=640 height=480 bpp=16 stride=1280 red=11/5 green=5/6 blue=0/5 smem=614400"
    g = parse_line(line).geometry
    assert (g.width, g.height, g.bpp, g.stride, g.smem) == (640, 480, 16, 1280, 614400)
    assert g.channels() == (Channel(11, 5), Channel(5, 6), Channel(0, 5))


def test_ready_every_row_counts():
    # No rows are set aside (there is no heartbeat): a one-row framebuffer is usable, an empty one is not.
    line = "XFB READY width=7 height=1 bpp=32 stride=28 red=16/8 green=8/8 blue=0/8 smem=4096"
    assert parse_line(line).geometry.height == 1
    with pytest.raises(ProtocolError, match="unusable framebuffer size 7x0"):
        parse_line(line.replace("height=1", "height=0"))


@pytest.mark.parametrize("line, expected", [
    ("\rXFB DONE 1\r\n", Done(1)),
    ("[   12.345678] random: crng init done XFB BYE", Bye()),
    ("GO 3 12345XFB DONE 3", Done(3)),
    ("\x1b[0m" + READY + "\r", Ready(GEOMETRY)),
    ("XFB DONE   2  ", Done(2)),  # spacing is not meaningful
])
def test_junk_around_the_prefix(line, expected):
    assert parse_line(line) == expected


@pytest.mark.parametrize("line", [
    "", "\r", "GO 3 12345", "QUIT", "[    0.000000] Linux version 6.1.0", "login: ", "XFBREADY", "xfb BYE",
])
def test_non_writer_lines_are_none(line):
    assert parse_line(line) is None


@pytest.mark.parametrize("line, needle", [
    ("XFB DONE", "XFB DONE <round>'"),
    ("XFB DONE x", "XFB DONE <round>'"),
    ("XFB DONE -1", "XFB DONE <round>'"),
    ("XFB DONE 3 tick=7", "XFB DONE <round>'"),  # the old heartbeat field: an old writer is not ours
    ("XFB DONE 3 4", "XFB DONE <round>'"),
    ("XFB BYE now", "XFB BYE"),
    ("XFB HELLO", "READY, DONE, BYE, ERROR, CHECK or UNLOADED"),
    ("XFB ", "READY, DONE, BYE, ERROR, CHECK or UNLOADED"),
    ("XFB CHECK fork", "XFB CHECK <name> ok|FAIL <detail>"),
    ("XFB CHECK fork maybe", "XFB CHECK <name> ok|FAIL <detail>"),
    ("XFB CHECK a/b ok", "XFB CHECK <name> ok|FAIL <detail>"),
    ("XFB UNLOADED", "XFB UNLOADED <module>"),
    ("XFB UNLOADED two words", "XFB UNLOADED <module>"),
    (READY.replace(" smem=2097152", ""), "missing smem"),
    (READY.replace("red=16/8", "red=16"), "red='16' is not OFFSET/LENGTH"),
    (READY.replace("width=800", "width=8x0"), "width='8x0' is not a decimal number"),
    (READY + " depth=24", "unexpected field 'depth=24'"),
    (READY + " bpp=32", "unexpected field 'bpp=32'"),
    (READY.replace("bpp=32", "bpp=8"), "unsupported bits per pixel 8"),
    (READY.replace("stride=3200", "stride=100"), "stride 100"),
])
def test_malformed_lines_name_the_line_and_the_expectation(line, needle):
    with pytest.raises(ProtocolError) as info:
        parse_line("junk " + line)
    text = str(info.value)
    assert repr("junk " + line) in text
    assert needle in text
    assert isinstance(info.value, ValueError)


def test_format_commands():
    assert format_go(3, 12345) == "GO 3 12345\n"
    assert format_go(0, 2**64 - 1) == f"GO 0 {2**64 - 1}\n"
    assert format_quit() == "QUIT\n"
    for bad in [(-1, 0), (2**32, 0), (0, -1), (0, 2**64)]:
        with pytest.raises(ValueError):
            format_go(*bad)


def test_format_and_parse_agree_with_the_writer_shape():
    # The writer echoes nothing of GO/QUIT with an XFB prefix, so the tty echo of our commands is never parsed.
    assert parse_line(format_go(1, 2).strip()) is None
    assert parse_line(format_quit().strip()) is None


# --- STATS ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, values", [
    ("XFB STATS", {}),
    ("XFB STATS  \r", {}),
    ("XFB STATS faults=12", {"faults": 12}),
    ("XFB STATS faults=12 race_hits=0 race_window_ms=5", {"faults": 12, "race_hits": 0, "race_window_ms": 5}),
    ("\r[  3.1] x XFB STATS  A_9=007   zz=18446744073709551615 ", {"A_9": 7, "zz": 2**64 - 1}),
])
def test_stats_lines(line, values):
    msg = parse_line(line)
    assert msg == Stats(values)
    assert dict(msg.values) == values and list(msg.values) == list(values)  # the writer's order is kept


def test_stats_message_is_immutable_and_hashable():
    source = {"b": 2, "a": 1}
    msg = Stats(source)
    source["c"] = 3  # the message keeps its own copy
    assert dict(msg.values) == {"a": 1, "b": 2} and msg.values["a"] == 1
    with pytest.raises(TypeError):
        msg.values["a"] = 5
    assert msg == Stats({"a": 1, "b": 2}) and hash(msg) == hash(Stats({"a": 1, "b": 2}))
    assert msg != Stats({"a": 1}) and msg != Stats({"a": 1, "b": 3})
    assert len({msg, Stats({"b": 2, "a": 1}), Stats({})}) == 2


@pytest.mark.parametrize("line, needle", [
    ("XFB STATS faults", "'faults' is not NAME=VALUE"),
    ("XFB STATS faults=", "'faults=' is not NAME=VALUE"),
    ("XFB STATS =3", "'=3' is not NAME=VALUE"),
    ("XFB STATS faults=-1", "'faults=-1' is not NAME=VALUE"),
    ("XFB STATS faults=1x", "'faults=1x' is not NAME=VALUE"),
    ("XFB STATS race-hits=1", "'race-hits=1' is not NAME=VALUE"),
    ("XFB STATS a=1 b=2=3", "'b=2=3' is not NAME=VALUE"),
    ("XFB STATS a=1 a=2", "counter 'a' appears twice"),
    ("XFB STATS a=18446744073709551616", "does not fit in 64 bits"),
    ("XFB STATSX", "STATS, READY, DONE, BYE, ERROR, CHECK or UNLOADED"),
])
def test_malformed_stats_lines_name_the_line(line, needle):
    with pytest.raises(ProtocolError) as info:
        parse_line("junk " + line)
    assert repr("junk " + line) in str(info.value) and needle in str(info.value)


def test_format_stats():
    assert format_stats() == "STATS\n"
    assert parse_line(format_stats().strip()) is None  # the tty echo of the command is not a writer line


# --- writer.kind command: START, FREEZE, THAW and the quoted log sections ------------------------------------------


@pytest.mark.parametrize("command", [
    "x",
    "while :; do x11perf -rect10; done",
    "echo 'single' \"double\" $HOME `id` \\ | cat; exit 3",
    "printf 'a\\nb' # tabs\tand\rreturns",
    "caf\u00e9 \u20ac \U0001f600",
    "a\nb",  # a newline travels too: hex has no special bytes
    "x" * 2000,
])
def test_format_start_round_trips_through_hex(command):
    line = format_start(command)
    assert line.startswith("START ") and line.endswith("\n") and line.count("\n") == 1
    digits = line[len("START "):-1]
    assert set(digits) <= set("0123456789abcdef") and len(digits) % 2 == 0
    assert bytes.fromhex(digits).decode() == command
    assert len(digits) == 2 * len(command.encode())


def test_format_start_is_plain_hex():
    assert format_start("echo hi") == "START 6563686f206869\n"
    assert format_start("\x01") == "START 01\n"


def test_format_start_longest_command_fits_the_writers_line():
    # xfb-writer reads lines of up to 4095 characters (MAX_LINE, as the console tty's canonical mode).
    from xenfb_harness.config import MAX_COMMAND
    assert len(format_start("\u00ff" * (MAX_COMMAND // 2))) - 1 <= 4095
    assert len(format_start("x" * MAX_COMMAND)) - 1 <= 4095


@pytest.mark.parametrize("command", ["", "a\0b", "\0", "x" * 10 + "\0"])
def test_format_start_refuses_empty_and_nul(command):
    with pytest.raises(ValueError, match="non-empty and hold no NUL byte"):
        format_start(command)


def test_format_freeze_and_thaw():
    assert format_freeze(0) == "FREEZE 0\n"
    assert format_freeze(17) == "FREEZE 17\n"
    assert format_freeze(MAX_ROUND) == f"FREEZE {2**32 - 1}\n"
    assert format_thaw() == "THAW\n"
    for bad in (-1, MAX_ROUND + 1, 2**64):
        with pytest.raises(ValueError, match="outside 0.."):
            format_freeze(bad)


def test_the_echo_of_workload_commands_is_not_a_writer_line():
    for line in (format_start("echo XFB DONE 1"), format_freeze(3), format_thaw()):
        assert parse_line(line.strip()) is None


@pytest.mark.parametrize("line, expected", [
    ("XFB-WORKLOAD-LOG-BEGIN", ("WORKLOAD", True)),
    ("XFB-WORKLOAD-LOG-END", ("WORKLOAD", False)),
    ("XFB-XORG-LOG-BEGIN\r", ("XORG", True)),
    ("XFB-XORG-LOG-END\r\n", ("XORG", False)),
    ("\r[   3.141] XFB-WORKLOAD-LOG-END", ("WORKLOAD", False)),  # junk before it, as on a shared console
    ("FREEZE 1XFB-WORKLOAD-LOG-BEGIN", ("WORKLOAD", True)),
])
def test_section_markers(line, expected):
    assert section_marker(line) == expected
    assert parse_line(line) is None  # a marker is not a protocol line


@pytest.mark.parametrize("line", [
    "", "XFB DONE 1", "XFB-WORKLOAD-LOG", "XFB-WORKLOAD-LOG-", "XFB--LOG-BEGIN", "xfb-workload-log-begin",
    "XFB-Workload-LOG-BEGIN", "XFB-WORK LOAD-LOG-END", "WORKLOAD-LOG-BEGIN", "XFB WORKLOAD LOG BEGIN",
])
def test_non_markers(line):
    assert section_marker(line) is None
