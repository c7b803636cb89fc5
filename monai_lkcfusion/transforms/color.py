"""Colour handling for functional images: RGB <-> YCbCr (ITU-R BT.601, full range, values in [0, 1])."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["MergeLumad", "SplitLumad", "rgb_to_ycbcr", "ycbcr_to_rgb"]

# rows: Y, Cb, Cr as weights of R, G, B (BT.601 / JPEG full range); Cb and Cr are offset by 0.5
_RGB_TO_YCBCR = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=torch.float64
)
_YCBCR_TO_RGB = torch.linalg.inv(_RGB_TO_YCBCR)


def _mix(img: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 colour matrix along channel dim 0 of ``(3, *spatial)``."""
    return torch.einsum("ij,j...->i...", matrix.to(device=img.device, dtype=img.dtype), img)


def rgb_to_ycbcr(img: torch.Tensor) -> torch.Tensor:
    """RGB ``(3, *spatial)`` in [0, 1] to YCbCr ``(3, *spatial)`` in [0, 1] (BT.601, Cb/Cr centred on 0.5)."""
    out = _mix(img, _RGB_TO_YCBCR)
    out[1:] += 0.5
    return out


def ycbcr_to_rgb(y: torch.Tensor, cbcr: torch.Tensor) -> torch.Tensor:
    """Luma ``(1, *spatial)`` and chroma ``(2, *spatial)`` (BT.601, [0, 1]) to RGB ``(3, *spatial)`` clipped to [0, 1]."""
    ycbcr = torch.cat([y, cbcr - 0.5], dim=0)
    return _mix(ycbcr, _YCBCR_TO_RGB).clamp(0.0, 1.0)


class SplitLumad(MapTransform):
    """Replace a colour image by its luma Y and keep its chroma under ``<key>_cbcr``.

    Gray ``(1, *spatial)`` images pass unchanged (and get no chroma key). A colour ``(3, *spatial)`` image becomes
    ``(1, *spatial)`` Y, and ``(2, *spatial)`` Cb/Cr are stored under ``key + chroma_postfix`` for :class:`MergeLumad`.

    Args:
        keys: keys of the images to split (usually ``"other"``).
        chroma_postfix: suffix of the key that receives Cb/Cr.
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(self, keys: KeysCollection, chroma_postfix: str = "_cbcr", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.chroma_postfix = chroma_postfix

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if img.shape[0] == 3:
                ycbcr = rgb_to_ycbcr(img)
                d[key] = ycbcr[:1]
                d[f"{key}{self.chroma_postfix}"] = ycbcr[1:]
            elif img.shape[0] != 1:
                raise ValueError(f"{key}: expected 1 (gray) or 3 (RGB) channels, got {img.shape[0]}")
        return d


class MergeLumad(MapTransform):
    """Turn a fused luma back into colour with the chroma kept by :class:`SplitLumad`.

    When ``chroma_key`` is absent (gray input), the image stays gray.

    Args:
        keys: keys of the fused luma images (usually ``"pred"``).
        chroma_key: key holding the ``(2, *spatial)`` Cb/Cr of the functional image.
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(self, keys: KeysCollection, chroma_key: str = "other_cbcr", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.chroma_key = chroma_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if self.chroma_key not in d:
            return d
        for key in self.key_iterator(d):
            d[key] = ycbcr_to_rgb(d[key].clamp(0.0, 1.0), d[self.chroma_key].to(d[key]))
        return d
