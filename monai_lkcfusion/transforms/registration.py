"""Registration of the other modality to the MRI as MONAI transforms (rigid/affine, SimpleITK; invertible)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform
from monai.utils import TraceKeys, TransformBackends

from ..data.io import image_stem
from ..errors import FusionInputError, as_flag
from ..registration import (
    REGISTRATION_KINDS,
    TRANSFORM_SUFFIXES,
    check_transform_file,
    moved_affine,
    read_transform,
    register,
    write_transform,
)
from .base import InvertibleReferencedMapTransform
from .spatial import ResampleToReference

__all__ = [
    "RegisterToReference",
    "RegisterToReferenceD",
    "RegisterToReferenceDict",
    "RegisterToReferenced",
]

logger = logging.getLogger("monai_lkcfusion.registration")


class RegisterToReference(InvertibleTransform):
    """Align an image with a reference (the other modality with the MRI) by a rigid or affine transform.

    The transform is found by :func:`monai_lkcfusion.registration.register` (Mattes mutual information; a colour
    image on its luma) or read from an ITK transform file, and applied to the image's **affine**: the voxels are
    not touched, all channels move together, and :class:`ResampleToReference` (next in the pipeline) puts the image
    on the reference grid with one interpolation. The result keeps the image's metadata plus ``registration``
    (kind, ITK matrix, final metric, convergence, overlap, warnings; see
    :meth:`~monai_lkcfusion.registration.RegistrationResult.as_meta`) and one entry on ``applied_operations``, so
    :meth:`inverse` (and ``Invertd``) restores the original affine. Registration warnings (no convergence, small
    overlap) are issued as ``UserWarning``; a summary line is logged on ``monai_lkcfusion.registration``.

    Args:
        kind: ``"none"`` (pass the image through unchanged, unless ``transform`` is given), ``"rigid"`` or
            ``"affine"``.
        transform: apply this transform instead of registering: an ITK transform file (``.tfm``/``.txt``/...) or a
            fixed-to-moving homogeneous matrix in ITK's frame.
        save_transform: write the transform (found or given) as an ITK transform file here; a folder (an existing
            one, or a path without a transform extension such as ``.tfm``, created) gets ``<MRI name>.tfm`` (the
            reference's file name: one per pair, as the fused results are named).
        overwrite: replace an existing transform file (``False``: it is kept and this is an error).
        resize_2d: a 2D picture of another size than the reference is first resized to the reference's size
            (bilinear, as :class:`ResampleToReference` with ``resize_2d`` does; pictures carry no geometry), then
            registered; the transform found or given is then in the reference's pixel frame. Without it such a pair
            is an error.
        register_kwargs: further options of :func:`~monai_lkcfusion.registration.register` (``iterations``,
            ``max_samples``, ``seed``, ``num_threads``, ...).
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        kind: str = "rigid",
        transform: str | Path | np.ndarray | None = None,
        save_transform: str | Path | None = None,
        resize_2d: bool = False,
        overwrite: bool = True,
        **register_kwargs: Any,
    ) -> None:
        kind = "none" if kind is None else str(kind).lower()
        if kind not in REGISTRATION_KINDS:
            raise FusionInputError(f"register: unknown kind {kind!r}; use one of {', '.join(REGISTRATION_KINDS)}")
        if transform is not None and kind != "none":
            raise FusionInputError("register: give either a kind of registration or a transform to apply, not both")
        self.kind = kind
        self.transform = transform
        self.save_transform = save_transform
        self.overwrite = as_flag(overwrite, "overwrite")
        self.resizer = ResampleToReference(resize_2d=resize_2d)
        self.register_kwargs = register_kwargs

    def __call__(self, img: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``(C, *spatial)`` image with an affine that aligns it with ``(C', *spatial')`` ``reference``.

        Raises:
            FusionInputError: 2D against 3D, 2D pictures of different sizes without ``resize_2d``, a constant image,
                no overlap, an unreadable or non-linear transform file.
        """
        if self.kind == "none" and self.transform is None:
            return img
        img = img if isinstance(img, MetaTensor) else MetaTensor(img)
        reference = reference if isinstance(reference, MetaTensor) else MetaTensor(reference)
        name = img.meta.get("filename_or_obj", "other")
        ndim = img.ndim - 1
        if img.ndim != reference.ndim:
            raise FusionInputError(f"{name}: {ndim}D image but the MRI is {reference.ndim - 1}D; cannot register")
        resized = ndim == 2 and img.shape[1:] != reference.shape[1:]
        if resized and not self.resizer.resize_2d:
            raise FusionInputError(
                f"{name}: size {tuple(img.shape[1:])} differs from the MRI's {tuple(reference.shape[1:])}; "
                "2D pictures are registered at equal sizes: pass --resample to resize it to the MRI's first"
            )
        if resized:
            img = self.resizer(img, reference)  # (C, H', W') on the MRI's pixel grid; its own inverse entry
        if self.transform is not None:
            record = self._given(ndim)
        else:
            result = register(reference, img, self.kind, **self.register_kwargs)  # its errors name the files
            record = result.as_meta()
            for message in result.warnings:
                warnings.warn(f"{name}: {message}", UserWarning, stacklevel=2)
            logger.info(
                "registered %s to the MRI (%s, start: %s): rotated %.1f degrees, MRI centre moved %.1f %s; mutual "
                "information %.3f -> %.3f (lower is a better match), %s after %d iterations, %.0f%% of the MRI's "
                "foreground covered, %.1f s", name, result.kind, result.initialization, result.rotation_degrees,
                result.shift, "px" if ndim == 2 else "mm", result.initial_metric, result.metric,
                "converged" if result.converged else "NOT converged", result.iterations, 100 * result.overlap,
                result.seconds,
            )
        matrix = np.asarray(record["matrix"], dtype=np.float64)
        if self.save_transform is not None:
            target = Path(self.save_transform)
            if target.is_dir() or target.suffix.lower() not in TRANSFORM_SUFFIXES:  # a folder: one file per pair
                target = target / f"{image_stem(str(reference.meta.get('filename_or_obj', 'mri')))}.tfm"
            check_transform_file(target, self.overwrite)
            write_transform(matrix, target)
            record["saved_to"] = str(target)
        out = img.clone()
        original = torch.as_tensor(img.affine).clone()
        out.affine = torch.as_tensor(moved_affine(original, matrix), dtype=original.dtype)
        out.meta["registration"] = record
        self.push_transform(out, extra_info={"affine": original, "resized": resized})
        return out

    def _given(self, ndim: int) -> dict[str, Any]:
        """The metadata record of a transform given as a file or a matrix."""
        if isinstance(self.transform, (str, Path)):
            return {"kind": "file", "source": str(self.transform),
                    "matrix": read_transform(self.transform, ndim).tolist()}
        matrix = np.asarray(self.transform, dtype=np.float64)
        if matrix.shape != (ndim + 1, ndim + 1):
            raise FusionInputError(f"register: a {matrix.shape} transform matrix for {ndim}D images")
        return {"kind": "matrix", "source": None, "matrix": matrix.tolist()}

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        """Restore the original affine (and size) and drop the ``registration`` record; a pass-through stays as it
        is.

        Args:
            data: an image this transform registered (its last applied operation is this transform's).

        Returns:
            a copy with the original affine (resized back when registration resized it); ``data`` itself when this
            transform recorded nothing.
        """
        ops = getattr(data, "applied_operations", [])
        if not ops or ops[-1].get(TraceKeys.CLASS_NAME) != self.__class__.__name__:
            return data  # kind "none": nothing was recorded
        transform = self.pop_transform(data)
        out = data.clone() if isinstance(data, MetaTensor) else MetaTensor(data)
        out.affine = transform[TraceKeys.EXTRA_INFO]["affine"]
        out.meta.pop("registration", None)
        return self.resizer.inverse(out) if transform[TraceKeys.EXTRA_INFO].get("resized") else out


class RegisterToReferenced(InvertibleReferencedMapTransform):
    """Dict wrapper of :class:`RegisterToReference`: align ``keys`` (the other image) with ``ref_key`` (the MRI).

    Put it after ``ScaleModalityd`` and before ``ResampleToReferenced`` (which then resamples all channels of a
    colour image with the found transform, once).

    Args:
        keys: images to align, usually ``"other"``.
        ref_key: the reference, usually ``"mri"``.
        kind: ``"none"``, ``"rigid"`` or ``"affine"``.
        transform: an ITK transform file (or matrix) to apply instead of registering.
        save_transform: where to write the transform (a file, or a folder for one file per image).
        resize_2d: resize a 2D picture of another size to the reference's before registering.
        overwrite: replace an existing transform file.
        allow_missing_keys: don't raise when a key is absent.
        register_kwargs: options of :func:`~monai_lkcfusion.registration.register`.
    """

    backend = RegisterToReference.backend

    def __init__(
        self,
        keys: KeysCollection,
        ref_key: str = "mri",
        kind: str = "rigid",
        transform: str | Path | np.ndarray | None = None,
        save_transform: str | Path | None = None,
        resize_2d: bool = False,
        overwrite: bool = True,
        allow_missing_keys: bool = False,
        **register_kwargs: Any,
    ) -> None:
        register_one = RegisterToReference(kind, transform, save_transform, resize_2d, overwrite, **register_kwargs)
        super().__init__(keys, register_one, ref_key, allow_missing_keys=allow_missing_keys)


RegisterToReferenceD = RegisterToReferenceDict = RegisterToReferenced
