"""harness/run.py's run_jobs: every job's payload is built before a host is opened, a job whose build failed gets
an ERROR result of its own and needs no host, and every job ends with a result.json. No host is ever booted here:
open_host is a stand-in that records its calls."""
from __future__ import annotations

import contextlib
import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from xenfb_harness import config, progress, run, signals
from xenfb_harness.artifacts.cache import Cache
from xenfb_harness.result import ERROR, FAIL, PASS, RoundResult
from xenfb_harness.run import Job, Repeat, run_jobs


def scenario(tmp_path: Path, name: str = "s.yaml", **data) -> config.Config:
    (tmp_path / "test.sources").write_text("deb http://mirror.invalid/debian bookworm main\n")
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"rounds": 2, "apt": {"sources": "test.sources"}, **data}))
    return config.load(path)


class FakePayload(str):
    """build_payload's stand-in: a name, and what a payload says it was built from."""
    versions = {"linux-image-6.1.0-57-amd64": "6.1.192-3", "guest_kernel": "6.1.0-57-amd64"}
    packages = {"linux-image-6.1.0-57-amd64": "6.1.192-3", "busybox-static": "1:1.35.0-4+b3"}


class FakeDom0:
    versions = {"xen": "4.17"}
    packages = {"xen-hypervisor-4.17-amd64": "4.17.7"}
    description = "a stand-in"

    def console_tail(self) -> str:
        return ""


@pytest.fixture
def events(monkeypatch) -> list:
    """What run_jobs asked for, in order: builds, the host's opening, scenarios."""
    seen: list = []

    @contextlib.contextmanager
    def open_host(cfg, cache, log_dir, accept_new_host_key, need_memory_mb):
        seen.append(("open_host", need_memory_mb))
        yield FakeDom0()
        seen.append(("close_host",))

    def run_scenario(cfg, dom0, payload, run_dir, result):
        seen.append(("scenario", run_dir.name, payload))
        result.rounds = [RoundResult(i, 100, 0) for i in range(cfg["rounds"] + 1)]
        return result
    monkeypatch.setattr(run, "open_host", open_host)
    monkeypatch.setattr(run, "run_scenario", run_scenario)
    monkeypatch.setattr(run, "build_host", lambda *a: pytest.fail("no host may be built"))
    return seen


def test_when_every_payload_fails_no_host_is_opened_and_every_job_has_an_error(tmp_path, monkeypatch, events):
    def build_payload(cfg, cache, log):
        events.append(("build", log.parent.name))
        raise RuntimeError("no kernel")
    monkeypatch.setattr(run, "build_payload", build_payload)
    cfg = scenario(tmp_path)
    jobs = [Job(cfg, tmp_path / "runs" / f"run-{i}") for i in range(3)]
    reported = []
    results = run_jobs(jobs, Cache(tmp_path / "cache"), tmp_path / "host",
                       on_result=lambda result, job: reported.append((result.verdict, job.run_dir.name)))
    assert events == [("build", "run-0")]  # one build for the one config, failed once; and no open_host
    assert len(results) == 3
    assert reported == [(ERROR, "run-0"), (ERROR, "run-1"), (ERROR, "run-2")]
    for job, result in zip(jobs, results):
        assert result.verdict == ERROR
        assert result.error == "the guest's artifacts: RuntimeError: no kernel"
        assert result.reason == result.error
        saved = json.loads((job.run_dir / "result.json").read_text())
        assert saved["verdict"] == ERROR and saved["exit_code"] == 2
        assert saved["error"].startswith("the guest's artifacts:")
        assert saved["config"] == cfg.source and "total" in saved["timings"]
        assert "RuntimeError: no kernel" in (job.run_dir / "error.txt").read_text()  # the traceback, or a pointer
        assert (job.run_dir / "junit.xml").is_file()
    assert not (tmp_path / "host").exists()  # nothing about a host: none was needed


