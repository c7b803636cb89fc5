"""Decathlon-style JSON datalists for fusion pairs (2D slices or 3D volumes), readable by MONAI."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import FusionInputError
from .atomic import write_text

__all__ = ["load_fusion_datalist", "write_fusion_datalist"]

_PAIR_KEYS = ("mri", "other")


def write_fusion_datalist(
    path: str | Path,
    sections: Mapping[str, Sequence[Mapping[str, object]]],
    base_dir: str | Path | None = None,
    **header: object,
) -> Path:
    """Write a decathlon-style datalist (``{"training": [...], "validation": [...], "test": [...]}``).

    File paths under ``base_dir`` are stored relative to it, as in the Medical Segmentation Decathlon, so the
    list moves with the data; :func:`monai.data.load_decathlon_datalist` and :func:`load_fusion_datalist` resolve
    them again.

    Args:
        path: JSON file to write (atomically).
        sections: section name -> items, each with at least ``"mri"`` and ``"other"``.
        base_dir: folder the paths are made relative to; default: the JSON file's folder.
        header: extra top-level fields (e.g. ``name``, ``description``, ``modality``).

    Returns:
        The written path.

    Raises:
        FusionInputError: an item lacks ``"mri"`` or ``"other"``.
    """
    path = Path(path)
    base = Path(base_dir) if base_dir is not None else path.parent
    content: dict[str, object] = dict(header)
    for section, items in sections.items():
        rows = []
        for i, item in enumerate(items):
            if not all(k in item for k in _PAIR_KEYS):
                raise FusionInputError(f"{path}: item {i} of '{section}' needs keys {_PAIR_KEYS}, got {sorted(item)}")
            row = dict(item)
            for key in _PAIR_KEYS:
                row[key] = _relative(row[key], base)
            rows.append(row)
        content[section] = rows
    return write_text(path, json.dumps(content, indent=2) + "\n", overwrite=True)


def load_fusion_datalist(
    path: str | Path, section: str = "training", base_dir: str | Path | None = None
) -> list[dict[str, object]]:
    """Read one section of a fusion datalist, resolving ``"mri"``/``"other"`` against ``base_dir``.

    The file format is MONAI's decathlon datalist, so :func:`monai.data.load_decathlon_datalist` reads it too
    (MONAI joins a non-``image`` value with ``base_dir`` only when that path exists; this reader always joins
    the pair keys and leaves every other field as written).

    Args:
        path: the JSON datalist.
        section: ``"training"``, ``"validation"``, ``"test"`` or any other key in the file.
        base_dir: folder relative paths are resolved against; default: the JSON file's folder.

    Returns:
        The items with ``"mri"`` and ``"other"`` as absolute paths.

    Raises:
        FusionInputError: the file or the section does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FusionInputError(f"{path}: datalist not found")
    try:
        rows = json.loads(path.read_text())[section]
    except (ValueError, KeyError) as err:
        raise FusionInputError(f"{path}: no readable section '{section}' ({' '.join(str(err).split())})") from None
    base = Path(base_dir) if base_dir is not None else path.parent
    return [{**row, **{k: os.path.normpath(base / row[k]) for k in _PAIR_KEYS}} for row in rows]


def _relative(value: object, base: Path) -> object:
    """``value`` relative to ``base`` when it is a path under it, else unchanged."""
    if not isinstance(value, (str, os.PathLike)):
        return value
    try:
        return str(Path(value).resolve().relative_to(base.resolve()))
    except ValueError:
        return str(value)
