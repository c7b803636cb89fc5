"""Intensity and gradient statistics: EN, SD, SF, AG of the fused image; CC, SCD, MSE, PSNR against the sources.

Definitions follow the de-facto evaluator of the fusion literature (CDDFuse ``utils/Evaluator.py``, also used by
LKC-FUNet's ``evaluator.py``); see docs/metrics.md.
"""

from __future__ import annotations

import torch

from ..errors import FusionInputError
from .utils import batched_metric, pearson

__all__ = [
    "entropy",
    "standard_deviation",
    "spatial_frequency",
    "average_gradient",
    "correlation_coefficient",
    "sum_of_correlations_of_differences",
    "mean_squared_error",
    "peak_signal_to_noise_ratio",
    "PSNR_PEAKS",
]

PSNR_PEAKS = ("max", "255")


@batched_metric
def entropy(fused: torch.Tensor) -> torch.Tensor:
    """EN: Shannon entropy (bits) of the 256-bin histogram of round(F), values clamped to [0, 255].

    Args:
        fused: (B, 1, H, W) batch or (H, W) image on [0, 255].

    Returns:
        (B,) float64 tensor, or a float for a single image.
    """
    b = fused.shape[0]
    levels = fused.round().clamp(0, 255).to(torch.int64).reshape(b, -1)  # (B, N)
    offsets = torch.arange(b, device=fused.device).unsqueeze(1) * 256
    hist = torch.bincount((levels + offsets).reshape(-1), minlength=b * 256).reshape(b, 256).to(torch.float64)
    p = hist / levels.shape[1]
    return 0.0 - (p * torch.log2(torch.where(p > 0, p, 1.0))).sum(dim=1)  # 0.0 - x: a constant image gives 0, not -0


@batched_metric
def standard_deviation(fused: torch.Tensor) -> torch.Tensor:
    """SD: population standard deviation of the fused image.

    Args:
        fused: (B, 1, H, W) batch or (H, W) image on [0, 255].

    Returns:
        (B,) float64 tensor, or a float for a single image.
    """
    return fused.flatten(1).std(dim=1, correction=0)


@batched_metric
def spatial_frequency(fused: torch.Tensor) -> torch.Tensor:
    """SF: sqrt(mean(horizontal first difference^2) + mean(vertical first difference^2)).

    Args:
        fused: (B, 1, H, W) batch or (H, W) image on [0, 255].

    Returns:
        (B,) float64 tensor, or a float for a single image.
    """
    dx = fused[..., :, 1:] - fused[..., :, :-1]
    dy = fused[..., 1:, :] - fused[..., :-1, :]
    return torch.sqrt(dx.square().flatten(1).mean(dim=1) + dy.square().flatten(1).mean(dim=1))


def _gradient(image: torch.Tensor, dim: int) -> torch.Tensor:
    """``numpy.gradient`` along ``dim``: central differences inside, one-sided differences at the two edges."""
    n = image.shape[dim]
    inner = (image.narrow(dim, 2, n - 2) - image.narrow(dim, 0, n - 2)) / 2
    first = image.narrow(dim, 1, 1) - image.narrow(dim, 0, 1)
    last = image.narrow(dim, n - 1, 1) - image.narrow(dim, n - 2, 1)
    return torch.cat([first, inner, last], dim=dim)


@batched_metric
def average_gradient(fused: torch.Tensor) -> torch.Tensor:
    """AG: mean over pixels of sqrt((Gx^2 + Gy^2) / 2), with ``numpy.gradient``-style differences.

    Args:
        fused: (B, 1, H, W) batch or (H, W) image on [0, 255], H and W at least 2.

    Returns:
        (B,) float64 tensor, or a float for a single image.
    """
    gx, gy = _gradient(fused, -1), _gradient(fused, -2)
    return torch.sqrt((gx.square() + gy.square()) / 2).flatten(1).mean(dim=1)


@batched_metric
def correlation_coefficient(fused: torch.Tensor, mri: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """CC: mean of the Pearson correlations corr(MRI, F) and corr(other, F).

    A correlation with a constant image is taken as 0 (it is undefined).

    Args:
        fused: (B, 1, H, W) batch or (H, W) image on [0, 255].
        mri: the first source, same shape.
        other: the second source, same shape.

    Returns:
        (B,) float64 tensor, or a float for a single image.
    """
    return (pearson(mri, fused) + pearson(other, fused)).squeeze(1) / 2


@batched_metric
def sum_of_correlations_of_differences(fused: torch.Tensor, mri: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """SCD (Aslantas & Bendes 2015): corr(F - other, MRI) + corr(F - MRI, other).

    A correlation with a constant image is taken as 0 (it is undefined).

    Args:
        fused: (B, 1, H, W) batch or (H, W) image on [0, 255].
        mri: the first source, same shape.
        other: the second source, same shape.

    Returns:
        (B,) float64 tensor, or a float for a single image.
    """
    return (pearson(mri, fused - other) + pearson(other, fused - mri)).squeeze(1)


@batched_metric
def mean_squared_error(fused: torch.Tensor, mri: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """MSE: mean of MSE(F, MRI) and MSE(F, other).

    Args:
        fused: (B, 1, H, W) batch or (H, W) image on [0, 255].
        mri: the first source, same shape.
        other: the second source, same shape.

    Returns:
        (B,) float64 tensor, or a float for a single image.
    """
    return _mse(fused, mri, other)


def _mse(fused: torch.Tensor, mri: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    return ((mri - fused).square().flatten(1).mean(dim=1) + (other - fused).square().flatten(1).mean(dim=1)) / 2


@batched_metric
def peak_signal_to_noise_ratio(
    fused: torch.Tensor, mri: torch.Tensor, other: torch.Tensor, peak: str = "max"
) -> torch.Tensor:
    """PSNR = 10 log10(peak^2 / MSE) in dB, with the two-source MSE of :func:`mean_squared_error`.

    Args:
        fused: (B, 1, H, W) batch or (H, W) image on [0, 255].
        mri: the first source, same shape.
        other: the second source, same shape.
        peak: ``"max"``: the fused image's maximum (the literature's evaluator); ``"255"``: the 8-bit peak.

    Returns:
        (B,) float64 tensor, or a float for a single image; ``+inf`` where the MSE is 0 (identical images),
        ``-inf`` for an all-zero fused image with peak ``"max"`` and a non-zero MSE.

    Raises:
        FusionInputError: ``peak`` is not one of :data:`PSNR_PEAKS`, or the images' shapes differ or are not
            (H, W) or (B, 1, H, W).
    """
    if str(peak) not in PSNR_PEAKS:
        raise FusionInputError(f"psnr_peak: expected one of {PSNR_PEAKS}, got {peak!r}")
    mse = _mse(fused, mri, other)
    top = fused.flatten(1).amax(dim=1) if str(peak) == "max" else torch.full_like(mse, 255.0)
    psnr = 10 * torch.log10(top.square() / torch.where(mse > 0, mse, 1.0))
    return torch.where(mse > 0, psnr, torch.inf)