def test_payloads_are_built_before_the_host_opens_and_a_failed_one_needs_none(tmp_path, monkeypatch, events):
    def build_payload(cfg, cache, log):
        events.append(("build", log.parent.name))
        if log.parent.name == "run-1":
            raise FileNotFoundError("patch 2 of 3 does not apply")
        return FakePayload(f"payload of {log.parent.name}")
    monkeypatch.setattr(run, "build_payload", build_payload)
    small, big = scenario(tmp_path, "a.yaml"), scenario(tmp_path, "b.yaml", guest={"memory_mb": 512})
    jobs = [Job(small, tmp_path / "run-0"), Job(big, tmp_path / "run-1"), Job(small, tmp_path / "run-2")]
    results = run_jobs(jobs, Cache(tmp_path / "cache"), tmp_path / "host")
    assert events == [("build", "run-0"), ("build", "run-1"), ("open_host", 512),  # run-2 shares run-0's config
                      ("scenario", "run-0", "payload of run-0"), ("scenario", "run-2", "payload of run-0"),
                      ("close_host",)]
    assert [r.verdict for r in results] == [PASS, ERROR, PASS]
    assert results[1].error == "the guest's artifacts: FileNotFoundError: patch 2 of 3 does not apply"
    for job, result in zip(jobs, results):
        assert json.loads((job.run_dir / "result.json").read_text())["verdict"] == result.verdict
    assert results[0].versions == {"xen": "4.17"}


def test_a_host_that_fails_to_open_gives_every_remaining_job_an_error(tmp_path, monkeypatch, events):
    @contextlib.contextmanager
    def open_host(*args):
        events.append(("open_host",))
        raise ConnectionRefusedError("no dom0 there")
        yield
    monkeypatch.setattr(run, "open_host", open_host)
    monkeypatch.setattr(run, "build_payload", lambda cfg, cache, log: FakePayload("payload"))
    cfg = scenario(tmp_path)
    jobs = [Job(cfg, tmp_path / f"run-{i}") for i in range(2)]
    results = run_jobs(jobs, Cache(tmp_path / "cache"), tmp_path / "host")
    assert events == [("open_host",)]
    assert [r.error for r in results] == ["the host: ConnectionRefusedError: no dom0 there"] * 2
    for job in jobs:
        saved = json.loads((job.run_dir / "result.json").read_text())
        assert saved["verdict"] == ERROR
        # The payload was built: the result still names what from.
        assert saved["versions"] == FakePayload.versions and saved["packages"] == {"guest": FakePayload.packages}
    assert "no dom0 there" in (tmp_path / "host" / "error.txt").read_text()


def test_until_fail_stops_at_a_build_that_failed(tmp_path, monkeypatch, events):
    monkeypatch.setattr(run, "build_payload", lambda cfg, cache, log: (_ for _ in ()).throw(RuntimeError("no")))
    cfg = scenario(tmp_path)
    jobs = [Job(cfg, tmp_path / f"run-{i}") for i in range(3)]
    results = run_jobs(jobs, Cache(tmp_path / "cache"), tmp_path / "host", repeat=Repeat(until_fail=True))
    assert [r.verdict for r in results] == [ERROR]
    assert events == []  # no host


# --- repeated runs (Repeat) -----------------------------------------------------------------------------------------


class Clock:
    """time.monotonic for xenfb_harness.run, moved on by the scenarios' stand-in only."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(run, "time", SimpleNamespace(monotonic=c))
    return c


def building(monkeypatch, events, broken: tuple = ()) -> None:
    """build_payload's stand-in: records ("build", job dir name) and a build step; fails for the names in `broken`."""
    def build_payload(cfg, cache, log):
        events.append(("build", log.parent.name))
        progress.record("guest payload", 3.0)
        if log.parent.name in broken:
            raise RuntimeError("patch 1 of 1 does not apply")
        return FakePayload("payload")
    monkeypatch.setattr(run, "build_payload", build_payload)


