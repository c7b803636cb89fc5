"""Fusion of an MRI with a second modality: 2D pictures of any size and 3D volumes slice by slice.

:func:`fuse` takes arrays, tensors, MetaTensors or file paths (pictures, NIfTI, NRRD/MHA, DICOM series folders)
and runs the package's one inference pipeline: :func:`~monai_lkcfusion.transforms.fusion_preprocessing` (load,
scale by modality, other onto the MRI grid, luma split, pair), :class:`~monai_lkcfusion.inferers.FusionInferer`
and :func:`~monai_lkcfusion.transforms.fusion_postprocessing` (clip, background mask, chroma back, record).
:func:`fuse_files` adds atomic writing for the command line; :func:`fuse_dict` runs given pieces on one pair (as
the bundle's :class:`~monai_lkcfusion.engines.FileFusionEngine` does).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import Compose

from .data.atomic import check_not_input, check_output_file, check_writable
from .data.io import check_output_path, image_spatial_dims, write_image
from .data.pairing import check_distinct_pair
from .errors import FusionInputError, as_flag, user_error
from .inferers import FUSION_METHODS, FusionInferer, build_predictor, check_tta
from .registration import check_preview_name, check_transform_file, save_alignment_preview
from .transforms.io import ImageLike
from .transforms.pipelines import fusion_postprocessing, fusion_preprocessing
from .transforms.post import describe_fusion

__all__ = ["FUSION_METHODS", "build_predictor", "fuse", "fuse_dict", "fuse_files"]


def fuse(
    mri: ImageLike,
    other: ImageLike,
    model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor] | None = None,
    method: str = "lkcfunet",
    weights: str | Path | None = None,
    axis: int | None = None,
    device: str | torch.device | None = None,
    optimize: bool = True,
    batch_size: int = 8,
    progress: bool = True,
    modality: str | None = None,
    resample: bool = False,
    tile_size: int = 1024,
    mri_series: str | None = None,
    other_series: str | None = None,
    mask_background: bool = True,
    color: bool = True,
    tta: bool = False,
    mri_modality: str | None = None,
    allow_irregular_slices: bool = False,
    allow_external_data: bool = False,
    *,
    register: str = "none",
    transform: str | Path | None = None,
    save_transform: str | Path | None = None,
    preview: str | Path | None = None,
    workers: int | None = None,
    threads: int | None = None,
    overwrite: bool = True,
) -> MetaTensor | np.ndarray:
    """Fuse an MRI with CT, PET or SPECT; the result lies on the MRI's grid and carries its metadata.

    Inputs are read and scaled to [0, 1] by modality (see :class:`~monai_lkcfusion.transforms.ScaleModality`);
    NaN/Inf voxels are set to 0 and reported with a warning. A colour (pseudo-colour PET/SPECT) image is split
    into BT.601 luma and chroma: the luma is fused with the MRI and the chroma is put back with a luma-preserving
    gamut mapping (so the output's gray level is the fused luma), giving RGB; gray inputs give a gray output.
    Volumes: the other image is resampled onto the MRI grid (affine-aware) and fused slice by slice. 2D images
    of any size are fused whole (the network pads and crops); slices larger than ``tile_size`` in overlapping
    tiles. Where both inputs are 0 (background) the output is exactly 0 (``mask_background``).

    Args:
        mri: path, or ``(H, W)`` / ``(X, Y, Z)`` NumPy array, or channel-first tensor/MetaTensor ``(C, *spatial)``.
        other: the second modality in the same forms; NumPy ``(H, W, 3|4)`` is a colour picture.
        model: a network mapping ``(B, 2, H, W)`` (MRI, other) to ``(B, 1, H, W)`` (optimised once and cached,
            see :func:`~monai_lkcfusion.inferers.build_predictor`), or a predictor; overrides ``method``/``weights``.
        method: ``"lkcfunet"`` (the network) or a baseline ``"max"``, ``"mean"``, ``"dwt"``, ``"laplacian"``.
        weights: LKC-FUNet weights file; default :func:`~monai_lkcfusion.networks.default_weights_path`.
        axis: voxel axis to slice volumes along; default the MRI's axial axis.
        device: where the network runs (default CUDA when available, else CPU); results return on CPU.
        optimize: pass the network through :func:`~monai_lkcfusion.networks.optimize_for_inference`.
        batch_size: slices (or tiles) per network call.
        progress: show a progress bar for volumes.
        modality: modality of ``other`` (``"CT"``, ``"PET"``, ``"SPECT"``, ``"MR"``); default from the file or data.
        resample: allow resizing a 2D ``other`` of another size to the MRI's size (never done silently).
        tile_size: largest slice side fused in one piece.
        mri_series: SeriesInstanceUID when the MRI's DICOM folder holds several series.
        other_series: the same for ``other``.
        mask_background: set the output to 0 where both inputs are 0 after scaling.
        color: put a colour ``other``'s chroma back (``False``: the fused luma only, ``(1, *spatial)``).
        tta: average the network's output over the four flips of the image plane (4x the time).
        mri_modality: modality of ``mri``; default the file's (DICOM), else ``"MR"``: the MRI is never CT-windowed
            because of its values.
        allow_irregular_slices: fuse DICOM series with missing, duplicated or unevenly spaced slices (reported
            with the numbers as a warning; default: refused).
        allow_external_data: let detached headers (``.nhdr``, ``.mhd``) read data files outside their folder.
        register: ``"rigid"`` or ``"affine"``: register ``other`` to the MRI (SimpleITK, Mattes mutual information,
            see :mod:`monai_lkcfusion.registration`) before fusing; ``"none"`` (default): trust the world coordinates.
        transform: apply this ITK transform file (e.g. from ``save_transform``) instead of registering.
        save_transform: write the transform found or applied as an ITK transform file (``.tfm``/``.txt``).
        preview: write a PNG that shows the alignment (checkerboard of the MRI and the other image, and the MRI's
            edges over the other image; volumes: three orthogonal slices), see
            :func:`~monai_lkcfusion.registration.save_alignment_preview`.
        workers: slices (or tiles) fused concurrently on the CPU (default: one per available core); see
            :func:`~monai_lkcfusion.inferers.worker_policy`.
        threads: intra-op threads per worker (default 1; the cores left per worker when ``workers`` > 1 is given).
        overwrite: replace an existing ``save_transform`` file (``False``: it is kept and this is an error, found
            before any work when ``save_transform`` names the file).

    Returns:
        A MetaTensor ``(1|3, *spatial)`` in [0, 1] with the MRI's affine and metadata plus ``fusion_method``,
        ``mri_intensity_scaling``/``other_intensity_scaling``, ``other_modality``, ``overlap_fraction`` and
        ``color`` (and ``registration`` when registered); a NumPy array in the MRI's layout when the MRI was given
        as a NumPy array.

    Raises:
        FusionInputError: unreadable inputs, dimension/size/channel mismatch, no overlap, unknown method, no
            weights for ``"lkcfunet"``, an unusable device, a batch/tile size below 1, a worker/thread count below 1
            or above 4 per core, an ``axis`` other than 0, 1, 2, or a ``save_transform``/``preview`` place that
            cannot be written or a ``preview`` that is an input file or not a ``.png`` (checked first), ``tta`` with a
            baseline method, or the same file as ``mri`` and ``other``.
    """
    check_distinct_pair(mri, other, mri_series, other_series)
    if preview is not None:  # a picture written after the work: never over an input file, nor unasked over a file
        inputs = [image for image in (mri, other) if isinstance(image, (str, Path))]
        check_output_file(check_preview_name(preview), "preview.png", inputs, overwrite)
    if save_transform is not None:
        check_transform_file(save_transform, overwrite)
        check_writable(save_transform)  # written after the (long) work: fail now, not then
    inferer = FusionInferer(tile_size=tile_size, batch_size=batch_size, axis=axis, tta=tta, device=device,
                            optimize=optimize, progress=progress, workers=workers, threads=threads)
    network = model if model is not None else build_predictor(None, method, weights, inferer.device, optimize)
    check_tta(inferer.tta, network)
    preprocessing = fusion_preprocessing(modality, resample, {"mri": mri_series, "other": other_series},
                                         mri_modality, allow_irregular_slices, allow_external_data,
                                         register=register, transform=transform, save_transform=save_transform,
                                         overwrite=overwrite)
    postprocessing = fusion_postprocessing(mask_background=as_flag(mask_background, "mask_background"),
                                           color=as_flag(color, "color"))  # "false" from a request is not on
    data = fuse_dict({"mri": mri, "other": other}, network, preprocessing, inferer, postprocessing)
    fused = data["pred"]
    if preview is not None:
        save_alignment_preview(data["mri"], data["other"], preview, overwrite=overwrite)
    return _as_layout(fused) if isinstance(mri, np.ndarray) else fused


def _warn_if_swapped(d: Mapping[Hashable, Any]) -> None:
    """Warn when the "MRI" is strongly coloured and the other image gray: a pseudo-colour PET/SPECT given first (the
    MRI's colour is dropped, so the fused image would be gray)."""
    chroma = d.get("mri_cbcr")
    if chroma is None or "other_cbcr" in d:
        return
    if float((torch.as_tensor(chroma) - 0.5).abs().mean()) > 0.005:  # Cb/Cr centred on 0.5: gray RGB has 0
        name = getattr(d.get("mri"), "meta", {}).get("filename_or_obj", "mri")
        warnings.warn(
            f"{name}: the MRI is in colour and the other image is gray: if the first is a pseudo-colour PET/SPECT, "
            "the arguments are swapped (give the MRI first); the MRI's colour is not kept",
            stacklevel=3,
        )


def fuse_dict(
    data: Mapping[Hashable, Any],
    network: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    preprocessing: Compose,
    inferer: Inferer,
    postprocessing: Compose,
) -> dict[Hashable, Any]:
    """Run the inference pipeline on one pair: ``preprocessing`` -> ``inferer`` on ``"image"`` -> ``postprocessing``.

    Args:
        data: ``{"mri": ..., "other": ...}`` (paths, arrays or tensors).
        network: a network or predictor for ``inferer``.
        preprocessing: e.g. :func:`~monai_lkcfusion.transforms.fusion_preprocessing`; must put the
            ``(2, *spatial)`` pair under ``"image"``.
        inferer: e.g. :class:`~monai_lkcfusion.inferers.FusionInferer`.
        postprocessing: e.g. :func:`~monai_lkcfusion.transforms.fusion_postprocessing`.

    Returns:
        The dict after post-processing, the fused image under ``"pred"``.

    Raises:
        FusionInputError, OSError: the user-facing error of a failing step (unwrapped from MONAI's
            ``RuntimeError("applying transform ...")``).

    When ``inferer`` shows progress (``FusionInferer(progress=True)``), the steps before and after it say what
    they are doing while they last over :data:`~monai_lkcfusion.progress.STAGE_INTERVAL` seconds (reading,
    resampling or registering a volume can take a minute on a busy CPU): :class:`~monai_lkcfusion.progress.Stage`.
    """
    from .progress import Stage

    progress = bool(getattr(inferer, "progress", False))
    names = " and ".join(Path(data[k]).name for k in ("mri", "other") if isinstance(data.get(k), (str, Path)))
    try:
        with Stage(f"reading and preparing {names or 'the pair'}", enabled=progress):
            d = preprocessing(dict(data))
        _warn_if_swapped(d)
        d["pred"] = inferer(d["image"][None], network)[0]  # (1, *spatial)
        with Stage(f"finishing the fusion of {names or 'the pair'}", enabled=progress):
            return postprocessing(d)
    except RuntimeError as err:
        cause = user_error(err)
        if cause is None:
            raise
        raise cause from None


def fuse_files(
    mri: str | Path,
    other: str | Path,
    output: str | Path,
    overwrite: bool = False,
    report: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> Path:
    """Fuse two image files (or DICOM folders) and write the result atomically; the extension picks the format.

    Args:
        mri: MRI file or DICOM series folder.
        other: the second modality.
        output: ``.png``/``.jpg``/``.bmp``/``.tif`` for 2D, ``.nii``/``.nii.gz``/``.nrrd``/``.mha`` for 2D or 3D.
        overwrite: replace an existing output (otherwise it is kept and this is an error, checked first).
        report: called with one line saying how the inputs were scaled and how much of the MRI the other
            modality covers (:func:`~monai_lkcfusion.transforms.post.describe_fusion`), e.g. ``print``.
        kwargs: passed to :func:`fuse`.

    Returns:
        The written path.

    Raises:
        FusionInputError: as :func:`fuse`; and before any fusion: a NumPy array as input, an output that is a
            folder, has no writable extension, is one of the inputs, exists without ``overwrite``, or is a picture
            format for a volume.
    """
    arrays = [name for name, image in (("mri", mri), ("other", other)) if isinstance(image, np.ndarray)]
    if arrays:  # fuse() gives NumPy results in the input's layout, which a file writer cannot tell from (C, ...)
        raise FusionInputError(f"{arrays[0]}: fuse_files reads and writes files; for a NumPy array call fuse() and "
                               "save its result (or pass a MetaTensor with its affine)")
    inputs = (mri, other) if all(isinstance(x, (str, Path)) for x in (mri, other)) else ()
    dims = {_spatial_dims(mri), _spatial_dims(other)}  # inputs that do not match are named first, by fuse()
    output = check_output_path(output, overwrite, inputs=inputs, spatial_dims=dims.pop() if len(dims) == 1 else None)
    if kwargs.get("preview") is not None:  # nor over the result, nor an existing file without overwrite
        check_output_file(kwargs["preview"], "preview.png", inputs=inputs, overwrite=overwrite)
        check_not_input(kwargs["preview"], [output], kind="output")
    fused = fuse(mri, other, **{"overwrite": overwrite, **kwargs})
    from .progress import Stage

    with Stage(f"writing {Path(output).name}", enabled=bool(kwargs.get("progress", True))):
        written = write_image(fused, output, overwrite=overwrite)
    if report is not None:
        report(describe_fusion(fused.meta))
    return written


def _spatial_dims(image: ImageLike) -> int | None:
    """2 or 3 for a path (from its header), an array or a tensor; ``None`` when unknown."""
    if isinstance(image, (str, Path)):
        return image_spatial_dims(image)
    if isinstance(image, np.ndarray):
        return 2 if image.ndim == 2 or image.ndim == 3 and image.shape[-1] in (3, 4) else 3
    return image.ndim - 1 if isinstance(image, torch.Tensor) else None


def _as_layout(img: MetaTensor) -> np.ndarray:
    """Channel-first result back to the NumPy layout of the input: ``(H, W)``, ``(H, W, 3)`` or ``(X, Y, Z)``."""
    array = img.as_tensor().numpy()
    return array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
