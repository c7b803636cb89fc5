"""Structural similarity of the fused image to each source: SSIM (the literature's 7x7 uniform window) and MS-SSIM."""

from __future__ import annotations

import torch
from monai.metrics.regression import compute_ms_ssim

from ..errors import FusionInputError
from .utils import batched_metric, reduce_sources

__all__ = ["structural_similarity", "multiscale_structural_similarity", "MS_SSIM_WEIGHTS"]

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _window_sum(planes: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Sums of ``size`` consecutive values along ``dim`` over the 'valid' region, by doubling (7 values: 4 adds).

    Sums of blocks of 1, 2, 4, ... values are added for the set bits of ``size``; the order of the additions
    differs from a left-to-right sum, which does not matter where the sums are exact (see :func:`_box_mean`).

    Returns:
        A new tensor, or for ``size`` a power of 2 a view of the block sums (``size`` 1: of ``planes``).
    """
    n = planes.shape[dim] - size + 1
    block, width, offset = planes, 1, 0  # block[i] = sum of planes[i : i + width]
    parts = []  # the block sums that make up the window, narrowed to the 'valid' length
    while True:
        if size & width:
            parts.append(block.narrow(dim, offset, n))
            offset += width
        if 2 * width > size:
            break
        length = block.shape[dim] - width
        block = block.narrow(dim, 0, length) + block.narrow(dim, width, length)
        width *= 2
    if len(parts) == 1:
        return parts[0]
    total = torch.add(parts[-1], parts[-2])
    for part in reversed(parts[:-2]):
        total.add_(part)
    return total


def _exact_float32_sums(images: torch.Tensor, size: int) -> bool:
    """Whether float32 sums of ``size`` values of ``images``, their squares and products are exact.

    They are for integer images with ``size`` * max|value|^2 below 2^24 (8-bit images: 7 * 255^2); a product of
    two images is at most the larger square, so checking the images is checking every moment plane.
    """
    lo, hi = (float(v) for v in torch.aminmax(images))
    return max(-lo, hi) ** 2 * size < 2**24 and torch.equal(images, images.round())


def _box_mean(planes: torch.Tensor, size: int, integer: bool | None = None) -> torch.Tensor:
    """Uniform ``size`` x ``size`` mean over the 'valid' region of float32 planes (..., H, W).

    Like ``scipy.ndimage.uniform_filter`` on float32: one pass per axis (rows first), each summed in float64 and
    divided by ``size`` in float64, stored as float32. The second pass's float64 sums of float32 means are exact.
    Integer planes below 2^24 / ``size`` (8-bit images, their squares and products) have exact float32 sums too,
    and a float32 division of exact operands rounds as the float64 division rounded to float32 does, so their
    first pass runs in float32 with the same result.

    Args:
        planes: (..., H, W) float32 planes.
        size: the window size.
        integer: whether the planes are such integer planes (see :func:`_exact_float32_sums`); ``None``: check.

    Returns:
        (..., H - size + 1, W - size + 1) float32 means.
    """
    if integer is None:
        integer = bool(planes.abs().amax() * size < 2**24) and torch.equal(planes, planes.round())
    first_sums = _window_sum(planes if integer else planes.double(), size, -2)
    if integer:  # float32 quotients of the exact float32 sums, stored as float64 for the second pass
        first = torch.div(first_sums, size, out=first_sums.new_empty(first_sums.shape, dtype=torch.float64))
    else:  # float64 quotients rounded to float32
        first = torch.div(first_sums, size, out=planes.new_empty(first_sums.shape)).double()
    sums = _window_sum(first, size, -1)
    return torch.div(sums, size, out=planes.new_empty(sums.shape))  # float64 quotients rounded to float32


def _ssim_per_source(fused: torch.Tensor, sources: torch.Tensor, data_range: float, window: int) -> torch.Tensor:
    """Mean SSIM of (B, 1, H, W) ``fused`` against each of the (B, S, H, W) ``sources``: (B, S).

    ``skimage.metrics.structural_similarity`` with its defaults (uniform window, sample covariance,
    K1 = 0.01, K2 = 0.03) in float32 as it computes for float32 images; the mean is over the pixels at least
    window // 2 from the border, where the window lies inside the image.
    """
    b, s = sources.shape[:2]
    images = torch.cat([fused, sources], dim=1).float()  # (B, 1 + S, H, W)
    x, y = images[:, :1], images[:, 1:]
    planes = images.new_empty((b, 2 + 3 * s, *images.shape[2:]))  # x, x^2, y, y^2, x y
    planes[:, :1], planes[:, 2 : 2 + s] = x, y
    torch.mul(x, x, out=planes[:, 1:2])
    torch.mul(y, y, out=planes[:, 2 + s : 2 + 2 * s])
    torch.mul(x, y, out=planes[:, 2 + 2 * s :])
    means = _box_mean(planes, window, _exact_float32_sums(images, window))  # (B, 2 + 3S, h, w)
    ux, uxx = means[:, :1], means[:, 1:2]
    uy, uyy, uxy = means[:, 2 : 2 + s], means[:, 2 + s : 2 + 2 * s], means[:, 2 + 2 * s :]
    cov_norm = window * window / (window * window - 1.0)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    a1, a2 = 2 * ux * uy + c1, 2 * vxy + c2
    b1, b2 = ux * ux + uy * uy + c1, vx + vy + c2
    ssim_map = (a1 * a2) / (b1 * b2)  # (B, S, H - window + 1, W - window + 1)
    return ssim_map.double().mean(dim=(2, 3))


@batched_metric
def structural_similarity(
    fused: torch.Tensor,
    mri: torch.Tensor,
    other: torch.Tensor,
    data_range: float = 255.0,
    reduction: str = "sum",
    window: int = 7,
) -> torch.Tensor:
    """SSIM: SSIM(F, MRI) + SSIM(F, other) with a uniform ``window`` x ``window`` window.

    Args:
        fused: (B, 1, H, W) batch or (H, W) image on [0, 255].
        mri: the first source, same shape.
        other: the second source, same shape.
        data_range: the L in C1 = (0.01 L)^2, C2 = (0.03 L)^2. 255 is LKC-FUNet's evaluator; 2 reproduces the
            published CDDFuse/EMMA tables (their evaluator leaves scikit-image's default for float images).
        reduction: ``"sum"`` over the two sources (the literature) or ``"mean"``.
        window: odd window size (7 in the literature).

    Returns:
        (B,) float64 tensor, or a float for a single image.
    """
    return reduce_sources(_ssim_per_source(fused, torch.cat([mri, other], dim=1), data_range, window), reduction)


@batched_metric
def multiscale_structural_similarity(
    fused: torch.Tensor,
    mri: torch.Tensor,
    other: torch.Tensor,
    data_range: float = 255.0,
    reduction: str = "sum",
) -> torch.Tensor:
    """MS-SSIM (Wang et al. 2003): 5 scales, 11x11 Gaussian window (sigma 1.5), weights :data:`MS_SSIM_WEIGHTS`.

    Computed by MONAI's :func:`monai.metrics.regression.compute_ms_ssim` (2x2 average pooling between scales,
    negative scale terms clipped to 0) for F against each source, combined like SSIM.

    Args:
        fused: (B, 1, H, W) batch or (H, W) image on [0, 255], H and W at least 176.
        mri: the first source, same shape.
        other: the second source, same shape.
        data_range: the L of the stability constants.
        reduction: ``"sum"`` over the two sources (like SSIM) or ``"mean"``.

    Returns:
        (B,) float64 tensor, or a float for a single image.

    Raises:
        FusionInputError: an image side under 176 pixels, an unknown ``reduction``, or images of different shapes.
    """
    if min(fused.shape[-2:]) < 176:  # 11-pixel window at 1/16 of the size (MONAI's check)
        raise FusionInputError(f"MS_SSIM needs images of at least 176x176 pixels, got {tuple(fused.shape[-2:])}")
    b = fused.shape[0]
    pred = torch.cat([fused, fused]).float()
    target = torch.cat([mri, other]).float()
    values = compute_ms_ssim(
        pred, target, spatial_dims=2, data_range=data_range, kernel_size=11, kernel_sigma=1.5, weights=MS_SSIM_WEIGHTS
    )
    return reduce_sources(values.double().reshape(2, b).T, reduction)
