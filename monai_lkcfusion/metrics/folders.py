"""Score folders of fused images against their sources, paired by file name (the ``lkcfusion metrics`` command)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import (
    PICTURE_SUFFIXES,
    VOLUME_SUFFIXES,
    files_by_name,
    image_stem,
    match_files_by_name,
    name_key,
    read_image,
)
from ..data.io import image_suffix
from ..errors import FusionInputError, as_names, list_names
from .functional import DEFAULT_METRICS, compute_fusion_metrics
from .utils import gray8

__all__ = ["read_gray", "score_folders"]

_NOT_A_PICTURE = ("the metrics score 2D 8-bit pictures (PNG, JPEG, BMP, TIFF), as the literature's evaluators do: "
                  "write the images as PNG (e.g. lkcfusion fuse ... -o fused.png; slices of volumes one by one)")


def read_gray(path: str | Path) -> np.ndarray:
    """Read an image file as the literature's evaluators do: 8-bit gray, colour as rounded BT.601 luma.

    The file is read by :func:`~monai_lkcfusion.data.read_image` (palette expanded, alpha composited on black).

    Args:
        path: a PNG/JPEG/BMP/TIFF file; RGB(A), palette and gray images are accepted.

    Returns:
        (H, W) float32 array with integer values in [0, 255].

    Raises:
        FusionInputError: a missing, unreadable or truncated file, a volume, or a 16-bit/float image, named in the
            message.
    """
    if image_suffix(path) in VOLUME_SUFFIXES:  # also a 2D NIfTI: its values are not the 8-bit levels scored
        raise FusionInputError(f"{path}: {_NOT_A_PICTURE}")
    image = read_image(path)
    if image.meta["spatial_dims"] != 2:
        raise FusionInputError(f"{path}: a 3D volume; {_NOT_A_PICTURE}")
    if image.meta.get("display_max") != 255.0:
        raise FusionInputError(f"{path}: not an 8-bit picture; save images as 8-bit gray or RGB")
    return gray8(image)


def score_folders(
    fused_dir: str | Path,
    mri_dir: str | Path,
    other_dir: str | Path,
    names: Sequence[str] | None = None,
    batch_size: int = 16,
    **options: Any,
) -> dict[str, dict[str, float]]:
    """Metrics of every fused image against the MRI and other image of the same name.

    Images are paired by name as :func:`~monai_lkcfusion.data.match_files_by_name` does (extension ignored). Three
    files instead of three folders score that one triple, whatever the names.

    Args:
        fused_dir: folder of fused images, or one fused image.
        mri_dir: folder of MRI images, or one MRI image.
        other_dir: folder of the second modality's images, or one such image.
        names: metrics (default: ``DEFAULT_METRICS``).
        batch_size: images scored per batch (same-size images only).
        options: passed to :func:`compute_fusion_metrics` (``ssim_data_range``, ``reduction``, ...).

    Returns:
        ``{fused file name: {metric: value}}`` sorted by name.

    Raises:
        FusionInputError: no fused images, a fused image without an MRI/other counterpart (all listed), files
            mixed with folders, or images that cannot be scored (unreadable, not 8-bit pictures, sizes that differ
            within a pair: every pair's problem in one message).
    """
    folders = {"fused": fused_dir, "mri": mri_dir, "other": other_dir}
    matched = _triples(folders)
    names = DEFAULT_METRICS if names is None else as_names(names, "metrics")
    results: dict[str, dict[str, float]] = {}
    by_shape: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = {}
    problems = []  # every pair's, so that they are mended in one go (the first one ended the run)
    for item in matched:
        name = Path(item["fused"]).name
        try:
            fused, mri, other = (read_gray(item[key]) for key in folders)
        except FusionInputError as err:
            problems.append(str(err))
            continue
        if not fused.shape == mri.shape == other.shape:
            problems.append(f"{item['fused']}: sizes differ: fused {fused.shape}, MRI {mri.shape}, other {other.shape}")
            continue
        by_shape.setdefault(fused.shape, []).append((name, np.stack([fused, mri, other])))
    if problems:  # a mean over the rest would not be the folder's
        raise FusionInputError(problems[0] if len(problems) == 1 else
                               f"{len(problems)} pairs cannot be scored: {'; '.join(problems)}")
    for group in by_shape.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            batch = torch.from_numpy(np.stack([t for _, t in chunk]).astype(np.float64))  # (b, 3, H, W)
            values = compute_fusion_metrics(batch[:, :1], batch[:, 1:2], batch[:, 2:], names=names, **options)
            for i, (name, _) in enumerate(chunk):
                results[name] = {m: float(values[m][i]) for m in names}
    return dict(sorted(results.items()))


def _triples(sources: dict[str, str | Path]) -> list[dict[str, Path | str]]:
    """The (fused, mri, other) files to score: three files as one triple, or three folders matched by name."""
    for path in sources.values():
        if not Path(path).exists():
            raise FusionInputError(f"{path}: no such file or folder")
    is_file = {key: Path(path).is_file() for key, path in sources.items()}
    if all(is_file.values()):
        return [{"name": image_stem(sources["fused"]), **{key: Path(path) for key, path in sources.items()}}]
    if any(is_file.values()):
        kinds = ", ".join(f"{key} {'file' if found else 'folder'}" for key, found in is_file.items())
        raise FusionInputError(f"give three image files or three folders, not a mix ({kinds})")
    volumes = [path for path in files_by_name(sources["fused"]).values() if image_suffix(path) in VOLUME_SUFFIXES]
    if volumes:  # passed over, they would read as "no fused image" for their pairs
        raise FusionInputError(f"{volumes[0]}{f' (and {len(volumes) - 1} more)' if len(volumes) > 1 else ''}: "
                               f"{_NOT_A_PICTURE}")
    matched, unmatched = match_files_by_name(sources, PICTURE_SUFFIXES)
    if not matched and not unmatched["fused"]:
        raise FusionInputError(f"{sources['fused']}: no images ({', '.join(PICTURE_SUFFIXES)})")
    if unmatched["fused"]:
        found = {key: {m["name"] for m in matched} | {name_key(p) for p in unmatched[key]} for key in ("mri", "other")}
        missing = []
        for path in unmatched["fused"]:
            kinds = [kind for key, kind in (("mri", "MRI"), ("other", "other")) if name_key(path) not in found[key]]
            missing.append(f"{path.name} (no {' and no '.join(kinds)} image)")
        raise FusionInputError(f"{len(missing)} fused image(s) without a counterpart: {', '.join(missing)}")
    unfused = sorted({name_key(p) for p in unmatched["mri"]} & {name_key(p) for p in unmatched["other"]})
    if unfused:  # a mean over some of the pairs is not the mean over the folder: say so
        warnings.warn(f"{len(unfused)} MRI/other pair(s) have no fused image and are not scored: "
                      f"{list_names(unfused)}", stacklevel=3)
    return matched