def scripted(monkeypatch, events, outcomes: dict | None = None, clock: Clock | None = None, run_s: float = 40.0):
    """run_scenario's stand-in for repeated runs: the n-th scenario started (1-based, over all jobs) PASSes unless
    outcomes[n] is FAIL (round 1 misses a page) or a callable, which is called (to raise). Each takes `run_s`
    seconds of rounds, on `clock` too when given."""
    calls = itertools.count(1)

    def run_scenario(cfg, dom0, payload, run_dir, result):
        n = next(calls)
        events.append(("scenario", f"{run_dir.parent.name}/{run_dir.name}"))
        if clock is not None:
            clock.now += run_s
        progress.record("rounds", run_s)
        outcome = (outcomes or {}).get(n, PASS)
        if callable(outcome):
            outcome()
        result.rounds = [RoundResult(i, 100, 5 if outcome == FAIL and i == 1 else 0,
                                     pages=[3] if outcome == FAIL and i == 1 else [], at_s=10.0 * i)
                         for i in range(cfg["rounds"] + 1)]
        return result
    monkeypatch.setattr(run, "run_scenario", run_scenario)


def raises(exc: BaseException):
    def fn():
        raise exc
    return fn


def scenarios(events) -> list[str]:
    return [e[1] for e in events if e[0] == "scenario"]


def saved_verdict(run_dir: Path) -> str:
    return json.loads((run_dir / "result.json").read_text())["verdict"]


def test_repeat_numbered_and_another(clock):
    assert not Repeat().numbered and not Repeat(until_fail=True).numbered
    assert Repeat(count=2).numbered and Repeat(count=None).numbered and Repeat(count=1, budget_s=60).numbered
    three = Repeat(count=3)
    assert three.another(0, None) and three.another(2, clock.now)
    assert not three.another(3, clock.now)
    budget = Repeat(count=None, budget_s=100)
    assert budget.another(0, None)
    clock.now = 1099.9
    assert budget.another(50, 1000.0)
    clock.now = 1100.0
    assert not budget.another(1, 1000.0)
    assert not Repeat(count=2, budget_s=100).another(2, clock.now)  # the count caps a budget
    assert not Repeat().another(1, clock.now)


def test_repeat_count_runs_one_build_in_numbered_run_dirs(tmp_path, monkeypatch, events):
    building(monkeypatch, events)
    scripted(monkeypatch, events)
    job = Job(scenario(tmp_path), tmp_path / "out")
    reported = []
    results = run_jobs([job], Cache(tmp_path / "cache"), tmp_path / "host", repeat=Repeat(count=3),
                       on_result=lambda result, own: reported.append((result.verdict, own.run_dir)))
    assert events[0] == ("build", "out") and events[1][0] == "open_host" and events[-1] == ("close_host",)
    assert [e[0] for e in events].count("build") == 1 and [e[0] for e in events].count("open_host") == 1
    assert scenarios(events) == ["out/run-001", "out/run-002", "out/run-003"]
    dirs = [job.run_dir / f"run-{k:03d}" for k in (1, 2, 3)]
    assert reported == [(PASS, d) for d in dirs]  # on_result gets the run's own job
    assert [r.verdict for r in results] == [PASS] * 3
    for d in dirs:
        assert saved_verdict(d) == PASS and (d / "junit.xml").is_file()
    assert not (job.run_dir / "result.json").exists() and not (job.run_dir / "run-004").exists()
    assert all(r.timings["rounds"] == 40.0 for r in results)
    assert results[0].timings["guest payload"] == 3.0  # the build belongs to the first run only
    assert all("guest payload" not in r.timings for r in results[1:])


