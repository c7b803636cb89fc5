"""Package discovery that pyproject.toml cannot express: the repository's ``bundle/`` folder is installed as the
package ``monai_lkcfusion.bundle`` (one copy of the MONAI Bundle, found with ``importlib.resources``), in wheels
and editable installs alike. Everything else is in pyproject.toml."""

from setuptools import find_namespace_packages, setup

setup(
    packages=[
        *find_namespace_packages(include=["monai_lkcfusion*"]),
        "monai_lkcfusion.bundle",
        *(f"monai_lkcfusion.bundle.{name}" for name in ("configs", "docs", "models")),  # data folders
    ],
    package_dir={"monai_lkcfusion.bundle": "bundle"},
)
