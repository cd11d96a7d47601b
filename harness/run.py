"""Scenarios on one host: config -> artifacts -> host (given, or nested and booted here) -> a fresh guest per
scenario and repeat -> result -> reports.

A host serves many guests: every scenario of one `xenfb-harness run` runs on the same host, one after another,
each in a guest of its own. Whatever breaks, every scenario gets a result.json with a verdict.
"""
from __future__ import annotations

import contextlib
import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import signals
from .artifacts.cache import Cache
from .artifacts.host import build_host
from .artifacts.payload import Payload, build_payload
from .config import Config, ConfigError
from .hosts import connect_ssh
from .hosts.dom0 import Dom0
from .hosts.nested import NestedHost, qemu_version
from .progress import Timings, say
from .result import ERROR, Result, write
from .scenario import built_from, new_result, run_scenario


@dataclass(frozen=True)
class Job:
    cfg: Config
    run_dir: Path


HOST_BROKE = "the host: "  # how a result the host's failure kept from running begins its error
ERRORS_IN_A_ROW = 2  # a series bounded only by time ends after this many: the host or the guest is broken


def error_text(exc: BaseException) -> str:
    if signals.received:
        return f"interrupted by {signals.received}; every process we started was stopped"
    return f"{type(exc).__name__}: {exc}"


def check_one_host(cfgs: list[Config]) -> None:
    """All scenarios must agree on their host settings: one host serves them all."""
    first = cfgs[0]
    for cfg in cfgs[1:]:
        for section in ("host", "apt"):
            for key, value in first.data[section].items():
                if cfg.data[section][key] != value:
                    raise ConfigError(cfg.source, f"{section}.{key}", f"expected {value!r} as in {first.source}: "
                                      f"scenarios of one run share one host (or pass --host)")


@contextlib.contextmanager
def open_host(cfg: Config, cache: Cache, log_dir: Path, accept_new_host_key: bool, need_memory_mb: int
              ) -> Iterator[Dom0]:
    """The host every scenario of the run uses, connected and checked; closed (and our traces in it removed,
    and a nested one shut down) whatever happens."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if cfg["host.kind"] == "ssh":
            say(f"connecting to {cfg['host.user']}@{cfg['host.address']}:{cfg['host.port']}")
            dom0 = stack.enter_context(connect_ssh(cfg.data["host"], accept_new_host_key))
        else:
            artifacts = build_host(cfg, cache, log_dir / "build.log")
            nested = stack.enter_context(NestedHost(cfg.data["host"], artifacts, log_dir, cache))
            dom0 = stack.enter_context(nested.dom0())
            dom0.versions.update(artifacts.versions, qemu_outer=qemu_version(), host_start=nested.started_by)
            dom0.packages = artifacts.packages
        dom0.open(need_memory_mb)
        yield dom0


class HostSession:
    """One host for many jobs: opened when the first job needs it (never, if every job's payload failed to
    build), closed (and a nested one shut down) when the session ends, whatever happens."""

    def __init__(self, cfg: Config, cache: Cache, host_dir: Path, accept_new_host_key: bool, need_memory_mb: int):
        self.cfg, self.cache, self.host_dir = cfg, cache, host_dir
        self.accept_new_host_key, self.need_memory_mb = accept_new_host_key, need_memory_mb
        self.timings = Timings()  # the host's own steps, until the next job's result takes them
        self._stack = contextlib.ExitStack()
        self._dom0: Dom0 | None = None

    def __enter__(self) -> "HostSession":
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def dom0(self) -> Dom0:
        if self._dom0 is None:
            with self.timings.collecting():
                self._dom0 = self._stack.enter_context(open_host(
                    self.cfg, self.cache, self.host_dir, self.accept_new_host_key, self.need_memory_mb))
        return self._dom0


@dataclass(frozen=True)
class Repeat:
    """How often each job runs: `count` times (None: no limit), and no new run of a job starts once `budget_s`
    seconds have passed since its first run began (None: no limit); a run that has begun always ends. `until_fail`:
    nothing more starts after a run that did not PASS. The runs of a job that may run more than once go to its
    run_dir/run-NNN."""
    count: int | None = 1
    budget_s: float | None = None
    until_fail: bool = False

    @property
    def numbered(self) -> bool:
        return self.count != 1 or self.budget_s is not None

    def another(self, runs: int, began: float | None) -> bool:
        """Whether a job that has had `runs` runs, the first begun at `began` (monotonic), gets another."""
        if self.count is not None and runs >= self.count:
            return False
        return began is None or self.budget_s is None or time.monotonic() - began < self.budget_s


def run_jobs(jobs: list[Job], cache: Cache, host_dir: Path, accept_new_host_key: bool = False,
             repeat: Repeat = Repeat(), on_result=None, session: HostSession | None = None) -> list[Result]:
    """Each job runs as `repeat` says, each run a fresh guest on one shared host (the session's, else one for these
    jobs). Every job's payload is built first, before any host boots (a guest kernel built from source takes
    minutes; a nested host would idle meanwhile, and a job whose build failed needs no host; it gets one ERROR
    result). Returns a result per run started (and an ERROR for the run a broken host stopped and for each job it
    kept from starting); `on_result(result, job)` is called as each one ends, `job` being the run's own."""
    check_one_host([j.cfg for j in jobs] + ([session.cfg] if session else []))
    results: list[Result] = []
    started = time.monotonic()
    current: Job | None = None  # the run under way
    waiting = list(jobs)  # the jobs not begun: with the run under way, what a broken host leaves without a result

    def done(result: Result, job: Job, steps: dict, built_in: float = 0.0) -> None:
        """`built_in`: the seconds this job's payload took, built before the jobs began: part of its total."""
        nonlocal started, current
        result.timings = dict(steps, total=round(time.monotonic() - started + built_in, 3))
        started = time.monotonic()
        result.decide()
        write(result, job.run_dir)
        results.append(result)
        current = None  # it has its result, whatever happens next
        if on_result:
            on_result(result, job)

    def run_dir(job: Job, k: int) -> Job:
        if not repeat.numbered:
            return job
        own = Job(job.cfg, job.run_dir / f"run-{k + 1:03d}")
        own.run_dir.mkdir(parents=True, exist_ok=True)
        return own

    payloads: dict[int, Payload] = {}  # each built job's payload, by its config
    with contextlib.ExitStack() as own:
        if session is None:
            need = max(j.cfg["guest.memory_mb"] for j in jobs)
            session = own.enter_context(HostSession(jobs[0].cfg, cache, host_dir, accept_new_host_key, need))
        try:
            prepared = _prepare_all(jobs, cache)
            payloads = {id(job.cfg): p[0] for job, p in zip(jobs, prepared) if p[0] is not None}
            started = time.monotonic()
            for job, (payload, build_steps, took, broken) in zip(jobs, prepared):
                began, k, errors = None, 0, 0
                while repeat.another(k, began):
                    this = current = run_dir(job, k)
                    k += 1
                    if waiting and waiting[0] is job:
                        waiting.pop(0)
                    if broken is not None:
                        result = new_result(job.cfg)
                        result.error = broken
                        done(result, this, build_steps, took)
                        if repeat.until_fail:
                            return results
                        break  # the same build would fail again
                    dom0 = session.dom0()
                    began = time.monotonic() if began is None else began  # the budget starts once the host is up
                    result, steps = _one(this, payload, dom0)
                    done(result, this, {**session.timings, **build_steps, **steps}, took)
                    session.timings.clear()
                    build_steps, took = {}, 0.0  # the build belongs to the job's first run
                    if signals.received:
                        raise KeyboardInterrupt(signals.received)  # the remaining jobs are not started
                    if repeat.until_fail and result.verdict != "PASS":
                        return results
                    errors = errors + 1 if result.verdict == ERROR else 0
                    if errors == ERRORS_IN_A_ROW and repeat.count is None:
                        say(f"{ERRORS_IN_A_ROW} ERROR runs in a row: no more runs of {job.cfg.source}")
                        break
        except (KeyboardInterrupt, Exception) as e:  # the host broke, or we were stopped
            host_dir.mkdir(parents=True, exist_ok=True)
            (host_dir / "error.txt").write_text(traceback.format_exc())
            if not (repeat.until_fail and results and results[-1].verdict != "PASS"):
                for job in ([current] if current else []) + [run_dir(j, 0) for j in waiting]:
                    result = new_result(job.cfg)
                    result.error = f"{HOST_BROKE}{error_text(e)}"
                    if id(job.cfg) in payloads:  # built: the result still says what from
                        built_from(result, payloads[id(job.cfg)])
                    job.run_dir.mkdir(parents=True, exist_ok=True)
                    done(result, job, dict(session.timings))
    return results


