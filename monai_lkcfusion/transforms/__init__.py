"""MONAI transforms for multimodal fusion pairs (dict keys ``"mri"`` and ``"other"``, fused output ``"pred"``).

Array transforms with dict wrappers (``Foo``/``Food``, aliases ``FooD``/``FooDict``), in pipeline order:
:class:`LoadFusionImage`, :class:`ScaleModality`, :class:`ResampleToReference` (invertible), :class:`SplitLuma`,
then MONAI's ``ConcatItemsd`` for the pair; after the inferer, clipping, :class:`MaskBackground`,
:class:`MergeLuma`, :class:`AddFusionRecord` and :class:`SaveFused`. :func:`fusion_preprocessing` and
:func:`fusion_postprocessing` compose them; :class:`RandSlice` samples 2D slices of volumes for training.
"""

from __future__ import annotations

from .color import (
    MergeLuma,
    MergeLumaD,
    MergeLumad,
    MergeLumaDict,
    SplitLuma,
    SplitLumaD,
    SplitLumad,
    SplitLumaDict,
    rgb_to_ycbcr,
    ycbcr_to_rgb,
)
from .intensity import (
    CT_WINDOW,
    PERCENTILES,
    ScaleModality,
    ScaleModalityD,
    ScaleModalityd,
    ScaleModalityDict,
    known_modality,
    normalize_modality,
    scale_to_unit,
)
from .io import (
    LoadFusionImage,
    LoadFusionImageD,
    LoadFusionImaged,
    LoadFusionImageDict,
    SaveFused,
    SaveFusedD,
    SaveFusedd,
    SaveFusedDict,
)
from .pipelines import fusion_load_transforms, fusion_postprocessing, fusion_preprocessing
from .post import (
    AddFusionRecord,
    AddFusionRecordD,
    AddFusionRecordd,
    AddFusionRecordDict,
    MaskBackground,
    MaskBackgroundD,
    MaskBackgroundd,
    MaskBackgroundDict,
)
from .spatial import (
    RandSlice,
    RandSliceD,
    RandSliced,
    RandSliceDict,
    ResampleToReference,
    ResampleToReferenceD,
    ResampleToReferenced,
    ResampleToReferenceDict,
    axial_axis,
    resample_to_reference,
)

__all__ = [
    "CT_WINDOW",
    "PERCENTILES",
    "AddFusionRecord",
    "AddFusionRecordD",
    "AddFusionRecordDict",
    "AddFusionRecordd",
    "LoadFusionImage",
    "LoadFusionImageD",
    "LoadFusionImageDict",
    "LoadFusionImaged",
    "MaskBackground",
    "MaskBackgroundD",
    "MaskBackgroundDict",
    "MaskBackgroundd",
    "MergeLuma",
    "MergeLumaD",
    "MergeLumaDict",
    "MergeLumad",
    "RandSlice",
    "RandSliceD",
    "RandSliceDict",
    "RandSliced",
    "ResampleToReference",
    "ResampleToReferenceD",
    "ResampleToReferenceDict",
    "ResampleToReferenced",
    "SaveFused",
    "SaveFusedD",
    "SaveFusedDict",
    "SaveFusedd",
    "ScaleModality",
    "ScaleModalityD",
    "ScaleModalityDict",
    "ScaleModalityd",
    "SplitLuma",
    "SplitLumaD",
    "SplitLumaDict",
    "SplitLumad",
    "axial_axis",
    "fusion_load_transforms",
    "fusion_postprocessing",
    "fusion_preprocessing",
    "known_modality",
    "normalize_modality",
    "resample_to_reference",
    "rgb_to_ycbcr",
    "scale_to_unit",
    "ycbcr_to_rgb",
]
