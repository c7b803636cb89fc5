"""monai-lkcfusion: LKC-FUNet multimodal medical image fusion (MRI + CT/PET/SPECT) as a MONAI plugin.

Channel convention everywhere: channel 0 = MRI (anatomical reference), channel 1 = the other modality.

The most used names are available from the package itself and imported on first use, so that
``import monai_lkcfusion`` (and ``lkcfusion --help``) stays fast::

    from monai_lkcfusion import fuse, LKCFUNet, FusionLoss, compute_fusion_metrics
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .errors import FusionInputError, user_error

__version__ = "0.1.0"

_LAZY = {
    "fuse": "inference",
    "fuse_files": "inference",
    "FusionInferer": "inferers",
    "fuse_baseline": "baselines",
    "LKCFUNet": "networks",
    "NETWORK_PRESETS": "networks",
    "load_network": "networks",
    "load_official_checkpoint": "networks",
    "optimize_for_inference": "networks",
    "FusionLoss": "losses",
    "FusionMetric": "metrics",
    "compute_fusion_metrics": "metrics",
    "harvard_datalist": "data",
}

__all__ = ["FusionInputError", "__version__", "user_error", *_LAZY]


def __getattr__(name: str) -> Any:
    """Import a re-exported name from its subpackage on first access (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value
