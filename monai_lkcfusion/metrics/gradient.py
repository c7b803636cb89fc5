"""Edge-based fusion metrics: Qabf (Xydeas & Petrovic 2000) and Nabf (Petrovic's artifacts, Kumar's modification)."""

from __future__ import annotations

import math

import torch

from monai_lkcfusion.filters import sobel_gradients

from .utils import batched_metric

__all__ = ["edge_preservation", "qabf", "nabf"]

_STRENGTH_GAIN = (0.9994, -15.0, 0.5)  # Qabf (top, slope, centre) of the edge-strength sigmoid
_ORIENTATION_GAIN = (0.9879, -22.0, 0.8)  # and of the edge-orientation sigmoid

def _sigmoid_gain(x: torch.Tensor, top: float, slope: float, centre: float) -> torch.Tensor:
    """top / (1 + exp(slope * (x - centre))), as torch divides a number by a tensor: top * (1 / (...))."""
    return (x - centre).mul_(slope).exp_().add_(1.0).reciprocal_().mul_(top)


@batched_metric
def qabf(fused: torch.Tensor, mri: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Qabf: gradient-weighted edge preservation of both sources in F.

    As the literature's evaluator computes it: Sobel 'same' convolution with zero padding; strength
    g = sqrt(gx^2 + gy^2); orientation atan(gy / gx) (pi / 2 where gx = 0); relative strength min/max ratio (and,
    as in that code, g_F where the two strengths are equal); (Tg, kg, Dg, Ta, ka, Da) = (0.9994, -15, 0.5,
    0.9879, -22, 0.8), all in float32 like that code. When neither source has an edge the 0/0 ratio is taken
    as 1 (nothing to transfer).

    Args:
        fused: (B, 1, H, W) batch or (H, W) image on [0, 255].
        mri: the first source, same shape.
        other: the second source, same shape.

    Returns:
        (B,) float64 tensor, or a float for a single image.
    """
    b = fused.shape[0]
    images = fused.new_empty((3 * b, *fused.shape[1:]), dtype=torch.float32)  # float32 as the reference
    for i, image in enumerate((fused, mri, other)):
        images[i * b : (i + 1) * b] = image
    gx, gy = sobel_gradients(images, "constant")  # (3B, 1, H, W) each
    strength = (gx * gx).add_(gy * gy).sqrt_()
    angle = torch.div(gy, gx).atan_().masked_fill_(gx == 0, math.pi / 2)
    g_f, g_s = strength[:b], strength[b:].reshape(2, b, *strength.shape[1:])
    a_f, a_s = angle[:b], angle[b:].reshape(2, b, *angle.shape[1:])
    # min / max of the two strengths; where they are equal (0 / 0 included) the reference takes g_F
    ratio = torch.where(g_s == g_f, g_f, torch.minimum(g_s, g_f).div_(torch.maximum(g_s, g_f)))
    alignment = (a_s - a_f).abs_().div_(math.pi / 2).neg_().add_(1.0)  # 1 - |a_s - a_f| / (pi / 2)
    q = _sigmoid_gain(ratio, *_STRENGTH_GAIN).mul_(_sigmoid_gain(alignment, *_ORIENTATION_GAIN))
    num = q.mul_(g_s).sum(dim=(0, 2, 3, 4), dtype=torch.float64)  # q: (2, B, 1, H, W)
    den = g_s.sum(dim=(0, 2, 3, 4), dtype=torch.float64)
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 1.0)


def edge_preservation(fused: torch.Tensor, sources: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Differentiable Qabf: the edge preservation of both sources in ``fused``, for training losses.

    :func:`qabf`'s Sobel strengths, strength ratio, sigmoid gains and source-strength weights, with two smooth
    changes: strengths are ``sqrt(gx^2 + gy^2 + eps^2)`` and the orientation term compares the acute angle between
    the two edge lines (``atan2(|cross|, |dot|)`` of the gradient vectors) instead of the difference of
    ``atan(gy / gx)``, which jumps by pi where an edge turns through vertical. On 8-bit images it is within about
    0.01-0.02 of :func:`qabf` (tests/test_loss.py).

    Args:
        fused: (B, 1, H, W) in any intensity scale.
        sources: (B, 2, H, W) in the same scale, channel 0 MRI and channel 1 the other modality.
        eps: strength floor, in the images' units per pixel.

    Returns:
        (B,) values in [0, 1]; 1 where no source has an edge.
    """
    gx, gy = sobel_gradients(torch.cat([fused, sources], dim=1))  # (B, 3, H, W) each
    strength = torch.sqrt(gx * gx + gy * gy + eps * eps)
    g_f, g_s = strength[:, :1], strength[:, 1:]  # (B, 1, H, W), (B, 2, H, W)
    ratio = torch.minimum(g_f, g_s) / torch.maximum(g_f, g_s)
    dot = (gx[:, :1] * gx[:, 1:] + gy[:, :1] * gy[:, 1:]).abs()
    cross = (gx[:, :1] * gy[:, 1:] - gy[:, :1] * gx[:, 1:]).abs()
    alignment = 1.0 - torch.atan2(cross, dot + eps * eps) / (math.pi / 2)
    q = _smooth_gain(ratio, *_STRENGTH_GAIN) * _smooth_gain(alignment, *_ORIENTATION_GAIN)
    weight = g_s.detach() - eps  # the sources' strengths (0 where flat)
    total = weight.sum(dim=(1, 2, 3))
    return torch.where(total > 0, (q * weight).sum(dim=(1, 2, 3)) / total.clamp_min(1e-12), 1.0)


def _smooth_gain(x: torch.Tensor, top: float, slope: float, centre: float) -> torch.Tensor:
    """top / (1 + exp(slope * (x - centre))), out of place (autograd)."""
    return top * torch.sigmoid(-slope * (x - centre))


@batched_metric
def nabf(fused: torch.Tensor, mri: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Nabf: fusion artifacts, Petrovic's measure as modified by B. K. Shreyamsha Kumar (lower is better).

    As ``objective_fusion_perform_fn.m``: Sobel / 8 with a mirrored 1-pixel border; orientation atan(gv / gh)
    (0 where both are 0); Q = sqrt(Qg * Qa) with (Nrg, kg, sg, Nra, ka, sa) = (0.9999, 19, 0.5, 0.9995, 22, 0.5);
    weights g^1.5 where g >= 2, else 0.001; Nabf = sum over pixels where g_F exceeds both source strengths of
    ((1 - Q_AF) w_A + (1 - Q_BF) w_B), divided by sum(w_A + w_B).

    Args:
        fused: (B, 1, H, W) batch or (H, W) image on [0, 255].
        mri: the first source, same shape.
        other: the second source, same shape.

    Returns:
        (B,) float64 tensor, or a float for a single image.
    """
    b = fused.shape[0]
    dx, dy = sobel_gradients(torch.cat([fused, mri, other]), "reflect")
    gv, gh = dx / 8, -dy / 8
    strength = torch.sqrt(gh * gh + gv * gv)
    both_zero = (gv == 0) & (gh == 0)
    angle = torch.where(both_zero, 0.0, torch.atan(gv / torch.where(both_zero, 1.0, gh)))
    g_f, g_s = strength[:b], strength[b:].reshape(2, b, *strength.shape[1:])
    a_f, a_s = angle[:b], angle[b:].reshape(2, b, *angle.shape[1:])
    ratio = torch.where(g_s > g_f, g_f / torch.where(g_s > 0, g_s, 1.0), g_s / torch.where(g_f > 0, g_f, 1.0))
    ratio = torch.where((g_s == 0) | (g_f == 0), 0.0, ratio)
    alignment = ((a_s - a_f).abs() - math.pi / 2).abs() * 2 / math.pi
    q = torch.sqrt(_sigmoid_gain(ratio, 0.9999, -19.0, 0.5) * _sigmoid_gain(alignment, 0.9995, -22.0, 0.5))
    weight = torch.where(g_s >= 2, g_s**1.5, 0.001)  # (2, B, 1, H, W)
    artifact = (g_f > g_s[0]) & (g_f > g_s[1])
    num = (artifact * ((1 - q) * weight).sum(dim=0)).sum(dim=(1, 2, 3))
    return num / weight.sum(dim=(0, 2, 3, 4))