def test_one_run_goes_to_the_job_dir_itself_unless_a_budget_numbers_it(tmp_path, monkeypatch, events, clock):
    building(monkeypatch, events)
    scripted(monkeypatch, events, clock=clock, run_s=40)
    cfg = scenario(tmp_path)
    once = Job(cfg, tmp_path / "once")
    assert [r.verdict for r in run_jobs([once], Cache(tmp_path / "cache"), tmp_path / "host")] == [PASS]
    assert saved_verdict(once.run_dir) == PASS and not (once.run_dir / "run-001").exists()
    budgeted = Job(cfg, tmp_path / "budgeted")
    results = run_jobs([budgeted], Cache(tmp_path / "cache"), tmp_path / "host",
                       repeat=Repeat(count=1, budget_s=3600))
    assert len(results) == 1 and saved_verdict(budgeted.run_dir / "run-001") == PASS
    assert [s.split("/")[-1] for s in scenarios(events)] == ["once", "run-001"]


def test_a_budget_stops_starting_runs_of_each_job(tmp_path, monkeypatch, events, clock):
    building(monkeypatch, events)
    scripted(monkeypatch, events, clock=clock, run_s=40)
    jobs = [Job(scenario(tmp_path, "a.yaml"), tmp_path / "a"), Job(scenario(tmp_path, "b.yaml"), tmp_path / "b")]
    results = run_jobs(jobs, Cache(tmp_path / "cache"), tmp_path / "host", repeat=Repeat(count=None, budget_s=100))
    # runs begin at 0, 40 and 80 s of each job's budget; at 120 s it is spent; each job has a budget of its own
    assert scenarios(events) == ["a/run-001", "a/run-002", "a/run-003", "b/run-001", "b/run-002", "b/run-003"]
    assert [r.verdict for r in results] == [PASS] * 6
    assert [r.timings["total"] for r in results] == [40.0] * 6
    assert not (tmp_path / "a" / "run-004").exists() and not (tmp_path / "b" / "run-004").exists()


def test_a_run_under_way_ends_past_the_budget(tmp_path, monkeypatch, events, clock):
    building(monkeypatch, events)
    scripted(monkeypatch, events, clock=clock, run_s=40)
    job = Job(scenario(tmp_path), tmp_path / "out")
    results = run_jobs([job], Cache(tmp_path / "cache"), tmp_path / "host", repeat=Repeat(count=None, budget_s=10))
    assert scenarios(events) == ["out/run-001"]
    assert [r.verdict for r in results] == [PASS] and results[0].timings["total"] == 40.0


def test_a_count_caps_a_budget(tmp_path, monkeypatch, events, clock):
    building(monkeypatch, events)
    scripted(monkeypatch, events, clock=clock, run_s=40)
    job = Job(scenario(tmp_path), tmp_path / "out")
    results = run_jobs([job], Cache(tmp_path / "cache"), tmp_path / "host", repeat=Repeat(count=2, budget_s=1000))
    assert scenarios(events) == ["out/run-001", "out/run-002"] and len(results) == 2


def test_until_fail_stops_after_the_first_fail(tmp_path, monkeypatch, events):
    building(monkeypatch, events)
    scripted(monkeypatch, events, outcomes={2: FAIL})
    jobs = [Job(scenario(tmp_path, "a.yaml"), tmp_path / "a"), Job(scenario(tmp_path, "b.yaml"), tmp_path / "b")]
    results = run_jobs(jobs, Cache(tmp_path / "cache"), tmp_path / "host", repeat=Repeat(count=5, until_fail=True))
    assert [r.verdict for r in results] == [PASS, FAIL]
    assert scenarios(events) == ["a/run-001", "a/run-002"]  # nothing more, of this job or the next
    assert events[-1] == ("close_host",)
    assert saved_verdict(tmp_path / "a" / "run-002") == FAIL
    assert not (tmp_path / "a" / "run-003").exists()
    assert not list((tmp_path / "b").rglob("result.json"))
    assert not (tmp_path / "host" / "error.txt").exists()


def test_until_fail_with_a_budget_runs_until_the_fail(tmp_path, monkeypatch, events, clock):
    building(monkeypatch, events)
    scripted(monkeypatch, events, outcomes={4: FAIL}, clock=clock, run_s=60)
    job = Job(scenario(tmp_path), tmp_path / "out")
    results = run_jobs([job], Cache(tmp_path / "cache"), tmp_path / "host",
                       repeat=Repeat(count=None, budget_s=3600, until_fail=True))
    assert [r.verdict for r in results] == [PASS, PASS, PASS, FAIL]
    assert scenarios(events)[-1] == "out/run-004" and not (job.run_dir / "run-005").exists()