def _prepare_all(jobs: list[Job], cache: Cache) -> list[tuple[Payload | None, dict, float, str | None]]:
    """Each job's payload, its build steps and seconds; or, for a build that failed (a patch that does not apply,
    a kernel that does not compile, a package apt does not have), the error its ERROR result gets. Jobs with the
    same config (a bisect step's runs) share one build, failed or not: a failure is not cached, and
    building it again would fail again."""
    built: dict[str, tuple[Payload | None, dict, float, str | None]] = {}
    out = []
    for job in jobs:
        key = json.dumps(job.cfg.data, sort_keys=True)
        job.run_dir.mkdir(parents=True, exist_ok=True)
        if key not in built:
            built[key] = _prepare(job, cache)
            out.append(built[key])
            continue
        payload, _, _, broken = built[key]
        if broken is not None:
            (job.run_dir / "error.txt").write_text(f"the same config's build failed: {broken}\n")
        out.append((payload, {}, 0.0, broken))  # built (or failed) once, for the first job
    return out


def _prepare(job: Job, cache: Cache) -> tuple[Payload | None, dict, float, str | None]:
    timings = Timings()
    start = time.monotonic()
    try:
        with timings.collecting():
            payload = build_payload(job.cfg, cache, job.run_dir / "build.log")
        return payload, dict(timings), time.monotonic() - start, None
    except Exception as e:
        (job.run_dir / "error.txt").write_text(traceback.format_exc())
        return None, dict(timings), time.monotonic() - start, f"the guest's artifacts: {error_text(e)}"


def _one(job: Job, payload: Payload, dom0: Dom0) -> tuple[Result, dict]:
    result = new_result(job.cfg)
    result.versions = dict(dom0.versions)
    result.packages["host"] = dict(dom0.packages)
    timings = Timings()
    try:
        with timings.collecting():
            run_scenario(job.cfg, dom0, payload, job.run_dir, result)
    except (KeyboardInterrupt, Exception) as e:  # the guest, the stack or the harness broke, or we were stopped
        (job.run_dir / "error.txt").write_text(traceback.format_exc())
        result.error = error_text(e)
        tail = dom0.console_tail()
        if tail and not signals.received:
            result.error += f"\n--- last host console lines ---\n{tail}"
    return result, dict(timings)
