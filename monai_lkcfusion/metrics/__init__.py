"""Fusion metrics with the literature's conventions: functional core, MONAI metric class and Ignite handler."""

from __future__ import annotations

from .functional import (
    ALL_METRICS,
    DEFAULT_METRICS,
    EXTRA_METRICS,
    HIGHER_IS_BETTER,
    PUBLISHED_METRICS,
    compute_fusion_metrics,
)
from .fusion_metric import FusionMetric
from .gradient import edge_preservation, nabf, qabf
from .handlers import FusionMetricHandler, fusion_output_transform
from .information import feature_mutual_information, mutual_information
from .statistics import (
    average_gradient,
    correlation_coefficient,
    entropy,
    mean_squared_error,
    peak_signal_to_noise_ratio,
    spatial_frequency,
    standard_deviation,
    sum_of_correlations_of_differences,
)
from .structural import multiscale_structural_similarity, structural_similarity
from .utils import luma_bt601
from .vif import information_fidelity, visual_information_fidelity

__all__ = [
    "ALL_METRICS",
    "PUBLISHED_METRICS",
    "DEFAULT_METRICS",
    "EXTRA_METRICS",
    "HIGHER_IS_BETTER",
    "FusionMetric",
    "FusionMetricHandler",
    "average_gradient",
    "compute_fusion_metrics",
    "correlation_coefficient",
    "edge_preservation",
    "entropy",
    "feature_mutual_information",
    "fusion_output_transform",
    "information_fidelity",
    "luma_bt601",
    "mean_squared_error",
    "multiscale_structural_similarity",
    "mutual_information",
    "nabf",
    "peak_signal_to_noise_ratio",
    "qabf",
    "spatial_frequency",
    "standard_deviation",
    "structural_similarity",
    "sum_of_correlations_of_differences",
    "visual_information_fidelity",
]
