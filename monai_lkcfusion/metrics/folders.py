"""Score folders of fused images against their sources, paired by file name (the ``lkcfusion metrics`` command)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.io import PICTURE_SUFFIXES
from ..errors import FusionInputError
from .functional import DEFAULT_METRICS, compute_fusion_metrics
from .utils import luma_bt601

__all__ = ["read_gray", "score_folders", "format_table", "write_csv", "write_json"]


def read_gray(path: str | Path) -> np.ndarray:
    """Read an image file as the literature's evaluators do: 8-bit gray, colour as rounded BT.601 luma.

    Args:
        path: a PNG/JPEG/BMP/TIFF file; RGB(A), palette and gray images are accepted.

    Returns:
        (H, W) float32 array with integer values in [0, 255].

    Raises:
        FusionInputError: a missing, unreadable or truncated file, or a 16-bit/float image, named in the message.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode in ("I;16", "I", "F"):
                raise FusionInputError(
                    f"{path}: mode {img.mode} is not an 8-bit image; save images as 8-bit gray or RGB"
                )
            return luma_bt601(np.asarray(img if img.mode == "L" else img.convert("RGB")))
    except (OSError, SyntaxError, ValueError) as err:  # missing, truncated or not an image: name the file
        if isinstance(err, FusionInputError):
            raise
        raise FusionInputError(f"{path}: cannot read image ({' '.join(str(err).split())})") from None


def _images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FusionInputError(f"{folder}: not a folder")
    return {p.name: p for p in sorted(folder.iterdir()) if p.suffix.lower() in PICTURE_SUFFIXES}


def score_folders(
    fused_dir: str | Path,
    mri_dir: str | Path,
    other_dir: str | Path,
    names: Sequence[str] | None = None,
    batch_size: int = 16,
    **options: Any,
) -> dict[str, dict[str, float]]:
    """Metrics of every fused image against the MRI and other image of the same file name.

    Args:
        fused_dir: folder of fused images.
        mri_dir: folder of MRI images.
        other_dir: folder of the second modality's images.
        names: metrics (default: ``DEFAULT_METRICS``).
        batch_size: images scored per batch (same-size images only).
        options: passed to :func:`compute_fusion_metrics` (``ssim_data_range``, ``reduction``, ...).

    Returns:
        ``{file name: {metric: value}}`` sorted by file name.

    Raises:
        FusionInputError: no fused images, a fused image without an MRI/other counterpart (all listed), or a
            size mismatch within a pair.
    """
    fused, mri, other = _images(Path(fused_dir)), _images(Path(mri_dir)), _images(Path(other_dir))
    if not fused:
        raise FusionInputError(f"{fused_dir}: no images ({', '.join(PICTURE_SUFFIXES)})")
    missing = [f"{n} (no {'MRI' if n not in mri else 'other'} image)" for n in fused if n not in mri or n not in other]
    if missing:
        raise FusionInputError(f"{len(missing)} fused image(s) without a counterpart: {', '.join(missing)}")
    names = tuple(DEFAULT_METRICS if names is None else names)
    results: dict[str, dict[str, float]] = {}
    by_shape: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = {}
    for name in fused:
        image = read_gray(fused[name])
        triple = np.stack([image, *_pair(name, mri[name], other[name], image.shape)])
        by_shape.setdefault(triple.shape, []).append((name, triple))
    for group in by_shape.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            batch = torch.from_numpy(np.stack([t for _, t in chunk]).astype(np.float64))  # (b, 3, H, W)
            values = compute_fusion_metrics(batch[:, :1], batch[:, 1:2], batch[:, 2:], names=names, **options)
            for i, (name, _) in enumerate(chunk):
                results[name] = {m: float(values[m][i]) for m in names}
    return dict(sorted(results.items()))


def _pair(name: str, mri_path: Path, other_path: Path, fused_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The MRI and other images of one fused image, checked to have its size."""
    mri, other = read_gray(mri_path), read_gray(other_path)
    if not mri.shape == other.shape == fused_shape:
        raise FusionInputError(f"{name}: sizes differ: fused {fused_shape}, MRI {mri.shape}, other {other.shape}")
    return mri, other


def _means(results: dict[str, dict[str, float]]) -> dict[str, float]:
    columns = next(iter(results.values())).keys()
    return {m: float(np.mean([row[m] for row in results.values()])) for m in columns}


def format_table(results: dict[str, dict[str, float]]) -> str:
    """Plain-text table: one row per pair and a final ``mean`` row."""
    columns = list(next(iter(results.values())).keys())
    width = max(len("mean"), *(len(n) for n in results))
    lines = [" ".join([f"{'pair':<{width}}", *(f"{c:>9}" for c in columns)])]
    for name, row in [*results.items(), ("mean", _means(results))]:
        lines.append(" ".join([f"{name:<{width}}", *(f"{row[c]:>9.4f}" for c in columns)]))
    return "\n".join(lines)


def write_csv(results: dict[str, dict[str, float]], path: str | Path) -> None:
    """CSV with a ``pair`` column, one column per metric, and a last ``mean`` row."""
    columns = list(next(iter(results.values())).keys())
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["pair", *columns])
        for name, row in [*results.items(), ("mean", _means(results))]:
            writer.writerow([name, *(repr(row[c]) for c in columns)])


def write_json(results: dict[str, dict[str, float]], path: str | Path, options: dict[str, Any]) -> None:
    """JSON ``{"options": ..., "mean": {...}, "pairs": {name: {...}}}``."""
    document = {"options": options, "mean": _means(results), "pairs": results}
    Path(path).write_text(json.dumps(document, indent=1))
