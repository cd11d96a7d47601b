from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from xenfb_harness import config
from xenfb_harness.config import SCHEMA, ConfigError, Field, defaults, describe, load, shipped

REPO = Path(__file__).resolve().parent.parent
HOST_SOURCES = Path(SCHEMA["apt"]["sources"].default)
needs_host_sources = pytest.mark.skipif(not HOST_SOURCES.is_file(),
                                        reason=f"default apt.sources {HOST_SOURCES} does not exist on this host")


def schema_leaves(schema=SCHEMA, prefix=""):
    for key, value in schema.items():
        if isinstance(value, dict):
            yield from schema_leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def lookup(data: dict, dotted: str):
    for part in dotted.split("."):
        data = data[part]
    return data


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """An apt sources file next to the scenario files, so no test depends on the host's apt setup."""
    p = tmp_path / "test.sources"
    p.write_text("deb http://mirror.invalid/debian bookworm main\n")
    return p


def write_config(tmp_path: Path, text: str, name: str = "scenario.yaml", with_sources: bool = True) -> Path:
    if with_sources and not re.search(r"^apt:", text, re.M):
        (tmp_path / "test.sources").write_text("deb http://mirror.invalid/debian bookworm main\n")
        text = text + "\napt:\n  sources: test.sources\n"
    p = tmp_path / name
    p.write_text(text)
    return p