def test_until_fail_stops_after_an_error_too(tmp_path, monkeypatch, events):
    building(monkeypatch, events)
    scripted(monkeypatch, events, outcomes={2: raises(RuntimeError("xl create: guest did not boot"))})
    job = Job(scenario(tmp_path), tmp_path / "out")
    results = run_jobs([job], Cache(tmp_path / "cache"), tmp_path / "host", repeat=Repeat(count=5, until_fail=True))
    assert [r.verdict for r in results] == [PASS, ERROR]
    assert results[1].error == "RuntimeError: xl create: guest did not boot"
    assert scenarios(events) == ["out/run-001", "out/run-002"]


def test_a_series_bounded_by_time_ends_after_errors_in_a_row(tmp_path, monkeypatch, events, clock):
    """A broken guest or host fails fast: a --duration series must not fill its budget with ERROR runs."""
    building(monkeypatch, events)
    boom = raises(RuntimeError("xl create: guest did not boot"))
    scripted(monkeypatch, events, outcomes={2: boom, 3: PASS, 4: boom, 5: boom, 6: boom}, clock=clock, run_s=1)
    jobs = [Job(scenario(tmp_path, "a.yaml"), tmp_path / "a"), Job(scenario(tmp_path, "b.yaml"), tmp_path / "b")]
    results = run_jobs(jobs, Cache(tmp_path / "cache"), tmp_path / "host", repeat=Repeat(count=None, budget_s=20))
    assert [r.verdict for r in results[:5]] == [PASS, ERROR, PASS, ERROR, ERROR]  # one ERROR alone does not stop
    assert scenarios(events)[:6] == ["a/run-001", "a/run-002", "a/run-003", "a/run-004", "a/run-005", "b/run-001"]
    # a count is what the user asked for: it still runs every time
    events.clear()
    scripted(monkeypatch, events, outcomes={n: boom for n in range(1, 5)})
    results = run_jobs(jobs[:1], Cache(tmp_path / "cache"), tmp_path / "host", repeat=Repeat(count=4))
    assert [r.verdict for r in results] == [ERROR] * 4


def test_a_failed_build_gets_one_error_and_is_not_repeated(tmp_path, monkeypatch, events):
    building(monkeypatch, events, broken=("a",))
    scripted(monkeypatch, events)
    jobs = [Job(scenario(tmp_path, "a.yaml"), tmp_path / "a"),
            Job(scenario(tmp_path, "b.yaml", seed=2), tmp_path / "b")]  # another config: a build of its own
    reported = []
    results = run_jobs(jobs, Cache(tmp_path / "cache"), tmp_path / "host", repeat=Repeat(count=3),
                       on_result=lambda result, own: reported.append(own.run_dir.relative_to(tmp_path).as_posix()))
    assert [e for e in events if e[0] == "build"] == [("build", "a"), ("build", "b")]
    assert [r.verdict for r in results] == [ERROR, PASS, PASS, PASS]
    assert results[0].error == "the guest's artifacts: RuntimeError: patch 1 of 1 does not apply"
    assert reported == ["a/run-001", "b/run-001", "b/run-002", "b/run-003"]
    assert scenarios(events) == ["b/run-001", "b/run-002", "b/run-003"]
    assert saved_verdict(tmp_path / "a" / "run-001") == ERROR
    assert not (tmp_path / "a" / "run-002").exists()


