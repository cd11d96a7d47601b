"""pytest plugin: your own pytest tests run scenarios on a Xen host, each in a fresh guest.

    def test_my_frontend(xenfb_run):
        result = xenfb_run(frontend="legacy", writer__mode="sparse", rounds=3)
        assert result.verdict == "PASS", result.reason

Fixtures:
  xen_host   (session) the HostSession (xenfb_harness.run) every test's guests run on: --xenfb-config's host, or
             --xenfb-host's; a nested host boots (or is restored) at the first run and is shut down when the
             session ends, whatever happens
  xenfb_run  (function) xenfb_run(**overrides) -> xenfb_harness.result.Result, with `run_dir` (a Path) set on it.
             Overrides are config keys laid over --xenfb-config: `writer__mode="sparse"` or
             `**{"writer.mode": "sparse"}`. A bad key raises ConfigError; host settings belong to the session.
A test that uses either fixture is marked `xenfb`, so `-m "not xenfb"` leaves it out.

pytest loads this plugin in every run in an environment where the harness is installed, also in runs that have
nothing to do with it. So it imports nothing of the harness, boots nothing, installs no signal handler and creates
no directory until a test uses a fixture (labgrid's plugin broke unrelated runs: labgrid issue #1209).
"""
from __future__ import annotations

import itertools
import re
import signal
import threading
from pathlib import Path

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("xenfb", "xenfb-harness (fixtures xen_host, xenfb_run)")
    group.addoption("--xenfb-config", metavar="FILE", default=None,
                    help="base scenario YAML for xenfb_run, or a shipped scenario's name such as legacy-race "
                         "(`xenfb-harness configs` lists them; default: the shipped default)")
    group.addoption("--xenfb-host", metavar="FILE", default=None,
                    help="host config fragment with only a host: section, e.g. DIR/host.yaml of `xenfb-harness "
                         "host up`, or your dom0's host.kind: ssh settings (default: a nested host booted for the "
                         "session)")
    group.addoption("--xenfb-output", metavar="DIR", default=None,
                    help="where xenfb_run's run directories go (default: <pytest's basetemp>/xenfb)")
    group.addoption("--xenfb-accept-new-host-key", action="store_true", default=False,
                    help="ssh hosts: accept and remember an unknown host key, as `xenfb-harness run "
                         "--accept-new-host-key` (default: refused); a changed key is never accepted")


def pytest_configure(config):
    config.addinivalue_line("markers", "xenfb: the test needs a Xen host (added to every test that uses the "
                                       "xen_host or xenfb_run fixture)")


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items):
    for item in items:
        if "xen_host" in getattr(item, "fixturenames", ()):  # xenfb_run, and any fixture built on it, need it
            item.add_marker("xenfb")


def _paths(config, tmp_path_factory) -> tuple[Path, Path | None, Path]:
    """--xenfb-config (or the CLI's default), --xenfb-host, --xenfb-output; relative to where pytest was started,
    whatever a test's chdir did. --xenfb-config may also name a shipped scenario (ConfigError if none has the name)."""
    from xenfb_harness import resources
    from xenfb_harness.cli import DEFAULT_CONFIG
    where = Path(config.invocation_params.dir)
    given = {name: config.getoption(name) for name in ("xenfb_config", "xenfb_host", "xenfb_output")}
    name = given["xenfb_config"]
    base = (DEFAULT_CONFIG if not name else
            where / name if (where / name).is_file() or resources.is_path(name) else Path(resources.config_file(name)))
    host = where / given["xenfb_host"] if given["xenfb_host"] else None
    output = where / given["xenfb_output"] if given["xenfb_output"] else tmp_path_factory.getbasetemp() / "xenfb"
    return base, host, output


@pytest.fixture(scope="session")
def xen_host(pytestconfig, tmp_path_factory):
    from xenfb_harness import config, signals
    from xenfb_harness.artifacts.cache import Cache, default_cache_dir
    from xenfb_harness.run import HostSession
    try:
        base, host, output = _paths(pytestconfig, tmp_path_factory)
        cfg = config.load(base, host)
    except config.ConfigError as e:
        raise pytest.fail.Exception(f"xenfb-harness: bad config: {e}", pytrace=False) from None
    # The CLI's handlers, while the host is up: Ctrl-C and SIGTERM unwind into the host's cleanup instead of
    # tearing through a library call (signals.deferring) or, for SIGTERM, killing pytest with the host's session
    # left in dom0. Restored at the end; signal.signal works in the main thread only.
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    if main:
        signals.install()
    try:
        accept = pytestconfig.getoption("xenfb_accept_new_host_key")
        with HostSession(cfg, Cache(default_cache_dir()), output / "host", accept, cfg["guest.memory_mb"]) as session:
            yield session
    finally:
        for s, handler in previous.items():
            if handler is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(s, handler)


@pytest.fixture
def xenfb_run(xen_host, request, tmp_path_factory):
    """xenfb_run(**overrides) -> Result: one scenario in a fresh guest on the session's host. Its directory
    (result.json, junit.xml, images, logs) is result.run_dir: <output>/<test id>-<n>."""
    from xenfb_harness import config, signals
    from xenfb_harness.result import summary
    from xenfb_harness.run import Job, run_jobs
    base, host, output = _paths(request.config, tmp_path_factory)
    source = f"xenfb_run() in {request.node.nodeid}"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid).strip("_")[:120]
    numbers = itertools.count(1)

    def run(**overrides):
        __tracebackhide__ = True  # a ConfigError's traceback ends at the test's call, not in here or config.py
        try:
            values = config.nest({key.replace("__", "."): value for key, value in overrides.items()})
        except ValueError as e:  # e.g. writer="x" beside writer__kind="y"
            raise config.ConfigError(source, "", str(e)) from None
        if "host" in values:  # with --xenfb-host they would be replaced silently; without, one host serves all
            raise config.ConfigError(source, "host", "expected no host settings: the session's host "
                                     "(--xenfb-config, --xenfb-host) serves every test")
        try:
            cfg = config.load(base, host, config.Overrides(values, source, Path.cwd()))
        except config.ConfigError as e:
            raise e.with_traceback(None) from None
        for key, value in xen_host.cfg.data["apt"].items():  # run_jobs checks too, naming the base file, not the test
            if cfg.data["apt"][key] != value:
                raise config.ConfigError(source, f"apt.{key}", f"expected {value!r}, the session's (--xenfb-config): "
                                         "the host and its guests share one apt configuration")
        run_dir = output / f"{name}-{next(numbers)}"
        while run_dir.exists():  # an --xenfb-output used before
            run_dir = output / f"{name}-{next(numbers)}"
        # run_jobs turns anything that breaks, an interrupt too, into an ERROR result.
        [result] = run_jobs([Job(cfg, run_dir)], xen_host.cache, xen_host.host_dir, session=xen_host)
        if signals.received:  # stop the session (its teardown shuts the host down), not just this test
            raise KeyboardInterrupt(signals.received)
        result.run_dir = run_dir
        request.node.user_properties.append(("xenfb_run_dir", str(run_dir)))  # junitxml shows it
        print(summary(result, run_dir))  # pytest shows it when the test fails
        return result

    return run
