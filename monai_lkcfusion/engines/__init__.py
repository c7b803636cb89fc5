"""Training and evaluation engines (``monai.engines`` on PyTorch-Ignite) for unsupervised image fusion."""

from __future__ import annotations

from .comparison import EVALUATION_METRICS, compare_methods, summarize
from .evaluator import clamp_prediction, create_evaluator
from .file_fuser import FileFusionEngine, fusion_pairs
from .handlers import (
    CHECKPOINT_PREFIX,
    LOSS_METRIC,
    EpochValidationHandler,
    LastCheckpointSaver,
    LossProgressBar,
    MetricTableSaver,
    ResumeCheckpointLoader,
    ValidationEarlyStopHandler,
    best_model_saver,
    last_checkpoint,
    loss_output,
    train_handlers,
    validation_handlers,
    validation_score,
)
from .trainer import create_trainer
from .weights import export_weights
from .workflow import bundle_config, run_bundle_workflow

__all__ = [
    "CHECKPOINT_PREFIX",
    "EVALUATION_METRICS",
    "EpochValidationHandler",
    "LOSS_METRIC",
    "FileFusionEngine",
    "LastCheckpointSaver",
    "LossProgressBar",
    "MetricTableSaver",
    "ResumeCheckpointLoader",
    "ValidationEarlyStopHandler",
    "best_model_saver",
    "bundle_config",
    "clamp_prediction",
    "compare_methods",
    "create_evaluator",
    "create_trainer",
    "export_weights",
    "fusion_pairs",
    "last_checkpoint",
    "loss_output",
    "run_bundle_workflow",
    "summarize",
    "train_handlers",
    "validation_handlers",
    "validation_score",
]
