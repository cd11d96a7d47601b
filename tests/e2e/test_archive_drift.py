"""The archive moved, and our module still builds: today's real Debian headers and build tools, repacked into an
archive of our own (tests/local_archive.py) where the build tools are newer than the headers and the headers'
own version of them is gone, as happened to linux-kbuild-6.1 6.1.192-2. The module is built for real against
what apt resolves there. It needs the real packages, which the run fetches (or finds in the session's cache)."""
from __future__ import annotations

import subprocess

import pytest

from xenfb_harness import config, frontends
from xenfb_harness.artifacts import common
from xenfb_harness.artifacts.cache import Cache, default_cache_dir
from xenfb_harness.artifacts.payload import _debian_headers, _frontend_modules, debian_header_packages

from ..local_archive import LocalArchive, kernel_files

pytestmark = pytest.mark.e2e


def test_our_module_builds_when_the_build_tools_are_newer_than_the_headers(tmp_path):
    real = common.apt_for(Cache(default_cache_dir()), config.defaults()["apt"]["sources"], tmp_path / "real.log")
    image = common.kernel_image(real, "linux-image-amd64", "guest.kernel_package")
    release = image.removeprefix("linux-image-")
    version = real.version(image)
    wanted = debian_header_packages(real, image, release)
    debs = dict(zip(sorted(wanted), real.download_all(wanted)))
    kbuild = next(n for n in wanted if n.startswith("linux-kbuild-"))

    archive = LocalArchive(tmp_path / "archive")
    archive.add(image, version, files=kernel_files(release))
    for name, deb in debs.items():
        if name.startswith("linux-headers-"):  # the rest of Debian is not in this archive: only linux-* relations
            archive.repack(deb, keep_depends=("linux-",))
    newer = f"{wanted[kbuild]}+drift1"
    archive.repack(debs[kbuild], version=newer, keep_depends=("linux-",))  # and none at the headers' version
    archive.add("linux-compiler-gcc-12-x86", version)
    # The release's C library, as old as this machine's: its build tools run here as they are.
    host_libc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libc6"], capture_output=True, text=True,
                               check=True).stdout
    archive.add("libc6", host_libc)
    common._APTS.clear()
    local = common.apt_for(Cache(tmp_path / "cache"), archive.publish(), tmp_path / "local.log")

    headers = _debian_headers(local, image, release, tmp_path / "build.log")
    assert headers.packages[kbuild] == newer and headers.packages[f"linux-headers-{release}"] == version
    built = _frontend_modules(Cache(tmp_path / "cache"), headers, frontends.OUR_SOURCE, tmp_path / "build.log")
    for module in ("xenfb_legacy", "xenfb_legacy_fixed"):
        vermagic = subprocess.run(["modinfo", "-F", "vermagic", str(built / f"{module}.ko")], capture_output=True,
                                  text=True, check=True).stdout
        assert vermagic.split()[0] == release, vermagic
    common._APTS.clear()
