"""Installing ``monai-lkcfusion`` into Slicer's Python the way Slicer extensions do, without breaking Slicer.

- **PyTorch** comes from Slicer's *PyTorch* extension (``PyTorchUtils``), which picks the build for the machine's
  GPU/driver; it is never pulled in by pip as a dependency here.
- **monai-lkcfusion** is not on a package index: it is installed from a local wheel, a folder of wheels or a source
  checkout, with ``--no-deps``; its dependencies are installed by name with their ``==`` pins relaxed to ``>=``
  (the package pins ``monai==``, which would replace another extension's MONAI).
- pip runs with a **constraints file** that pins every package already in Slicer's Python to ``>=`` its installed
  version and Slicer's own core packages (numpy, VTK, SimpleITK, ...) to ``==``: pip can add packages and upgrade
  add-ons, but never downgrade anything nor touch what Slicer itself runs on. A conflict makes pip fail (and
  Slicer unchanged) instead.
- **Offline**: a folder holding our wheel and every dependency's wheel (``pip download`` on a connected machine)
  installs with ``--no-index --find-links FOLDER``.

Plain Python: :func:`install_plan` is tested without Slicer; the module runs the plan with
``slicer.util.pip_install``.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

__all__ = [
    "MINIMUM_TORCH",
    "PACKAGE",
    "SLICER_CORE_PACKAGES",
    "InstallPlan",
    "constraints",
    "install_plan",
    "installed_versions",
    "package_requirements",
    "relax",
]

PACKAGE = "monai-lkcfusion"
MINIMUM_TORCH = "2.4"
SLICER_CORE_PACKAGES = ("numpy", "vtk", "SimpleITK", "pydicom", "Pillow", "requests", "scipy", "packaging", "pip")
"""Packages Slicer itself (or its bundled modules) relies on: pinned to their installed version."""

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _canonical(name: str) -> str:
    """PEP 503 normalised name (``Pillow`` -> ``pillow``, ``pytorch_ignite`` -> ``pytorch-ignite``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_versions() -> dict[str, str]:
    """``{canonical name: version}`` of every distribution in this Python."""
    versions = {}
    for dist in metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            versions[_canonical(name)] = dist.version
    return versions


def package_requirements(source: str | Path) -> list[str]:
    """The runtime requirements (``Requires-Dist`` without extras) of our wheel, or of a checkout's pyproject.

    Args:
        source: a ``monai_lkcfusion-*.whl``, a folder holding one (offline wheelhouse), or a source checkout.

    Returns:
        Requirement strings, e.g. ``["torch>=2.4", "monai==1.6.1", ...]``.

    Raises:
        FileNotFoundError: no wheel or ``pyproject.toml`` at ``source``.
    """
    wheel = _our_wheel(Path(source))
    if wheel is not None:
        with zipfile.ZipFile(wheel) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            lines = archive.read(name).decode("utf-8").splitlines()
        return [line.split(":", 1)[1].strip() for line in lines
                if line.startswith("Requires-Dist:") and "extra ==" not in line]
    pyproject = Path(source) / "pyproject.toml"
    if not pyproject.is_file():
        raise FileNotFoundError(f"{source}: no {PACKAGE} wheel and no pyproject.toml")
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise FileNotFoundError(f"{source}: build a wheel first (python -m build --wheel); no tomllib here") from None
    return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])


def _our_wheel(source: Path) -> Path | None:
    """The newest ``monai_lkcfusion-*.whl`` at ``source`` (the file itself, or in the folder)."""
    if source.is_file() and source.suffix == ".whl":
        return source
    wheels = sorted(source.glob("monai_lkcfusion-*.whl")) if source.is_dir() else []
    return wheels[-1] if wheels else None


def relax(requirement: str) -> str:
    """``name==V`` -> ``name>=V`` (an exact pin of ours must not replace another extension's version)."""
    return re.sub(r"===?", ">=", requirement, count=1)


def constraints(installed: Mapping[str, str], core: Iterable[str] = SLICER_CORE_PACKAGES) -> str:
    """pip constraints keeping Slicer's Python as it is: ``core`` packages ``==``, every other ``>=`` installed.

    Our own package is left out (a newer or older wheel of it may replace the installed one).

    Args:
        installed: ``{name: version}`` of the packages in Slicer's Python (:func:`installed_versions`).
        core: packages to keep exactly.

    Returns:
        The text of a constraints file (``pip install -c FILE``).
    """
    exact = {_canonical(name) for name in core}
    lines = [
        f"{name}=={version}" if name in exact else f"{name}>={version.split('+')[0]}"  # no local label with >=
        for name, version in sorted(installed.items())
        if name != PACKAGE  # our own package may be replaced by the wheel given
    ]
    return "\n".join(lines) + "\n"


@dataclass
class InstallPlan:
    """What to install and how: two pip calls (dependencies, then our package without its dependencies).

    Attributes:
        dependencies: pip arguments installing the relaxed requirements (torch left to the PyTorch extension).
        package: pip arguments installing ``monai-lkcfusion`` itself with ``--no-deps``.
        constraints: text of the constraints file that both calls use.
    """

    dependencies: list[str] = field(default_factory=list)
    package: list[str] = field(default_factory=list)
    constraints: str = ""


def install_plan(
    source: str | Path,
    constraints_file: str | Path,
    installed: Mapping[str, str] | None = None,
    offline: bool = False,
) -> InstallPlan:
    """The pip calls that install ``monai-lkcfusion`` from ``source`` into a Python holding ``installed``.

    Args:
        source: our wheel, a folder of wheels (offline wheelhouse) or a source checkout.
        constraints_file: where the caller writes :attr:`InstallPlan.constraints` before running pip.
        installed: the packages present (default: this Python's, :func:`installed_versions`).
        offline: install only from the folder of ``source`` (``--no-index --find-links``).

    Returns:
        The plan; run ``pip install *plan.dependencies`` then ``pip install *plan.package``.
    """
    installed = installed_versions() if installed is None else {_canonical(k): v for k, v in installed.items()}
    source = Path(source)
    requirements = [relax(r) for r in package_requirements(source)]
    requirements = [r for r in requirements if _canonical(_NAME.match(r).group(1)) != "torch"]  # PyTorch extension
    options = ["-c", str(constraints_file)]
    if offline:
        options += ["--no-index", "--find-links", str(source if source.is_dir() else source.parent)]
    target = str(_our_wheel(source) or source)
    return InstallPlan(
        dependencies=[*options, *requirements],
        package=[*options, "--no-deps", "--upgrade", target],
        constraints=constraints(installed),
    )
