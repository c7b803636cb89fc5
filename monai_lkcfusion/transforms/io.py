"""Loading fusion inputs (pictures, volumes, DICOM series) as MONAI dict transforms."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..data.io import read_image

__all__ = ["LoadFusionImaged"]


class LoadFusionImaged(MapTransform):
    """Read each key's path with :func:`monai_lkcfusion.data.io.read_image` into a channel-first MetaTensor.

    Pictures become ``(1|3, H, W)`` in display row/column order (unlike MONAI's ``LoadImaged``, which transposes
    PIL images), volumes ``(1|3, X, Y, Z)`` with a RAS affine. Values are raw (see :class:`ScaleModalityd`).
    Tensors already in the dict pass through unchanged.

    Args:
        keys: keys holding file paths, usually ``("mri", "other")``.
        series: SeriesInstanceUID per key for DICOM folders with several series.
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        series: Mapping[Hashable, str | None] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.series = dict(series or {})

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            if not isinstance(d[key], (torch.Tensor, MetaTensor)):
                d[key] = read_image(d[key], series=self.series.get(key))
        return d
