"""MONAI transforms for multimodal fusion pairs (dict keys ``"mri"`` and ``"other"``)."""

from __future__ import annotations

from .color import MergeLumad, SplitLumad, rgb_to_ycbcr, ycbcr_to_rgb
from .intensity import CT_WINDOW, PERCENTILES, ScaleModalityd, normalize_modality, scale_to_unit
from .io import LoadFusionImaged
from .pipelines import fusion_load_transforms
from .spatial import RandSliced, ResampleToReferenced, axial_axis, resample_to_reference

__all__ = [
    "CT_WINDOW",
    "PERCENTILES",
    "LoadFusionImaged",
    "MergeLumad",
    "RandSliced",
    "ResampleToReferenced",
    "ScaleModalityd",
    "SplitLumad",
    "axial_axis",
    "fusion_load_transforms",
    "normalize_modality",
    "resample_to_reference",
    "rgb_to_ycbcr",
    "scale_to_unit",
    "ycbcr_to_rgb",
]
