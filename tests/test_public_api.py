"""Every name a module of the package exports in ``__all__`` exists, so ``from module import *`` works."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import monai_lkcfusion


def _modules() -> list[str]:
    names = ["monai_lkcfusion"]
    for info in pkgutil.walk_packages(monai_lkcfusion.__path__, "monai_lkcfusion."):
        if ".label_app.template" not in info.name and not info.name.endswith("__main__"):
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", _modules())
def test_all_names_exist(name):
    module = importlib.import_module(name)
    missing = [item for item in getattr(module, "__all__", ()) if not hasattr(module, item)]
    assert not missing, f"{name}.__all__ names {missing}, which the module does not define or import"
    namespace: dict[str, object] = {}
    exec(f"from {name} import *", namespace)  # what a user's star import does
