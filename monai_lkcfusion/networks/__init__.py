"""LKC-FUNet and its building blocks, presets and checkpoint loading."""

from __future__ import annotations

from .blocks import NORM_KINDS, DropPath, MultipathAdaptiveFusion, RepLKBlock, ResBlock, UpSample, get_norm, group_count
from .lkcfunet import NETWORK_PRESETS, NORM_SCHEMES, NORM_SITES, LKCFUNet, resolve_norm_scheme

__all__ = [
    "NETWORK_PRESETS",
    "NORM_KINDS",
    "NORM_SCHEMES",
    "NORM_SITES",
    "DropPath",
    "LKCFUNet",
    "MultipathAdaptiveFusion",
    "RepLKBlock",
    "ResBlock",
    "UpSample",
    "get_norm",
    "group_count",
    "resolve_norm_scheme",
]
