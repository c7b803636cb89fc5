"""Training and evaluation engines (``monai.engines`` on PyTorch-Ignite) for unsupervised image fusion."""

from __future__ import annotations

from .distributed import (
    BufferBroadcastHandler,
    all_gather_objects,
    barrier,
    check_replicas,
    destroy_distributed,
    distributed_device,
    distributed_network,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed_launch,
    is_main_process,
    main_process_logging,
    shard_items,
    state_digest,
)
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
    TimeLimitHandler,
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
    "EpochValidationHandler",
    "LOSS_METRIC",
    "FileFusionEngine",
    "LastCheckpointSaver",
    "LossProgressBar",
    "MetricTableSaver",
    "ResumeCheckpointLoader",
    "TimeLimitHandler",
    "ValidationEarlyStopHandler",
    "best_model_saver",
    "bundle_config",
    "clamp_prediction",
    "create_evaluator",
    "create_trainer",
    "export_weights",
    "fusion_pairs",
    "last_checkpoint",
    "loss_output",
    "run_bundle_workflow",
    "train_handlers",
    "validation_handlers",
    "validation_score",
    "BufferBroadcastHandler",
    "all_gather_objects",
    "barrier",
    "check_replicas",
    "destroy_distributed",
    "distributed_device",
    "distributed_network",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed_launch",
    "is_main_process",
    "main_process_logging",
    "shard_items",
    "state_digest",
]
