"""VIF: pixel-domain multi-scale visual information fidelity (Sheikh & Bovik 2006, ``vifp_mscale``)."""

from __future__ import annotations

import torch

from ..errors import FusionInputError
from .utils import batched_metric, reduce_sources

__all__ = ["visual_information_fidelity"]

_EPS = 1e-10


def _gaussian_1d(scale: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1D factor of scale ``scale``'s window: N = 2^(5 - scale) + 1 taps, sigma N / 5, normalised to sum 1."""
    n = 2 ** (5 - scale) + 1
    x = torch.arange(n, dtype=dtype, device=device) - (n - 1) / 2
    g = torch.exp(-(x * x) / (2 * (n / 5.0) ** 2))
    return g / g.sum()


def _fft_length(n: int) -> int:
    """The smallest 2^a 3^b >= ``n``: an FFT length without large prime factors."""
    length = n
    while True:
        rest = length
        for factor in (2, 3):
            while rest % factor == 0:
                rest //= factor
        if rest == 1:
            return length
        length += 1


def _filter_fft(real: torch.Tensor, imag: torch.Tensor, kernel_1d: torch.Tensor) -> torch.Tensor:
    """Correlate two stacks of (..., h, w) planes with ``outer(kernel_1d, kernel_1d)`` by FFT, 'valid' region.

    The stacks are the real and imaginary parts of one complex float64 circular convolution (the kernel is real,
    so the parts do not mix), at a zero-padded fast FFT length: the wrapped-around part is exactly the border
    that 'valid' drops. The round-off is about 1e-16 of the largest value of a plane, wherever the pixel is.

    Returns:
        (..., h - k + 1, w - k + 1) complex planes: filtered ``real`` + i filtered ``imag``, k = ``kernel_1d.numel()``.
    """
    h, w = real.shape[-2:]
    k = kernel_1d.numel()
    size = (_fft_length(h), _fft_length(w))
    flipped = kernel_1d.flip(0)
    kernel = torch.fft.fft(flipped, n=size[0]).unsqueeze(1) * torch.fft.fft(flipped, n=size[1]).unsqueeze(0)
    filtered = torch.fft.ifft2(torch.fft.fft2(torch.complex(real, imag), s=size).mul_(kernel))
    return filtered[..., k - 1 : h, k - 1 : w]


def _filter_direct(planes: torch.Tensor, kernel_1d: torch.Tensor, step: int = 1) -> torch.Tensor:
    """Correlate (..., h, w) planes with ``outer(kernel_1d, kernel_1d)``, keeping every ``step``-th 'valid' pixel.

    Weighted sums of shifted slices, one axis at a time (rows first, so that ``step`` drops rows before the
    second pass): the round-off of a pixel is relative to its own window's values, as in ``convolve2d``, and a
    window of zeros gives exactly 0.

    Returns:
        (..., (h - k) // step + 1, (w - k) // step + 1) filtered planes, k = ``kernel_1d.numel()``.
    """
    k = kernel_1d.numel()
    weights = kernel_1d.tolist()
    out = planes
    for dim in (planes.ndim - 2, planes.ndim - 1):
        n = (out.shape[dim] - k) // step + 1
        index = [slice(None)] * out.ndim

        def shifted(offset: int) -> torch.Tensor:
            index[dim] = slice(offset, offset + step * (n - 1) + 1, step)
            return out[tuple(index)]

        total = shifted(0) * weights[0]
        for offset in range(1, k):
            total.add_(shifted(offset), alpha=weights[offset])
        out = total
    return out


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

    The first, largest scale is filtered by FFT, on images centred on their mean (a constant image gives exactly
    0): the local variances of 8-bit images are 0 or far above the 1e-10 thresholds, so the FFT's round-off (about
    1e-16 of a plane's largest value) moves none across them. The filtered, downsampled images of the later scales
    have Gaussian-tail variances near 1e-10, so they are filtered directly, with round-off relative to each
    window's own values as in the reference.

    Args:
        fused: (B, 1, H, W) batch or (H, W) image on [0, 255], H and W at least 41.
        mri: the first source, same shape.
        other: the second source, same shape.
        reduction: ``"sum"`` over the two sources (the literature) or ``"mean"``.
        noise_var: the HVS noise variance sigma_n^2.

    Returns:
        (B,) float64 tensor, or a float for a single image.
    """
    if min(fused.shape[-2:]) < 41:  # room for the four scales' 'valid' windows
        raise FusionInputError(f"VIF needs images of at least 41x41 pixels, got {tuple(fused.shape[-2:])}")
    images = torch.cat([mri, other, fused], dim=1)  # (B, 3, H, W): two references, one distorted image
    win = _gaussian_1d(1, images.dtype, images.device)
    # the moment planes of the images centred on their means ((co)variances do not change with an offset), as
    # real parts MRI, other, MRI * F, other * F and imaginary parts MRI^2, other^2, F, F^2: (B, 8, H, W)
    planes = images.new_empty((images.shape[0], 8, *images.shape[2:]))
    means = images.mean(dim=(2, 3), keepdim=True)  # (B, 3, 1, 1)
    torch.sub(images[:, :2], means[:, :2], out=planes[:, :2])
    torch.sub(images[:, 2:], means[:, 2:], out=planes[:, 6:7])
    torch.mul(planes[:, :2], planes[:, 6:7], out=planes[:, 2:4])
    torch.mul(planes[:, :2], planes[:, :2], out=planes[:, 4:6])
    torch.mul(planes[:, 6:7], planes[:, 6:7], out=planes[:, 7:])
    stats = _filter_fft(planes[:, :4], planes[:, 4:], win)  # (B, 4, h, w) complex: every plane's local means
    mu1, cross, sq1 = stats.real[:, :2], stats.real[:, 2:], stats.imag[:, :2]
    num, den = _scale_terms(mu1, stats.imag[:, 2:3], sq1, stats.imag[:, 3:], cross, noise_var)  # (B, 2) each
    for scale in range(2, 5):
        win = _gaussian_1d(scale, images.dtype, images.device)
        images = _filter_direct(images, win, step=2)
        products = images[:, :2] * images[:, 2:]
        # (B, 8, h, w): means of MRI, other, F, their squares, MRI * F, other * F
        stats = _filter_direct(torch.cat([images, images * images, products], dim=1), win)
        mu1, mu2, sq1, sq2, cross = stats.split((2, 1, 2, 1, 2), dim=1)
        scale_num, scale_den = _scale_terms(mu1, mu2, sq1, sq2, cross, noise_var)
        num, den = num + scale_num, den + scale_den
    vif = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 1.0)  # den = 0 implies num = 0
    return reduce_sources(vif, reduction)
