"""monai-lkcfusion: LKC-FUNet multimodal medical image fusion (MRI + CT/PET/SPECT) as a MONAI plugin.

Channel convention everywhere: channel 0 = MRI (anatomical reference), channel 1 = the other modality.
"""

from __future__ import annotations

from .errors import FusionInputError

__version__ = "0.1.0"

__all__ = ["FusionInputError", "__version__"]
