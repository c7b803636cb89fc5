"""Post-processing of a fused luma: background mask and the provenance record in the output's metadata."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends

from .base import ReferencedMapTransform

__all__ = [
    "describe_fusion",
    "AddFusionRecord",
    "AddFusionRecordD",
    "AddFusionRecordDict",
    "AddFusionRecordd",
    "MaskBackground",
    "MaskBackgroundD",
    "MaskBackgroundDict",
    "MaskBackgroundd",
]


class MaskBackground(Transform):
    """Set the fused image to exactly 0 where every source is background (exactly 0 after scaling).

    A network can put faint signal outside the body, where neither the MRI nor the other modality has any; the
    mask removes it and leaves every other pixel unchanged. Scaling to [0, 1] maps each image's background (air,
    the black of a picture, voxels outside the other modality's field of view) to exactly 0.

    Returns:
        ``img`` ``(C, *spatial)`` with zeros where all channels of ``sources`` ``(S, *spatial)`` are 0.
    """

    backend = [TransformBackends.TORCH]

    def __call__(self, img: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        foreground = (torch.as_tensor(sources) != 0).any(dim=0, keepdim=True)  # (1, *spatial)
        return img * foreground.to(device=img.device, dtype=img.dtype)


class MaskBackgroundd(ReferencedMapTransform):
    """Dict wrapper of :class:`MaskBackground`.

    Args:
        keys: fused images to mask (usually ``"pred"``, the luma, before the chroma is put back).
        source_key: the sources, usually ``"image"``: the ``(2, *spatial)`` MRI/other pair given to the network.
        allow_missing_keys: don't raise when a key is absent.
    """

    backend = MaskBackground.backend

    def __init__(self, keys: KeysCollection, source_key: str = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, MaskBackground(), source_key, allow_missing_keys=allow_missing_keys)


class AddFusionRecord(Transform):
    """Record how a fused image was made in its metadata (it already carries the MRI's, from the pair).

    Adds ``mri_intensity_scaling``, ``other_intensity_scaling``, ``other_modality``, ``overlap_fraction`` (of the
    MRI grid covered by the other modality) and ``color`` (RGB output); drops the MRI's own ``intensity_scaling``
    and ``nonfinite_voxels`` (they describe an input, not the output).
    """

    backend = [TransformBackends.TORCH]

    def __call__(self, img: MetaTensor, mri: MetaTensor, other: MetaTensor) -> MetaTensor:
        """``img``'s voxels (shared, not copied) with the record in a metadata of its own (``img`` is unchanged)."""
        img = MetaTensor(img.as_tensor(), meta=dict(img.meta), applied_operations=list(img.applied_operations))
        meta = img.meta
        for key in ("intensity_scaling", "nonfinite_voxels"):
            meta.pop(key, None)
        record = {
            "mri_intensity_scaling": mri.meta.get("intensity_scaling"),
            "other_intensity_scaling": other.meta.get("intensity_scaling"),
            "other_modality": other.meta.get("modality"),
            "overlap_fraction": other.meta.get("overlap_fraction", 1.0),
            "color": img.shape[0] == 3,
        }
        meta.update({key: value for key, value in record.items() if value is not None})  # collate cannot batch None
        if "registration" in other.meta:  # the other image was registered to the MRI (RegisterToReference)
            meta["registration"] = other.meta["registration"]
        return img


def describe_fusion(meta: Mapping[str, object]) -> str:
    """One line saying how a fused image was made, from the record of :class:`AddFusionRecord`.

    Args:
        meta: the fused image's metadata.

    Returns:
        e.g. ``"MRI scaled by MR percentiles 0.5-99.5 = [3, 812]; other (CT) by CT window [-500, 1500] HU; it
        covers 100% of the MRI grid"``.
    """
    other = meta.get("other_modality")
    overlap = meta.get("overlap_fraction", 1.0)
    return (
        f"MRI scaled by {meta.get('mri_intensity_scaling')}; other{f' ({other})' if other else ''} by "
        f"{meta.get('other_intensity_scaling')}; it covers {float(overlap):.0%} of the MRI grid"
    )


class AddFusionRecordd(MapTransform):
    """Dict wrapper of :class:`AddFusionRecord`.

    Args:
        keys: fused images (usually ``"pred"``).
        mri_key: the scaled MRI.
        other_key: the scaled, resampled other modality.
        allow_missing_keys: don't raise when a key is absent.
    """

    backend = AddFusionRecord.backend

    def __init__(
        self, keys: KeysCollection, mri_key: str = "mri", other_key: str = "other", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mri_key = mri_key
        self.other_key = other_key
        self.recorder = AddFusionRecord()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.recorder(d[key], d[self.mri_key], d[self.other_key])
        return d


MaskBackgroundD = MaskBackgroundDict = MaskBackgroundd
AddFusionRecordD = AddFusionRecordDict = AddFusionRecordd
