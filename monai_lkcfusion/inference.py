"""Fusion of an MRI with a second modality: 2D pictures of any size and 3D volumes slice by slice.

:func:`fuse` takes arrays, tensors, MetaTensors or file paths (pictures, NIfTI, NRRD/MHA, DICOM series folders),
puts the second modality on the MRI's grid, fuses the luma with LKC-FUNet or a classical baseline, puts a colour
functional image's chroma back and returns the result on the MRI's geometry. :func:`fuse_files` adds reading
and atomic writing for the command line.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer, SlidingWindowInferer

from .baselines import BASELINE_METHODS, fuse_baseline
from .data.io import read_image, write_image
from .errors import FusionInputError
from .transforms.color import rgb_to_ycbcr, ycbcr_to_rgb
from .transforms.intensity import scale_to_unit
from .transforms.spatial import axial_axis, resample_to_reference

__all__ = ["FUSION_METHODS", "build_predictor", "fuse", "fuse_files"]

FUSION_METHODS = ("lkcfunet", *BASELINE_METHODS)
ImageLike = str | Path | np.ndarray | torch.Tensor


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
) -> MetaTensor | np.ndarray:
    """Fuse an MRI with CT, PET or SPECT; the result lies on the MRI's grid and carries its metadata.

    Inputs are read and scaled to [0, 1] by modality (see :func:`~monai_lkcfusion.transforms.scale_to_unit`);
    NaN/Inf voxels are set to 0 and reported with a warning. A colour (pseudo-colour PET/SPECT) image is split
    into BT.601 luma and chroma: the luma is fused with the MRI and the chroma is put back, so the output is RGB;
    gray inputs give a gray output. Volumes: the other image is resampled onto the MRI grid (affine-aware) and
    fused slice by slice with MONAI's :class:`~monai.inferers.SliceInferer`. 2D images of any size are fused whole
    (the network pads and crops); slices larger than ``tile_size`` are fused in overlapping tiles.

    Args:
        mri: path, or ``(H, W)`` / ``(X, Y, Z)`` NumPy array, or channel-first tensor/MetaTensor ``(C, *spatial)``.
        other: the second modality in the same forms; NumPy ``(H, W, 3|4)`` is a colour picture.
        model: a network mapping ``(B, 2, H, W)`` (MRI, other) to ``(B, 1, H, W)``, or a predictor from
            :func:`build_predictor`; overrides ``method`` and ``weights``.
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

    Returns:
        A MetaTensor ``(1|3, *spatial)`` in [0, 1] with the MRI's affine and metadata plus ``fusion_method``,
        ``intensity_scaling`` of both inputs and ``overlap_fraction``; a NumPy array in the MRI's layout when the
        MRI was given as a NumPy array.

    Raises:
        FusionInputError: unreadable inputs, dimension/size/channel mismatch, no overlap, unknown method, no
            weights for ``"lkcfunet"``, an unusable device, or a batch/tile size below 1.
    """
    if batch_size < 1 or tile_size < 1:
        raise FusionInputError(f"batch_size {batch_size} and tile_size {tile_size} must be positive (--batch-size)")
    device = _device(device)
    ref = _as_image(mri, "mri", mri_series)
    img = _as_image(other, "other", other_series)
    ref_unit, ref_record = _to_unit(ref, None)
    img_unit, img_record = _to_unit(img, modality)
    mri_y = rgb_to_ycbcr(ref_unit)[:1] if ref_unit.shape[0] == 3 else ref_unit  # (1, *spatial)
    moved, overlap = resample_to_reference(img_unit, ref, resize_2d=resample)
    other_y = rgb_to_ycbcr(moved)[:1] if moved.shape[0] == 3 else moved
    predictor = build_predictor(model, method, weights, device, optimize)
    pair = torch.cat([_plain(mri_y), _plain(other_y)])[None]  # (1, 2, *spatial)
    with torch.inference_mode():
        fused = _run(pair, predictor, axis if axis is not None else axial_axis(ref.affine), batch_size, progress,
                     tile_size, device)[0].clamp(0.0, 1.0)  # (1, *spatial)
    fused = fused.cpu().clone()  # a normal tensor again, outside inference mode
    if moved.shape[0] == 3:
        fused = ycbcr_to_rgb(fused, rgb_to_ycbcr(_plain(moved))[1:])  # (3, *spatial)
    meta = {k: v for k, v in ref.meta.items() if k not in ("intensity_scaling", "nonfinite_voxels")}
    meta.update({
        "fusion_method": getattr(predictor, "fusion_method", "model"),
        "mri_intensity_scaling": ref_record["intensity_scaling"],
        "other_intensity_scaling": img_record["intensity_scaling"],
        "other_modality": img_record["modality"],
        "overlap_fraction": overlap,
        "color": fused.shape[0] == 3,
    })
    out = MetaTensor(fused, meta=meta)
    return _as_layout(out, mri) if isinstance(mri, np.ndarray) else out


def fuse_files(
    mri: str | Path, other: str | Path, output: str | Path, overwrite: bool = False, **kwargs: Any
) -> Path:
    """Fuse two image files (or DICOM folders) and write the result atomically; the extension picks the format.

    Args:
        mri: MRI file or DICOM series folder.
        other: the second modality.
        output: ``.png``/``.jpg``/``.bmp``/``.tif`` for 2D, ``.nii``/``.nii.gz``/``.nrrd``/``.mha`` for 2D or 3D.
        overwrite: replace an existing output (otherwise it is kept and this is an error, checked first).
        kwargs: passed to :func:`fuse`.

    Returns:
        The written path.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise FusionInputError(f"{output}: output exists; pass --overwrite (overwrite=True) to replace it")
    return write_image(fuse(mri, other, **kwargs), output, overwrite=overwrite)


