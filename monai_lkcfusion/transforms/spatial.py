"""Geometry for fusion pairs: the other modality onto the MRI grid, axial-axis lookup, slice sampling."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable, ResampleToMatch

from ..errors import FusionInputError

__all__ = ["RandSliced", "ResampleToReferenced", "axial_axis", "resample_to_reference"]


def axial_axis(affine: torch.Tensor | np.ndarray) -> int:
    """The voxel axis (0, 1 or 2) that runs most nearly along the world's superior-inferior direction.

    Args:
        affine: 4x4 voxel-to-world (RAS) affine.

    Returns:
        The index of the voxel axis to slice along for axial slices.
    """
    matrix = np.asarray(torch.as_tensor(affine).cpu(), dtype=np.float64)[:3, :3]
    directions = matrix / np.linalg.norm(matrix, axis=0, keepdims=True)
    return int(np.argmax(np.abs(directions[2])))


def resample_to_reference(
    img: MetaTensor, reference: MetaTensor, resize_2d: bool = False, mode: str = "bilinear"
) -> tuple[MetaTensor, float]:
    """Put ``img`` on the grid of ``reference``.

    Volumes are resampled affine-aware (MONAI :class:`~monai.transforms.ResampleToMatch`), with zeros outside
    ``img``'s field of view. 2D pictures carry no geometry: equal sizes pass, different sizes are an error unless
    ``resize_2d`` asks for a bilinear resize to the reference size.

    Args:
        img: ``(C, *spatial)`` image to move.
        reference: ``(C', *spatial')`` image whose grid (shape, affine) is kept.
        resize_2d: allow resizing a 2D picture of another size.
        mode: interpolation mode for volumes.

    Returns:
        The resampled image (with the reference's affine) and the fraction of reference voxels covered by ``img``.

    Raises:
        FusionInputError: the images have different dimensionality, a 2D size mismatch without ``resize_2d``, or
            no overlap at all.
    """
    name = img.meta.get("filename_or_obj", "other") if isinstance(img, MetaTensor) else "other"
    ref_name = reference.meta.get("filename_or_obj", "mri") if isinstance(reference, MetaTensor) else "mri"
    if img.ndim != reference.ndim:
        raise FusionInputError(f"{name}: {img.ndim - 1}D image but the MRI {ref_name} is {reference.ndim - 1}D")
    if img.ndim == 3:
        if img.shape[1:] == reference.shape[1:]:
            return img, 1.0
        if not resize_2d:
            raise FusionInputError(
                f"{name}: size {tuple(img.shape[1:])} differs from the MRI's {tuple(reference.shape[1:])}; "
                "register/resample it to the MRI first or pass --resample (resize_2d=True)"
            )
        resized = F.interpolate(img[None].as_tensor() if isinstance(img, MetaTensor) else img[None],
                                size=tuple(reference.shape[1:]), mode="bilinear", align_corners=False)[0]
        return MetaTensor(resized, meta={**getattr(img, "meta", {}), "affine": reference.affine}), 1.0
    voxels = img.as_tensor() if isinstance(img, MetaTensor) else img
    stacked = MetaTensor(torch.cat([voxels, torch.ones_like(voxels[:1])]), affine=img.affine)  # (C + 1, ...)
    moved = ResampleToMatch(mode=mode, padding_mode="zeros")(stacked, reference)
    coverage = float((moved[-1] > 0.5).float().mean())
    if coverage == 0.0:
        raise FusionInputError(f"{name}: does not overlap the MRI {ref_name} in world coordinates (check the files' geometry)")
    return MetaTensor(moved[:-1].as_tensor(), meta={**img.meta, "affine": reference.affine}), coverage


class ResampleToReferenced(MapTransform):
    """Dict wrapper of :func:`resample_to_reference`: the ``keys`` onto the grid of ``ref_key`` (the MRI).

    The covered fraction is recorded in each moved image's meta as ``overlap_fraction``.

    Args:
        keys: images to move, usually ``"other"`` (and ``"other_cbcr"`` for colour).
        ref_key: the reference image, usually ``"mri"``.
        resize_2d: allow resizing 2D pictures of another size (never done silently).
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self, keys: KeysCollection, ref_key: str = "mri", resize_2d: bool = False, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.resize_2d = resize_2d

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], coverage = resample_to_reference(d[key], d[self.ref_key], resize_2d=self.resize_2d)
            d[key].meta["overlap_fraction"] = coverage
        return d


class RandSliced(Randomizable, MapTransform):
    """Sample one 2D slice, at the same index for all keys, from registered volumes (for 2D training).

    Args:
        keys: volumes ``(C, X, Y, Z)`` on one grid, e.g. ``("mri", "other")``.
        axis: voxel axis to slice along; ``None`` takes the axial one of the first key's affine.
        min_foreground: keep sampling among slices whose first key has at least this fraction of voxels > 0.
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        axis: int | None = None,
        min_foreground: float = 0.05,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.axis = axis
        self.min_foreground = min_foreground
        self._index = 0

    def randomize(self, candidates: np.ndarray) -> None:
        self._index = int(self.R.choice(candidates))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        first = d[self.first_key(d)]
        axis = self.axis if self.axis is not None else axial_axis(first.affine)
        dims = [i for i in range(3) if i != axis]
        foreground = (torch.as_tensor(first) > 0).float().mean(dim=(0, *(1 + i for i in dims)))  # (n_slices,)
        candidates = np.flatnonzero(foreground.cpu().numpy() >= self.min_foreground)
        self.randomize(candidates if candidates.size else np.arange(first.shape[1 + axis]))
        for key in self.key_iterator(d):
            img = d[key]
            plane = torch.as_tensor(img).select(1 + axis, self._index)  # (C, H, W)
            meta = {**getattr(img, "meta", {}), "affine": torch.eye(3), "spatial_dims": 2}
            d[key] = MetaTensor(plane, meta={**meta, "slice_axis": axis, "slice_index": self._index})
        return d
