"""Colour handling for functional images: RGB <-> YCbCr (ITU-R BT.601, full range, values in [0, 1]).

A pseudo-colour PET/SPECT is fused through its luma: :class:`SplitLuma` gives the luma to the network and keeps
the chroma, :class:`MergeLuma` puts the chroma back on the fused luma. RGB has a smaller gamut than YCbCr, so the
merge maps out-of-gamut colours back into it by reducing their chroma (never by clipping R, G, B, which would
change the luma): what a clinician sees, ``gray(RGB)``, is the fused luma.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends
from monai.utils.type_conversion import convert_to_dst_type

from ..errors import FusionInputError
from .base import ReferencedMapTransform

__all__ = [
    "BT601_LUMA",
    "MergeLuma",
    "MergeLumaD",
    "MergeLumaDict",
    "MergeLumad",
    "SplitLuma",
    "SplitLumaD",
    "SplitLumaDict",
    "SplitLumad",
    "rgb_to_ycbcr",
    "ycbcr_to_rgb",
]

BT601_LUMA = (0.299, 0.587, 0.114)
"""Weights of R, G and B in the luma Y of ITU-R BT.601 (as JPEG, OpenCV's ``COLOR_RGB2GRAY`` and the fusion
literature's evaluators compute gray)."""

# rows: Y, Cb, Cr as weights of R, G, B (BT.601 / JPEG full range); Cb and Cr are offset by 0.5
_RGB_TO_YCBCR = torch.tensor([BT601_LUMA, [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                             dtype=torch.float64)
_YCBCR_TO_RGB = torch.linalg.inv(_RGB_TO_YCBCR)


def _mix(img: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 colour matrix along channel dim 0 of ``(3, *spatial)``."""
    return torch.einsum("ij,j...->i...", matrix.to(device=img.device, dtype=img.dtype), img)


def rgb_to_ycbcr(img: torch.Tensor) -> torch.Tensor:
    """RGB ``(3, *spatial)`` in [0, 1] to YCbCr ``(3, *spatial)`` in [0, 1] (BT.601, Cb/Cr centred on 0.5).

    Args:
        img: floating-point RGB ``(3, *spatial)``, channel 0 red; values are not clamped.

    Returns:
        a new tensor ``(3, *spatial)`` of ``img``'s dtype and device: Y, then Cb and Cr offset by 0.5.
    """
    out = _mix(img, _RGB_TO_YCBCR)
    out[1:] += 0.5
    return out


def ycbcr_to_rgb(y: torch.Tensor, cbcr: torch.Tensor, preserve_luma: bool = True) -> torch.Tensor:
    """Luma ``(1, *spatial)`` and chroma ``(2, *spatial)`` (BT.601, [0, 1]) to RGB ``(3, *spatial)`` in [0, 1].

    A colour whose R, G or B would leave [0, 1] is out of the RGB gamut. With ``preserve_luma`` (luma-preserving
    gamut mapping) its chroma ``(Cb - 0.5, Cr - 0.5)`` is scaled by the largest factor ``s`` in [0, 1] for which
    ``Y + s * (chroma's contribution)`` lies in [0, 1] for R, G and B; the chroma's contribution to the luma is 0,
    so the BT.601 luma of the result is ``Y`` (up to float rounding) and the hue is kept. Without it R, G and B
    are clipped, which changes the luma of saturated colours.

    Args:
        y: luma ``(1, *spatial)``; values outside [0, 1] are clamped first.
        cbcr: chroma ``(2, *spatial)`` centred on 0.5.
        preserve_luma: reduce chroma instead of clipping R, G, B.

    Returns:
        RGB ``(3, *spatial)`` in [0, 1].
    """
    y = y.clamp(0.0, 1.0)
    offset = _mix(torch.cat([torch.zeros_like(y), cbcr - 0.5], dim=0), _YCBCR_TO_RGB)  # (3, *spatial) R,G,B - Y
    if preserve_luma:
        room = torch.where(offset > 0, 1.0 - y, y)  # (3, *spatial): distance from Y to the bound it moves toward
        limit = room / offset.abs().clamp_min(1e-12)
        offset = offset * limit.amin(dim=0, keepdim=True).clamp(max=1.0)
    return (y + offset).clamp(0.0, 1.0)


class SplitLuma(Transform):
    """Split an image into its luma and chroma: gray ``(1, *spatial)`` passes, RGB ``(3, *spatial)`` is converted.

    Returns:
        ``(luma, chroma)``: luma ``(1, *spatial)`` and, for RGB, chroma ``(2, *spatial)`` (BT.601 Cb/Cr centred on
        0.5), else ``None``; both keep the input's metadata.
    """

    backend = [TransformBackends.TORCH]

    def __call__(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if img.shape[0] == 1:
            return img, None
        if img.shape[0] != 3:
            raise FusionInputError(f"expected 1 (gray) or 3 (RGB) channels, got {img.shape[0]}")
        ycbcr = rgb_to_ycbcr(torch.as_tensor(img))  # (3, *spatial)
        return convert_to_dst_type(ycbcr[:1], img)[0], convert_to_dst_type(ycbcr[1:], img)[0]


class MergeLuma(Transform):
    """Put chroma back on a (fused) luma: ``(1, *spatial)`` and ``(2, *spatial)`` to RGB ``(3, *spatial)``.

    Args:
        preserve_luma: luma-preserving gamut mapping (see :func:`ycbcr_to_rgb`); ``False`` clips R, G, B.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, preserve_luma: bool = True) -> None:
        self.preserve_luma = preserve_luma

    def __call__(self, img: torch.Tensor, chroma: torch.Tensor | None) -> torch.Tensor:
        """RGB ``(3, *spatial)`` keeping ``img``'s metadata; ``img`` unchanged when ``chroma`` is ``None``."""
        if chroma is None:
            return img
        luma = torch.as_tensor(img)
        rgb = ycbcr_to_rgb(luma, torch.as_tensor(chroma).to(luma), self.preserve_luma)
        return convert_to_dst_type(rgb, img)[0]


class SplitLumad(MapTransform):
    """Dict wrapper of :class:`SplitLuma`: each key becomes its luma; an RGB key's chroma goes to ``<key>_cbcr``.

    Args:
        keys: keys of the images to split (usually ``("mri", "other")``).
        chroma_postfix: suffix of the key that receives Cb/Cr (for :class:`MergeLumad`).
        allow_missing_keys: don't raise when a key is absent.
    """

    backend = SplitLuma.backend

    def __init__(self, keys: KeysCollection, chroma_postfix: str = "_cbcr", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.chroma_postfix = chroma_postfix
        self.splitter = SplitLuma()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], chroma = self.splitter(d[key])
            if chroma is not None:
                d[f"{key}{self.chroma_postfix}"] = chroma
        return d


class MergeLumad(ReferencedMapTransform):
    """Dict wrapper of :class:`MergeLuma`: the fused luma under ``keys`` becomes RGB with ``chroma_key``'s Cb/Cr.

    When ``chroma_key`` is absent (gray other modality), the image stays gray.

    Args:
        keys: keys of the fused luma images (usually ``"pred"``).
        chroma_key: key holding the ``(2, *spatial)`` Cb/Cr of the functional image.
        preserve_luma: luma-preserving gamut mapping (see :func:`ycbcr_to_rgb`); ``False`` clips R, G, B.
        allow_missing_keys: don't raise when a key is absent.
    """

    backend = MergeLuma.backend

    def __init__(
        self, keys: KeysCollection, chroma_key: str = "other_cbcr", preserve_luma: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, MergeLuma(preserve_luma), chroma_key, ref_optional=True,
                         allow_missing_keys=allow_missing_keys)


SplitLumaD = SplitLumaDict = SplitLumad
MergeLumaD = MergeLumaDict = MergeLumad
