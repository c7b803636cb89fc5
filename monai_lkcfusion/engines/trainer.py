"""Trainer factory: unsupervised fusion training on ``monai.engines.SupervisedTrainer``."""

from __future__ import annotations

import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from ignite.handlers import ProgressBar
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import (
    CheckpointLoader,
    CheckpointSaver,
    EarlyStopHandler,
    LrScheduleHandler,
    StatsHandler,
    TensorBoardStatsHandler,
    ValidationHandler,
)

from ..errors import FusionInputError
from ..losses import FusionLoss
from .evaluator import LOSS_METRIC

__all__ = ["create_trainer", "last_checkpoint", "CHECKPOINT_PREFIX"]

CHECKPOINT_PREFIX = "checkpoint"
"""Name of the per-epoch "last" checkpoints: ``checkpoint_epoch=N.pt`` (only the newest is kept)."""


def last_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete ``checkpoint_epoch=N.pt`` in ``directory``, or ``None`` when there is none.

    A checkpoint cut short (the run was killed while saving it) is skipped: ``torch.save`` writes a zip archive
    whose central directory comes last, so a partial file is not a valid zip.
    """
    found = []
    for path in Path(directory).glob(f"{CHECKPOINT_PREFIX}_epoch=*.pt"):
        match = re.search(r"epoch=(\d+)", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return next((path for _, path in sorted(found, reverse=True) if zipfile.is_zipfile(path)), None)


def _check_output_dir(output_dir: Path, network: torch.nn.Module) -> None:
    """Fail before training when ``output_dir`` cannot be written or cannot hold the checkpoints.

    The need is estimated as two "last" checkpoints (network and two Adam moments each, the old one is removed
    after the new one is written) plus the best model and the exported ``model.pt``.
    """
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir) as probe:
            probe.write(b"0" * 4096)
            probe.flush()
    except OSError as err:  # a parent that is a file, a read-only file system, a full disk
        raise FusionInputError(f"{output_dir}: output folder is not writable ({err.strerror or err})") from None
    weights = sum(t.numel() * t.element_size() for t in network.state_dict().values())
    need, free = 8 * weights, shutil.disk_usage(output_dir).free
    if free < need:
        raise FusionInputError(
            f"{output_dir}: {free / 2**20:.1f} MiB free, training needs about {need / 2**20:.1f} MiB for checkpoints"
        )


def _loss_value(output: dict) -> float:
    """The batch loss from the trainer's (non-decollated) output."""
    return float(output["loss"])


def _score(evaluator: SupervisedEvaluator) -> float:
    """The evaluator's key metric as a higher-is-better score (negated for the loss)."""
    name = evaluator.state.key_metric_name
    value = float(evaluator.state.metrics[name])
    return -value if name == LOSS_METRIC else value


