"""What the package ships besides its code, as directories on disk: the scenario and matrix files (configs/) and
the guest-side sources (guest-kernels/: our old-design frontend module, the Xen PV guest config fragment, the
fbdev-lastclose patch series). The module's tree is copied and hashed, so each must be a real directory.

In the repository both are top-level folders beside harness/. The build maps them into the package (pyproject.toml's
package-dir: xenfb_harness.configs is configs/, xenfb_harness.guest-kernels is guest-kernels/), so an installed
package holds xenfb_harness/configs and xenfb_harness/guest-kernels: side by side under the same names, as in the
repository, so a shipped config's relative path such as ../guest-kernels/xenfb-legacy resolves in both. An editable
install (`pip install -e .`) finds them in the checkout through setuptools' editable finder. Each holds an
__init__.py only for that finder: without one it is a namespace package, which the finder cannot import below a
regular package, and for which importlib.resources would give no plain directory anyway.

A shipped scenario or matrix also goes by its name, the file's name without .yaml: `xenfb-harness run legacy-race`
from any directory, `xenfb-harness configs` lists them."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


def _directory(package: str) -> Path:
    found = resources.files(importlib.import_module(package))
    if not isinstance(found, Path) or not found.is_dir():  # e.g. installed inside a zip: nothing to copy or hash
        raise RuntimeError(f"{package}: expected the package's files in a directory on disk, found {found!r}")
    return found.resolve()


CONFIGS = _directory("xenfb_harness.configs")
GUEST_KERNELS = _directory("xenfb_harness.guest-kernels")


@dataclass(frozen=True)
class Shipped:
    name: str  # the file's name without .yaml
    path: Path
    matrix: bool  # a matrix file (matrix*.yaml), for `xenfb-harness matrix`, else a scenario for `run`

    @property
    def about(self) -> str:
        """The first line of the comment the file starts with, without its '#' ("" if it starts with none)."""
        for line in self.path.read_text().splitlines():
            if line.strip():
                return line.lstrip("#").strip() if line.startswith("#") else ""
        return ""


def shipped_configs() -> list[Shipped]:
    """Every shipped scenario, then every shipped matrix, each by name."""
    from .config import shipped  # not above: config imports frontends, which imports this module
    scenarios, matrices = shipped(CONFIGS)
    return [Shipped(p.stem, p, False) for p in scenarios] + [Shipped(p.stem, p, True) for p in matrices]


def is_path(given: str) -> bool:
    """A config argument that can only be a path: it has a '/' or ends in .yaml or .yml. Any other is a file if one
    of that name exists, else the name of a shipped scenario or matrix."""
    return "/" in given or given.endswith((".yaml", ".yml"))


def config_file(given: str, matrix: bool = False) -> str:
    """A config argument as the user gave it: a file that exists, or a path (read_yaml says if it is missing), else
    the name of a shipped scenario (of a shipped matrix with `matrix`)."""
    from .config import ConfigError
    if Path(given).is_file():  # a directory of that name (a run's output, say) does not hide a shipped name
        return given
    names = {s.name: s for s in shipped_configs()}
    if is_path(given):
        if "/" not in given and Path(given).stem in names:  # e.g. legacy-race.yaml, typed in another directory
            raise ConfigError(given, "", f"config file does not exist (the shipped one is named without .yaml: "
                                         f"{Path(given).stem})")
        return given
    found = names.get(given)
    what = "matrix" if matrix else "scenario"
    if found is None:
        raise ConfigError(given, "", f"no such file, and no shipped {what} of that name (`xenfb-harness configs` "
                                     "lists them)")
    if found.matrix != matrix:
        raise ConfigError(given, "", f"a shipped {'scenario' if matrix else 'matrix'}, not a {what}: "
                                     f"`xenfb-harness {'run' if matrix else 'matrix'} {given}` runs it")
    return str(found.path)


def listing() -> str:
    """What `xenfb-harness configs` prints: each shipped scenario and matrix, its name and its first comment line."""
    items = shipped_configs()
    width = max(len(s.name) for s in items)
    out = []
    for matrix, title in ((False, "scenarios (xenfb-harness run NAME [NAME...])"),
                          (True, "matrices (xenfb-harness matrix NAME)")):
        out.append(f"{title}:")
        out += [f"  {s.name:{width}}  {s.about}".rstrip() for s in items if s.matrix == matrix]
    out.append(f"files: {CONFIGS}; the sources they use: {GUEST_KERNELS}")
    return "\n".join(out)
