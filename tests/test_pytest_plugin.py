"""The pytest plugin (harness/pytest_plugin.py, installed as a pytest11 entry point): its options, its marker, its
errors, and that a pytest run that does not use its fixtures starts nothing. Nothing here boots a host."""
from __future__ import annotations

import signal

import pytest

import xenfb_harness.cli  # noqa: F401  pytester's inline runs put sys.modules back after each run, and numpy, which
import xenfb_harness.run  # noqa: F401  the fixtures import, cannot be imported twice in one process: import it first

pytest_plugins = ["pytester"]

SSH_HOST = "host:\n  kind: ssh\n  address: 127.0.0.1\n  port: 1\n"  # never reached: these tests fail before


def test_a_run_without_the_fixtures_starts_nothing(pytester, monkeypatch):
    monkeypatch.setenv("XENFB_HARNESS_CACHE", str(pytester.path / "cache"))
    pytester.makeconftest("""
        import sys
        def pytest_unconfigure(config):  # after every test and teardown: what the whole session imported
            with open("modules.txt", "w") as f:
                f.write(" ".join(sorted(m for m in sys.modules if m.split(".")[0] == "xenfb_harness")))
    """)
    pytester.makepyfile("""
        import signal
        def test_plain(request):
            assert request.config.pluginmanager.has_plugin("xenfb_harness")  # loaded, through its entry point
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    # The harness itself (config, hosts, QEMU) was never imported, so nothing of it can have started.
    assert (pytester.path / "modules.txt").read_text().split() == ["xenfb_harness", "xenfb_harness.pytest_plugin"]
    assert not (pytester.path / "cache").exists()
    assert not list(pytester.path.rglob("xenfb"))  # no output directory
    assert "[xenfb-harness]" not in result.stdout.str() + result.stderr.str()  # the harness says nothing


def test_a_project_with_its_own_harness_package_still_gets_the_plugin(pytester):
    """`python -m pytest` puts the current directory first on sys.path (runpytest_subprocess runs just that, in
    pytester's directory), so a user's own `harness` package there hides any other of that name. Our entry point
    names xenfb_harness.pytest_plugin, which it cannot hide: the plugin loads, its fixtures are known, and the
    user's `harness` is still theirs."""
    pytester.mkpydir("harness")
    pytester.path.joinpath("harness", "__init__.py").write_text("MINE = True\n")
    pytester.path.joinpath("harness", "pytest_plugin.py").write_text(  # what a plugin named harness.* would load
        "raise RuntimeError('the project\\'s own harness.pytest_plugin was loaded as the plugin')\n")
    pytester.makepyfile("""
        from pathlib import Path

        import harness

        def test_both(request):
            assert harness.MINE and Path(harness.__file__).parent == Path.cwd() / "harness"  # the project's own
            plugin = request.config.pluginmanager.get_plugin("xenfb_harness")  # loaded, through its entry point
            assert plugin is not None and plugin.__name__ == "xenfb_harness.pytest_plugin"
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    fixtures = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--fixtures")
    assert fixtures.ret == 0, fixtures.stderr.str()
    fixtures.stdout.fnmatch_lines(["*fixtures defined from xenfb_harness.pytest_plugin*", "xenfb_run -- *"])
    fixtures.stdout.fnmatch_lines(["xen_host [[]session scope[]] -- *"])


def test_options_are_in_help(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*xenfb-harness*", "*--xenfb-config=FILE*", "*--xenfb-host=FILE*",
                                 "*--xenfb-output=DIR*", "*--xenfb-accept-new-host-key*"])


def test_marker_is_registered_and_added_to_tests_that_need_a_host(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.fixture
        def my_run(xenfb_run):
            return xenfb_run

        def test_plain():
            pass

        @pytest.mark.xenfb
        def test_marked():
            pass

        def test_run(xenfb_run):
            raise AssertionError("deselected: never runs")

        def test_indirect(my_run):
            raise AssertionError("deselected: never runs")

        def test_host(xen_host):
            raise AssertionError("deselected: never runs")
    """)
    result = pytester.runpytest("--strict-markers", "-m", "not xenfb")
    result.assert_outcomes(passed=1, deselected=4)
    result = pytester.runpytest("--strict-markers", "-m", "xenfb", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*::test_marked", "*::test_run", "*::test_indirect", "*::test_host"])
    assert "test_plain" not in result.stdout.str()
    pytester.runpytest("--markers").stdout.fnmatch_lines(["@pytest.mark.xenfb: the test needs a Xen host*"])


@pytest.mark.parametrize("content, expected", [
    (None, "*bad config: *bad.yaml: (top level): config file does not exist*"),
    ("rounds: 0\n", "*bad config: *bad.yaml: rounds: expected *>= 1*"),
    ("writer:\n  colour: red\n", "*bad config: *bad.yaml: writer.colour: unknown key*"),
])
def test_a_bad_config_names_its_file_and_key(pytester, content, expected):
    if content is not None:
        pytester.makefile(".yaml", bad=content)
    pytester.makepyfile("""
        def test_one(xenfb_run):
            xenfb_run()

        def test_two(xenfb_run):
            xenfb_run()
    """)
    result = pytester.runpytest("--xenfb-config", "bad.yaml")
    result.assert_outcomes(errors=2)  # the session fixture's error, for each test that needs it
    result.stdout.fnmatch_lines([expected])
    assert "Traceback" not in result.stdout.str()


def test_a_bad_override_names_the_test_and_key(pytester, monkeypatch):
    monkeypatch.setenv("XENFB_HARNESS_CACHE", str(pytester.path / "cache"))
    pytester.makefile(".yaml", host=SSH_HOST)
    pytester.makepyfile("""
        import pytest
        from xenfb_harness.config import ConfigError

        def test_bad_value(xenfb_run):
            with pytest.raises(ConfigError, match=r"xenfb_run\\(\\) in .*::test_bad_value: writer.mode: expected"):
                xenfb_run(writer__mode="dense")

        def test_bad_dotted_key(xenfb_run):
            with pytest.raises(ConfigError, match="writer.colour: unknown key"):
                xenfb_run(**{"writer.colour": "red"})

        def test_host_settings(xenfb_run):
            with pytest.raises(ConfigError, match="host: expected no host settings"):
                xenfb_run(host__memory_mb=4096)

        def test_another_apt_suite(xenfb_run):  # one host, one apt suite for every test
            with pytest.raises(ConfigError, match="::test_another_apt_suite: apt.suite: expected 'bookworm'"):
                xenfb_run(apt__suite="trixie")
    """)
    result = pytester.runpytest("--xenfb-host", "host.yaml", "--xenfb-output", "runs")
    result.assert_outcomes(passed=4)
    assert not (pytester.path / "runs").exists()  # nothing was run


@pytest.fixture
def fake_host(pytester, monkeypatch) -> list:
    """run.py's host and scenario replaced by stand-ins that record what happens (as in test_run.py); a config
    with its own apt sources; the cache in pytester's directory."""
    import contextlib

    from xenfb_harness import run, signals
    from xenfb_harness.result import RoundResult
    seen: list = []

    @contextlib.contextmanager
    def open_host(cfg, cache, log_dir, accept_new_host_key, need_memory_mb):
        seen.append("open")
        yield type("Dom0", (), {"versions": {}, "packages": {}, "console_tail": lambda self: ""})()
        seen.append("close")

    def run_scenario(cfg, dom0, payload, run_dir, result):
        seen.append(f"scenario {run_dir.name}")
        if cfg["seed"] == 99:  # as if Ctrl-C came during the rounds (signals._handler, without a real signal)
            signals.received = "SIGINT"
            raise KeyboardInterrupt("SIGINT")
        result.rounds = [RoundResult(i, 100, 0) for i in range(cfg["rounds"] + 1)]
    monkeypatch.setattr(run, "open_host", open_host)
    monkeypatch.setattr(run, "run_scenario", run_scenario)
    monkeypatch.setattr(run, "build_payload", lambda cfg, cache, log: "payload")
    monkeypatch.setattr(signals, "received", None)  # the Ctrl-C below is remembered there: not for later tests
    monkeypatch.setenv("XENFB_HARNESS_CACHE", str(pytester.path / "cache"))
    pytester.makefile(".sources", test="deb http://mirror.invalid/debian bookworm main\n")
    pytester.makefile(".yaml", base="rounds: 2\napt:\n  sources: test.sources\n")
    return seen


def test_one_host_serves_the_session_and_closes_at_its_end(pytester, fake_host):
    pytester.makepyfile("""
        import signal
        from xenfb_harness import signals

        def test_two_runs(xenfb_run):
            assert signal.getsignal(signal.SIGTERM) is signals._handler  # the CLI's, while the host is up
            first, second = xenfb_run(), xenfb_run(rounds=4, writer__mode="sparse")
            assert (first.verdict, len(first.rounds), second.verdict, len(second.rounds)) == ("PASS", 3, "PASS", 5)
            assert first.run_dir.name.endswith("test_two_runs-1") and second.run_dir.name.endswith("-2")
            assert (second.run_dir / "result.json").is_file()

        def test_failing(xenfb_run):
            xenfb_run()
            assert False, "a failing test does not stop the host"

        def test_plain():
            pass
    """)
    result = pytester.runpytest("--xenfb-config", "base.yaml", "--xenfb-output", "runs")
    result.assert_outcomes(passed=2, failed=1)
    assert fake_host == ["open", "scenario test_one_host_serves_the_session_and_closes_at_its_end.py_test_two_runs-1",
                         "scenario test_one_host_serves_the_session_and_closes_at_its_end.py_test_two_runs-2",
                         "scenario test_one_host_serves_the_session_and_closes_at_its_end.py_test_failing-1",
                         "close"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # put back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_during_a_run_stops_the_session_and_the_host(pytester, fake_host):
    pytester.makepyfile("""
        def test_interrupted(xenfb_run):
            xenfb_run(seed=99)

        def test_never_started(xenfb_run):
            xenfb_run()
    """)
    reprec = pytester.inline_run("--xenfb-config", "base.yaml", no_reraise_ctrlc=True)
    assert reprec.ret == pytest.ExitCode.INTERRUPTED
    assert fake_host == ["open", "scenario test_ctrl_c_during_a_run_stops_the_session_and_the_host.py_"
                                 "test_interrupted-1", "close"]  # the second test never started
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