def load_error(path: Path, host_file: Path | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(path, host_file)
    return info.value


# --- defaults and describe -------------------------------------------------------------------------------------------


def test_defaults_match_schema():
    d = defaults()
    leaves = dict(schema_leaves())
    assert len(leaves) > 10
    for dotted, f in leaves.items():
        assert isinstance(f, Field)
        assert lookup(d, dotted) == f.default, dotted
    # Same shape: no extra keys anywhere.
    def shape(node):
        return {k: shape(v) for k, v in node.items()} if isinstance(node, dict) else None
    def schema_shape(node):
        return {k: schema_shape(v) for k, v in node.items()} if isinstance(node, dict) else None
    assert shape(d) == schema_shape(SCHEMA)


def test_defaults_are_fresh_copies():
    d = defaults()
    d["compare"]["exclude"].append({"x": 0, "y": 0, "w": 1, "h": 1})
    d["guest"]["memory_mb"] = 1
    assert SCHEMA["compare"]["exclude"].default == []
    assert defaults()["compare"]["exclude"] == []
    assert defaults()["guest"]["memory_mb"] == SCHEMA["guest"]["memory_mb"].default


@needs_host_sources
def test_load_none_gives_defaults():
    cfg = load(None)
    assert cfg.source == "(defaults)"
    assert cfg.data == defaults()
    assert cfg["rounds"] == SCHEMA["rounds"].default
    assert cfg.get("guest.memory_mb") == SCHEMA["guest"]["memory_mb"].default
    assert cfg["apt.sources"] == str(HOST_SOURCES)


def test_load_none_reports_missing_default_sources(monkeypatch, tmp_path):
    missing = tmp_path / "no-such.sources"
    monkeypatch.setitem(SCHEMA["apt"], "sources", Field(str(missing), "path", "test"))
    err = load_error(None)
    assert err.key == "apt.sources"
    assert "apt.sources" in str(err) and str(missing) in str(err)


@needs_host_sources
@pytest.mark.parametrize("path", shipped(REPO / "configs")[0], ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load(path)
    assert cfg.source == str(path)
    assert set(cfg.data) == set(SCHEMA)
    assert cfg["frontend"] in SCHEMA["frontend"].choices


@needs_host_sources
def test_the_natural_race_scenarios_share_one_stress():
    """The legacy-fixed and upstream runs are the natural race's controls only while they draw exactly what the
    legacy one draws, on the same guest: every key but the frontend (and its race window) is the same."""
    cfgs = {fe: load(REPO / "configs" / f"{fe}-natural.yaml").data for fe in ("legacy", "legacy-fixed", "upstream")}
    assert [c["frontend"] for c in cfgs.values()] == list(cfgs)
    assert cfgs["legacy"]["legacy"]["race_window_ms"] == 0 == cfgs["legacy-fixed"]["legacy"]["race_window_ms"]
    for c in cfgs.values():
        del c["frontend"], c["legacy"]
    assert cfgs["legacy"] == cfgs["legacy-fixed"] == cfgs["upstream"]
    assert cfgs["legacy"]["writer"]["final_gap_us"] and cfgs["legacy"]["writer"]["mappings"] == 0


def test_there_are_shipped_configs():
    scenarios, matrices = shipped(REPO / "configs")
    assert scenarios and matrices


def test_describe_mentions_every_key():
    text = describe()
    for dotted, f in schema_leaves():
        assert f"  {dotted} = {f.default!r}" in text, dotted
        assert f.doc in text
    assert "one of: auto, tcg, kvm" in text


# --- valid files ----------------------------------------------------------------------------------------------------


def test_values_override_defaults_and_rest_keep_defaults(tmp_path):
    p = write_config(tmp_path, "rounds: 3\nguest:\n  memory_mb: 512\nhost:\n  accel: tcg\n"
                               "compare:\n  exclude:\n    - {x: 0, y: 1, w: 2, h: 3}\n")
    cfg = load(p)
    assert cfg["rounds"] == 3
    assert cfg["guest.memory_mb"] == 512
    assert cfg["guest.boot_timeout"] == SCHEMA["guest"]["boot_timeout"].default
    assert cfg["host.accel"] == "tcg"
    assert cfg["compare.exclude"] == [{"x": 0, "y": 1, "w": 2, "h": 3}]
    assert cfg["seed"] == SCHEMA["seed"].default


def test_empty_file_is_all_defaults(tmp_path, sources):
    p = tmp_path / "empty.yaml"
    p.write_text("# nothing\n")
    if HOST_SOURCES.is_file():
        cfg = load(p)
        assert cfg.data == defaults()
    else:
        assert load_error(p).key == "apt.sources"


def test_relative_sources_resolve_against_config_folder(tmp_path, monkeypatch):
    sub = tmp_path / "scenarios"
    sub.mkdir()
    (sub / "my.sources").write_text("deb http://mirror.invalid/debian bookworm main\n")
    p = sub / "s.yaml"
    p.write_text("apt:\n  sources: my.sources\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the config's folder
    cfg = load(p)
    assert Path(cfg["apt.sources"]) == sub / "my.sources"


def test_absolute_sources_path(tmp_path, sources):
    p = tmp_path / "s.yaml"
    p.write_text(f"apt:\n  sources: {sources}\n")
    assert load(p)["apt.sources"] == str(sources)


# --- unknown keys ---------------------------------------------------------------------------------------------------


def test_unknown_top_level_key(tmp_path):
    p = write_config(tmp_path, "rounds: 3\nround: 4\n")
    err = load_error(p)
    msg = str(err)
    assert err.key == "round" and err.source == str(p)
    assert msg.startswith(f"{p}: round: unknown key")
    expected = msg.split("expected one of", 1)[1]
    assert [k.strip() for k in expected.split(",")] == sorted(SCHEMA)


def test_unknown_nested_key(tmp_path):
    p = write_config(tmp_path, "guest:\n  memroy_mb: 512\n")
    err = load_error(p)
    msg = str(err)
    assert err.key == "guest.memroy_mb"
    assert msg.startswith(f"{p}: guest.memroy_mb: unknown key")
    expected = msg.split("expected one of", 1)[1]
    assert [k.strip() for k in expected.split(",")] == sorted(SCHEMA["guest"])  # guest's keys, not the top level


# --- wrong types ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, key, expected", [
    ("rounds: '3'", "rounds", "an integer"),            # string for int
    ("rounds: true", "rounds", "an integer"),           # bool for int
    ("rounds: 2.5", "rounds", "an integer"),            # float for int
    ("guest:\n  memory_mb: yes", "guest.memory_mb", "an integer"),
    ("guest:\n  kernel_package: 5", "guest.kernel_package", "a string"),   # int for string
    ("host:\n  xen_cmdline: [a, b]", "host.xen_cmdline", "a string"),
    ("guest: [1, 2]", "guest", "a mapping"),            # list for mapping
    ("host: 5", "host", "a mapping"),
    ("compare:\n  exclude: {x: 1, y: 1, w: 1, h: 1}", "compare.exclude", "a list"),
    ("guest:\n  extra_cmdline: \"a\\nb\"", "guest.extra_cmdline", "a single line"),
])
def test_wrong_type_names_key_and_expectation(tmp_path, text, key, expected):
    p = write_config(tmp_path, text + "\n")
    err = load_error(p)
    assert err.key == key
    msg = str(err)
    assert msg.startswith(f"{p}: {key}: "), msg
    assert f"expected {expected}" in msg


def test_top_level_list_is_rejected(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- rounds: 3\n")
    err = load_error(p)
    assert str(p) in str(err) and "(top level)" in str(err) and "expected a mapping" in str(err)


def test_enum_bad_value_lists_choices(tmp_path):
    p = write_config(tmp_path, "host:\n  accel: hvf\n")
    err = load_error(p)
    msg = str(err)
    assert err.key == "host.accel"
    assert "'hvf'" in msg
    expected = msg.split("expected", 1)[1].split(", got")[0]
    for choice in ("auto", "tcg", "kvm"):
        assert repr(choice) in expected


def test_frontend_enum(tmp_path):
    err = load_error(write_config(tmp_path, "frontend: custom\n"))
    assert err.key == "frontend" and "'upstream'" in str(err)


@pytest.mark.parametrize("text, key, minimum", [
    ("rounds: 0", "rounds", 1),
    ("seed: -1", "seed", 0),
    ("guest:\n  memory_mb: 63", "guest.memory_mb", 64),
    ("capture:\n  quiet_ms: 50", "capture.quiet_ms", 100),
])
def test_integer_below_minimum(tmp_path, text, key, minimum):
    err = load_error(write_config(tmp_path, text + "\n"))
    assert err.key == key
    assert f">= {minimum}" in str(err)


@pytest.mark.parametrize("text, key, value", [
    ("rounds: 1", "rounds", 1),
    ("seed: 0", "seed", 0),
    ("guest:\n  memory_mb: 64", "guest.memory_mb", 64),
])
def test_integer_at_minimum_is_fine(tmp_path, text, key, value):
    assert load(write_config(tmp_path, text + "\n"))[key] == value


@pytest.mark.parametrize("text, key, maximum", [
    ("writer:\n  mappings: 65537", "writer.mappings", 65536),
    ("writer:\n  mode: sparse\n  workers: 17", "writer.workers", 16),
    ("guest:\n  vcpus: 65", "guest.vcpus", 64),
])
def test_integer_above_maximum(tmp_path, text, key, maximum):
    err = load_error(write_config(tmp_path, text + "\n"))
    assert err.key == key
    assert f"<= {maximum}" in str(err)


@pytest.mark.parametrize("key", ["mappings", "workers"])
def test_xorg_writer_draws_with_one_client(tmp_path, key):
    err = load_error(write_config(tmp_path, f"writer:\n  kind: xorg\n  mode: sparse\n  {key}: 2\n"))
    assert err.key == f"writer.{key}" and "'xorg'" in str(err)


def test_workers_need_sparse_mode(tmp_path):
    err = load_error(write_config(tmp_path, "writer:\n  workers: 2\n"))
    assert err.key == "writer.workers" and "'sparse'" in str(err)
    cfg = load(write_config(tmp_path, "writer:\n  mode: sparse\n  workers: 2\n  worker_kind: process\n"))
    assert (cfg["writer.workers"], cfg["writer.worker_kind"]) == (2, "process")


def test_final_pass_needs_sparse_mode(tmp_path):
    err = load_error(write_config(tmp_path, "writer:\n  final_gap_us: 40000\n"))
    assert err.key == "writer.final_gap_us" and "'sparse'" in str(err)
    cfg = load(write_config(tmp_path, "writer:\n  mode: sparse\n  final_gap_us: 40000\n  mappings: 0\n"))
    assert (cfg["writer.final_gap_us"], cfg["writer.mappings"]) == (40000, 0)
    err = load_error(write_config(tmp_path, "writer:\n  mode: sparse\n  final_gap_us: 10000001\n"))
    assert err.key == "writer.final_gap_us"

# --- paths ----------------------------------------------------------------------------------------------------------


def test_missing_relative_sources(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("apt:\n  sources: nope.sources\n")
    err = load_error(p)
    msg = str(err)
    assert err.key == "apt.sources"
    assert str(p) in msg
    assert str(tmp_path / "nope.sources") in msg  # resolved against the config's folder


def test_missing_absolute_sources(tmp_path):
    missing = tmp_path / "abs" / "missing.sources"
    p = tmp_path / "s.yaml"
    p.write_text(f"apt:\n  sources: {missing}\n")
    err = load_error(p)
    assert err.key == "apt.sources" and str(missing) in str(err)


def test_sources_pointing_at_directory(tmp_path):
    (tmp_path / "dir.sources").mkdir()
    p = tmp_path / "s.yaml"
    p.write_text("apt:\n  sources: dir.sources\n")
    assert load_error(p).key == "apt.sources"


# --- compare.exclude ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    "{x: 0, y: 0, w: 5}",               # missing h
    "{x: 0, y: 0, w: 5, h: 5, z: 1}",   # extra key
    "{x: -1, y: 0, w: 5, h: 5}",        # negative
    "{x: 0, y: 0, w: '5', h: 5}",       # string
    "{x: 0, y: 0, w: true, h: 5}",      # bool
    "{x: 0, y: 0, w: 1.5, h: 5}",       # float
    "[0, 0, 5, 5]",                     # not a mapping
])
def test_exclude_item_names_index(tmp_path, bad):
    p = write_config(tmp_path, f"compare:\n  exclude:\n    - {{x: 1, y: 2, w: 3, h: 4}}\n    - {bad}\n")
    err = load_error(p)
    msg = str(err)
    assert err.key == "compare.exclude[1]"
    assert f"{p}: compare.exclude[1]: " in msg
    assert "x, y, w, h" in msg


def test_exclude_first_item_bad(tmp_path):
    p = write_config(tmp_path, "compare:\n  exclude:\n    - {x: 1}\n    - {x: 1, y: 2, w: 3, h: 4}\n")
    assert load_error(p).key == "compare.exclude[0]"


# --- file-level errors ----------------------------------------------------------------------------------------------


def test_invalid_yaml_names_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("rounds: [1, 2\nseed: 3\n")
    err = load_error(p)
    msg = str(err)
    assert msg.startswith(f"{p}: ")
    assert "not valid YAML" in msg
    assert "line 2" in msg  # the parser's position survives


def test_invalid_yaml_tab_indent(tmp_path):
    p = tmp_path / "tabs.yaml"
    p.write_text("guest:\n\tmemory_mb: 3\n")
    err = load_error(p)
    assert str(p) in str(err) and "not valid YAML" in str(err)


def test_missing_config_file(tmp_path):
    p = tmp_path / "does-not-exist.yaml"
    err = load_error(p)
    assert str(p) in str(err) and "does not exist" in str(err)


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)
    e = ConfigError("f.yaml", "a.b", "boom")
    assert str(e) == "f.yaml: a.b: boom" and e.source == "f.yaml" and e.key == "a.b"
    assert str(ConfigError("f.yaml", "", "boom")) == "f.yaml: (top level): boom"


