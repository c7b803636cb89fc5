"""VIF: pixel-domain multi-scale visual information fidelity (Sheikh & Bovik 2006, ``vifp_mscale``)."""

from __future__ import annotations

import torch

from ..errors import FusionInputError
from ..filters import gaussian_blur
from .utils import batched_metric, reduce_sources

__all__ = ["VIF_MIN_SIZE", "information_fidelity", "visual_information_fidelity"]

VIF_MIN_SIZE = 41
"""Smallest image side VIF accepts: room for the 'valid' windows of its four scales."""

_EPS = 1e-10
# most outputs per block of the banded products in :func:`_filter_axis`, and the fewest it looks at to avoid a tail
_FILTER_BLOCK = 16
_FILTER_BLOCK_MIN = 8


def _gaussian_1d(scale: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1D factor of scale ``scale``'s window: N = 2^(5 - scale) + 1 taps, sigma N / 5, normalised to sum 1."""
    n = 2 ** (5 - scale) + 1
    x = torch.arange(n, dtype=dtype, device=device) - (n - 1) / 2
    g = torch.exp(-(x * x) / (2 * (n / 5.0) ** 2))
    return g / g.sum()


def _band_matrix(kernel_1d: torch.Tensor, rows: int, step: int) -> torch.Tensor:
    """(rows, step * (rows - 1) + k) matrix: row i holds ``kernel_1d`` from column ``step * i``, zeros elsewhere."""
    k = kernel_1d.numel()
    width = step * (rows - 1) + k
    band = kernel_1d.new_zeros((rows, width))
    band.as_strided((rows, k), (width + step, 1)).copy_(kernel_1d.expand(rows, k))
    return band


def _filter_axis(planes: torch.Tensor, kernel_1d: torch.Tensor, dim: int, step: int = 1) -> torch.Tensor:
    """Correlate (..., H, W) planes with ``kernel_1d`` along ``dim`` (-2 or -1), 'valid', every ``step``-th output.

    Each output is the sum of its k products in kernel order (zero products add nothing), so the round-off of a
    value is relative to its own window's values, as in ``convolve2d``; sums of integers below 2^53 are exact.
    The outputs are computed in blocks of at most :data:`_FILTER_BLOCK` as products with a small band matrix,
    reading the planes in place: a few BLAS calls instead of k passes over the planes.

    Args:
        planes: (..., H, W) planes, of ``kernel_1d``'s dtype.
        kernel_1d: (k,) filter weights.
        dim: the filtered axis, -2 (rows) or -1 (columns).
        step: keep every ``step``-th 'valid' output.

    Returns:
        (..., n, W) for ``dim`` -2 or (..., H, n) for -1, contiguous, n = (size - k) // ``step`` + 1.
    """
    x = planes.contiguous()
    h, w = x.shape[-2:]
    k = kernel_1d.numel()
    size = h if dim == -2 else w
    n = (size - k) // step + 1
    # a block size that divides n if one is near, so that no tail is left
    m = next((d for d in range(_FILTER_BLOCK, _FILTER_BLOCK_MIN - 1, -1) if n % d == 0), min(_FILTER_BLOCK, n))
    blocks, rest = divmod(n, m)
    band = _band_matrix(kernel_1d, m, step)  # (m, K): the weights of m consecutive outputs
    tail = band[:rest, : step * (rest - 1) + k]  # the last ``rest`` outputs, if any
    start = blocks * m * step  # first input of the tail
    if dim == -1:  # rows of all planes at once: (R, K) windows of each block times band^T
        rows = x.reshape(-1, w)  # (R, W)
        out = x.new_empty((*x.shape[:-1], n))
        flat = out.view(-1, n)  # (R, n)
        windows = rows.as_strided((blocks, rows.shape[0], band.shape[1]), (m * step, w, 1))
        torch.bmm(windows, band.T.expand(blocks, -1, -1), out=flat.as_strided((blocks, flat.shape[0], m), (m, n, 1)))
        if rest:
            flat[:, blocks * m :] = rows[:, start : start + tail.shape[1]] @ tail.T
        return out
    planes_3d = x.reshape(-1, h, w)  # (P, H, W): one plane at a time, band times (K, W) windows of rows
    out = x.new_empty((*x.shape[:-2], n, w))
    for plane, target in zip(planes_3d, out.view(-1, n, w)):
        windows = plane.as_strided((blocks, band.shape[1], w), (m * step * w, w, 1))
        torch.bmm(band.expand(blocks, -1, -1), windows, out=target[: blocks * m].view(blocks, m, w))
        if rest:
            target[blocks * m :] = tail @ plane[start : start + tail.shape[1]]
    return out


def _filter(planes: torch.Tensor, kernel_1d: torch.Tensor, step: int = 1) -> torch.Tensor:
    """Correlate (..., h, w) planes with ``outer(kernel_1d, kernel_1d)``, keeping every ``step``-th 'valid' pixel.

    One axis at a time, rows first (so that ``step`` drops rows before the second pass), each output the sum of
    its window's products (:func:`_filter_axis`): the round-off of a pixel is relative to its own window's
    values, as in ``convolve2d``, and a window of zeros gives exactly 0.

    Returns:
        (..., (h - k) // step + 1, (w - k) // step + 1) filtered planes, k = ``kernel_1d.numel()``.
    """
    return _filter_axis(_filter_axis(planes, kernel_1d, -2, step), kernel_1d, -1, step)


def _scale_terms(
    mu1: torch.Tensor,
    mu2: torch.Tensor,
    sq1: torch.Tensor,
    sq2: torch.Tensor,
    cross: torch.Tensor,
    noise_var: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """VIF's numerator and denominator sums of one scale from the local means of the moment planes.

    The reference's clipping (flat reference, then flat distorted image, then negative gain, then the floor of
    the residual variance) leaves a gain of 0 wherever one of its conditions holds, and a gain of 0 makes the
    numerator term log10(1 + 0) = 0 whatever the residual variance. So the gain is zeroed where the reference
    zeroes it and the residual variance is kept only in the form the remaining pixels use: same values, in a few
    in-place passes.

    Args:
        mu1: (B, 2, h, w) local means of MRI and other (the references).
        mu2: (B, 1, h, w) local means of F (the distorted image).
        sq1: (B, 2, h, w) local means of MRI^2 and other^2.
        sq2: (B, 1, h, w) local means of F^2.
        cross: (B, 2, h, w) local means of MRI * F and other * F.
        noise_var: the HVS noise variance sigma_n^2.

    Returns:
        Numerator and denominator, (B, 2) each (one column per source).
    """
    sigma1_sq = torch.sub(sq1, mu1 * mu1).clamp_min_(0.0)  # (B, 2, h, w)
    sigma2_sq = torch.sub(sq2, mu2 * mu2).clamp_min_(0.0)  # (B, 1, h, w)
    sigma12 = torch.sub(cross, mu1 * mu2)  # (B, 2, h, w)
    sigma1_sq.masked_fill_(sigma1_sq < _EPS, 0.0)  # flat reference: no gain, no reference information
    gain = torch.div(sigma12, sigma1_sq + _EPS).clamp_min_(0.0).mul_(sigma2_sq >= _EPS)  # 0: flat F or g < 0
    sv_sq = torch.sub(sigma2_sq, gain * sigma12).clamp_min_(_EPS).add_(noise_var)  # (B, 2, h, w)
    num = gain.mul_(gain).mul_(sigma1_sq).div_(sv_sq).add_(1.0).log10_().sum(dim=(2, 3))
    den = torch.div(sigma1_sq, noise_var).add_(1.0).log10_().sum(dim=(2, 3))
    return num, den


@batched_metric
def visual_information_fidelity(
    fused: torch.Tensor, mri: torch.Tensor, other: torch.Tensor, reduction: str = "sum", noise_var: float = 2.0
) -> torch.Tensor:
    """VIF: VIF(MRI -> F) + VIF(other -> F), each the 4-scale pixel-domain VIF with the source as reference.

    As the literature's evaluator (``compare_viff``) computes it, in float64: Gaussian windows of 17, 9, 5, 3 taps
    (sigma N/5), 'valid' filtering, downsampling by 2 after filtering at scales 2-4, sigma_n^2 = ``noise_var``,
    and the same clipping of the local gains/variances (eps 1e-10). A reference with no local variance at any
    scale (0/0) gives 1, as in that code.

    Every scale is filtered directly, one axis at a time, with round-off relative to each window's own values as
    in the reference: the 1e-10 thresholds decide on the same kind of values (a black window gives exactly 0).

    Args:
        fused: (B, 1, H, W) batch or (H, W) image on [0, 255], H and W at least 41.
        mri: the first source, same shape.
        other: the second source, same shape.
        reduction: ``"sum"`` over the two sources (the literature) or ``"mean"``.
        noise_var: the HVS noise variance sigma_n^2.

    Returns:
        (B,) float64 tensor, or a float for a single image.

    Raises:
        FusionInputError: an image side under :data:`VIF_MIN_SIZE` pixels, an unknown ``reduction``, or images of
            different shapes.
    """
    if min(fused.shape[-2:]) < VIF_MIN_SIZE:
        raise FusionInputError(f"VIF needs images of at least {VIF_MIN_SIZE}x{VIF_MIN_SIZE} pixels, got "
                               f"{tuple(fused.shape[-2:])}")
    images = torch.cat([mri, other, fused], dim=1)  # (B, 3, H, W): two references, one distorted image
    b = images.shape[0]
    num = den = images.new_zeros((b, 2))
    for scale in range(1, 5):
        win = _gaussian_1d(scale, images.dtype, images.device)
        if scale > 1:
            images = _filter(images, win, step=2)
        # the moment planes MRI, other, F, MRI^2, other^2, F^2, MRI * F, other * F: (B, 8, h, w)
        planes = images.new_empty((b, 8, *images.shape[2:]))
        planes[:, :3] = images
        torch.mul(images, images, out=planes[:, 3:6])
        torch.mul(images[:, :2], images[:, 2:], out=planes[:, 6:])
        stats = _filter(planes, win)
        mu1, mu2, sq1, sq2, cross = stats.split((2, 1, 2, 1, 2), dim=1)
        scale_num, scale_den = _scale_terms(mu1, mu2, sq1, sq2, cross, noise_var)
        num, den = num + scale_num, den + scale_den
    vif = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 1.0)  # den = 0 implies num = 0
    return reduce_sources(vif, reduction)


def information_fidelity(
    fused: torch.Tensor, sources: torch.Tensor, noise_var: float = 2.0, flat: float = 1e-2
) -> torch.Tensor:
    """Differentiable VIF: :func:`visual_information_fidelity` of each source in ``fused``, for training losses.

    The same four scales, windows, 'valid' filtering, downsampling and sigma_n^2, with the gains and residual
    variances clipped out of place (autograd), in float32 at least. In float32 the local variances of 8-bit-scale
    images carry a round-off of about 1e-3, so a window is flat below ``flat`` (the metric's threshold is 1e-10 in
    float64); on 8-bit images it is within about 0.01 of the metric (tests/test_loss.py).

    Args:
        fused: (B, 1, H, W) on [0, 255] (the scale ``noise_var`` is meant for), H and W at least 41.
        sources: (B, 2, H, W) on the same scale, channel 0 MRI and channel 1 the other modality.
        noise_var: the HVS noise variance sigma_n^2.
        flat: local variance below which a reference window carries no information.

    Returns:
        (B, 2) VIF of each source in ``fused`` (1 for a source without local variance at any scale).

    Raises:
        FusionInputError: an image side under :data:`VIF_MIN_SIZE` pixels, or ``flat`` not positive.
    """
    if min(fused.shape[-2:]) < VIF_MIN_SIZE:
        raise FusionInputError(f"VIF needs images of at least {VIF_MIN_SIZE}x{VIF_MIN_SIZE} pixels, got "
                               f"{tuple(fused.shape[-2:])}")
    if not flat > 0:  # 0 would divide 0 by 0 in flat windows
        raise FusionInputError(f"flat must be positive, got {flat!r}")
    dtype = torch.promote_types(fused.dtype, torch.float32)  # 255^2 is near float16's largest number
    images = torch.cat([sources, fused], dim=1).to(dtype)  # (B, 3, H, W): two references, one distorted image
    num = den = images.new_zeros(images.shape[:1] + (2,))
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        if scale > 1:
            images = gaussian_blur(images, n / 5.0, n)[..., ::2, ::2]
        planes = torch.cat([images, images * images, images[:, :2] * images[:, 2:]], dim=1)  # (B, 8, h, w)
        mu1, mu2, sq1, sq2, cross = gaussian_blur(planes, n / 5.0, n).split((2, 1, 2, 1, 2), dim=1)
        sigma1_sq = (sq1 - mu1 * mu1).clamp_min(0.0)  # (B, 2, h, w)
        sigma2_sq = (sq2 - mu2 * mu2).clamp_min(0.0)  # (B, 1, h, w)
        sigma12 = cross - mu1 * mu2
        sigma1_sq = torch.where(sigma1_sq < flat, 0.0, sigma1_sq)
        gain = (sigma12 / (sigma1_sq + flat)).clamp_min(0.0) * (sigma2_sq >= flat) * (sigma1_sq > 0)
        sv_sq = (sigma2_sq - gain * sigma12).clamp_min(flat) + noise_var
        num = num + torch.log10(1.0 + gain * gain * sigma1_sq / sv_sq).sum(dim=(2, 3))
        den = den + torch.log10(1.0 + sigma1_sq.detach() / noise_var).sum(dim=(2, 3))
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 1.0)
