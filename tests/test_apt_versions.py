"""harness/artifacts/apt.py: candidate versions from `apt-cache policy`, one call for many packages, remembered on
disk (versions.json) for as long as the package lists stay the same. A stand-in `apt-cache` first on PATH prints
canned policy sections and logs every call; nothing reaches a mirror."""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest

from xenfb_harness.artifacts.apt import VERSIONS, Apt, _candidates

# `apt-cache policy bash libc6 vim-common mail-transport-agent` on Debian 12, as printed: an installed package with
# a newer candidate, one with several versions, one with an epoch, and a virtual package (no candidate).
POLICY = {
    "bash": """\
bash:
  Installed: 5.2.15-2+b8
  Candidate: 5.2.15-2+b13
  Version table:
     5.2.15-2+b13 500
        500 http://mirror.invalid/debian bookworm/main amd64 Packages
 *** 5.2.15-2+b8 100
        100 /var/lib/dpkg/status
""",
    "libc6": """\
libc6:
  Installed: (none)
  Candidate: 2.36-9+deb12u14
  Version table:
     2.36-9+deb12u14 500
        500 http://mirror.invalid/debian bookworm/main amd64 Packages
     2.36-9+deb12u7 500
        500 http://mirror.invalid/debian-security bookworm-security/main amd64 Packages
""",
    "vim-common": """\
vim-common:
  Installed: (none)
  Candidate: 2:9.0.1378-2+deb12u2
  Version table:
     2:9.0.1378-2+deb12u2 500
        500 http://mirror.invalid/debian bookworm/main amd64 Packages
""",
    "mail-transport-agent": """\
mail-transport-agent:
  Installed: (none)
  Candidate: (none)
  Version table:
""",
}
EXPECTED = {"bash": "5.2.15-2+b13", "libc6": "2.36-9+deb12u14", "vim-common": "2:9.0.1378-2+deb12u2",
            "mail-transport-agent": "(none)"}
PACKAGES = "mirror.invalid_debian_dists_bookworm_main_binary-amd64_Packages.lz4"


def test_candidates_of_several_packages_in_one_output():
    assert _candidates("".join(POLICY.values())) == EXPECTED


def test_candidates_of_nothing_and_of_unknown_packages():
    assert _candidates("") == {}
    # apt-cache prints nothing on stdout for a package it does not know ("N: Unable to locate" goes to stderr)
    assert _candidates(POLICY["bash"] + "N: Unable to locate package nope\n") == {"bash": "5.2.15-2+b13"}


class StandInAptCache:
    """`apt-cache policy P...` printing POLICY's section of each package it knows, in the order asked; each call's
    packages are one line of `calls`."""

    def __init__(self, directory: Path):
        self.bin, self.sections, self.log = directory / "bin", directory / "sections", directory / "calls"
        self.bin.mkdir(parents=True)
        self.sections.mkdir()
        for name, text in POLICY.items():
            (self.sections / name).write_text(text)
        self.log.write_text("")
        script = self.bin / "apt-cache"
        script.write_text(f"""#!/bin/sh
while [ "$1" = -o ]; do shift 2; done
[ "$1" = policy ] || {{ echo "stand-in apt-cache: unexpected $1" >&2; exit 2; }}
shift
echo "$*" >> {shlex.quote(str(self.log))}
for p in "$@"; do
    if [ -f {shlex.quote(str(self.sections))}/"$p" ]; then cat {shlex.quote(str(self.sections))}/"$p"
    else echo "N: Unable to locate package $p" >&2; fi
done
""")
        script.chmod(0o755)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture
def apt_cache(tmp_path, monkeypatch) -> StandInAptCache:
    stand_in = StandInAptCache(tmp_path / "stand-in")
    monkeypatch.setenv("PATH", f"{stand_in.bin}{os.pathsep}{os.environ['PATH']}")
    return stand_in


@pytest.fixture
def state(tmp_path) -> Path:
    """An apt state directory whose lists hold one Packages file (what `apt-get update` left)."""
    (tmp_path / "apt" / "lists").mkdir(parents=True)
    (tmp_path / "apt" / "lists" / PACKAGES).write_bytes(b"Package: bash\n")
    return tmp_path / "apt"


@pytest.fixture
def sources(tmp_path) -> Path:
    path = tmp_path / "debian.sources"
    path.write_text("Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm\nComponents: main\n")
    return path


def new_apt(state: Path, sources: Path) -> Apt:
    return Apt(state, sources, state.parent / "build.log")


def test_one_call_for_several_unknown_packages(apt_cache, state, sources):
    apt = new_apt(state, sources)
    assert apt.versions(["vim-common", "bash", "libc6", "bash"]) == {
        "vim-common": "2:9.0.1378-2+deb12u2", "bash": "5.2.15-2+b13", "libc6": "2.36-9+deb12u14"}
    assert apt_cache.calls() == ["vim-common bash libc6"]
    assert apt.version("bash") == "5.2.15-2+b13" and apt.versions(["libc6"]) == {"libc6": "2.36-9+deb12u14"}
    assert len(apt_cache.calls()) == 1


