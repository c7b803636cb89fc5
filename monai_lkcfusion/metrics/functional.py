"""``compute_fusion_metrics``: the whole set of fusion metrics for one image or a batch, with explicit conventions."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.data import MetaTensor

from ..errors import FusionInputError, as_names
from .gradient import nabf, qabf
from .information import feature_mutual_information, mutual_information
from .statistics import (
    average_gradient,
    correlation_coefficient,
    entropy,
    mean_squared_error,
    peak_signal_to_noise_ratio,
    spatial_frequency,
    standard_deviation,
    sum_of_correlations_of_differences,
)
from .structural import multiscale_structural_similarity, structural_similarity
from .utils import ImageLike, as_batch, gray8
from .vif import visual_information_fidelity

__all__ = [
    "compute_fusion_metrics", "DEFAULT_METRICS", "EXTRA_METRICS", "ALL_METRICS", "HIGHER_IS_BETTER",
    "PUBLISHED_METRICS",
]

DEFAULT_METRICS = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "CC", "PSNR", "MSE")
EXTRA_METRICS = ("MS_SSIM", "Nabf", "FMI_pixel")
ALL_METRICS = DEFAULT_METRICS + EXTRA_METRICS
PUBLISHED_METRICS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")
"""The metrics of the published comparison tables (CDDFuse Table 5): ``lkcfusion evaluate`` and the bundle's
``evaluate.json`` score them by default."""
# direction of each metric, for tables and model selection: MSE and Nabf are lower-is-better
HIGHER_IS_BETTER = {name: name not in ("MSE", "Nabf") for name in ALL_METRICS}
# smallest image side the filter windows allow (VIF and MS_SSIM check their larger needs themselves)
_MIN_SIDE = {"SF": 2, "AG": 2, "SSIM": 7, "Nabf": 2, "FMI_pixel": 3}


def compute_fusion_metrics(
    fused: ImageLike,
    mri: ImageLike,
    other: ImageLike,
    names: Sequence[str] | None = None,
    ssim_data_range: float = 255.0,
    reduction: str = "sum",
    mi_base: float = math.e,
    psnr_peak: str = "max",
    chunk_size: int = 1,
    cpu_threads: int | None = 1,
    input_scale: float | None = None,
) -> dict[str, torch.Tensor | float]:
    """Fusion metrics of ``fused`` against the two sources, on the 8-bit gray scale [0, 255].

    Each input is a gray (H, W) image, a (B, 1, H, W) batch, or a channel-first (1|3, H, W) image (the layout of
    :func:`~monai_lkcfusion.fuse`'s 2D output), which is turned into 8-bit gray the way a saved picture is read:
    each channel clipped to [0, 255] and rounded, colour as the rounded BT.601 luma. Values must be on the 8-bit
    scale, except for

    - ``fuse()``'s output (a MetaTensor whose meta has ``fusion_method``), which is in [0, 1] by its contract and
      is multiplied by 255;
    - any input when ``input_scale`` is given: every input is multiplied by it, clipped to [0, 255] and rounded.

    An input without ``input_scale`` whose values all lie in [0, 1] and are not all integers is refused with a
    :class:`~monai_lkcfusion.FusionInputError`: on [0, 1] the metrics would be meaningless numbers.

    Args:
        fused: the fused image.
        mri: the anatomical source, the same size.
        other: the second source (CT, PET or SPECT; colour as its luma), the same size.
        names: metrics to compute, from :data:`ALL_METRICS`; ``None`` gives :data:`DEFAULT_METRICS`.
        ssim_data_range: L of the SSIM / MS-SSIM constants: 255 (LKC-FUNet's evaluator) or 2 (the published
            CDDFuse/EMMA tables).
        reduction: how MI, SSIM, MS-SSIM and VIF combine the two sources: ``"sum"`` (the literature) or ``"mean"``.
            CC, MSE and FMI are means and SCD a sum by definition.
        mi_base: logarithm base of MI: e (nats, the literature) or 2 (bits).
        psnr_peak: ``"max"`` (max of F, the literature) or ``"255"``.
        chunk_size: images scored per vectorised step. Small chunks keep the intermediate maps in the CPU cache
            and are fastest on CPU (see docs/metrics.md); a larger value helps on GPU.
        cpu_threads: torch intra-op threads while scoring CPU tensors, restored afterwards. The metrics run
            hundreds of small operations per image; with several threads each one waits at a thread barrier,
            which on a busy CPU made scoring 40x slower (docs/metrics.md). ``None`` keeps the current setting.
        input_scale: factor from all three inputs' scale to [0, 255], e.g. 255 for images in [0, 1]; ``None``: the
            inputs are 8-bit gray values except ``fuse()``'s output (see above).

    Returns:
        ``{name: value}`` in the order of ``names``; floats for a single (H, W) image, (B,) float64 tensors for
        a batch.

    Raises:
        FusionInputError: for an unknown metric name, an unknown option, mismatched shapes, images smaller than
            a metric's window, NaN/Inf values, an input in [0, 1] without ``input_scale``, or an input that
            ``input_scale`` would push far beyond 255 (it applies to all three inputs).
    """
    names = DEFAULT_METRICS if names is None else as_names(names, "metrics")
    if chunk_size < 1:
        raise FusionInputError(f"chunk_size: expected a positive number of images, got {chunk_size}")
    for option, value in (("ssim_data_range", ssim_data_range), ("input_scale", input_scale)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise FusionInputError(f"{option} {value}: give a positive number")
    unknown = [n for n in names if n not in ALL_METRICS]
    if unknown:
        raise FusionInputError(f"unknown metric(s) {unknown}; choose from {', '.join(ALL_METRICS)}")
    fused, mri, other = (_gray_scale(x, n, input_scale) for x, n in ((fused, "fused"), (mri, "mri"), (other, "other")))
    (f, single), (a, _), (b, _) = as_batch(fused, "fused"), as_batch(mri, "mri"), as_batch(other, "other")
    if not f.shape == a.shape == b.shape:
        raise FusionInputError(f"fused, mri and other must have one shape, got {f.shape}, {a.shape}, {b.shape}")
    small = [n for n in names if min(f.shape[-2:]) < _MIN_SIDE.get(n, 1)]
    if small:
        side = max(_MIN_SIDE[n] for n in small)
        size = tuple(f.shape[-2:])
        verb = "needs" if len(small) == 1 else "need"
        raise FusionInputError(f"{', '.join(small)} {verb} images of at least {side}x{side} pixels, got {size}")
    threads = torch.get_num_threads()
    if cpu_threads is not None and f.device.type == "cpu":
        torch.set_num_threads(cpu_threads)
    try:
        chunks = [
            _chunk_metrics(names, f[i : i + chunk_size], a[i : i + chunk_size], b[i : i + chunk_size],
                           ssim_data_range, reduction, mi_base, psnr_peak)
            for i in range(0, f.shape[0], chunk_size)
        ]
    finally:
        torch.set_num_threads(threads)
    results = {name: torch.cat([c[name] for c in chunks]) for name in names}
    return {name: float(v[0]) for name, v in results.items()} if single else results


def _gray_scale(image: ImageLike, name: str, input_scale: float | None) -> ImageLike:
    """``image`` on the 8-bit gray scale; a (1|3, H, W) image becomes 8-bit gray (H, W) (see the caller's rules).

    Raises:
        FusionInputError: an unscaled input in [0, 1], or a shape that is not an image or a batch of images.
    """
    marked = isinstance(image, MetaTensor) and "fusion_method" in image.meta  # fuse()'s output, in [0, 1]
    scale = 255.0 if input_scale is None and marked else input_scale
    tensor = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(np.asarray(image))
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] == 3 and image.shape[0] not in (1, 3):
        tensor = tensor.movedim(-1, 0)  # a channel-last (H, W, 3) colour picture, as fuse() returns for arrays
    channel_first = tensor.ndim == 3
    nonfinite = int((~torch.isfinite(tensor)).sum()) if tensor.is_floating_point() else 0
    if nonfinite:
        raise FusionInputError(f"{name}: {nonfinite} NaN/Inf values; the metrics need finite images")
    if (channel_first and tensor.shape[0] not in (1, 3)) or (tensor.ndim == 4 and tensor.shape[1] != 1):
        raise FusionInputError(
            f"{name}: expected a (H, W) or (1|3, H, W) image or a (B, 1, H, W) batch, got shape "
            f"{tuple(tensor.shape)} (score a volume slice by slice)"
        )
    if scale is None:
        if _unit_range_fractions(tensor):
            raise FusionInputError(
                f"{name}: values lie in [0, 1], not on the 8-bit gray scale [0, 255] of the metrics; multiply it by "
                "255 (e.g. fuse()'s NumPy output), or pass input_scale=255 when all three inputs are in [0, 1]"
            )
        if not channel_first:
            return image
    scaled = tensor.to(torch.float64) * (1.0 if scale is None else scale)
    if scale is not None and scaled.numel() and float(scaled.max()) > 2 * 255.0:
        if marked and input_scale is None:  # fuse()'s output (scaled by 255 here) that was multiplied already
            raise FusionInputError(
                f"{name}: fuse()'s output is in [0, 1] and is put on [0, 255] here, but this one reaches "
                f"{float(tensor.max()):g}: pass fuse()'s output unscaled (or its .as_tensor() on [0, 255])"
            )
        raise FusionInputError(
            f"{name}: values up to {float(tensor.max()):g} times input_scale={scale:g} lie far beyond 255: "
            "input_scale applies to all three inputs; bring the ones in [0, 1] to [0, 255] yourself instead"
        )
    return gray8(scaled) if channel_first else scaled.clamp(0.0, 255.0).round()


def _unit_range_fractions(tensor: torch.Tensor) -> bool:
    """Whether the finite values of a floating-point ``tensor`` all lie in [0, 1] and are not all integers.

    One min/max pass decides for the usual 8-bit or finite input; only a non-finite value needs the masked copy.
    """
    if not tensor.is_floating_point() or not tensor.numel():
        return False
    lo, hi = (float(v) for v in torch.aminmax(tensor))
    finite = tensor
    if not (math.isfinite(lo) and math.isfinite(hi)):
        finite = tensor[torch.isfinite(tensor)]
        if not finite.numel():
            return False
        lo, hi = (float(v) for v in torch.aminmax(finite))
    return 0.0 <= lo and hi <= 1.0 and bool((finite != finite.round()).any())


def _chunk_metrics(
    names: Sequence[str],
    f: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    ssim_data_range: float,
    reduction: str,
    mi_base: float,
    psnr_peak: str,
) -> dict[str, torch.Tensor]:
    """The metrics ``names`` of one chunk of float64 (b, 1, H, W) triples: ``{name: (b,) tensor}``."""
    triple = (f, a, b)
    calls: dict[str, Callable[[], torch.Tensor]] = {
        "EN": lambda: entropy.__wrapped__(f),
        "SD": lambda: standard_deviation.__wrapped__(f),
        "SF": lambda: spatial_frequency.__wrapped__(f),
        "AG": lambda: average_gradient.__wrapped__(f),
        "MI": lambda: mutual_information.__wrapped__(*triple, reduction=reduction, base=mi_base),
        "SCD": lambda: sum_of_correlations_of_differences.__wrapped__(*triple),
        "VIF": lambda: visual_information_fidelity.__wrapped__(*triple, reduction=reduction),
        "Qabf": lambda: qabf.__wrapped__(*triple),
        "SSIM": lambda: structural_similarity.__wrapped__(*triple, data_range=ssim_data_range, reduction=reduction),
        "CC": lambda: correlation_coefficient.__wrapped__(*triple),
        "PSNR": lambda: peak_signal_to_noise_ratio.__wrapped__(*triple, peak=psnr_peak),
        "MSE": lambda: mean_squared_error.__wrapped__(*triple),
        "MS_SSIM": lambda: multiscale_structural_similarity.__wrapped__(
            *triple, data_range=ssim_data_range, reduction=reduction
        ),
        "Nabf": lambda: nabf.__wrapped__(*triple),
        "FMI_pixel": lambda: feature_mutual_information.__wrapped__(*triple),
    }
    return {name: calls[name]() for name in names}
