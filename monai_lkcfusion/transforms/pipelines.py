"""Ready-made transform chains for fusion pairs: training loads, inference pre- and post-processing.

Inference is ``fusion_preprocessing`` -> :class:`~monai_lkcfusion.inferers.FusionInferer` (on ``"image"``, giving
``"pred"``) -> ``fusion_postprocessing``; :func:`monai_lkcfusion.inference.fuse`, the bundle's inference.json and
:class:`~monai_lkcfusion.engines.FileFusionEngine` all run this one chain.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

from monai.transforms import Compose, ConcatItemsd, EnsureTyped, ScaleIntensityRanged

from .color import MergeLumad, SplitLumad
from .intensity import ScaleModalityd
from .io import LoadFusionImaged
from .post import AddFusionRecordd, MaskBackgroundd
from .registration import RegisterToReferenced
from .spatial import CheckMinSized, CheckSameSized, ResampleToReferenced

__all__ = ["fusion_load_transforms", "fusion_postprocessing", "fusion_preprocessing"]


def fusion_load_transforms(
    keys: tuple[str, str] = ("mri", "other"),
    modality: Mapping[Hashable, str | None] | None = None,
    split_luma: bool = True,
    min_size: int | Sequence[int] | None = None,
) -> Compose:
    """Load a 2D pair from paths into float32 ``(1, H, W)`` tensors in [0, 1] (for training and evaluation).

    ``LoadFusionImaged`` -> ``CheckSameSized`` (a pair of two sizes, named) -> ``ScaleModalityd`` -> ``SplitLumad``
    (colour other -> Y, Cb/Cr under
    ``"other_cbcr"``; an MRI saved as colour is reduced to its luma too) -> ``EnsureTyped``.
    Append random crops/flips for training.

    Args:
        keys: the MRI key and the other modality's key.
        modality: optional modality per key (e.g. ``{"other": "CT"}``).
        split_luma: convert colour images to luma (keep ``False`` to get RGB ``(3, H, W)``).
        min_size: refuse images smaller than this (the training crop ``roi_size``), naming the file; a sequence
            (train.json: ``[roi_size, roi_size]``) also refuses a volume among pictures as such.

    Returns:
        The composed transform.
    """
    chain = [LoadFusionImaged(keys), CheckSameSized(keys)]
    if min_size is not None:
        chain.append(CheckMinSized(keys, min_size))
    chain.append(ScaleModalityd(keys, modality=modality, fallback={keys[0]: "MR"}))  # the MRI, under any key
    if split_luma:
        chain.append(SplitLumad(keys))
    chain.append(EnsureTyped(keys, dtype="float32"))
    return Compose(chain)


def fusion_preprocessing(
    modality: str | None = None,
    resize_2d: bool = False,
    series: Mapping[Hashable, str | None] | None = None,
    mri_modality: str | None = None,
    allow_irregular_slices: bool = False,
    allow_external_data: bool = False,
    *,
    register: str = "none",
    transform: str | Path | None = None,
    save_transform: str | Path | None = None,
    overwrite: bool = True,
) -> Compose:
    """Inputs ``{"mri": ..., "other": ...}`` (paths, arrays or tensors) to the network's pair under ``"image"``.

    ``LoadFusionImaged`` -> ``ScaleModalityd`` (each to [0, 1] by modality) -> ``ResampleToReferenced`` (other
    onto the MRI grid; invertible) -> ``SplitLumad`` (luma; a colour other's chroma to ``"other_cbcr"``) ->
    ``ConcatItemsd`` (``"image"`` = ``(2, *spatial)``, channel 0 MRI, carrying the MRI's metadata).

    Args:
        modality: modality of the other image (``"CT"``, ``"PET"``, ``"SPECT"``, ``"MR"``); default from the
            file (DICOM) or the data.
        resize_2d: allow resizing a 2D other image of another size to the MRI's size (before a registration).
        series: SeriesInstanceUID per key for DICOM folders with several series.
        mri_modality: modality of the MRI; default the file's (DICOM), else ``"MR"`` (never detected as CT).
        allow_irregular_slices: read DICOM series with missing, duplicated or unevenly spaced slices (reported).
        allow_external_data: let detached headers (``.nhdr``, ``.mhd``) name data files outside their folder.
        register: ``"rigid"`` or ``"affine"``: register the other image to the MRI first
            (:class:`RegisterToReferenced`, before the resampling); ``"none"`` (default): world coordinates only.
        transform: apply this ITK transform file instead of registering.
        save_transform: write the transform found (or applied) to this ITK transform file (a folder: one per image).
        overwrite: replace an existing ``save_transform`` file.

    Returns:
        The composed transform.
    """
    keys = ("mri", "other")
    return Compose([
        LoadFusionImaged(keys, series=series, allow_irregular_slices=allow_irregular_slices,
                         allow_external_data=allow_external_data),
        ScaleModalityd(keys, modality={"mri": mri_modality, "other": modality}),
        *([RegisterToReferenced("other", ref_key="mri", kind=register, transform=transform,
                                 save_transform=save_transform, resize_2d=resize_2d,
                                 overwrite=overwrite)]
          if register != "none" or transform else []),
        ResampleToReferenced("other", ref_key="mri", resize_2d=resize_2d),
        SplitLumad(keys),
        ConcatItemsd(keys, name="image", dim=0),
    ])


def fusion_postprocessing(mask_background: bool = True, color: bool = True, preserve_luma: bool = True) -> Compose:
    """The fused luma ``"pred"`` ``(1, *spatial)`` to the output image.

    Clip to [0, 1] -> ``MaskBackgroundd`` (0 where both sources are 0) -> ``MergeLumad`` (a colour other's chroma
    back, luma-preserving gamut mapping) -> ``AddFusionRecordd``. Append :class:`SaveFusedd` to write files.

    Args:
        mask_background: zero the output where both sources are background.
        color: put a colour other modality's chroma back (``False``: the fused luma only, gray).
        preserve_luma: reduce out-of-gamut chroma instead of clipping R, G, B (see ``ycbcr_to_rgb``).

    Returns:
        The composed transform.
    """
    chain = [ScaleIntensityRanged("pred", a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True)]
    if mask_background:
        chain.append(MaskBackgroundd("pred", source_key="image"))
    if color:
        chain.append(MergeLumad("pred", chroma_key="other_cbcr", preserve_luma=preserve_luma))
    chain.append(AddFusionRecordd("pred"))
    return Compose(chain)