def test_only_what_is_not_known_yet_is_asked(apt_cache, state, sources):
    apt = new_apt(state, sources)
    apt.versions(["bash"])
    assert apt.versions(["bash", "libc6", "vim-common"])["libc6"] == "2.36-9+deb12u14"
    assert apt_cache.calls() == ["bash", "libc6 vim-common"]


def test_a_later_run_over_the_same_lists_asks_apt_cache_nothing(apt_cache, state, sources):
    first = new_apt(state, sources).versions(["bash", "libc6"])
    memo = json.loads((state / VERSIONS).read_text())
    assert memo["versions"] == first and PACKAGES in memo["lists"]
    assert new_apt(state, sources).versions(["libc6", "bash"]) == first
    assert apt_cache.calls() == ["bash libc6"]
    assert [p.name for p in state.iterdir() if p.name.startswith(".")] == []  # no temporary memo left


def test_a_later_run_asks_only_for_packages_it_does_not_find_remembered(apt_cache, state, sources):
    new_apt(state, sources).versions(["bash"])
    assert new_apt(state, sources).versions(["bash", "vim-common"])["vim-common"] == "2:9.0.1378-2+deb12u2"
    assert apt_cache.calls() == ["bash", "vim-common"]
    assert set(json.loads((state / VERSIONS).read_text())["versions"]) == {"bash", "vim-common"}


@pytest.mark.parametrize("change", ["rewritten", "new file", "removed"])
def test_changed_lists_make_a_later_run_ask_again(apt_cache, state, sources, change):
    new_apt(state, sources).versions(["bash", "libc6"])
    lists = state / "lists"
    if change == "rewritten":
        (lists / PACKAGES).write_bytes(b"Package: bash\nVersion: 5.2.15-2+b14\n")
    elif change == "new file":
        (lists / "mirror.invalid_debian-security_dists_bookworm-security_InRelease").write_text("signed\n")
    else:
        (lists / PACKAGES).unlink()
    assert new_apt(state, sources).versions(["bash", "libc6"]) == {"bash": "5.2.15-2+b13", "libc6": "2.36-9+deb12u14"}
    assert apt_cache.calls() == ["bash libc6", "bash libc6"]


def test_a_file_of_the_same_size_written_later_counts_as_a_change(apt_cache, state, sources):
    new_apt(state, sources).versions(["bash"])
    path = state / "lists" / PACKAGES
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    new_apt(state, sources).versions(["bash"])
    assert apt_cache.calls() == ["bash", "bash"]


def test_what_is_inside_lists_subdirectories_does_not_count(apt_cache, state, sources):
    new_apt(state, sources).versions(["bash"])  # Apt made lists/partial
    (state / "lists" / "partial" / f"{PACKAGES}.part").write_bytes(b"half a download")
    new_apt(state, sources).versions(["bash"])
    assert apt_cache.calls() == ["bash"]


@pytest.mark.parametrize("memo", ["{not json", "[]", '{"versions": {"bash": "0"}}', ""])
def test_an_unreadable_memo_is_asked_again_not_trusted(apt_cache, state, sources, memo):
    (state / VERSIONS).write_text(memo)
    assert new_apt(state, sources).version("bash") == "5.2.15-2+b13"
    assert apt_cache.calls() == ["bash"]
    assert json.loads((state / VERSIONS).read_text())["versions"] == {"bash": "5.2.15-2+b13"}


@pytest.mark.parametrize("package", ["no-such-package", "mail-transport-agent"], ids=["unknown", "no-candidate"])
def test_a_package_without_a_candidate_is_a_lookup_error_naming_it(apt_cache, state, sources, package):
    apt = new_apt(state, sources)
    with pytest.raises(LookupError) as info:
        apt.versions(["bash", package])
    assert repr(package) in str(info.value) and str(sources) in str(info.value)
    assert apt_cache.calls() == [f"bash {package}"]
    with pytest.raises(LookupError, match=package):  # never remembered as available
        new_apt(state, sources).version(package)


def test_versions_from_older_lists_are_not_remembered_for_newer_ones(apt_cache, state, sources):
    running = new_apt(state, sources)  # a long run's Apt, kept for up to LISTS_MAX_AGE
    assert running.version("bash") == "5.2.15-2+b13"
    # Another process's `apt-get update` brings new lists, in which bash has a newer candidate.
    (state / "lists" / PACKAGES).write_bytes(b"Package: bash\nVersion: 5.2.15-2+b14\n")
    (apt_cache.sections / "bash").write_text(POLICY["bash"].replace("Candidate: 5.2.15-2+b13",
                                                                     "Candidate: 5.2.15-2+b14"))
    running.version("libc6")  # the long run asks for another package: the memo is written again
    assert new_apt(state, sources).version("bash") == "5.2.15-2+b14"  # what apt-cache says over these lists
