"""A nested host started with `host up` driven as a real Xen host is: `host.kind: ssh` through its host.yaml.
One host serves many guests; whatever stops a run (Ctrl-C, a dropped SSH connection, SIGKILL), no domain and no
file of ours stays in dom0."""
from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import pytest

from .conftest import ROOT, dom0_sh, domains, harness_cmd

pytestmark = pytest.mark.e2e


def ours_in_dom0(host_yaml) -> str:
    return dom0_sh(host_yaml, "ls -d /tmp/xfb-harness-* 2>/dev/null").strip()


def assert_host_clean(host_yaml, within: float = 30) -> None:
    """Only Domain-0, and no directory of ours, within `within` seconds (a guard may still be cleaning)."""
    deadline = time.monotonic() + within
    while (domains(host_yaml) != ["Domain-0"] or ours_in_dom0(host_yaml)) and time.monotonic() < deadline:
        time.sleep(1)
    assert domains(host_yaml) == ["Domain-0"]
    assert ours_in_dom0(host_yaml) == "", "a file of ours stayed in dom0"


def test_default_passes_and_legacy_race_fails_on_one_host(host_pair, shared_host):
    default, legacy = host_pair
    assert default.rc == 1, default.stderr[-3000:]  # the worst verdict of the two
    a, b = default.result, legacy.result
    assert (a["verdict"], b["verdict"]) == ("PASS", "FAIL"), (a["reason"], b["reason"])
    assert a["host"].startswith("ssh: root@127.0.0.1") and a["host"] == b["host"]
    # Two guests, one host session: the same unique prefix, different domains.
    assert a["guest"]["name"] != b["guest"]["name"]
    assert a["guest"]["name"].rsplit("-", 1)[0] == b["guest"]["name"].rsplit("-", 1)[0]
    assert a["guest"]["payload"] != b["guest"]["payload"], "legacy's payload holds its module"
    assert "boot Xen and dom0" not in a["timings"], "the host was up already"
    assert_host_clean(shared_host, within=0)


def test_exec_never_lets_a_value_into_the_shell(shared_host):
    """The quoting that every config value goes through, against dom0's real shell and sshd."""
    from xenfb_harness import config
    from xenfb_harness.hosts import connect_ssh
    evil = ["$(touch /tmp/PWNED)", "`touch /tmp/PWNED`", "a; touch /tmp/PWNED", "x && touch /tmp/PWNED",
            "'", '"', "*", "-n", "two words", "|", "\\"]
    dom0 = connect_ssh(config.load(None, shared_host).data["host"])
    try:
        out = dom0.exec(["printf", "%s\\0", *evil]).stdout
        assert out.split("\0")[:-1] == evil
        assert dom0.exec(["test", "-e", "/tmp/PWNED"], check=False).rc != 0
    finally:
        dom0.ssh.close()


def start_run(tmp_path, host_yaml):
    """A run with enough rounds (about 0.5 s each) that an interrupt surely lands inside them."""
    out, config = tmp_path / "run", tmp_path / "long.yaml"
    config.write_text("frontend: upstream\nrounds: 200\n")  # the default scenario, longer
    proc = subprocess.Popen(harness_cmd("run", str(config), "--host", str(host_yaml), "--output", str(out)), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []

    def read():
        for line in proc.stderr:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return proc, out, lines


def wait_for(lines: list[str], marker: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not any(marker in line for line in lines):
        assert time.monotonic() < deadline, f"never saw {marker!r}:\n{''.join(lines[-30:])}"
        time.sleep(0.2)
    time.sleep(1.5)  # well inside the step, not at its edge


def session_root(lines: list[str]) -> str:
    """Our session directory in dom0, from the guest's name the run printed."""
    name = next(line.split("guest ", 1)[1].split(":")[0] for line in lines if "] guest xfb-harness-" in line)
    return "/tmp/" + name.rsplit("-", 1)[0]


@pytest.mark.parametrize("marker", ["start guest ...", "round 2:"], ids=["during-guest-boot", "during-rounds"])
def test_ctrl_c_leaves_no_domain(shared_host, tmp_path, marker):
    assert domains(shared_host) == ["Domain-0"]
    proc, out, lines = start_run(tmp_path, shared_host)
    try:
        wait_for(lines, marker)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 2, "".join(lines[-30:])
    finally:
        if proc.poll() is None:
            proc.kill()
    res = json.loads((out / "result.json").read_text())
    assert res["verdict"] == "ERROR" and "interrupted" in res["reason"]
    assert_host_clean(shared_host, within=0)  # the harness itself cleaned up before it exited


def test_dropped_ssh_connection_leaves_no_domain(shared_host, tmp_path):
    """The sshd process serving the run dies mid-rounds: the run is an ERROR, and dom0's guard cleans up."""
    proc, out, lines = start_run(tmp_path, shared_host)
    try:
        wait_for(lines, "round 2:")
        root = session_root(lines)
        assert len(domains(shared_host)) == 2
        # The guard's parent is the sshd process of our connection: killing it drops the whole connection.
        dom0_sh(shared_host, f'kill -9 "$(ps -o ppid= -p "$(cat {root}/guard.pid)")"')
        assert proc.wait(timeout=180) == 2, "".join(lines[-30:])
    finally:
        if proc.poll() is None:
            proc.kill()
    res = json.loads((out / "result.json").read_text())
    assert res["verdict"] == "ERROR", res["reason"]
    assert_host_clean(shared_host)


def test_sigkill_of_the_harness_leaves_no_domain(shared_host, tmp_path):
    """Nothing of the harness runs any more: the guard in dom0 alone removes our domain and files."""
    proc, out, lines = start_run(tmp_path, shared_host)
    try:
        wait_for(lines, "round 1:")
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_host_clean(shared_host)


def test_host_clean_removes_what_a_dead_guard_left(shared_host):
    """What `host clean` finds: a session directory whose guard is gone (as after a dom0 crash mid-run)."""
    dom0_sh(shared_host, "mkdir -p /tmp/xfb-harness-dead-1/guest-1 && echo 999999 > /tmp/xfb-harness-dead-1/guard.pid"
                         " && mkdir -p /tmp/not-ours")
    proc = subprocess.run(harness_cmd("host", "clean", "--host", str(shared_host)), cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "removed /tmp/xfb-harness-dead-1" in proc.stdout
    assert ours_in_dom0(shared_host) == ""
    assert dom0_sh(shared_host, "ls -d /tmp/not-ours").strip() == "/tmp/not-ours", "never touches what is not ours"
    dom0_sh(shared_host, "rmdir /tmp/not-ours")


def test_an_unused_host_stops_itself(tmp_path):
    """host.idle_timeout_min: a host nobody connects to shuts down by itself, leaving nothing running."""
    from .conftest import nested_tmpdirs, pid_alive, run_cli
    cfg = tmp_path / "idle.yaml"
    cfg.write_text("host:\n  idle_timeout_min: 1\n")
    state = tmp_path / "host"
    before = nested_tmpdirs()
    started = time.monotonic()
    proc = run_cli("host", "up", str(cfg), "--state", str(state), timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    qemu, serve = int((state / "qemu.pid").read_text()), int((state / "serve.pid").read_text())
    deadline = time.monotonic() + 180
    while pid_alive(serve) and time.monotonic() < deadline:
        time.sleep(2)
    assert not pid_alive(serve) and not pid_alive(qemu), "the idle host kept running"
    assert time.monotonic() - started >= 60, "it must not stop before the idle time"
    assert "idle for 1 minutes" in (state / "host.log").read_text()
    assert not (state / "host.yaml").exists() and nested_tmpdirs() <= before
