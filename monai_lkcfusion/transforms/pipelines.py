"""Ready-made transform chains for fusion pairs."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from monai.transforms import Compose, EnsureTyped

from .color import SplitLumad
from .intensity import ScaleModalityd
from .io import LoadFusionImaged

__all__ = ["fusion_load_transforms"]


def fusion_load_transforms(
    keys: tuple[str, str] = ("mri", "other"),
    modality: Mapping[Hashable, str | None] | None = None,
    split_luma: bool = True,
) -> Compose:
    """Load a 2D pair from paths into float32 ``(1, H, W)`` tensors in [0, 1].

    ``LoadFusionImaged`` -> ``ScaleModalityd`` -> ``SplitLumad`` (colour other -> Y, Cb/Cr under
    ``"other_cbcr"``; an MRI saved as colour is reduced to its luma too) -> ``EnsureTyped``.
    Append random crops/flips for training.

    Args:
        keys: the MRI key and the other modality's key.
        modality: optional modality per key (e.g. ``{"other": "CT"}``).
        split_luma: convert colour images to luma (keep ``False`` to get RGB ``(3, H, W)``).

    Returns:
        The composed transform.
    """
    chain = [LoadFusionImaged(keys), ScaleModalityd(keys, modality=modality)]
    if split_luma:
        chain.append(SplitLumad(keys))
    chain.append(EnsureTyped(keys, dtype="float32"))
    return Compose(chain)
