"""Input handling and small numerical helpers shared by the fusion metrics.

Every metric function in this package accepts a single gray image as a NumPy array or tensor of shape (H, W)
(and then returns a Python float) or a batch as a tensor/array of shape (B, 1, H, W) (and then returns a float64
tensor of shape (B,)). Intensities are on the 8-bit gray scale [0, 255], like the literature's evaluators.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..errors import FusionInputError
from ..transforms.color import BT601_LUMA

__all__ = [
    "SOURCE_REDUCTIONS",
    "batched_metric",
    "as_batch",
    "reduce_sources",
    "pearson",
    "gray8",
    "luma_bt601",
]

SOURCE_REDUCTIONS = ("sum", "mean")

ImageLike = np.ndarray | torch.Tensor


def as_batch(image: ImageLike, name: str = "image") -> tuple[torch.Tensor, bool]:
    """Convert one image or a batch to a float64 tensor of shape (B, 1, H, W).

    Args:
        image: (H, W) or (B, 1, H, W) array or tensor on the gray scale [0, 255].
        name: how to call the input in an error message.

    Returns:
        The float64 batch and whether the input was a single (H, W) image.

    Raises:
        FusionInputError: for any other shape.
    """
    tensor = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if tensor.ndim == 2:
        return tensor.to(torch.float64)[None, None], True
    if tensor.ndim == 4 and tensor.shape[1] == 1:
        return tensor.to(torch.float64), False
    raise FusionInputError(f"{name}: expected shape (H, W) or (B, 1, H, W), got {tuple(tensor.shape)}")


def batched_metric(func: Callable[..., torch.Tensor]) -> Callable[..., Any]:
    """Let a metric written for float64 (B, 1, H, W) batches also take (H, W) arrays and return a float.

    The wrapped function receives its positional image arguments (fused first, then the sources) as float64
    batches of one shape and returns a (B,) tensor; the wrapper checks the shapes, and unpacks a single image's
    value into a Python float. ``func.__wrapped__`` is the batch-only function.

    Args:
        func: the batch metric, ``func(fused, *sources, **kwargs) -> (B,)``.

    Returns:
        the wrapper: ``(B,)`` tensor for batches, a float for (H, W) images; keyword arguments pass through.
        It raises :class:`~monai_lkcfusion.errors.FusionInputError` for an image of another shape than (H, W) or
        (B, 1, H, W), or for images of different shapes.
    """

    @functools.wraps(func)
    def wrapper(*images: ImageLike, **kwargs: Any) -> torch.Tensor | float:
        names = ("fused", "mri", "other")
        batches = [as_batch(img, names[i] if i < len(names) else "image") for i, img in enumerate(images)]
        shapes = {tuple(b.shape) for b, _ in batches}
        if len(shapes) != 1:
            raise FusionInputError(f"images must have one shape, got {sorted(shapes)}")
        values = func(*(b for b, _ in batches), **kwargs)
        return float(values[0]) if batches[0][1] else values

    return wrapper


def reduce_sources(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Combine per-source values of shape (B, 2) into (B,) by ``"sum"`` (the literature) or ``"mean"``.

    Args:
        values: (B, 2) values, column 0 for the MRI and column 1 for the other modality.
        reduction: ``"sum"`` or ``"mean"`` (:data:`SOURCE_REDUCTIONS`).

    Returns:
        (B,) tensor.

    Raises:
        FusionInputError: ``reduction`` is not one of :data:`SOURCE_REDUCTIONS`.
    """
    if reduction not in SOURCE_REDUCTIONS:
        raise FusionInputError(f"reduction: expected one of {SOURCE_REDUCTIONS}, got {reduction!r}")
    return values.sum(dim=1) if reduction == "sum" else values.mean(dim=1)


def pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation over the last two dimensions; 0 where either image is constant (instead of NaN).

    Args:
        x: images (..., H, W).
        y: images broadcastable with ``x``.

    Returns:
        correlations of shape ``(...)``, in [-1, 1].
    """
    xc = x - x.mean(dim=(-2, -1), keepdim=True)
    yc = y - y.mean(dim=(-2, -1), keepdim=True)
    num = (xc * yc).sum(dim=(-2, -1))
    den = torch.sqrt((xc * xc).sum(dim=(-2, -1)) * (yc * yc).sum(dim=(-2, -1)))
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)


def luma_bt601(rgb: np.ndarray) -> np.ndarray:
    """8-bit gray of an RGB image as the literature's evaluators read it (OpenCV BGR2GRAY on float32, rounded).

    Args:
        rgb: (H, W, 3) array in RGB order, values [0, 255]; a (H, W) array is returned as float32 unchanged.

    Returns:
        (H, W) float32 array: round(0.299 R + 0.587 G + 0.114 B), ties to even, computed in float32 (where the sum
        is an exact half, float32 rounding decides: 546 of the 2**24 RGB values land one level from OpenCV's).
    """
    rgb = np.asarray(rgb, dtype=np.float32)
    if rgb.ndim == 2:
        return rgb
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    wr, wg, wb = (np.float32(w) for w in BT601_LUMA)
    luma = b * wb + g * wg + r * wr  # in OpenCV's order of the sum
    return np.round(luma).astype(np.float32)


def gray8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """The 8-bit gray image the literature's evaluators score, of a ``(1|3, H, W)`` image on the scale [0, 255].

    Values are clipped and rounded to 8 bits per channel (as when the image is saved); colour becomes its rounded
    BT.601 luma.

    Args:
        image: channel-first gray or RGB image with values in [0, 255].

    Returns:
        (H, W) float32 array with integer values in [0, 255].

    Raises:
        FusionInputError: a shape other than ``(1|3, H, W)``.
    """
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise FusionInputError(f"expected a (1|3, H, W) image, got shape {array.shape}")
    array = np.round(np.clip(array.astype(np.float32), 0.0, 255.0))
    return luma_bt601(np.moveaxis(array, 0, -1)) if array.shape[0] == 3 else array[0]