def create_trainer(
    network: torch.nn.Module,
    train_loader: Iterable,
    max_epochs: int,
    device: str | torch.device = "cpu",
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 2e-4,
    loss_function: torch.nn.Module | None = None,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    evaluator: SupervisedEvaluator | None = None,
    val_interval: int = 1,
    output_dir: str | Path = "runs/train",
    resume: bool | str | Path = False,
    early_stop_patience: int = 0,
    amp: bool | None = None,
    progress: bool = True,
    tensorboard: bool = True,
    epoch_length: int | None = None,
    handlers: Sequence | None = None,
) -> SupervisedTrainer:
    """Build a trainer for unsupervised fusion: the loader's ``image`` and ``label`` are both the sources.

    Attached handlers: console statistics, TensorBoard (``output_dir/tensorboard``), a progress bar, the LR
    schedule (per epoch), validation every ``val_interval`` epochs with ``evaluator``, early stopping on the
    evaluator's key metric, and a "last" checkpoint each epoch (``output_dir/checkpoint_epoch=N.pt`` with network,
    optimizer, LR scheduler and trainer state). The best model is saved by the evaluator (see
    :func:`~monai_lkcfusion.engines.create_evaluator` ``best_dir``; pass it ``resume`` too).

    Args:
        network: the fusion network (B, 2, H, W) -> (B, 1, H, W).
        train_loader: training batches with ``image`` and ``label`` (B, 2, H, W) in [0, 1].
        max_epochs: the final epoch count; a resumed run continues up to it.
        device: where to train.
        optimizer: default Adam with learning rate ``lr`` (the released recipe).
        lr: learning rate of the default optimizer.
        loss_function: default :class:`~monai_lkcfusion.losses.FusionLoss` with weights 1:1:1.
        lr_scheduler: default cosine annealing over ``max_epochs`` to ``lr / 100``.
        evaluator: validation engine, run every ``val_interval`` epochs.
        val_interval: epochs between validations.
        output_dir: checkpoints and TensorBoard logs.
        resume: ``True`` resumes from the newest checkpoint in ``output_dir`` (if any); a path resumes from that
            checkpoint; the network, optimizer, LR scheduler and epoch counter are restored.
        early_stop_patience: stop after this many validations without improvement (0 disables it).
        amp: mixed precision; default on for CUDA devices.
        progress: show a progress bar per epoch.
        tensorboard: write TensorBoard event files.
        epoch_length: iterations per epoch (default: the loader's length).
        handlers: extra Ignite handlers for the trainer.

    Returns:
        The trainer; ``trainer.run()`` trains.

    Raises:
        FusionInputError: ``output_dir`` cannot be written, has too little free space for the checkpoints, or
            holds checkpoints of an earlier run and ``resume`` is off (they are never overwritten unasked).
    """
    device = torch.device(device)
    output_dir = Path(output_dir)
    _check_output_dir(output_dir, network)
    earlier = last_checkpoint(output_dir)
    if earlier is not None and not resume:
        raise FusionInputError(
            f"{output_dir}: holds {earlier.name} of an earlier run; pass --resume (resume=True) to continue it, "
            "or choose another output folder"
        )
    network = network.to(device)
    optimizer = optimizer or torch.optim.Adam(network.parameters(), lr=lr)
    lr_scheduler = lr_scheduler or torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(max_epochs, 1), eta_min=optimizer.param_groups[0]["lr"] / 100
    )
    state = {"network": network, "optimizer": optimizer, "lr_scheduler": lr_scheduler}

    train_handlers: list = [
        LrScheduleHandler(lr_scheduler=lr_scheduler, print_lr=False, epoch_level=True),
        StatsHandler(tag_name="train_loss", output_transform=_loss_value, iteration_log=False),
    ]
    if tensorboard:
        train_handlers.append(
            TensorBoardStatsHandler(
                log_dir=str(output_dir / "tensorboard"),
                tag_name="train_loss",
                output_transform=_loss_value,
            )
        )
    if evaluator is not None:
        train_handlers.append(ValidationHandler(validator=evaluator, interval=val_interval, epoch_level=True))
    train_handlers.extend(handlers or [])

    trainer = SupervisedTrainer(
        device=device,
        max_epochs=max_epochs,
        train_data_loader=train_loader,
        network=network,
        optimizer=optimizer,
        loss_function=loss_function or FusionLoss(),
        epoch_length=epoch_length,
        train_handlers=train_handlers,
        amp=device.type == "cuda" if amp is None else amp,
        decollate=False,
    )
    state["trainer"] = trainer
    CheckpointSaver(
        save_dir=str(output_dir), save_dict=state, file_prefix="", save_interval=1, n_saved=1
    ).attach(trainer)
    if progress:
        ProgressBar(persist=False).attach(trainer, output_transform=lambda output: {"loss": _loss_value(output)})
    if evaluator is not None:
        _attach_evaluator_extras(trainer, evaluator, output_dir, tensorboard, early_stop_patience)
    if resume:
        _attach_resume(trainer, state, output_dir, resume, device)
    return trainer


def _attach_evaluator_extras(
    trainer: SupervisedTrainer,
    evaluator: SupervisedEvaluator,
    output_dir: Path,
    tensorboard: bool,
    early_stop_patience: int,
) -> None:
    """Validation metrics in TensorBoard at the trainer's epoch, and early stopping on the key metric."""
    if tensorboard:
        TensorBoardStatsHandler(
            log_dir=str(output_dir / "tensorboard"),
            iteration_log=False,
            output_transform=lambda x: None,
            global_epoch_transform=lambda x: trainer.state.epoch,
        ).attach(evaluator)
    if early_stop_patience > 0:
        EarlyStopHandler(
            patience=early_stop_patience, score_function=_score, trainer=trainer, epoch_level=True
        ).attach(evaluator)


def _attach_resume(
    trainer: SupervisedTrainer, state: dict, output_dir: Path, resume: bool | str | Path, device: torch.device
) -> None:
    """Load the "last" checkpoint into the network, optimizer, LR scheduler and trainer when the trainer starts."""
    path = last_checkpoint(output_dir) if resume is True else Path(resume)
    if path is None:
        return
    CheckpointLoader(load_path=str(path), load_dict=state, map_location=device).attach(trainer)
