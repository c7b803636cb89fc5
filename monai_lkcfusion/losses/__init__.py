"""Training losses for image fusion."""

from __future__ import annotations

from .fusion_loss import FusionLoss, gaussian_ssim, sobel_magnitude

__all__ = ["FusionLoss", "gaussian_ssim", "sobel_magnitude"]
