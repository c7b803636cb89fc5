"""Batching of training and validation samples."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import FusionInputError

__all__ = ["collate_same_size"]


def collate_same_size(batch: Sequence[Any]) -> Any:
    """MONAI's ``list_data_collate`` (lists of samples, e.g. from ``RandSpatialCropSamplesd``, are flattened), with
    samples of different sizes refused in one line: whole-slice training and validation batch pairs as they are.

    Args:
        batch: the samples, dicts of tensors (or lists of such dicts).

    Returns:
        The collated batch.

    Raises:
        FusionInputError: naming the sizes, when the samples' ``"image"`` tensors (or the samples) differ in size.
    """
    from monai.data import list_data_collate

    samples = [s for item in batch for s in item] if batch and isinstance(batch[0], list) else list(batch)
    sizes = sorted({tuple(_image(s).shape[1:]) for s in samples})  # (C, *spatial) -> spatial
    if len(sizes) > 1:
        shown = ", ".join("x".join(map(str, size)) for size in sizes)
        raise FusionInputError(
            f"a batch holds samples of sizes {shown}: whole-slice training and validation need pairs of one size (and "
            "square slices with RandRotate90d); crop them (roi_size with RandSpatialCropSamplesd), resize the pairs, "
            "or batch one at a time (training: batch_size 1; validation: validate#dataloader#batch_size 1)"
        )
    return list_data_collate(batch)


def _image(sample: Any) -> Any:
    """The image tensor of a sample: its ``"image"`` entry, or the sample itself."""
    return sample["image"] if isinstance(sample, Mapping) else sample
