"""Trainer factory: unsupervised fusion training on ``monai.engines.SupervisedTrainer``."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer

from ..errors import FusionInputError
from ..losses import FusionLoss
from .handlers import EpochLossMetric, ExceptionRaiser, check_earlier_run, resume_option, train_handlers

__all__ = ["create_trainer"]


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

    With ``handlers=None`` the trainer gets :func:`~monai_lkcfusion.engines.train_handlers`: validation with
    ``evaluator`` every ``val_interval`` epochs and after the last epoch, the LR schedule (per epoch), early stopping
    on the evaluator's key metric, resuming, a "last" checkpoint each epoch (``output_dir/checkpoint_epoch=N.pt``
    with network, optimizer, LR scheduler and trainer state), console statistics, TensorBoard
    (``output_dir/tensorboard``) and a progress bar. The best model is saved by the evaluator's handlers (see
    :func:`~monai_lkcfusion.engines.create_evaluator` ``best_dir``; pass it ``resume`` too). The bundle's
    ``train.json`` passes its own list (``train#handlers``), built from the same handler classes.

    Args:
        network: the fusion network (B, 2, H, W) -> (B, 1, H, W).
        train_loader: training batches with ``image`` and ``label`` (B, 2, H, W) in [0, 1].
        max_epochs: the final epoch count; a resumed run continues up to it.
        device: where to train.
        optimizer: default Adam with learning rate ``lr`` (the released recipe).
        lr: learning rate of the default optimizer.
        loss_function: default :class:`~monai_lkcfusion.losses.FusionLoss` with weights 1:1:1.
        lr_scheduler: default cosine annealing over ``max_epochs`` to ``lr / 100``.
        evaluator: validation engine of the default handlers.
        val_interval: epochs between validations (default handlers).
        output_dir: checkpoints and TensorBoard logs; checked for space and for an earlier run before training.
        resume: ``True`` resumes from the newest checkpoint in ``output_dir`` (if any); a path resumes from that
            checkpoint; the network, optimizer, LR scheduler and epoch counter are restored (default handlers;
            with ``handlers`` given it only permits an ``output_dir`` holding checkpoints).
        early_stop_patience: stop after this many validations without improvement, 0 disables it (default
            handlers).
        amp: mixed precision; default on for CUDA devices.
        progress: show a progress bar per epoch (default handlers).
        tensorboard: write TensorBoard event files (default handlers).
        epoch_length: iterations per epoch (default: the loader's length).
        handlers: the trainer's Ignite handlers instead of the defaults.

    Returns:
        The trainer; ``trainer.run()`` trains.

    Raises:
        FusionInputError: ``output_dir`` cannot be written, has too little free space for the checkpoints, or
            holds checkpoints of an earlier run and ``resume`` is off (they are never overwritten unasked).
    """
    device = torch.device(device)
    output_dir = Path(output_dir)
    resume = resume_option(resume)
    _check_output_dir(output_dir, network)
    check_earlier_run(output_dir, resume)
    network = network.to(device)
    optimizer = optimizer or torch.optim.Adam(network.parameters(), lr=lr)
    lr_scheduler = lr_scheduler or torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(max_epochs, 1), eta_min=optimizer.param_groups[0]["lr"] / 100
    )
    if handlers is None:
        handlers = train_handlers(
            output_dir,
            {"network": network, "optimizer": optimizer, "lr_scheduler": lr_scheduler},
            lr_scheduler=lr_scheduler,
            validator=evaluator,
            val_interval=val_interval,
            early_stop_patience=early_stop_patience,
            resume=resume,
            device=device,
            tensorboard=tensorboard,
            progress=progress,
        )
    return SupervisedTrainer(
        device=device,
        max_epochs=max_epochs,
        train_data_loader=train_loader,
        network=network,
        optimizer=optimizer,
        loss_function=loss_function or FusionLoss(),
        epoch_length=epoch_length,
        train_handlers=[ExceptionRaiser(), EpochLossMetric(), *handlers],  # first: see ExceptionRaiser
        amp=device.type == "cuda" if amp is None else amp,
        decollate=False,
    )
