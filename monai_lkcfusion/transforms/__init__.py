"""MONAI transforms for multimodal fusion pairs (dict keys ``"mri"`` and ``"other"``, fused output ``"pred"``).

Array transforms with dict wrappers (``Foo``/``Food``, aliases ``FooD``/``FooDict``), in pipeline order:
:class:`LoadFusionImage`, :class:`ScaleModality`, optionally :class:`RegisterToReference` (rigid/affine, invertible),
:class:`ResampleToReference` (invertible), :class:`SplitLuma`,
then MONAI's ``ConcatItemsd`` for the pair; after the inferer, clipping, :class:`MaskBackground`,
:class:`MergeLuma`, :class:`AddFusionRecord` and :class:`SaveFused`. :func:`fusion_preprocessing` and
:func:`fusion_postprocessing` compose them; :class:`RandSlice` samples 2D slices of volumes and
:class:`RandIntensityRemap` remaps intensities for training.
"""

from __future__ import annotations

from . import augment, color, intensity, io, pipelines, post, registration, spatial
from .augment import RandIntensityRemap, RandIntensityRemapD, RandIntensityRemapd, RandIntensityRemapDict
from .color import (
    BT601_LUMA,
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
    NEGATIVE_NOISE,
    PERCENTILES,
    ScaleModality,
    ScaleModalityD,
    ScaleModalityd,
    ScaleModalityDict,
    known_modality,
    looks_like_ct,
    normalize_modality,
    scale_to_unit,
)
from .io import (
    UNIT_TOLERANCE,
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
    describe_fusion,
)
from .registration import RegisterToReference, RegisterToReferenceD, RegisterToReferenced, RegisterToReferenceDict
from .spatial import (
    CheckMinSize,
    CheckMinSizeD,
    CheckMinSized,
    CheckMinSizeDict,
    CheckSameSizeD,
    CheckSameSized,
    CheckSameSizeDict,
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
    slice_layout,
    slicing_axis,
)

__all__ = [
    *augment.__all__,
    *color.__all__,
    *intensity.__all__,
    *io.__all__,
    *pipelines.__all__,
    *post.__all__,
    *registration.__all__,
    *spatial.__all__,
]