def build_predictor(
    model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor] | None,
    method: str = "lkcfunet",
    weights: str | Path | None = None,
    device: str | torch.device | None = None,
    optimize: bool = True,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function ``(B, 2, H, W) -> (B, 1, H, W)`` in [0, 1] for a network or a baseline method.

    Args:
        model: a network; a predictor made by this function (returned unchanged, so a network loaded once can
            serve many calls); ``None`` loads ``weights`` for ``"lkcfunet"``.
        method: see :data:`FUSION_METHODS`.
        weights: weights file for ``"lkcfunet"`` (default: the bundle's ``models/model.pt``).
        device: device of the network.
        optimize: apply :func:`~monai_lkcfusion.networks.optimize_for_inference` to the network.

    Returns:
        The predictor.

    Raises:
        FusionInputError: unknown method, or no weights file for ``"lkcfunet"``.
    """
    if model is not None and not isinstance(model, torch.nn.Module):
        return model
    if model is None and method in BASELINE_METHODS:
        return _named(lambda x: fuse_baseline(x[:, :1], x[:, 1:], method), method)
    if model is None and method != "lkcfunet":
        raise FusionInputError(f"unknown fusion method '{method}'; choose from {', '.join(FUSION_METHODS)}")
    device = _device(device)
    if model is None:
        from .networks import default_weights_path, load_network

        path = Path(weights) if weights is not None else default_weights_path()
        if not path.is_file():
            raise FusionInputError(
                f"{path}: no LKC-FUNet weights file; pass --weights FILE (weights=...) or a baseline --method max"
            )
        model = load_network(path, map_location=device)
    net = model.to(device).eval()
    if optimize:
        from .networks import optimize_for_inference

        net = optimize_for_inference(net)

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(x.to(device)).clamp(0.0, 1.0)

    return _named(predict, method if model is None else type(model).__name__)


def _device(device: str | torch.device | None) -> torch.device:
    """The torch device to run on (default CUDA when available, else CPU); an unusable one is the user's error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise FusionInputError(f"--device {device}: {' '.join(str(err).split())}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise FusionInputError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return resolved


def _named(predict: Callable[[torch.Tensor], torch.Tensor], name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Tag a predictor with the method it runs (recorded as ``fusion_method`` in the output's meta)."""
    predict.fusion_method = name  # type: ignore[attr-defined]
    return predict


def _run(
    pair: torch.Tensor,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    axis: int,
    batch_size: int,
    progress: bool,
    tile_size: int,
    device: str | torch.device | None,
) -> torch.Tensor:
    """Fuse ``(1, 2, *spatial)`` to ``(1, 1, *spatial)``: whole 2D images, tiles, or slices of a volume."""
    spatial = pair.shape[2:]
    if len(spatial) == 2 and max(spatial) <= tile_size:
        return predictor(pair).cpu()
    if len(spatial) == 3 and axis not in (0, 1, 2):
        raise FusionInputError(f"--axis {axis}: a volume has axes 0, 1, 2")
    plane = [s for i, s in enumerate(spatial) if len(spatial) == 2 or i != axis]
    roi = tuple(min(s, tile_size) for s in plane)
    options = {
        "roi_size": roi,
        "sw_batch_size": batch_size,
        "overlap": 0.25,
        "mode": "constant" if list(roi) == plane else "gaussian",  # blend only where tiles overlap
        "progress": progress,
        "sw_device": device,
        "device": "cpu",
    }
    inferer = SlidingWindowInferer(**options) if len(spatial) == 2 else SliceInferer(spatial_dim=axis, **options)
    return inferer(pair, predictor)


def _as_image(value: ImageLike, role: str, series: str | None) -> MetaTensor:
    """Any accepted input as a channel-first MetaTensor with ``spatial_dims``, ``display_max`` and a name."""
    if isinstance(value, (str, Path)):
        return read_image(value, series=series)
    if isinstance(value, np.ndarray):
        array = value
        if array.ndim == 3 and array.shape[-1] in (3, 4):  # (H, W, 3|4) colour picture
            alpha = array[..., 3:].astype(np.float32) / (255.0 if array.dtype == np.uint8 else 1.0)
            array = np.moveaxis(array[..., :3] * (alpha if array.shape[-1] == 4 else 1.0), -1, 0)
        else:
            array = array[None]
        tensor = torch.as_tensor(np.ascontiguousarray(array))
        display_max = 255.0 if value.dtype == np.uint8 else None
    elif isinstance(value, torch.Tensor):
        tensor, display_max = value, None
    else:
        raise FusionInputError(f"{role}: unsupported input type {type(value).__name__}; give a path, array or tensor")
    if tensor.ndim not in (3, 4) or tensor.shape[0] not in (1, 3):
        raise FusionInputError(
            f"{role}: shape {tuple(value.shape)}; need (H, W), (H, W, 3), (X, Y, Z) arrays or (1|3, *spatial) tensors"
        )
    img = tensor.detach().cpu() if isinstance(tensor, MetaTensor) else MetaTensor(tensor.detach().cpu())
    img = img.float()
    finite = img[torch.isfinite(img)]
    if display_max is None and finite.numel() and float(finite.min()) >= 0.0 and float(finite.max()) <= 1.0:
        display_max = 1.0
    img.meta.setdefault("filename_or_obj", role)
    img.meta.setdefault("spatial_dims", img.ndim - 1)
    img.meta.setdefault("display_max", display_max)
    return img


def _to_unit(img: MetaTensor, modality: str | None) -> tuple[MetaTensor, dict[str, Any]]:
    """Scale to [0, 1] by modality and warn about NaN/Inf voxels."""
    name = str(img.meta.get("filename_or_obj"))
    scaled, record = scale_to_unit(
        img.as_tensor(), modality=modality or _known(img.meta.get("modality")),
        display_max=img.meta.get("display_max"), name=name,
    )
    if record["nonfinite_voxels"]:
        warnings.warn(f"{name}: {record['nonfinite_voxels']} NaN/Inf voxels set to 0 before fusion", stacklevel=3)
    return MetaTensor(scaled, meta={**img.meta, **record}), record


def _plain(img: torch.Tensor) -> torch.Tensor:
    """The voxels of a (Meta)Tensor as a plain tensor (the network and baselines need no metadata)."""
    return img.as_tensor() if isinstance(img, MetaTensor) else img


def _known(modality: str | None) -> str | None:
    """A file's modality when it is one the scaling knows (MR, CT, PT, NM, ...), else ``None``."""
    from .transforms.intensity import _ALIASES

    return modality if str(modality).strip().upper() in _ALIASES else None


def _as_layout(img: MetaTensor, like: np.ndarray) -> np.ndarray:
    """Channel-first result back to the NumPy layout of the input: ``(H, W)``, ``(H, W, 3)`` or ``(X, Y, Z)``."""
    array = img.as_tensor().numpy()
    return array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