def test_non_utf8_file_names_file(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("guest:\n  extra_cmdline: 'caf\u00e9'\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load(p)
    assert str(p) in str(info.value)


def test_module_has_no_hidden_state_between_loads(tmp_path):
    p1 = write_config(tmp_path, "rounds: 3\ncompare:\n  exclude:\n    - {x: 1, y: 2, w: 3, h: 4}\n", "a.yaml")
    p2 = write_config(tmp_path, "seed: 9\n", "b.yaml")
    a, b = load(p1), load(p2)
    assert a["rounds"] == 3 and b["rounds"] == SCHEMA["rounds"].default
    assert b["compare.exclude"] == [] and b["seed"] == 9
    assert config.defaults()["compare"]["exclude"] == []
    assert os.path.isabs(b["apt.sources"])


def test_a_host_file_replaces_the_host_section_and_keeps_the_scenario_as_source(tmp_path):
    scenario = write_config(tmp_path, "rounds: 3\nhost:\n  dom0_memory_mb: 512\n")
    host = tmp_path / "host.yaml"
    host.write_text("host:\n  kind: ssh\n  address: 127.0.0.1\n  port: 2222\n  key: client_key\n")
    cfg = load(scenario, host)
    assert cfg.source == str(scenario) and cfg.host_source == str(host)  # a report names the scenario
    assert (cfg["host.kind"], cfg["host.port"], cfg["host.dom0_memory_mb"]) == ("ssh", 2222, 1024)
    assert cfg["host.key"] == str(tmp_path / "client_key") and cfg["rounds"] == 3


def test_a_bad_host_file_is_named_in_the_error(tmp_path):
    host = tmp_path / "host.yaml"
    host.write_text("host:\n  kind: ssh\n  address: h\n  workdir: relative/dir\n")
    err = load_error(write_config(tmp_path, "rounds: 3\n"), host)
    assert err.source == str(host) and err.key == "host.workdir" and "absolute path" in str(err)


# --- writer.kind command ------------------------------------------------------------------------------------------


def command_file(tmp_path: Path, command: dict) -> Path:
    """A writer.kind command scenario with the given command section, written by YAML itself (any string)."""
    (tmp_path / "test.sources").write_text("deb http://mirror.invalid/debian bookworm main\n")
    p = tmp_path / "scenario.yaml"
    p.write_text(yaml.safe_dump({"writer": {"kind": "command"}, "command": command,
                                 "apt": {"sources": "test.sources"}}))
    return p


def test_command_kind_needs_command_run(tmp_path):
    for text in ("writer:\n  kind: command\n", "writer:\n  kind: command\ncommand:\n  run: '   '\n"):
        err = load_error(write_config(tmp_path, text))
        assert err.key == "command.run", text
        assert str(err).startswith(f"{tmp_path / 'scenario.yaml'}: command.run: ") and "'command'" in str(err)


def test_command_run_alone_is_fine_with_other_writers(tmp_path):
    cfg = load(write_config(tmp_path, "command:\n  run: 'echo unused'\n"))
    assert cfg["writer.kind"] == "mmap" and cfg["command.run"] == "echo unused"


def test_command_run_is_kept_verbatim(tmp_path):
    run = "while :; do x11perf -rect10 \"$A\" 'b' | cat; done"
    p = command_file(tmp_path, {"run": run})
    assert load(p)["command.run"] == run


@pytest.mark.parametrize("run, ok", [
    ("x" * config.MAX_COMMAND, True),
    ("x" * (config.MAX_COMMAND + 1), False),
    ("\u00e9" * (config.MAX_COMMAND // 2), True),        # 2 bytes each: bytes count, not characters
    ("\u00e9" * (config.MAX_COMMAND // 2) + "x", False),
    ("\u20ac" * (config.MAX_COMMAND // 3 + 1), False),   # 3 bytes each, fewer than 2000 characters
])
def test_command_run_is_at_most_max_command_bytes(tmp_path, run, ok):
    assert config.MAX_COMMAND == 2000
    p = command_file(tmp_path, {"run": run})
    if ok:
        assert load(p)["command.run"] == run
    else:
        err = load_error(p)
        assert err.key == "command.run" and "expected at most 2000 bytes" in str(err)


@pytest.mark.parametrize("text", ["command:\n  run: \"a\\nb\"\n", "command:\n  run: 5\n"])
def test_command_run_is_one_line_of_text(tmp_path, text):
    err = load_error(write_config(tmp_path, "writer:\n  kind: command\n" + text))
    assert err.key == "command.run"


@pytest.mark.parametrize("packages", [["x11-apps"], [], ["x11-apps", "mesa-utils", "libc6", "g++", "lib32z1",
                                                        "libstdc++6", "python3.11", "0ad"]])
def test_command_packages_are_debian_names(tmp_path, packages):
    p = command_file(tmp_path, {"run": "x", "packages": packages})
    assert load(p)["command.packages"] == packages


@pytest.mark.parametrize("value", [
    ["Foo"],                  # upper case
    ["a b"],                  # a blank
    ["x11-apps", "a b"],      # one bad name among good ones
    "x11-apps",               # a string, not a list
    {"x11-apps": 1},          # a mapping
    [5],                      # not a string
    [["x11-apps"]],           # nested
    ["a"],                    # Debian names have at least two characters
    ["-foo"],                 # must start with a letter or digit
    ["foo_bar"],              # no underscores
    ["x11-apps=7.7"],         # a version is not a name
    ["foo;rm"],
    [""],
    None,
])
def test_command_packages_refuse_what_is_not_a_list_of_debian_names(tmp_path, value):
    p = command_file(tmp_path, {"run": "x", "packages": value})
    err = load_error(p)
    assert err.key == "command.packages"
    assert "expected a list of Debian package names" in str(err) and repr(value) in str(err)


def test_command_packages_are_a_fresh_list(tmp_path):
    p = write_config(tmp_path, "writer:\n  kind: command\ncommand:\n  run: x\n  packages: [x11-apps]\n")
    a, b = load(p), load(p)
    a["command.packages"].append("more")
    assert b["command.packages"] == ["x11-apps"] and SCHEMA["command"]["packages"].default == []


def test_command_defaults_are_the_schemas(tmp_path):
    expected = {"run": "", "xorg": True, "packages": [], "interval_ms": 2000, "timing": "random"}
    assert {k: f.default for k, f in SCHEMA["command"].items()} == expected
    assert defaults()["command"] == expected
    cfg = load(write_config(tmp_path, "writer:\n  kind: command\ncommand:\n  run: x\n"))
    assert cfg.data["command"] == {**expected, "run": "x"}
    kinds = {k: f.kind for k, f in SCHEMA["command"].items()}
    assert kinds == {"run": "str", "xorg": "bool", "packages": "packages", "interval_ms": "int", "timing": "enum"}
    assert SCHEMA["command"]["run"].maximum == config.MAX_COMMAND
    assert SCHEMA["command"]["timing"].choices == ("periodic", "random")
    assert "command" in SCHEMA["writer"]["kind"].choices


@pytest.mark.parametrize("text, key, needle", [
    ("command:\n  run: x\n  interval_ms: 9\n", "command.interval_ms", ">= 10"),
    ("command:\n  run: x\n  timing: sometimes\n", "command.timing", "'periodic', 'random'"),
    ("command:\n  run: x\n  xorg: 1\n", "command.xorg", "true or false"),
    ("command:\n  runs: x\n", "command.runs", "unknown key"),
])
def test_command_keys_are_checked(tmp_path, text, key, needle):
    err = load_error(write_config(tmp_path, "writer:\n  kind: command\n" + text))
    assert err.key == key and needle in str(err)


def test_command_keys_that_are_fine(tmp_path):
    cfg = load(write_config(tmp_path, "writer:\n  kind: command\ncommand:\n  run: x\n  interval_ms: 10\n"
                                      "  timing: periodic\n  xorg: false\n"))
    assert (cfg["command.interval_ms"], cfg["command.timing"], cfg["command.xorg"]) == (10, "periodic", False)


def test_describe_shows_command_runs_limit():
    text = describe()
    assert "  command.run = '' (at most 2000 bytes)\n" in text
    assert "  command.interval_ms = 2000 (>= 10)\n" in text
    assert "  command.timing = 'random' (one of: periodic, random)\n" in text
    assert "  command.packages = []\n" in text
    assert "  writer.mappings = 1 (0..65536)\n" in text  # an int's maximum still reads as a range
    assert "one of: mmap, xorg, command" in text


# --- the guest kernel: a Debian package, a source tree, or your own image ---------------------------------------------


def kernel_tree(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "Makefile").write_text("VERSION = 6\n")
    (path / "Kconfig").write_text('mainmenu "Linux"\n')
    return path


def guest_file(folder: Path, guest: dict, **top) -> Path:
    """A scenario in `folder` (with its own apt sources) whose guest section is `guest`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test.sources").write_text("deb http://mirror.invalid/debian bookworm main\n")
    p = folder / "scenario.yaml"
    p.write_text(yaml.safe_dump({"guest": guest, "apt": {"sources": "test.sources"}, **top}))
    return p


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """The working directory is not the config's folder: relative paths must not depend on it."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_the_new_guest_kernel_keys_and_their_defaults():
    guest = SCHEMA["guest"]
    assert {k: (guest[k].default, guest[k].kind) for k in ("kernel_source", "kernel_config", "kernel_patches",
                                                           "kernel_image", "kernel_build_tree")} == {
        "kernel_source": ("", "kernel_source"), "kernel_config": ("", "path"), "kernel_patches": ([], "patches"),
        "kernel_image": ("", "path"), "kernel_build_tree": ("", "dir")}
    d = defaults()["guest"]
    assert (d["kernel_source"], d["kernel_config"], d["kernel_patches"], d["kernel_image"],
            d["kernel_build_tree"]) == ("", "", [], "", "")
    text = describe()
    for key in ("kernel_source", "kernel_config", "kernel_image", "kernel_build_tree"):
        assert f"  guest.{key} = ''\n" in text
    assert "  guest.kernel_patches = []\n" in text


def test_kernel_source_a_debian_package_is_kept_as_it_is(tmp_path, elsewhere):
    for value in ("linux-source-6.1", "linux-source-5.10", "linux-source-6.12"):
        assert load(guest_file(tmp_path / "s", {"kernel_source": value}))["guest.kernel_source"] == value
    assert load(guest_file(tmp_path / "s", {"kernel_source": ""}))["guest.kernel_source"] == ""


def test_kernel_source_a_tree_is_made_absolute_relative_to_the_config(tmp_path, elsewhere):
    folder = tmp_path / "scenarios"
    tree = kernel_tree(folder / "trees" / "linux")
    kernel_tree(elsewhere / "trees" / "linux")  # a decoy where the working directory would find it
    cfg = load(guest_file(folder, {"kernel_source": "trees/linux"}))
    assert cfg["guest.kernel_source"] == str(tree.resolve())
    assert os.path.isabs(cfg["guest.kernel_source"])
    assert load(guest_file(folder, {"kernel_source": str(tree)}))["guest.kernel_source"] == str(tree)


@pytest.mark.parametrize("files", [[], ["Makefile"], ["Kconfig"]])
def test_kernel_source_a_directory_without_makefile_and_kconfig_is_an_error(tmp_path, files):
    tree = tmp_path / "s" / "notlinux"
    tree.mkdir(parents=True)
    for name in files:
        (tree / name).write_text("")
    p = guest_file(tmp_path / "s", {"kernel_source": "notlinux"})
    err = load_error(p)
    assert err.key == "guest.kernel_source" and err.source == str(p)
    assert "guest.kernel_source" in str(err) and "'notlinux'" in str(err)
    assert "Makefile and Kconfig" in str(err) and "linux-source-X.Y" in str(err)


@pytest.mark.parametrize("value", ["missing", "linux-source-6", "linux-source-6.1.5", "linux-6.1", 3, ["linux"],
                                   "two\nlines"])
def test_kernel_source_what_is_neither_tree_nor_package_is_an_error(tmp_path, value):
    err = load_error(guest_file(tmp_path, {"kernel_source": value}))
    assert err.key == "guest.kernel_source"
    assert "linux-source-X.Y" in str(err)


def test_kernel_config_is_a_file_relative_to_the_config(tmp_path, elsewhere):
    folder = tmp_path / "s"
    kernel_tree(folder / "linux")
    (folder / "frag").mkdir()
    (folder / "frag" / "mine.config").write_text("CONFIG_X=y\n")
    cfg = load(guest_file(folder, {"kernel_source": "linux", "kernel_config": "frag/mine.config"}))
    assert Path(cfg["guest.kernel_config"]) == folder.resolve() / "frag" / "mine.config"
    err = load_error(guest_file(folder, {"kernel_source": "linux", "kernel_config": "frag/gone.config"}))
    assert err.key == "guest.kernel_config" and "gone.config" in str(err) and "does not exist" in str(err)


def patches_dir(folder: Path, names: list[str], series: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text(f"--- a/{name}\n+++ b/{name}\n")
    if series is not None:
        (folder / "series").write_text(series)
    return folder


def test_kernel_patches_a_directory_gives_its_patches_in_order(tmp_path, elsewhere):
    folder = tmp_path / "s"
    kernel_tree(folder / "linux")
    by_name = patches_dir(folder / "by-name", ["0002-b.patch", "0001-a.patch", "0003-c.diff", "README"])
    cfg = load(guest_file(folder, {"kernel_source": "linux", "kernel_patches": "by-name"}))
    assert cfg["guest.kernel_patches"] == [str(by_name.resolve() / n) for n in ("0001-a.patch", "0002-b.patch",
                                                                                "0003-c.diff")]
    quilt = patches_dir(folder / "quilt", ["x.patch", "y.patch", "z.patch"], series="# mine\nz.patch\nx.patch\n")
    cfg = load(guest_file(folder, {"kernel_source": "linux", "kernel_patches": "quilt"}))
    assert cfg["guest.kernel_patches"] == [str(quilt.resolve() / "z.patch"), str(quilt.resolve() / "x.patch")]


def test_kernel_patches_a_directory_without_patches_is_an_error(tmp_path):
    folder = tmp_path / "s"
    kernel_tree(folder / "linux")
    patches_dir(folder / "empty", ["README", "notes.txt"])
    err = load_error(guest_file(folder, {"kernel_source": "linux", "kernel_patches": "empty"}))
    assert err.key == "guest.kernel_patches" and "found none" in str(err) and str(folder / "empty") in str(err)
    err = load_error(guest_file(folder, {"kernel_source": "linux", "kernel_patches": "no-such-dir"}))
    assert err.key == "guest.kernel_patches" and "no-such-dir" in str(err)


def test_kernel_patches_a_series_naming_a_missing_patch_is_an_error(tmp_path):
    folder = tmp_path / "s"
    kernel_tree(folder / "linux")
    patches_dir(folder / "quilt", ["x.patch"], series="x.patch\nlost.patch\n")
    err = load_error(guest_file(folder, {"kernel_source": "linux", "kernel_patches": "quilt"}))
    assert err.key == "guest.kernel_patches" and "lost.patch" in str(err) and str(err).startswith(str(folder))


def test_kernel_patches_a_list_of_files_relative_to_the_config(tmp_path, elsewhere):
    folder = tmp_path / "s"
    kernel_tree(folder / "linux")
    patches_dir(folder / "p", ["b.patch", "a.patch"])
    absolute = patches_dir(tmp_path / "abs", ["c.patch"]) / "c.patch"
    cfg = load(guest_file(folder, {"kernel_source": "linux",
                                   "kernel_patches": ["p/b.patch", str(absolute), "p/a.patch"]}))
    assert cfg["guest.kernel_patches"] == [str(folder.resolve() / "p/b.patch"), str(absolute),
                                           str(folder.resolve() / "p/a.patch")]  # the list's order, not names'
    assert load(guest_file(folder, {"kernel_source": "linux", "kernel_patches": []}))["guest.kernel_patches"] == []


def test_kernel_patches_a_missing_file_is_named_by_its_index(tmp_path):
    folder = tmp_path / "s"
    kernel_tree(folder / "linux")
    patches_dir(folder / "p", ["a.patch"])
    err = load_error(guest_file(folder, {"kernel_source": "linux",
                                         "kernel_patches": ["p/a.patch", "p/gone.patch"]}))
    assert err.key == "guest.kernel_patches[1]" and "gone.patch" in str(err)
    assert "guest.kernel_patches[1]" in str(err)
    err = load_error(guest_file(folder, {"kernel_source": "linux", "kernel_patches": ["p"]}))  # a dir in the list
    assert err.key == "guest.kernel_patches[0]"


@pytest.mark.parametrize("value", [3, True, {"a": 1}, ["a.patch", 3], ["a.patch", ""]])
def test_kernel_patches_what_is_neither_directory_nor_list_is_an_error(tmp_path, value):
    folder = tmp_path / "s"
    kernel_tree(folder / "linux")
    patches_dir(folder, ["a.patch"])
    err = load_error(guest_file(folder, {"kernel_source": "linux", "kernel_patches": value}))
    assert err.key == "guest.kernel_patches" and "a directory or a list of patch files" in str(err)


def test_kernel_image_and_build_tree(tmp_path, elsewhere):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "bzImage").write_bytes(b"MZ")
    (folder / "build").mkdir()
    cfg = load(guest_file(folder, {"kernel_image": "bzImage", "kernel_build_tree": "build"}, frontend="legacy"))
    assert cfg["guest.kernel_image"] == str(folder.resolve() / "bzImage")
    assert cfg["guest.kernel_build_tree"] == str(folder.resolve() / "build")
    err = load_error(guest_file(folder, {"kernel_image": "vmlinux"}))
    assert err.key == "guest.kernel_image" and "does not exist" in str(err)
    err = load_error(guest_file(folder, {"kernel_image": "bzImage", "kernel_build_tree": "bzImage"}))
    assert err.key == "guest.kernel_build_tree" and "existing directory" in str(err)


def kernel_inputs(folder):
    """A kernel tree, an image, a fragment, a patch, a build tree and a module tree, as the configs name them."""
    kernel_tree(folder / "linux")
    (folder / "bzImage").write_bytes(b"MZ")
    (folder / "mine.config").write_text("CONFIG_X=y\n")
    (folder / "a.patch").write_text("--- a/x\n+++ b/x\n")
    (folder / "build").mkdir()
    (folder / "mod").mkdir()
    return folder


@pytest.mark.parametrize("guest, top, key, needle", [
    ({"kernel_source": "linux", "kernel_image": "bzImage"}, {}, "guest.kernel_image", "not both"),
    ({"kernel_config": "mine.config"}, {}, "guest.kernel_config", "guest.kernel_source too"),
    ({"kernel_patches": ["a.patch"]}, {}, "guest.kernel_patches", "guest.kernel_source too"),
    ({"kernel_image": "bzImage", "kernel_config": "mine.config"}, {}, "guest.kernel_config",
     "guest.kernel_source too"),
    ({"kernel_build_tree": "build"}, {}, "guest.kernel_build_tree", "guest.kernel_image too"),
    ({"kernel_source": "linux", "kernel_build_tree": "build"}, {}, "guest.kernel_build_tree",
     "guest.kernel_image too"),
    ({"kernel_image": "bzImage"}, {"frontend": "legacy"}, "guest.kernel_build_tree", "frontend 'legacy' is a module"),
    ({"kernel_image": "bzImage"}, {"frontend": "legacy-fixed"}, "guest.kernel_build_tree", "'legacy-fixed'"),
    ({"kernel_image": "bzImage"}, {"frontend": "module", "module": {"source": "mod", "name": "m"}},
     "guest.kernel_build_tree", "'module'"),
])
def test_where_the_guest_kernel_comes_from_is_checked(tmp_path, guest, top, key, needle):
    folder = kernel_inputs(tmp_path / "s")
    p = guest_file(folder, guest, **top)
    err = load_error(p)
    assert err.key == key and err.source == str(p), str(err)
    assert needle in str(err)


@pytest.mark.parametrize("guest, top", [
    ({"kernel_source": "linux", "kernel_config": "mine.config", "kernel_patches": ["a.patch"]},
     {"frontend": "legacy"}),
    ({"kernel_source": "linux-source-6.1", "kernel_patches": ["a.patch"]}, {}),
    ({"kernel_image": "bzImage"}, {}),  # upstream: no module to build against it
    ({"kernel_image": "bzImage", "kernel_build_tree": "build"}, {"frontend": "legacy-fixed"}),
])
def test_guest_kernel_combinations_that_are_fine(tmp_path, guest, top):
    folder = kernel_inputs(tmp_path / "s")
    cfg = load(guest_file(folder, guest, **top))
    for k in guest:
        assert cfg[f"guest.{k}"], k


# --- host.snapshot, host.share_dir, host.share_mount ----------------------------------------------------------------


def host_config(tmp_path: Path, host: dict) -> Path:
    """A scenario with the given host section, written by YAML itself (any string)."""
    (tmp_path / "test.sources").write_text("deb http://mirror.invalid/debian bookworm main\n")
    p = tmp_path / "scenario.yaml"
    p.write_text(yaml.safe_dump({"host": host, "apt": {"sources": "test.sources"}}))
    return p


def test_snapshot_is_on_by_default_and_takes_a_bool(tmp_path, sources):
    assert load(write_config(tmp_path, "rounds: 2\n"))["host.snapshot"] is True
    assert load(host_config(tmp_path, {"snapshot": False}))["host.snapshot"] is False


@pytest.mark.parametrize("value", [1, 0, "false", "no", None, [True]])
def test_snapshot_that_is_not_a_bool_is_an_error(tmp_path, value):
    p = host_config(tmp_path, {"snapshot": value})
    err = load_error(p)
    assert err.key == "host.snapshot" and "expected true or false" in str(err), str(err)


def test_share_dir_and_share_mount_together(tmp_path):
    (tmp_path / "share").mkdir()
    cfg = load(host_config(tmp_path, {"kind": "ssh", "address": "127.0.0.1", "share_dir": "share",
                                      "share_mount": "/run/xfb-share"}))
    assert cfg["host.share_dir"] == str(tmp_path / "share")  # relative to the config file
    assert cfg["host.share_mount"] == "/run/xfb-share"
    assert (defaults()["host"]["share_dir"], defaults()["host"]["share_mount"]) == ("", "")


@pytest.mark.parametrize("given, missing", [({"share_dir": "share"}, "host.share_mount"),
                                            ({"share_mount": "/run/xfb-share"}, "host.share_dir")])
def test_share_dir_and_share_mount_alone_are_an_error_naming_the_other(tmp_path, given, missing):
    (tmp_path / "share").mkdir()
    err = load_error(host_config(tmp_path, given))
    assert err.key == missing and "host.share_dir and host.share_mount together" in str(err), str(err)


@pytest.mark.parametrize("mount", ["run/xfb-share", "", "/run/a\"b", "/run/a\\b"])
def test_share_mount_xl_cannot_take_is_an_error(tmp_path, mount):
    (tmp_path / "share").mkdir()
    err = load_error(host_config(tmp_path, {"share_dir": "share", "share_mount": mount}))
    if mount:
        assert err.key == "host.share_mount" and "absolute path without quotes" in str(err), str(err)
    else:  # "" is no mount at all
        assert err.key == "host.share_mount" and "together" in str(err), str(err)


def test_share_mount_on_two_lines_is_an_error(tmp_path):
    (tmp_path / "share").mkdir()
    err = load_error(host_config(tmp_path, {"share_dir": "share", "share_mount": "/run/a\nb"}))
    assert err.key == "host.share_mount" and "single line" in str(err)


@pytest.mark.parametrize("make", [None, "file"], ids=["missing", "a-file"])
def test_share_dir_must_be_an_existing_directory(tmp_path, make):
    if make == "file":
        (tmp_path / "share").write_text("not a directory\n")
    err = load_error(host_config(tmp_path, {"share_dir": "share", "share_mount": "/run/xfb-share"}))
    assert err.key == "host.share_dir" and "expected an existing directory" in str(err)
    assert str(tmp_path / "share") in str(err)


def test_a_host_file_with_a_share_is_checked_as_the_host_file(tmp_path):
    """What `host up` writes: its share beside the address; a mistake in it is the host file's."""
    (tmp_path / "share").mkdir()
    scenario = write_config(tmp_path, "rounds: 3\n")
    host = tmp_path / "host.yaml"
    host.write_text(yaml.safe_dump({"host": {"kind": "ssh", "address": "127.0.0.1", "share_dir": "share",
                                             "share_mount": "/run/xfb-share"}}))
    cfg = load(scenario, host)
    assert (cfg["host.share_dir"], cfg["host.share_mount"]) == (str(tmp_path / "share"), "/run/xfb-share")
    host.write_text(yaml.safe_dump({"host": {"kind": "ssh", "address": "127.0.0.1", "share_dir": "share"}}))
    err = load_error(scenario, host)
    assert err.source == str(host) and err.key == "host.share_mount"
