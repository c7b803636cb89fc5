"""Geometry for fusion pairs: the other modality onto the MRI grid (invertible), axial-axis lookup, slice sampling."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Hashable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform, Randomizable, ResampleToMatch, Transform
from monai.utils import TraceKeys, TransformBackends
from monai.utils.type_conversion import convert_to_dst_type

from ..data.io import ROWS_COLUMNS_SWAPPED
from ..errors import FusionInputError
from .base import InvertibleReferencedMapTransform

__all__ = [
    "CheckMinSize",
    "CheckMinSizeD",
    "CheckMinSizeDict",
    "CheckMinSized",
    "CheckSameSizeD",
    "CheckSameSizeDict",
    "CheckSameSized",
    "RandSlice",
    "RandSliceD",
    "RandSliceDict",
    "RandSliced",
    "ResampleToReference",
    "ResampleToReferenceD",
    "ResampleToReferenceDict",
    "ResampleToReferenced",
    "axial_axis",
    "resample_to_reference",
    "slice_layout",
    "slicing_axis",
]


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


MIN_SLICE_SIDE = 8
"""Slices narrower than this (in voxels) are not cut from a volume when another axis gives whole slices: the
network pads them by replication to its smallest input (2 x its stride), so it would fuse mostly invented pixels."""


def slicing_axis(affine: torch.Tensor | np.ndarray | None, spatial_shape: tuple[int, ...]) -> int:
    """The voxel axis to cut a volume into 2D slices along.

    Args:
        affine: 4x4 voxel-to-world (RAS) affine, or ``None`` when unknown.
        spatial_shape: the volume's ``(X, Y, Z)``.

    Returns:
        :func:`axial_axis` (axis 2 without an affine) when its slices are at least :data:`MIN_SLICE_SIDE` voxels a
        side, else the axis whose slices have the longest short side (the axial one among equals, then the last): a
        single slice or a slab of a few slices in any orientation, e.g. a sagittal ``(1|3, Y, Z)`` file, is fused in
        its own plane, not cut into strips 1-3 pixels wide.
    """

    def short_side(axis: int) -> int:
        return min(size for i, size in enumerate(spatial_shape) if i != axis)

    axial = axial_axis(affine) if affine is not None else 2
    if short_side(axial) >= MIN_SLICE_SIDE:
        return axial
    return max((axial, 2, 1, 0), key=short_side)  # max keeps the first of equals: the axial axis, then the last


_DISPLAY = {2: ((1, -1), (0, -1)), 1: ((2, -1), (0, -1)), 0: ((2, -1), (1, -1))}
"""Per slice normal (RAS world axis: 0 sagittal, 1 coronal, 2 axial), the world axis and sign that a displayed
slice's rows and columns run along: radiological display, as the Harvard training pictures are stored. Axial:
rows from anterior to posterior, columns from the patient's right to left; coronal: rows from superior to inferior,
columns right to left; sagittal: rows superior to inferior, columns anterior to posterior."""


def slice_layout(affine: torch.Tensor | np.ndarray | None, axis: int) -> tuple[tuple[int, int], tuple[int, ...]]:
    """How to show the slices of a volume across voxel ``axis`` as the training pictures show anatomy.

    The network is not equivariant to transposes and flips, so a volume's slices go in in one anatomical layout
    (radiological display, :data:`_DISPLAY`), whatever order the file stores its voxels in: the same patient stored
    in RAS or LPS voxel order (a dcm2niix or an ITK NIfTI, a DICOM series) is fused the same way.

    Args:
        affine: 4x4 voxel-to-world (RAS) affine; ``None``: no geometry (an array), the voxel order is kept.
        axis: the voxel axis the volume is sliced along.

    Returns:
        ``(rows, columns)``: the in-plane voxel axes in the order a slice is shown, and the voxel axes to reverse.
    """
    rows, columns = (i for i in range(3) if i != axis)
    if affine is None:
        return (rows, columns), ()
    matrix = np.asarray(torch.as_tensor(affine).cpu(), dtype=np.float64)[:3, :3]
    lengths = np.linalg.norm(matrix, axis=0)
    if not np.all(np.isfinite(matrix)) or np.any(lengths == 0):
        return (rows, columns), ()
    directions = matrix / lengths  # unit world direction of each voxel axis
    normal = int(np.argmax(np.abs(np.cross(directions[:, rows], directions[:, columns]))))
    (row_world, row_sign), (column_world, column_sign) = _DISPLAY[normal]
    if abs(directions[row_world, columns]) > abs(directions[row_world, rows]):
        rows, columns = columns, rows
    flipped = tuple(sorted(voxel for voxel, world, sign in ((rows, row_world, row_sign),
                                                              (columns, column_world, column_sign))
                           if np.sign(directions[world, voxel]) != sign))
    return (rows, columns), flipped


def _describe_grid(img: torch.Tensor) -> str:
    """``a 2D picture (H x W)``, ``a one-slice volume (X, Y, 1)`` or ``a 3D volume (X, Y, Z)`` for messages."""
    spatial = tuple(int(s) for s in img.shape[1:])
    if len(spatial) == 2:
        return f"a 2D picture ({spatial[0]} x {spatial[1]})"
    return f"a {'one-slice ' if 1 in spatial else '3D '}volume {spatial}"


class ResampleToReference(InvertibleTransform):
    """Put an image on the grid of a reference image (the other modality onto the MRI grid); invertible.

    Volumes are resampled affine-aware with MONAI's :class:`~monai.transforms.ResampleToMatch`: inside the image's
    field of view (its voxels' extent, centres +- half a voxel, as ITK reads it) the edge voxels keep their values
    (no fade towards the zeros beyond), outside it the result is 0. 2D pictures carry no geometry: equal sizes pass
    unchanged, a different size is an error unless ``resize_2d`` asks for a bilinear resize to the reference size
    (never done silently); a 2D image whose affine differs from the reference's (e.g. moved by
    :class:`RegisterToReference`) is resampled by its affine like a volume. The
    result keeps the image's own metadata (name, modality, scaling record) with the reference's affine, records
    ``overlap_fraction`` (share of reference voxels inside the image's field of view) and pushes one entry on
    ``applied_operations``, so :meth:`inverse` (and :class:`~monai.transforms.Invertd`) puts it back on its own grid.

    A volume that covers less than ``min_overlap`` of the reference grid is fused (the rest of the other
    modality is 0) with a warning giving the fraction; one that does not overlap at all is an error.

    Args:
        mode: interpolation mode for volumes.
        resize_2d: allow resizing a 2D picture of another size.
        min_overlap: warn when the image covers a smaller fraction of the reference grid.
    """

    backend = ResampleToMatch.backend

    def __init__(self, mode: str = "bilinear", resize_2d: bool = False, min_overlap: float = 0.9) -> None:
        self.resampler = ResampleToMatch(mode=mode, padding_mode="border")
        self.field_of_view = ResampleToMatch(mode="nearest", padding_mode="zeros")
        self.resize_2d = resize_2d
        if isinstance(min_overlap, bool) or not isinstance(min_overlap, numbers.Real) or not 0 <= min_overlap <= 1:
            raise FusionInputError(f"min_overlap {min_overlap!r}: give a fraction from 0 to 1")
        self.min_overlap = float(min_overlap)

    def __call__(self, img: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``(C, *spatial)`` image on the grid of ``(C', *spatial')`` ``reference``, as ``(C, *spatial')``.

        Raises:
            FusionInputError: the images have different dimensionality, a 2D size mismatch without ``resize_2d``,
                a picture loaded by MONAI's ``LoadImage`` (``meta["rows_columns_swapped"]``) paired with one that is
                not,
                ``resize_2d`` for volumes,
                a volume without geometry (an array, ``meta["has_geometry"]`` False) against one with it or
                against one of another shape, or no overlap at all.
        """
        img = img if isinstance(img, MetaTensor) else MetaTensor(img)
        reference = reference if isinstance(reference, MetaTensor) else MetaTensor(reference)
        name = img.meta.get("filename_or_obj", "other")
        ref_name = reference.meta.get("filename_or_obj", "mri")
        if img.ndim != reference.ndim:
            raise FusionInputError(
                f"{name}: {_describe_grid(img)} but the MRI {ref_name} is {_describe_grid(reference)}; give both as "
                "2D pictures (PNG, TIFF, JPEG) or both as volumes (NIfTI, NRRD, MHA, DICOM)"
            )
        if img.ndim == 4 and self.resize_2d:  # an option that would do nothing: the user expected something of it
            raise FusionInputError(f"{name}: --resample (resample=True) resizes 2D pictures; volumes are put on the "
                                   "MRI's grid by their geometry without it: leave it off")
        placed = [x.meta.get("has_geometry", True) for x in (img, reference)]  # arrays carry no affine
        if img.ndim == 4 and placed[0] != placed[1]:
            unplaced, placed_name = (name, ref_name) if placed[1] else (ref_name, name)
            raise FusionInputError(
                f"{unplaced}: an array has no geometry (affine) to place it against {placed_name}; give both as files, "
                "both as arrays on one grid, or MetaTensors with their affines"
            )
        if img.ndim == 4 and not any(placed) and img.shape[1:] != reference.shape[1:]:
            raise FusionInputError(
                f"{name}: shape {tuple(img.shape[1:])} differs from the MRI's {tuple(reference.shape[1:])}; arrays "
                "carry no geometry: resample it onto the MRI's grid first, or give files or MetaTensors with affines"
            )
        swapped = [bool(x.meta.get(ROWS_COLUMNS_SWAPPED, False)) for x in (img, reference)]
        if img.ndim == 3 and swapped[0] != swapped[1]:  # one (C, W, H) from MONAI's LoadImage, one (C, H, W)
            loaded, other_name = (name, ref_name) if swapped[0] else (ref_name, name)
            raise FusionInputError(
                f"{loaded}: a picture loaded by MONAI's LoadImage (rows and columns swapped) paired with {other_name}, "
                "which is not: load both the same way (both with LoadImage, or both as paths or arrays)"
            )
        orig_size = tuple(img.shape[1:])
        if img.ndim == 3 and _same_affine_2d(img, reference):  # a picture: kept or resized; our entry says which
            if orig_size == tuple(reference.shape[1:]):
                out, method = img.clone(), "none"
            elif self.resize_2d:
                resized = F.interpolate(img.as_tensor()[None], size=tuple(reference.shape[1:]), mode="bilinear",
                                        align_corners=False)[0]
                out, method = convert_to_dst_type(resized, img)[0], "resize"
            else:
                raise FusionInputError(
                    f"{name}: size {orig_size} differs from the MRI's {tuple(reference.shape[1:])}; "
                    "resize it to the MRI's size, or pass --resample to do so (fuse(resample=True))"
                )
            self.push_transform(out, orig_size=orig_size, extra_info={"method": method})
            coverage = 1.0
        else:  # a volume (or a 2D image placed by its affine, e.g. registered): ResampleToMatch plus a FOV channel
            inside = self.field_of_view(torch.ones_like(img[:1]), reference)[0] > 0.5  # (*spatial'): nearest voxel
            coverage = float(inside.float().mean())
            if coverage == 0.0:
                raise FusionInputError(
                    f"{name}: does not overlap the MRI {ref_name} in world coordinates (check the files' geometry)"
                )
            if coverage < self.min_overlap:
                warnings.warn(
                    f"{name}: covers only {coverage:.0%} of the MRI {ref_name}'s grid (overlap_fraction "
                    f"{coverage:.3f}); outside it the other modality is taken as 0: check the registration",
                    stacklevel=2,
                )
            out = self.resampler(img, reference) * inside  # (C, *spatial'), edges kept, 0 outside
            out.meta = dict(img.meta)  # ResampleToMatch copied the reference's meta; keep the image's own
            self.push_transform(out, replace=True)  # our entry, holding ResampleToMatch's for the inverse
        out.affine = reference.affine
        out.meta["overlap_fraction"] = coverage
        return out

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        """Back onto the image's own grid (volumes: resampled; 2D: resized back or unchanged).

        Args:
            data: an image this transform put on the reference grid ``(C, *spatial')``.

        Returns:
            the image on its original grid ``(C, *spatial)``.
        """
        transform = self.pop_transform(data)
        extra = transform[TraceKeys.EXTRA_INFO]
        if extra.get("method") == "none":
            return data
        if extra.get("method") == "resize":
            size = tuple(int(s) for s in transform[TraceKeys.ORIG_SIZE])
            resized = F.interpolate(torch.as_tensor(data)[None], size=size, mode="bilinear", align_corners=False)[0]
            return convert_to_dst_type(resized, data)[0]
        data.push_applied_operation(extra)  # the ResampleToMatch entry, inverted by MONAI
        return self.resampler.inverse(data)


def _same_affine_2d(img: MetaTensor, reference: MetaTensor) -> bool:
    """Whether two 2D images have the same pixel-to-world map (3x3 or 4x4 affines compared in 2D)."""
    def in_2d(affine: torch.Tensor) -> torch.Tensor:
        affine = torch.as_tensor(affine, dtype=torch.float64)
        return affine[[0, 1, -1]][:, [0, 1, -1]]

    return bool(torch.allclose(in_2d(img.affine), in_2d(reference.affine), atol=1e-6))


def resample_to_reference(
    img: MetaTensor, reference: MetaTensor, resize_2d: bool = False, mode: str = "bilinear"
) -> tuple[MetaTensor, float]:
    """Functional form of :class:`ResampleToReference`.

    Args:
        img: ``(C, *spatial)`` image to move.
        reference: ``(C', *spatial')`` image whose grid (shape, affine) is kept.
        resize_2d: allow resizing a 2D picture of another size.
        mode: interpolation mode for volumes.

    Returns:
        The image on the reference grid and the fraction of reference voxels covered by ``img``.
    """
    out = ResampleToReference(mode=mode, resize_2d=resize_2d)(img, reference)
    return out, out.meta["overlap_fraction"]


class ResampleToReferenced(InvertibleReferencedMapTransform):
    """Dict wrapper of :class:`ResampleToReference`: the ``keys`` onto the grid of ``ref_key`` (the MRI).

    Args:
        keys: images to move, usually ``"other"`` (before the colour split, so chroma moves with the luma).
        ref_key: the reference image, usually ``"mri"``.
        mode: interpolation mode for volumes.
        resize_2d: allow resizing 2D pictures of another size (never done silently).
        allow_missing_keys: don't raise when a key is absent.
        min_overlap: warn when an image covers a smaller fraction of the reference grid.
    """

    backend = ResampleToReference.backend

    def __init__(
        self, keys: KeysCollection, ref_key: str = "mri", mode: str = "bilinear", resize_2d: bool = False,
        allow_missing_keys: bool = False, min_overlap: float = 0.9,
    ) -> None:
        super().__init__(keys, ResampleToReference(mode=mode, resize_2d=resize_2d, min_overlap=min_overlap), ref_key,
                         allow_missing_keys=allow_missing_keys)


class CheckMinSize(Transform):
    """Refuse an image smaller than ``min_size`` in any spatial dimension, naming its file.

    Training crops ``roi_size`` patches; MONAI's random crop returns a smaller image unchanged, which then fails
    deep inside batching or the network. This check, placed after loading, says which file is too small.

    Args:
        min_size: the smallest size per spatial dimension (an int for all; a sequence also fixes the number of
            spatial dimensions: a volume where pictures are expected is refused as such, not as "too small").
        what: what needs the size, for the message (e.g. ``"the training crop roi_size"``).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, min_size: int | tuple[int, ...], what: str = "the training crop roi_size") -> None:
        self.min_size = min_size
        self.what = what

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Return ``img`` ``(C, *spatial)`` unchanged when it is large enough.

        Raises:
            FusionInputError: a spatial size below ``min_size``.
        """
        spatial = tuple(int(v) for v in img.shape[1:])
        need = (self.min_size,) * len(spatial) if isinstance(self.min_size, int) else tuple(self.min_size)
        name = img.meta.get("filename_or_obj", "image") if isinstance(img, MetaTensor) else "image"
        if len(need) != len(spatial):
            advice = ("slice volumes first (RandSliced, docs/data.md; in a training config with its own volume "
                      "chain, also set load_transforms#min_size) or give 2D pictures" if len(spatial) == 3
                      else "give volumes, or a 2D roi_size")
            raise FusionInputError(f"{name}: {_describe_grid(img)}, where {self.what} {need} takes "
                                   f"{len(need)}D images; {advice}")
        if any(s < n for s, n in zip(spatial, need)):
            raise FusionInputError(
                f"{name}: size {spatial} is smaller than {self.what} {need}; use larger images or a smaller roi_size"
            )
        return img


class CheckMinSized(MapTransform):
    """Dict wrapper of :class:`CheckMinSize`.

    Args:
        keys: image keys.
        min_size: the smallest size per spatial dimension.
        what: what needs the size, for the message.
        allow_missing_keys: don't raise when a key is absent.
    """

    backend = CheckMinSize.backend

    def __init__(self, keys: KeysCollection, min_size: int | tuple[int, ...],
                 what: str = "the training crop roi_size", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckMinSize(min_size, what)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.checker(d[key])
        return d


CheckMinSizeD = CheckMinSizeDict = CheckMinSized


class CheckSameSized(MapTransform):
    """Refuse a pair whose images differ in spatial size, naming both files (a check of several keys together).

    Training and evaluation compare a pair pixel by pixel and stack it into one tensor: an MRI of 256 x 256 beside
    a CT of 200 x 200 failed inside MONAI's dataset with a long traceback naming neither file.

    Args:
        keys: the image keys, the MRI's first.
        allow_missing_keys: don't raise when a key is absent.
    """

    backend = CheckMinSize.backend

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Return ``data`` unchanged when its images ``(C, *spatial)`` share one spatial size.

        Raises:
            FusionInputError: ``<other>: size ... differs from the MRI's ... (<mri>); ...``.
        """
        d = dict(data)
        keys = list(self.key_iterator(d))

        def name(key: Hashable) -> str:
            return str(d[key].meta.get("filename_or_obj", key)) if isinstance(d[key], MetaTensor) else str(key)

        for key in keys[1:]:
            if tuple(d[key].shape[1:]) != tuple(d[keys[0]].shape[1:]):
                fix = ("volumes with their geometry are put on the MRI's grid and sliced by ResampleToReferenced and "
                       "RandSliced (configs/own_volumes.json for training)" if d[key].ndim == 4 == d[keys[0]].ndim
                       else "resize or register it to the MRI first")
                raise FusionInputError(
                    f"{name(key)}: size {tuple(d[key].shape[1:])} differs from the MRI's {tuple(d[keys[0]].shape[1:])} "
                    f"({name(keys[0])}); a pair is compared pixel by pixel: {fix}"
                )
        return d


CheckSameSizeD = CheckSameSizeDict = CheckSameSized


class RandSlice(Randomizable, InvertibleTransform):
    """Sample one 2D slice ``(C, H, W)`` of a volume ``(C, X, Y, Z)``, among slices with enough foreground.

    The slice is shown as :func:`slice_layout` shows the network a volume's slices (radiological display) and keeps
    the volume's metadata and history, with a 2D affine that keeps the in-plane pixel spacing, plus ``slice_axis``,
    ``slice_index``, ``slice_rows``, ``slice_columns`` (the volume's voxel axes along its rows and columns) and
    ``slice_flipped`` (those reversed). A slice cannot be put back into its volume: :meth:`inverse` refuses, so
    MONAI's ``Invertd`` over a chain that slices says so instead of "inverting" the volume's steps on a slice.

    A 2D image ``(C, H, W)`` (a picture in a datalist of volumes) is its own slice: returned unchanged.

    Args:
        axis: voxel axis to slice along; ``None`` takes the axial one of the volume's affine.
        min_foreground: sample among slices with at least this fraction of voxels > 0 (all slices if none has).
        position: ``None`` samples a slice at random; a fraction from 0 to 1 takes the slice at that place among
            those candidates, always the same (0.5: the middle one), e.g. for validation, whose loss picks the best
            model and would otherwise compare other slices at each validation.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, axis: int | None = None, min_foreground: float = 0.05, position: float | None = None) -> None:
        if position is not None and (isinstance(position, bool) or not isinstance(position, numbers.Real)
                                     or not 0 <= position <= 1):
            raise FusionInputError(f"position {position!r}: give a fraction from 0 to 1, or null for a random slice")
        self.axis = axis
        self.min_foreground = min_foreground
        self.position = position
        self._axis = 0
        self._index = 0

    def randomize(self, img: torch.Tensor) -> None:
        """Pick the axis and slice index for ``img`` (``(C, X, Y, Z)``).

        Args:
            img: the volume ``(C, X, Y, Z)``; its affine picks the axis when ``axis`` is ``None``.
        """
        affine = img.affine if isinstance(img, MetaTensor) else None
        self._axis = self.axis if self.axis is not None else slicing_axis(affine, tuple(img.shape[1:]))
        in_plane = [1 + i for i in range(3) if i != self._axis]
        foreground = (torch.as_tensor(img) > 0).float().mean(dim=(0, *in_plane)).cpu().numpy()  # (n_slices,)
        candidates = np.flatnonzero(foreground >= self.min_foreground)
        candidates = candidates if candidates.size else np.arange(foreground.size)
        if self.position is None:
            self._index = int(self.R.choice(candidates))
        else:
            self._index = int(candidates[round(self.position * (candidates.size - 1))])

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        """The slice ``(C, H, W)`` in the anatomical layout :class:`~monai_lkcfusion.inferers.FusionInferer` gives
        the network (:func:`slice_layout`); ``randomize=False`` reuses the last axis and index (same slice of a
        pair); a 2D image is returned as it is."""
        if img.ndim == 3:  # (C, H, W): a picture is its own slice
            return img
        if randomize:
            self.randomize(img)
        placed = isinstance(img, MetaTensor) and img.meta.get("has_geometry", True)
        (rows, columns), flipped = slice_layout(img.affine if placed else None, self._axis)
        plane = torch.as_tensor(img).select(1 + self._axis, self._index)  # (C, in-plane axes in voxel order)
        if (rows, columns) != tuple(sorted((rows, columns))):
            plane = plane.transpose(1, 2)
        dims = [1 + (rows, columns).index(voxel) for voxel in flipped]
        out = convert_to_dst_type(plane.flip(dims) if dims else plane, img)[0]  # (C, H, W)
        if isinstance(out, MetaTensor):
            affine = torch.as_tensor(img.affine, dtype=torch.float64)[:3, :3]
            spacing = torch.linalg.norm(affine[:, [rows, columns]], dim=0)
            out.affine = torch.diag(torch.cat([spacing, torch.ones(1, dtype=torch.float64)]))
            where = {"slice_axis": self._axis, "slice_index": self._index, "slice_rows": rows,
                     "slice_columns": columns, "slice_flipped": list(flipped)}  # its place in the volume
            out.meta.update({"spatial_dims": 2, **where})
            self.push_transform(out, extra_info=where)
        return out

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        """Refused: the rest of the volume is gone.

        Args:
            data: a slice made by this transform.

        Raises:
            FusionInputError: always.
        """
        raise FusionInputError(_NOT_INVERTIBLE)


_NOT_INVERTIBLE = ("RandSlice: a 2D slice cannot be inverted back to its volume; invert a chain without it (e.g. "
                   "fusion_preprocessing) on whole volumes")


class RandSliced(Randomizable, MapTransform, InvertibleTransform):
    """Dict wrapper of :class:`RandSlice`: one slice at the same index of every key (registered volumes).

    Args:
        keys: volumes ``(C, X, Y, Z)`` on one grid, e.g. ``("mri", "other")``; the first one chooses the slice.
        axis: voxel axis to slice along; ``None`` takes the axial one of the first key's affine.
        min_foreground: sample among slices whose first key has at least this fraction of voxels > 0.
        allow_missing_keys: don't raise when a key is absent.
        position: ``None`` for a random slice, or a fixed place among the candidates (see :class:`RandSlice`).
    """

    backend = RandSlice.backend

    def __init__(
        self,
        keys: KeysCollection,
        axis: int | None = None,
        min_foreground: float = 0.05,
        allow_missing_keys: bool = False,
        position: float | None = None,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.slicer = RandSlice(axis=axis, min_foreground=min_foreground, position=position)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandSliced:
        """Seed this wrapper and its :class:`RandSlice` alike.

        Args:
            seed: a seed for both random states.
            state: a ``RandomState`` to use instead of ``seed``.

        Returns:
            this transform.
        """
        super().set_random_state(seed, state)
        self.slicer.set_random_state(seed, state)
        return self

    def randomize(self, data: torch.Tensor) -> None:
        """Pick the axis and slice index from the first key's volume (see :meth:`RandSlice.randomize`).

        Args:
            data: the first key's volume ``(C, X, Y, Z)``.
        """
        self.slicer.randomize(data)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        first = self.first_key(d)
        if first not in d:  # no key present (allow_missing_keys): nothing to slice
            return d
        grid = tuple(d[first].shape[1:])
        if len(grid) == 2:  # a pair of pictures in a datalist of volumes: its own slice (each checked below)
            for key in self.key_iterator(d):
                if tuple(d[key].shape[1:]) != grid:
                    raise FusionInputError(f"RandSliced: '{key}' {tuple(d[key].shape[1:])} and '{first}' {grid}: a "
                                           "picture pairs with a picture of its size, a volume with a volume")
            return d
        self.randomize(d[first])
        for key in self.key_iterator(d):
            if tuple(d[key].shape[1:]) != grid:
                raise FusionInputError(
                    f"RandSliced: '{key}' has the grid {tuple(d[key].shape[1:])}, '{first}' {grid}; one slice index "
                    "needs volumes on one grid (resample them first)"
                )
            d[key] = self.slicer(d[key], randomize=False)
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Refused, as :meth:`RandSlice.inverse`.

        Args:
            data: a dictionary of slices made by this transform.

        Raises:
            FusionInputError: always.
        """
        raise FusionInputError(_NOT_INVERTIBLE)


ResampleToReferenceD = ResampleToReferenceDict = ResampleToReferenced
RandSliceD = RandSliceDict = RandSliced
