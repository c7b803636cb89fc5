"""Training losses for image fusion."""

from __future__ import annotations

from .fusion_loss import (
    SSIM_FORMS,
    SSIM_PADDINGS,
    VALUE_RANGES,
    FusionLoss,
    gaussian_blur,
    gaussian_ssim,
    sobel_magnitude,
    ssim_maps,
)

__all__ = [
    "SSIM_FORMS", "SSIM_PADDINGS", "VALUE_RANGES", "FusionLoss", "gaussian_blur", "gaussian_ssim", "sobel_magnitude",
    "ssim_maps",
]