def test_a_host_that_breaks_mid_series_gives_the_run_under_way_and_the_jobs_not_begun_errors(
        tmp_path, monkeypatch, events):
    class GoneDom0(FakeDom0):
        def console_tail(self) -> str:  # the connection is dead: even the console's last lines cannot be read
            raise ConnectionResetError("ssh connection lost")

    @contextlib.contextmanager
    def open_host(*args):
        events.append(("open_host",))
        yield GoneDom0()
        events.append(("close_host",))
    monkeypatch.setattr(run, "open_host", open_host)
    building(monkeypatch, events)
    scripted(monkeypatch, events, outcomes={2: raises(OSError("xl: command not found"))})
    jobs = [Job(scenario(tmp_path, "a.yaml"), tmp_path / "a"), Job(scenario(tmp_path, "b.yaml"), tmp_path / "b"),
            Job(scenario(tmp_path, "c.yaml"), tmp_path / "c")]
    reported = []
    results = run_jobs(jobs, Cache(tmp_path / "cache"), tmp_path / "host", repeat=Repeat(count=3),
                       on_result=lambda result, own: reported.append(own.run_dir.relative_to(tmp_path).as_posix()))
    assert scenarios(events) == ["a/run-001", "a/run-002"]
    assert events[-1] == ("close_host",)
    assert reported == ["a/run-001", "a/run-002", "b/run-001", "c/run-001"]
    assert [r.verdict for r in results] == [PASS, ERROR, ERROR, ERROR]
    assert [r.error for r in results[1:]] == ["the host: ConnectionResetError: ssh connection lost"] * 3
    for d in ("a/run-002", "b/run-001", "c/run-001"):
        assert saved_verdict(tmp_path / d) == ERROR
    assert not (tmp_path / "a" / "run-003").exists() and not (tmp_path / "b" / "run-002").exists()
    assert "ssh connection lost" in (tmp_path / "host" / "error.txt").read_text()


def test_an_interrupt_mid_series_ends_the_run_and_gives_the_jobs_not_begun_errors(tmp_path, monkeypatch, events):
    monkeypatch.setattr(signals, "received", None)

    def interrupt():
        signals.received = "SIGINT"
        raise KeyboardInterrupt("SIGINT")
    building(monkeypatch, events)
    scripted(monkeypatch, events, outcomes={2: interrupt})
    jobs = [Job(scenario(tmp_path, "a.yaml"), tmp_path / "a"), Job(scenario(tmp_path, "b.yaml"), tmp_path / "b")]
    results = run_jobs(jobs, Cache(tmp_path / "cache"), tmp_path / "host", repeat=Repeat(count=3))
    assert scenarios(events) == ["a/run-001", "a/run-002"]
    assert [r.verdict for r in results] == [PASS, ERROR, ERROR]
    assert results[1].error == "interrupted by SIGINT; every process we started was stopped"
    assert results[2].error == "the host: interrupted by SIGINT; every process we started was stopped"
    assert saved_verdict(tmp_path / "a" / "run-002") == ERROR and saved_verdict(tmp_path / "b" / "run-001") == ERROR
    assert not (tmp_path / "a" / "run-003").exists()


def test_an_interrupt_during_the_builds_gives_every_job_an_error(tmp_path, monkeypatch, events):
    """Whatever breaks, every scenario gets a result.json (harness/run.py's docstring; the pytest plugin unpacks
    exactly one result). Ctrl-C while a guest kernel builds for minutes is the likeliest interrupt of all."""
    monkeypatch.setattr(signals, "received", None)

    def build_payload(cfg, cache, log):
        events.append(("build", log.parent.name))
        signals.received = "SIGINT"
        raise KeyboardInterrupt("SIGINT")
    monkeypatch.setattr(run, "build_payload", build_payload)
    jobs = [Job(scenario(tmp_path, "a.yaml"), tmp_path / "a"), Job(scenario(tmp_path, "b.yaml"), tmp_path / "b")]
    results = run_jobs(jobs, Cache(tmp_path / "cache"), tmp_path / "host")
    assert events == [("build", "a")]  # no host
    assert [r.verdict for r in results] == [ERROR, ERROR]
    assert all("interrupted by SIGINT" in r.error for r in results)
    assert saved_verdict(tmp_path / "a") == ERROR and saved_verdict(tmp_path / "b") == ERROR
