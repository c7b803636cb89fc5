"""Write the MONAI Label app (``template/``) and its weights to a folder."""

from __future__ import annotations

import shutil
from os import PathLike
from pathlib import Path

from ..errors import FusionInputError

__all__ = ["LABEL_APP_MODEL", "write_label_app"]

LABEL_APP_MODEL = "lkcfusion"
"""Name of the app's inference model (``/infer/lkcfusion``, ``--conf models lkcfusion``)."""

_TEMPLATE = Path(__file__).resolve().parent / "template"


def write_label_app(dest: str | PathLike, weights: str | PathLike | None = None, overwrite: bool = False) -> Path:
    """Write a ready MONAI Label app: ``main.py``, ``lib/infers/fusion.py`` and ``model/lkcfusion.<ext>``.

    Args:
        dest: app folder to create.
        weights: weights to copy into ``model/`` (any file :func:`~monai_lkcfusion.networks.load_network` reads);
            default: :func:`~monai_lkcfusion.networks.default_weights_path`.
        overwrite: replace the files of an existing app in ``dest``.

    Returns:
        The app folder.

    Raises:
        FusionInputError: ``dest`` exists and is not empty (without ``overwrite``), or the weights file is missing.
    """
    from ..networks import default_weights_path, load_network

    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise FusionInputError(f"{dest}: folder exists and is not empty; choose another DEST or pass --overwrite")
    weights = Path(weights) if weights is not None else default_weights_path()
    if not weights.is_file():
        raise FusionInputError(f"{weights}: weights file not found; pass --weights FILE")
    load_network(weights)  # fail now, not when the server starts, if the file is not LKC-FUNet weights
    shutil.copytree(
        _TEMPLATE, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "__init__.py")
    )
    for package in ("lib", "lib/infers"):
        shutil.copy2(_TEMPLATE / package / "__init__.py", dest / package / "__init__.py")
    model_dir = dest / "model"
    model_dir.mkdir(exist_ok=True)
    for old in model_dir.glob(f"{LABEL_APP_MODEL}.*"):
        old.unlink()
    shutil.copy2(weights, model_dir / f"{LABEL_APP_MODEL}{''.join(weights.suffixes[-1:])}")
    return dest
