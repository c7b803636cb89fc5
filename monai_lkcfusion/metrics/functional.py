"""``compute_fusion_metrics``: the whole set of fusion metrics for one image or a batch, with explicit conventions."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..errors import FusionInputError
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
from .utils import ImageLike, as_batch
from .vif import visual_information_fidelity

__all__ = ["compute_fusion_metrics", "DEFAULT_METRICS", "EXTRA_METRICS", "ALL_METRICS", "HIGHER_IS_BETTER"]

DEFAULT_METRICS = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "CC", "PSNR", "MSE")
EXTRA_METRICS = ("MS_SSIM", "Nabf", "FMI_pixel")
ALL_METRICS = DEFAULT_METRICS + EXTRA_METRICS
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
) -> dict[str, torch.Tensor | float]:
    """Fusion metrics of ``fused`` against the two sources, on the 8-bit gray scale [0, 255].

    Args:
        fused: the fused image, (H, W) array/tensor or a (B, 1, H, W) batch.
        mri: the anatomical source, same shape.
        other: the second source (CT, PET or SPECT luma), same shape.
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

    Returns:
        ``{name: value}`` in the order of ``names``; floats for a single (H, W) image, (B,) float64 tensors for
        a batch.

    Raises:
        FusionInputError: for an unknown metric name, an unknown option, mismatched shapes, or images smaller
            than a metric's window.
    """
    names = DEFAULT_METRICS if names is None else tuple(names)
    if chunk_size < 1:
        raise FusionInputError(f"chunk_size: expected a positive number of images, got {chunk_size}")
    unknown = [n for n in names if n not in ALL_METRICS]
    if unknown:
        raise FusionInputError(f"unknown metric(s) {unknown}; choose from {', '.join(ALL_METRICS)}")
    (f, single), (a, _), (b, _) = as_batch(fused, "fused"), as_batch(mri, "mri"), as_batch(other, "other")
    if not f.shape == a.shape == b.shape:
        raise FusionInputError(f"fused, mri and other must have one shape, got {f.shape}, {a.shape}, {b.shape}")
    small = [n for n in names if min(f.shape[-2:]) < _MIN_SIDE.get(n, 1)]
    if small:
        side = max(_MIN_SIDE[n] for n in small)
        size = tuple(f.shape[-2:])
        raise FusionInputError(f"{', '.join(small)} need images of at least {side}x{side} pixels, got {size}")
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
