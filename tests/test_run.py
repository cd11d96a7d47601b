"""harness/run.py's run_jobs: every job's payload is built before a host is opened, a job whose build failed gets
an ERROR result of its own and needs no host, and every job ends with a result.json. No host is ever booted here:
open_host is a stand-in that records its calls."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import yaml

from harness import config, run
from harness.artifacts.cache import Cache
from harness.result import ERROR, PASS, RoundResult
from harness.run import Job, run_jobs


def scenario(tmp_path: Path, name: str = "s.yaml", **data) -> config.Config:
    (tmp_path / "test.sources").write_text("deb http://mirror.invalid/debian bookworm main\n")
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"rounds": 2, "apt": {"sources": "test.sources"}, **data}))
    return config.load(path)


class FakeDom0:
    versions = {"xen": "4.17"}
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
        return f"payload of {log.parent.name}"
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
    monkeypatch.setattr(run, "build_payload", lambda cfg, cache, log: "payload")
    cfg = scenario(tmp_path)
    jobs = [Job(cfg, tmp_path / f"run-{i}") for i in range(2)]
    results = run_jobs(jobs, Cache(tmp_path / "cache"), tmp_path / "host")
    assert events == [("open_host",)]
    assert [r.error for r in results] == ["the host: ConnectionRefusedError: no dom0 there"] * 2
    for job in jobs:
        assert json.loads((job.run_dir / "result.json").read_text())["verdict"] == ERROR
    assert "no dom0 there" in (tmp_path / "host" / "error.txt").read_text()


def test_until_fail_stops_at_a_build_that_failed(tmp_path, monkeypatch, events):
    monkeypatch.setattr(run, "build_payload", lambda cfg, cache, log: (_ for _ in ()).throw(RuntimeError("no")))
    cfg = scenario(tmp_path)
    jobs = [Job(cfg, tmp_path / f"run-{i}") for i in range(3)]
    results = run_jobs(jobs, Cache(tmp_path / "cache"), tmp_path / "host", until_fail=True)
    assert [r.verdict for r in results] == [ERROR]
    assert events == []  # no host
