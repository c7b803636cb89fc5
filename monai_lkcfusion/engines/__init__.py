"""Training and evaluation engines (``monai.engines`` on PyTorch-Ignite) for unsupervised image fusion."""

from __future__ import annotations

from .comparison import EVALUATION_METRICS, compare_methods, summarize
from .evaluator import LOSS_METRIC, clamp_prediction, create_evaluator
from .file_fuser import FileFusionEngine, fusion_pairs
from .trainer import CHECKPOINT_PREFIX, create_trainer, last_checkpoint
from .weights import export_weights
from .workflow import bundle_config, run_bundle_workflow

__all__ = [
    "CHECKPOINT_PREFIX",
    "EVALUATION_METRICS",
    "LOSS_METRIC",
    "FileFusionEngine",
    "bundle_config",
    "clamp_prediction",
    "compare_methods",
    "create_evaluator",
    "create_trainer",
    "export_weights",
    "fusion_pairs",
    "last_checkpoint",
    "run_bundle_workflow",
    "summarize",
]
