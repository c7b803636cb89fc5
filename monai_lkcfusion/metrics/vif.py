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


def _filter_valid(images: torch.Tensor, kernel_1d: torch.Tensor) -> torch.Tensor:
    """Correlate (..., H, W) planes with ``outer(kernel_1d, kernel_1d)``, keeping the 'valid' region.

    Computed as a float64 circular convolution by FFT at the image size: the wrapped-around part is exactly the
    border that 'valid' drops. The round-off (about 1e-16 of the largest squared value, below 1e-10 for centred
    8-bit images) only matters next to VIF's 1e-10 thresholds, where every term it could change is that small.
    """
    h, w = images.shape[-2:]
    k = kernel_1d.numel()
    flipped = kernel_1d.flip(0)
    padded = torch.zeros(h, w, dtype=images.dtype, device=images.device)
    padded[:k, :k] = torch.outer(flipped, flipped)
    filtered = torch.fft.irfft2(torch.fft.rfft2(images) * torch.fft.rfft2(padded), s=(h, w))
    return filtered[..., k - 1 :, k - 1 :]


@batched_metric
def visual_information_fidelity(
    fused: torch.Tensor, mri: torch.Tensor, other: torch.Tensor, reduction: str = "sum", noise_var: float = 2.0
) -> torch.Tensor:
    """VIF: VIF(MRI -> F) + VIF(other -> F), each the 4-scale pixel-domain VIF with the source as reference.

    As the literature's evaluator (``compare_viff``) computes it, in float64: Gaussian windows of 17, 9, 5, 3 taps
    (sigma N/5), 'valid' filtering, downsampling by 2 after filtering at scales 2-4, sigma_n^2 = ``noise_var``,
    and the same clipping of the local gains/variances (eps 1e-10). A reference with no local variance at any
    scale (0/0) gives 1, as in that code.

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
    num = torch.zeros(images.shape[0], 2, dtype=torch.float64, device=images.device)
    den = torch.zeros_like(num)
    for scale in range(1, 5):
        win = _gaussian_1d(scale, images.dtype, images.device)
        if scale > 1:
            images = _filter_valid(images, win)[..., ::2, ::2]
        # (co)variances do not change with an offset: centring each image keeps the FFT round-off at the scale of
        # its contrast (a constant image gives exactly 0), not of its brightness
        centred = images - images.mean(dim=(2, 3), keepdim=True)
        ref, dist = centred[:, :2], centred[:, 2:]
        stats = _filter_valid(torch.cat([centred, centred * centred, ref * dist], dim=1), win)  # (B, 8, h, w)
        mu, sq, cross = stats[:, :3], stats[:, 3:6], stats[:, 6:]
        mu1, mu2 = mu[:, :2], mu[:, 2:]
        sigma1_sq = (sq[:, :2] - mu1 * mu1).clamp_min(0.0)  # (B, 2)
        sigma2_sq = (sq[:, 2:] - mu2 * mu2).clamp_min(0.0)  # (B, 1)
        sigma12 = cross - mu1 * mu2
        # the reference's clipping, in its order: flat reference, then flat distorted image, then negative gain
        flat_ref, flat_dist = sigma1_sq < _EPS, sigma2_sq < _EPS
        g = sigma12 / (sigma1_sq + _EPS)
        sv_sq = torch.where(flat_dist, 0.0, torch.where(flat_ref, sigma2_sq, sigma2_sq - g * sigma12))
        g = torch.where(flat_ref | flat_dist, 0.0, g)
        sv_sq = torch.where(g < 0, sigma2_sq, sv_sq).clamp_min(_EPS)
        g = g.clamp_min(0.0)
        sigma1_sq = torch.where(flat_ref, 0.0, sigma1_sq)
        num += torch.log10(1 + g * g * sigma1_sq / (sv_sq + noise_var)).sum(dim=(2, 3))
        den += torch.log10(1 + sigma1_sq / noise_var).sum(dim=(2, 3))
    vif = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 1.0)  # den = 0 implies num = 0
    return reduce_sources(vif, reduction)
