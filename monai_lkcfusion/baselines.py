"""Classical fusion baselines: pixel-wise max and mean, Haar-DWT and Laplacian-pyramid fusion.

The multi-scale rules are the textbook ones: detail coefficients are taken from the source with the larger
magnitude (max-abs selection) and the coarsest approximation / pyramid base is averaged. Fusing an image with
itself gives the image back (perfect reconstruction), whatever its size.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .errors import FusionInputError

__all__ = ["BASELINE_METHODS", "fuse_baseline"]

BASELINE_METHODS = ("max", "mean", "dwt", "laplacian")
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def fuse_baseline(
    mri: np.ndarray | torch.Tensor, other: np.ndarray | torch.Tensor, method: str, levels: int = 3
) -> np.ndarray | torch.Tensor:
    """Fuse two registered gray images in [0, 1] with a classical rule.

    Args:
        mri: ``(..., H, W)`` array or tensor (``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)``).
        other: the second modality, same shape.
        method: ``"max"``, ``"mean"``, ``"dwt"`` (Haar wavelet, ``levels`` scales) or ``"laplacian"``
            (Laplacian pyramid, ``levels`` detail bands).
        levels: number of scales for ``"dwt"``/``"laplacian"`` (reduced for small images).

    Returns:
        The fused image in [0, 1] with the shape of ``mri``; a NumPy array for NumPy input, else a tensor.

    Raises:
        FusionInputError: an unknown method or shapes that differ.
    """
    if method not in BASELINE_METHODS:
        raise FusionInputError(f"unknown fusion method '{method}'; choose from {', '.join(BASELINE_METHODS)}")
    as_numpy = isinstance(mri, np.ndarray)
    a, b = torch.as_tensor(np.asarray(mri) if as_numpy else mri), torch.as_tensor(other)
    if a.shape != b.shape or a.ndim < 2:
        raise FusionInputError(f"baseline fusion needs two images of one shape (..., H, W), got {tuple(a.shape)} and {tuple(b.shape)}")
    shape = a.shape
    a = a.to(torch.float32).reshape(-1, 1, *shape[-2:])  # (N, 1, H, W)
    b = b.to(device=a.device, dtype=torch.float32).reshape(-1, 1, *shape[-2:])
    if method == "max":
        fused = torch.maximum(a, b)
    elif method == "mean":
        fused = (a + b) / 2
    elif method == "dwt":
        fused = _dwt_fuse(a, b, levels)
    else:
        fused = _laplacian_fuse(a, b, levels)
    fused = fused.clamp(0.0, 1.0).reshape(shape)
    return fused.cpu().numpy() if as_numpy else fused


def _select_max_abs(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.where(x.abs() >= y.abs(), x, y)


def _haar_analysis(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One Haar level of ``(N, 1, 2h, 2w)``: approximation ``(N, 1, h, w)`` and details ``(N, 3, h, w)``."""
    p, q, r, s = x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    approx = (p + q + r + s) / 2
    details = torch.cat([(p - q + r - s) / 2, (p + q - r - s) / 2, (p - q - r + s) / 2], dim=1)
    return approx, details


def _haar_synthesis(approx: torch.Tensor, details: torch.Tensor) -> torch.Tensor:
    """Invert :func:`_haar_analysis`."""
    h, v, d = details[:, 0:1], details[:, 1:2], details[:, 2:3]
    out = approx.new_empty((approx.shape[0], 1, approx.shape[-2] * 2, approx.shape[-1] * 2))
    out[..., 0::2, 0::2] = (approx + h + v + d) / 2
    out[..., 0::2, 1::2] = (approx - h + v - d) / 2
    out[..., 1::2, 0::2] = (approx + h - v - d) / 2
    out[..., 1::2, 1::2] = (approx - h - v + d) / 2
    return out


def _dwt_fuse(a: torch.Tensor, b: torch.Tensor, levels: int) -> torch.Tensor:
    height, width = a.shape[-2:]
    levels = max(0, min(levels, int(math.log2(max(min(height, width), 1)))))
    step = 2**levels
    pad = (0, (-width) % step, 0, (-height) % step)
    a, b = F.pad(a, pad, mode="replicate"), F.pad(b, pad, mode="replicate")
    fused_details = []
    for _ in range(levels):
        (a, da), (b, db) = _haar_analysis(a), _haar_analysis(b)
        fused_details.append(_select_max_abs(da, db))
    fused = (a + b) / 2
    for details in reversed(fused_details):
        fused = _haar_synthesis(fused, details)
    return fused[..., :height, :width]


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Separable 5-tap binomial blur with edge replication, ``(N, 1, H, W)``.

    Written as weighted shifted sums: on small slices this is far cheaper than ``conv2d`` on a busy CPU.
    """
    height, width = x.shape[-2:]
    x = F.pad(x, (2, 2, 0, 0), mode="replicate")
    x = sum(w * x[..., i : i + width] for i, w in enumerate(_BINOMIAL.tolist()))
    x = F.pad(x, (0, 0, 2, 2), mode="replicate")
    return sum(w * x[..., i : i + height, :] for i, w in enumerate(_BINOMIAL.tolist()))


def _laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``levels`` detail bands then the base, finest first."""
    bands = []
    for _ in range(levels):
        smaller = _blur(x)[..., ::2, ::2]
        bands.append(x - F.interpolate(smaller, size=x.shape[-2:], mode="bilinear", align_corners=False))
        x = smaller
    return [*bands, x]


def _laplacian_fuse(a: torch.Tensor, b: torch.Tensor, levels: int) -> torch.Tensor:
    levels = max(0, min(levels, int(math.log2(max(min(a.shape[-2:]), 1))) - 1))
    pa, pb = _laplacian_pyramid(a, levels), _laplacian_pyramid(b, levels)
    fused = (pa[-1] + pb[-1]) / 2
    for da, db in zip(reversed(pa[:-1]), reversed(pb[:-1])):
        fused = F.interpolate(fused, size=da.shape[-2:], mode="bilinear", align_corners=False) + _select_max_abs(da, db)
    return fused
