"""Guest kernels from other Debian releases: the host's apt sources with the codename swapped, and metapackages
resolved to the kernel image they stand for."""
from __future__ import annotations

import pytest

from xenfb_harness.artifacts.apt import sources_for_suite
from xenfb_harness.artifacts.common import kernel_image

DEB822 = """Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_deb822_suites_are_swapped_and_nothing_else():
    out = sources_for_suite(DEB822, "trixie")
    assert "Suites: trixie trixie-updates\n" in out and "Suites: trixie-security\n" in out
    assert out.replace("trixie", "bookworm") == DEB822  # mirrors, components, keys: untouched


def test_one_line_sources_keep_their_options_and_comments():
    text = ("# bookworm is mentioned here, and stays\n"
            "deb [arch=amd64 signed-by=/k.gpg] http://m/debian bookworm main contrib\n"
            "deb-src http://m/debian bookworm-updates main\n"
            "deb http://m/debian-security bookworm-security main\n")
    out = sources_for_suite(text, "bullseye").splitlines()
    assert out[0] == "# bookworm is mentioned here, and stays"
    assert out[1] == "deb [arch=amd64 signed-by=/k.gpg] http://m/debian bullseye main contrib"
    assert out[2] == "deb-src http://m/debian bullseye-updates main"
    assert out[3] == "deb http://m/debian-security bullseye-security main"


def test_other_releases_named_in_the_file_are_left_alone():
    text = "deb http://m/debian bookworm main\ndeb http://m/debian sid main\n"
    assert sources_for_suite(text, "trixie") == "deb http://m/debian trixie main\ndeb http://m/debian sid main\n"


@pytest.mark.parametrize("suite", ["", "Trixie", "trixie main", "../x", "trixie\n"])
def test_a_suite_must_be_a_codename(suite):
    with pytest.raises(ValueError, match="Debian codename"):
        sources_for_suite(DEB822, suite)


def test_sources_that_name_no_suite_are_refused():
    with pytest.raises(ValueError, match="no suite"):
        sources_for_suite("# nothing here\n", "trixie")


class FakeApt:
    release = "bookworm"

    def __init__(self, depends: dict[str, list[str]]):
        self._depends = depends

    def version(self, package: str) -> str:
        return "1"

    def depends(self, package: str) -> list[str]:
        return self._depends[package]


def test_a_versioned_image_is_itself():
    assert kernel_image(FakeApt({}), "linux-image-6.1.0-56-amd64", "guest.kernel_package") == "linux-image-6.1.0-56-amd64"


def test_a_metapackage_stands_for_the_image_it_depends_on():
    apt = FakeApt({"linux-image-amd64": ["linux-image-6.12.118+deb13-amd64"],
                   "linux-image-rt-amd64": ["linux-image-6.1.0-56-rt-amd64", "firmware-whatever"]})
    assert kernel_image(apt, "linux-image-amd64", "guest.kernel_package") == "linux-image-6.12.118+deb13-amd64"
    assert kernel_image(apt, "linux-image-rt-amd64", "guest.kernel_package") == "linux-image-6.1.0-56-rt-amd64"


def test_a_metapackage_without_one_image_is_refused():
    apt = FakeApt({"linux-image-amd64": []})
    with pytest.raises(LookupError, match="linux-image-amd64"):
        kernel_image(apt, "linux-image-amd64", "guest.kernel_package")
