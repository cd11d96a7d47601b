"""The pytest plugin as a user runs it: their own test file, `pytest --xenfb-host host.yaml`, against the shared
nested host (no second stack boots). The default scenario must PASS; the legacy frontend with its race window
widened must FAIL (the positive control), both through xenfb_run()."""
from __future__ import annotations

import json

import pytest

from xenfb_harness.artifacts.cache import default_cache_dir

pytestmark = pytest.mark.e2e
pytest_plugins = ["pytester"]

CACHE = default_cache_dir()  # now: pytester points HOME at its own directory, where no cache is

USER_TESTS = """
ROUNDS = 3

def test_default_passes(xenfb_run):
    result = xenfb_run(rounds=ROUNDS)
    assert result.verdict == "PASS", result.reason
    assert len(result.rounds) == ROUNDS + 1
    assert (result.run_dir / "result.json").is_file()

def test_legacy_race_fails(xenfb_run):  # configs/legacy-race.yaml, as overrides
    result = xenfb_run(frontend="legacy", legacy__race_window_ms=300, rounds=ROUNDS,
                       **{"writer.mode": "sparse", "writer.pages": 8, "writer.touches": 1})
    assert result.verdict == "FAIL", result.reason
"""


def test_user_tests_run_on_the_shared_host(pytester, monkeypatch, shared_host):
    monkeypatch.setenv("XENFB_HARNESS_CACHE", str(CACHE))
    pytester.makepyfile(test_user=USER_TESTS)
    out = pytester.path / "runs"
    result = pytester.runpytest_subprocess("--xenfb-host", str(shared_host), "--xenfb-output", str(out),
                                           "-p", "no:cacheprovider", "-rA", timeout=1800)
    text = result.stdout.str() + result.stderr.str()
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 2 and set(outcomes) <= {"passed", "warnings"}, text[-5000:]
    # A run directory per call, named after the test's node id (which starts where pytest puts its rootdir).
    results = {d.name.split("test_user.py_")[-1]: json.loads((d / "result.json").read_text())
               for d in out.iterdir() if d.name != "host"}
    assert {name: r["verdict"] for name, r in results.items()} == {
        "test_default_passes-1": "PASS", "test_legacy_race_fails-1": "FAIL"}, text[-5000:]
    for r in results.values():  # on the shared host, reached over SSH: no nested host of its own
        assert r["effective_config"]["host"]["kind"] == "ssh"
        assert r["effective_config"]["rounds"] == 3
