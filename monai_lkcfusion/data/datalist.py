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
    overwrite: bool = False,
    **header: object,
) -> Path:
    """Write a decathlon-style datalist (``{"training": [...], "validation": [...], "test": [...]}``).

    File paths under ``base_dir`` are stored relative to it, as in the Medical Segmentation Decathlon, so the
    list moves with the data; :func:`monai.data.load_decathlon_datalist` and :func:`load_fusion_datalist` resolve
    them again. Other paths are stored absolute, with symbolic links resolved (relative ones are taken from the
    current folder).

    Args:
        path: JSON file to write (atomically).
        sections: section name -> items, each with at least ``"mri"`` and ``"other"``.
        base_dir: folder the paths are made relative to; default: the JSON file's folder.
        overwrite: replace an existing ``path`` (otherwise it is kept and this is an error, as for every writer of
            the package).
        header: extra top-level fields (e.g. ``name``, ``description``, ``modality``).

    Returns:
        The written path.

    Raises:
        FusionInputError: an item lacks ``"mri"`` or ``"other"``, or ``path`` exists and ``overwrite`` is off.
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
    return write_text(path, json.dumps(content, indent=2) + "\n", overwrite=overwrite)


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
        FusionInputError: the file or the section does not exist, or it is not a list of dicts with ``"mri"`` and
            ``"other"`` paths.
    """
    path = Path(path)
    if not path.is_file():
        raise FusionInputError(f"{path}: datalist not found")
    try:
        content = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise FusionInputError(f"{path}: not a JSON datalist ({' '.join(str(err).split())})") from None
    if not isinstance(content, dict):
        raise FusionInputError(
            f"{path}: a datalist is a JSON object of sections ({{\"{section}\": [{{\"mri\": ..., \"other\": ...}}]}}), "
            f"not a {type(content).__name__}"
        )
    if section not in content:
        raise FusionInputError(f"{path}: no section '{section}'; it has {sorted(content) or 'none'}")
    rows = content[section]
    if not isinstance(rows, list):
        raise FusionInputError(f"{path}: section '{section}' is a {type(rows).__name__}, not a list of pairs")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in _PAIR_KEYS):
            found = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise FusionInputError(
                f"{path}: item {i} of '{section}' needs \"mri\" and \"other\" paths, it has {found}"
            )
    base = (Path(base_dir) if base_dir is not None else path.parent).absolute()
    return [{**row, **{k: os.path.normpath(base / row[k]) for k in _PAIR_KEYS}} for row in rows]


def _relative(value: object, base: Path) -> object:
    """``value`` relative to ``base`` when it is a path under it, else as an absolute path (a path relative to the
    current folder would be read back relative to ``base``)."""
    if not isinstance(value, (str, os.PathLike)):
        return value
    absolute = Path(value).resolve()
    try:
        return str(absolute.relative_to(base.resolve()))
    except ValueError:
        return str(absolute)
