"""harness/hosts/accel.py and nested.choose_accel: the KVM probe's answer is kept in the artifact cache, keyed by what
decides it, and a run with the answer cached boots nothing to find it. No QEMU: answers are planted in the cache
as a probe would leave them, and a probe that is not to run fails the test if called."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from xenfb_harness.artifacts.cache import Cache, hash_files, key_of
from xenfb_harness.hosts import nested
from xenfb_harness.hosts.accel import ANSWER, ENTRY, NO_KVM, inputs_here, kvm_answer, probe_inputs
from xenfb_harness.hosts.base import HostError

CPUINFO = ("processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2994.372\nflags\t\t: fpu vme de pse hypervisor\n\n"
           "processor\t: 1\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2994.372\nflags\t\t: fpu vme de pse hypervisor\n")
FACTS = {"xen": "0123456789abcdef", "qemu": "QEMU emulator version 7.2.22", "kernel": "6.18.44-fc-v1300",
         "cpuinfo": CPUINFO, "kvm": True}


def not_run() -> tuple[bool, str]:
    pytest.fail("the probe ran, though its answer was cached")


def plant(cache: Cache, inputs: dict, ok: bool, why: str, age_s: float = 180) -> Path:
    """An answer as a probe left it, age_s ago."""
    with cache.saving(ENTRY, inputs) as tmp:
        (tmp / ANSWER).write_text(json.dumps({"ok": ok, "why": why, "probed_at": time.time() - age_s}))
    return cache.path(ENTRY, inputs)


class Probe:
    """A probe that counts its calls and answers as told."""

    def __init__(self, ok: bool = False, why: str = "Xen did not boot under KVM (KVM internal error)"):
        self.calls, self.answer = 0, (ok, why)

    def __call__(self) -> tuple[bool, str]:
        self.calls += 1
        return self.answer


# -- the key ----------------------------------------------------------------------------------------------------
def test_key_is_made_of_the_first_cpus_model_and_flags():
    inputs = probe_inputs(**FACTS)
    assert inputs["cpu"] == "AMD EPYC" and len(inputs["cpu_flags"]) == 16
    assert {k: v for k, v in inputs.items() if k not in ("cpu", "cpu_flags")} == {
        k: v for k, v in FACTS.items() if k != "cpuinfo"}


SECOND_CPU_DIFFERS = CPUINFO.rsplit("flags", 1)[0] + "flags\t\t: fpu\n"


@pytest.mark.parametrize("cpuinfo", [CPUINFO.replace("2994.372", "1500.000"), SECOND_CPU_DIFFERS])
def test_key_ignores_the_clock_and_other_cpus(cpuinfo):
    assert probe_inputs(**{**FACTS, "cpuinfo": cpuinfo}) == probe_inputs(**FACTS)


CHANGES = {"xen": "fedcba9876543210", "qemu": "QEMU emulator version 8.0.0", "kernel": "6.1.0-28-amd64",
           "cpu model": CPUINFO.replace("AMD EPYC", "Intel(R) Xeon(R)", 1),
           "cpu flags": CPUINFO.replace("hypervisor", "vmx hypervisor", 1), "kvm": False}


def changed(part: str) -> dict:
    """probe_inputs of FACTS with one part changed."""
    return probe_inputs(**{**FACTS, "cpuinfo" if part.startswith("cpu") else part: CHANGES[part]})


@pytest.mark.parametrize("part", CHANGES)
def test_each_part_changes_the_key(part):
    assert key_of(changed(part)) != key_of(probe_inputs(**FACTS))


# -- the cached answer ---------------------------------------------------------------------------------------------
def test_a_cached_answer_is_used_without_probing(tmp_path):
    cache = Cache(tmp_path)
    entry = plant(cache, probe_inputs(**FACTS), False, "Xen did not boot under KVM (KVM internal error)")
    ok, why = kvm_answer(cache, probe_inputs(**FACTS), not_run)
    assert not ok
    assert why == f"Xen did not boot under KVM (KVM internal error) (probed 3 min ago, cached in {entry.name})"
    assert entry in cache.used  # `cache prune` after this run would keep it


@pytest.mark.parametrize("part", CHANGES)
def test_a_cached_answer_is_not_used_once_its_key_changes(tmp_path, part):
    """Another Xen, QEMU, kernel, CPU model or flags, or /dev/kvm gone or back: probe again, and keep both."""
    cache = Cache(tmp_path)
    before, after = probe_inputs(**FACTS), changed(part)
    plant(cache, before, True, "Xen reached dom0 construction under KVM")
    probe = Probe()
    ok, why = kvm_answer(cache, after, probe)
    assert not ok and probe.calls == (1 if after["kvm"] else 0)  # no /dev/kvm: the answer needs no probe
    assert why.startswith((probe.answer if after["kvm"] else NO_KVM)[1] + " (probed now in ")
    assert kvm_answer(cache, after, not_run)[0] is False  # the new answer is cached in turn
    assert kvm_answer(cache, before, not_run)[0] is True  # and the old one is still there for its own key


def test_a_dev_kvm_that_appears_is_probed(tmp_path):
    cache = Cache(tmp_path)
    plant(cache, probe_inputs(**{**FACTS, "kvm": False}), *NO_KVM)
    probe = Probe(True, "Xen reached dom0 construction under KVM")
    assert kvm_answer(cache, probe_inputs(**FACTS), probe)[0] is True and probe.calls == 1


def test_a_new_answer_is_probed_once_and_cached(tmp_path):
    cache = Cache(tmp_path)
    probe = Probe(True, "Xen reached dom0 construction under KVM")
    ok, why = kvm_answer(cache, probe_inputs(**FACTS), probe)
    name = cache.path(ENTRY, probe_inputs(**FACTS)).name
    assert ok and why.startswith("Xen reached dom0 construction under KVM (probed now in ") and why.endswith(
        f" s, cached in {name})")
    assert kvm_answer(cache, probe_inputs(**FACTS), not_run) == (True, "Xen reached dom0 construction under KVM "
                                                                       f"(probed <1 min ago, cached in {name})")
    assert probe.calls == 1
    assert json.loads((tmp_path / name / "inputs.json").read_text()) == probe_inputs(**FACTS)


def test_without_a_cache_the_probe_runs_each_time():
    probe = Probe()
    assert kvm_answer(None, probe_inputs(**FACTS), probe) == probe.answer
    assert kvm_answer(None, probe_inputs(**FACTS), probe) == probe.answer
    assert probe.calls == 2


def test_without_dev_kvm_nothing_is_probed():
    assert kvm_answer(None, probe_inputs(**{**FACTS, "kvm": False}), not_run) == NO_KVM


def test_an_unreadable_answer_is_dropped_and_probed_again(tmp_path, capsys):
    cache = Cache(tmp_path)
    entry = plant(cache, probe_inputs(**FACTS), True, "")
    (entry / ANSWER).write_text("{truncated")
    probe = Probe()
    assert kvm_answer(cache, probe_inputs(**FACTS), probe)[0] is False and probe.calls == 1
    assert f"{entry.name} is unreadable" in capsys.readouterr().err
    assert json.loads((entry / ANSWER).read_text())["why"] == probe.answer[1]


# -- choose_accel: what a nested host uses ---------------------------------------------------------------------------
@pytest.fixture
def xen(tmp_path) -> Path:
    path = tmp_path / "xen-0123456789abcdef" / "xen"
    path.parent.mkdir()
    path.write_bytes(b"not really Xen\n")
    return path


@pytest.fixture
def no_probe(monkeypatch):
    monkeypatch.setattr(nested, "_kvm_runs_xen", lambda *a: not_run())


def test_inputs_here_are_this_machines(xen):
    inputs = inputs_here(xen, nested.qemu_version())
    assert inputs["xen"] == hash_files(xen) and inputs["qemu"] == nested.qemu_version()
    assert inputs == probe_inputs(hash_files(xen), nested.qemu_version(), inputs["kernel"],
                                  Path("/proc/cpuinfo").read_text(), inputs["kvm"])


def test_tcg_in_config_asks_nothing(tmp_path, xen, no_probe):
    cache = Cache(tmp_path / "cache")
    assert nested.choose_accel("tcg", xen, tmp_path, cache) == ("tcg", "TCG (set in config)")
    assert not cache.entries()


@pytest.mark.parametrize("wanted", ["auto", "kvm"])
def test_a_cached_yes_gives_kvm(tmp_path, xen, no_probe, wanted):
    cache = Cache(tmp_path / "cache")
    inputs = inputs_here(xen, nested.qemu_version())
    entry = plant(cache, inputs, True, "Xen reached dom0 construction under KVM")
    assert nested.choose_accel(wanted, xen, tmp_path, cache) == (
        "kvm", f"KVM, because Xen reached dom0 construction under KVM (probed 3 min ago, cached in {entry.name})")


def test_a_cached_no_gives_tcg_or_the_error_for_kvm(tmp_path, xen, no_probe):
    cache = Cache(tmp_path / "cache")
    entry = plant(cache, inputs_here(xen, nested.qemu_version()), False, "Xen did not boot under KVM (KVM internal "
                                                                         "error. Suberror: 1)")
    said = f"Xen did not boot under KVM (KVM internal error. Suberror: 1) (probed 3 min ago, cached in {entry.name})"
    assert nested.choose_accel("auto", xen, tmp_path, cache) == ("tcg", f"TCG, because {said}")
    with pytest.raises(HostError, match=r"host.accel is 'kvm' but KVM cannot run Xen here: .*cached in kvm-probe-"):
        nested.choose_accel("kvm", xen, tmp_path, cache)


def test_another_xen_is_probed_again(tmp_path, xen, monkeypatch):
    cache = Cache(tmp_path / "cache")
    plant(cache, inputs_here(xen, nested.qemu_version()), True, "Xen reached dom0 construction under KVM")
    xen.write_bytes(b"another Xen\n")
    probed = []
    monkeypatch.setattr(nested, "_kvm_runs_xen", lambda x, w: probed.append(x) or (False, "Xen did not boot"))
    assert nested.choose_accel("auto", xen, tmp_path, cache)[0] == "tcg"
    # where /dev/kvm is usable, the new Xen is probed; where it is not, nothing need be
    assert probed == ([xen] if inputs_here(xen, nested.qemu_version())["kvm"] else [])
