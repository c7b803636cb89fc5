"""LKC-FUNet and its building blocks, presets and checkpoint loading."""

from __future__ import annotations

from .blocks import (
    NORM_KINDS,
    DropPath,
    MultipathAdaptiveFusion,
    RepLKBlock,
    ResBlock,
    UpSample,
    get_norm,
    group_count,
)
from .convert import (
    convert_official_state_dict,
    is_official_state_dict,
    load_official_checkpoint,
    official_config,
    read_state_dict,
    unwrap_state_dict,
)
from .fft_training import (
    SPECTRAL_POLICIES,
    TIMINGS_CACHE,
    ConvCase,
    ConvTiming,
    LayerChoice,
    SpectralConv2d,
    prefers_spectral,
    spectral_conv2d,
    spectral_layer_choice,
    time_convolution,
    use_spectral_convolutions,
)
from .lkcfunet import (
    NETWORK_PRESETS,
    NORM_SCHEMES,
    NORM_SITES,
    OUTPUT_MODES,
    LKCFUNet,
    as_max_residual,
    resolve_norm_scheme,
)
from .loading import default_weights_path, infer_config, load_network, save_network, save_state_dict
from .calibration import ChoiceCache, cache_dir, fastest
from .optimize import PLAN_CACHE, network_signature, optimize_for_inference, retain_freed_memory

__all__ = [
    "NETWORK_PRESETS",
    "PLAN_CACHE",
    "ChoiceCache",
    "cache_dir",
    "fastest",
    "network_signature",
    "NORM_KINDS",
    "NORM_SCHEMES",
    "NORM_SITES",
    "OUTPUT_MODES",
    "SPECTRAL_POLICIES",
    "TIMINGS_CACHE",
    "ConvCase",
    "ConvTiming",
    "DropPath",
    "LKCFUNet",
    "as_max_residual",
    "LayerChoice",
    "MultipathAdaptiveFusion",
    "RepLKBlock",
    "ResBlock",
    "SpectralConv2d",
    "UpSample",
    "convert_official_state_dict",
    "default_weights_path",
    "get_norm",
    "group_count",
    "infer_config",
    "is_official_state_dict",
    "load_network",
    "load_official_checkpoint",
    "official_config",
    "optimize_for_inference",
    "prefers_spectral",
    "read_state_dict",
    "resolve_norm_scheme",
    "retain_freed_memory",
    "save_network",
    "save_state_dict",
    "spectral_conv2d",
    "spectral_layer_choice",
    "time_convolution",
    "unwrap_state_dict",
    "use_spectral_convolutions",
]
