"""Decathlon-style JSON datalists for fusion pairs (2D slices or 3D volumes), readable by MONAI."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import FusionInputError
from .io import atomic_path, image_stem

__all__ = ["load_fusion_datalist", "pair_files_by_name", "write_fusion_datalist"]

_PAIR_KEYS = ("mri", "other")


def pair_files_by_name(mri_dir: str | Path, other_dir: str | Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Pair the images of two folders by name (extension ignored, so ``a.nii.gz`` pairs with ``a.nii``).

    Sub-folders are entries too (a DICOM series per folder).

    Args:
        mri_dir: folder of MRIs.
        other_dir: folder of the second modality.

    Returns:
        ``(pairs, unpaired)``: the matched ``(mri, other)`` paths sorted by name, and one message per entry of
        either folder that has no partner.

    Raises:
        FusionInputError: either folder is missing.
    """
    entries = []
    for folder in (Path(mri_dir), Path(other_dir)):
        if not folder.is_dir():
            raise FusionInputError(f"{folder}: no such folder")
        entries.append({image_stem(p): p for p in sorted(folder.iterdir()) if not p.name.startswith(".")})
    mris, others = entries
    pairs = [(mris[k], others[k]) for k in sorted(mris) if k in others]
    unpaired = [f"{p}: no partner in {other_dir}" for k, p in sorted(mris.items()) if k not in others]
    unpaired += [f"{p}: no partner in {mri_dir}" for k, p in sorted(others.items()) if k not in mris]
    return pairs, unpaired


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
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(content, indent=2) + "\n")
    return path


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
