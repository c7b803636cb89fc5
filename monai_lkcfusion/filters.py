"""Image filters shared by the training loss and the fusion metrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["sobel_gradients"]


def sobel_gradients(images: torch.Tensor, padding_mode: str = "constant") -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel responses of every channel, padded by one pixel so the outputs keep the input size.

    Computed separably (exact for integer-valued images, differentiable): ``gx`` is the correlation with
    ``[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]`` (d/dx) and ``gy`` with ``[[1, 2, 1], [0, 0, 0], [-1, -2, -1]]`` (top minus
    bottom).

    Args:
        images: (B, C, H, W).
        padding_mode: ``"constant"`` (zeros, as the literature's evaluator and the released loss) or ``"reflect"``.

    Returns:
        ``(gx, gy)``, each (B, C, H, W).
    """
    p = F.pad(images, (1, 1, 1, 1), mode=padding_mode)  # (B, C, H + 2, W + 2)
    smooth_rows = p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :]  # (B, C, H, W + 2)
    diff_rows = p[..., :-2, :] - p[..., 2:, :]
    gx = smooth_rows[..., 2:] - smooth_rows[..., :-2]
    gy = diff_rows[..., :-2] + 2 * diff_rows[..., 1:-1] + diff_rows[..., 2:]
    return gx, gy
