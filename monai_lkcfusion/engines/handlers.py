"""Ignite handlers of the training and evaluation workflows, and the default handler lists.

The bundle's ``train.json`` declares its handlers one by one (``train#handlers``, ``validate#handlers``) so that an
override can replace or disable any of them; :func:`train_handlers` and :func:`validation_handlers` build the same
defaults for :func:`~monai_lkcfusion.engines.create_trainer` / :func:`~monai_lkcfusion.engines.create_evaluator`
in Python (tests/test_engines.py checks that both lists hold the same handlers). Handlers that only one process of
a distributed run should execute (checkpoint saver, statistics, TensorBoard, progress bar) come last in
``train#handlers``, so that ``$@train#handlers[:5]`` keeps the ones every process needs.
"""

from __future__ import annotations

import logging
import math
import re
import time
import warnings
from collections.abc import Callable, Sequence, Sized
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver, ProgressBar
from monai.handlers import (
    CheckpointLoader,
    CheckpointSaver,
    EarlyStopHandler,
    LrScheduleHandler,
    StatsHandler,
    TensorBoardStatsHandler,
    ValidationHandler,
)

from ..errors import FusionInputError, as_count, as_flag, as_names
from ..metrics.functional import HIGHER_IS_BETTER
from .distributed import all_gather_objects, get_rank, is_main_process

__all__ = [
    "CHECKPOINT_PREFIX",
    "LOSS_METRIC",
    "EpochLossMetric",
    "EpochValidationHandler",
    "ExceptionRaiser",
    "LastCheckpointSaver",
    "LossProgressBar",
    "MetricTableSaver",
    "ResumeCheckpointLoader",
    "TRAIN_LOSS_METRIC",
    "TimeLimitHandler",
    "ValidationEarlyStopHandler",
    "best_model_saver",
    "check_earlier_run",
    "check_resume",
    "checkpoint_epochs",
    "last_checkpoint",
    "loss_output",
    "lower_is_better",
    "resume_option",
    "train_handlers",
    "validation_handlers",
    "validation_score",
]

CHECKPOINT_PREFIX = "checkpoint"
"""Name of the per-epoch "last" checkpoints: ``checkpoint_epoch=N.pt`` (only the newest is kept)."""

LOSS_METRIC = "val_loss"
"""Name of the validation FusionLoss in ``engine.state.metrics`` (lower is better)."""

TRAIN_LOSS_METRIC = "train_loss_mean"
"""Name of an epoch's mean training loss in the trainer's ``engine.state.metrics`` (see :class:`EpochLossMetric`)."""


def lower_is_better(key_metric: str) -> bool:
    """Whether a smaller value of ``key_metric`` is better: ``val_loss``, ``MSE`` and ``Nabf``.

    Args:
        key_metric: :data:`LOSS_METRIC` or a fusion metric name (see ``HIGHER_IS_BETTER``).

    Returns:
        ``True`` for ``val_loss``, ``MSE`` and ``Nabf``; ``False`` for the other metrics and for unknown names.
    """
    return key_metric == LOSS_METRIC or not HIGHER_IS_BETTER.get(key_metric, True)


def checkpoint_epochs(directory: str | Path) -> list[tuple[int, Path]]:
    """The ``checkpoint_epoch=N.pt`` files in ``directory`` as ``(N, path)``, oldest epoch first.

    Args:
        directory: the run's output folder (a missing folder has none).

    Returns:
        ``[(epoch, path), ...]`` sorted by epoch; complete or not (see :func:`last_checkpoint`).
    """
    found = []
    for path in Path(directory).glob(f"{CHECKPOINT_PREFIX}_epoch=*.pt"):
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}_epoch=(\d+)\.pt", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def last_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete ``checkpoint_epoch=N.pt`` in ``directory``, or ``None`` when there is none.

    A checkpoint cut short is skipped: one killed while it was written is not a valid zip (``torch.save`` writes
    the zip's central directory last), and one interrupted inside ``torch.save`` (Ctrl-C) is a valid zip without
    its pickled data (``data.pkl``), which checkpoints of earlier versions (written in place) can be.

    Args:
        directory: the run's output folder.

    Returns:
        the path of the highest-epoch checkpoint that loads, or ``None``.
    """
    return next((path for _, path in reversed(checkpoint_epochs(directory)) if _complete(path)), None)


_DAMAGED = object()
"""What :func:`_read` gives for a file that does not load."""


def _read(path: str | Path) -> Any:
    """The object a ``torch.save`` file holds, memory-mapped (the tensors' data is read only when used), or
    :data:`_DAMAGED`: a save cut short can leave a valid zip (``torch.save`` closes the archive as an interrupt
    unwinds it) without its pickled object or without some tensors' records."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any failure to load is a damaged file here
        return _DAMAGED


def _complete(path: str | Path) -> bool:
    """Whether ``path`` is a whole ``torch.save`` file (:func:`_read`)."""
    return _read(path) is not _DAMAGED


class _AtomicDiskSaver(DiskSaver):
    """Ignite's ``DiskSaver`` writing each file whole: to a temporary file beside it, then renamed over it
    (:func:`~monai_lkcfusion.data.atomic.atomic_path`, with the umask's permissions as a plain write). MONAI's
    ``CheckpointSaver`` writes in place, so a run interrupted while saving left a damaged checkpoint that every
    later resume stumbled on; and for a fixed file name (``best_model.pt``) Ignite removes the old file before it
    writes the new one, so an interrupt there left none: with a fixed name the rename replaces it instead.

    Args:
        dirname: the output folder.
        filename: a fixed file name for every save (``best_model.pt``); ``None``: Ignite's names.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None) -> None:
        super().__init__(dirname=str(dirname), require_empty=False, atomic=False)
        self.filename = filename

    def __call__(self, checkpoint: Any, filename: str, metadata: Any = None) -> None:
        """Write ``checkpoint`` (rank 0 only, as Ignite's ``DiskSaver``)."""
        from ..data.atomic import atomic_path

        if get_rank() != self.save_on_rank:
            return
        with atomic_path(Path(self.dirname) / (self.filename or filename), overwrite=True) as temporary:
            torch.save(checkpoint, temporary)

    def remove(self, filename: str) -> None:
        """Remove an older file; a fixed name is left to the next save's rename."""
        if self.filename is None and get_rank() == self.save_on_rank:
            (Path(self.dirname) / filename).unlink(missing_ok=True)


def _write_atomically(saver: CheckpointSaver) -> None:
    """Give ``saver``'s checkpoints an :class:`_AtomicDiskSaver` with the file name MONAI's saver gave them."""
    for name in ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint"):
        checkpoint = getattr(saver, name, None)
        if checkpoint is not None:
            fixed = getattr(checkpoint.save_handler, "filename", None)
            checkpoint.save_handler = _AtomicDiskSaver(saver.save_dir, fixed)


def check_earlier_run(output_dir: str | Path, resume: bool | str | Path) -> None:
    """Refuse to start a run in a folder that holds an earlier run's checkpoints unless it is resumed: they are never
    overwritten unasked. Checked before anything is written there (TensorBoard files, checkpoints).

    Args:
        output_dir: the run's output folder.
        resume: the ``resume`` setting (see :func:`resume_option`).

    Raises:
        FusionInputError: ``output_dir`` holds a complete checkpoint and ``resume`` is off, or an earlier run's
            ``model.pt``/``best_model.pt`` without a checkpoint to continue it (a new run would replace them).
    """
    earlier = last_checkpoint(output_dir)
    if earlier is not None and not resume_option(resume):
        raise FusionInputError(
            f"{output_dir}: holds {earlier.name} of an earlier run; pass --resume (resume true) to continue it, "
            "or choose another output folder"
        )
    finished = [name for name in ("model.pt", "best_model.pt") if (Path(output_dir) / name).is_file()]
    if earlier is None and finished:
        raise FusionInputError(f"{output_dir}: holds {finished[0]} of an earlier run and no checkpoint to continue "
                               "it from; a new run would replace it: choose another output folder")


def resume_option(resume: bool | str | Path) -> bool | Path:
    """The ``resume`` setting as ``True``/``False`` or a checkpoint path.

    The strings ``"true"`` and ``"false"`` (any case, as ``python -m monai.bundle run --resume true`` passes
    them) are booleans; any other string is a checkpoint path.

    Args:
        resume: a bool, ``"true"``/``"false"``, or the path of a checkpoint file.

    Returns:
        ``True``/``False``, or the checkpoint as a ``Path``.

    Raises:
        FusionInputError: a checkpoint path that is not a file.
    """
    if isinstance(resume, bool) or str(resume).strip().lower() in ("true", "false"):
        return as_flag(resume, "resume")
    path = Path(resume)
    if not path.is_file():
        raise FusionInputError(f"{path}: checkpoint to resume from not found (resume: true, false or a file)")
    return path


def loss_output(output: dict) -> float:
    """The batch loss from the trainer's (non-decollated) output, for statistics and the progress bar.

    Args:
        output: the trainer's ``engine.state.output``, holding ``"loss"``.

    Returns:
        the loss as a Python float.
    """
    return float(torch.as_tensor(output["loss"]).detach())


def validation_score(evaluator: Engine) -> float:
    """The evaluator's key metric as a higher-is-better score (negated when lower is better), for early stopping.

    Args:
        evaluator: an engine with ``state.key_metric_name`` and that metric in ``state.metrics``.

    Returns:
        the metric's value, negated when :func:`lower_is_better`.
    """
    name = evaluator.state.key_metric_name
    value = float(evaluator.state.metrics[name])
    return -value if lower_is_better(name) else value


def _not_the_exception_line(record: logging.LogRecord) -> bool:
    """Whether a log record is other than Ignite's "Engine run (or Current run) is terminating due to exception: ..."
    line."""
    return "run is terminating due to exception" not in str(record.msg)


class ExceptionRaiser:
    """An engine's first ``EXCEPTION_RAISED`` handler: raises the exception on, before MONAI's ``StatsHandler``
    logs it with its traceback. Ignite stops at the first handler that raises, so a user's error in a run (a
    :class:`~monai_lkcfusion.errors.FusionInputError`, e.g. a batch of pairs of different sizes) ends as the one line
    the command line prints, and a bug still shows its traceback where it is raised. ``create_trainer`` and
    ``create_evaluator`` attach it before their handlers.
    """

    def attach(self, engine: Engine) -> None:
        """Register on ``engine``'s ``EXCEPTION_RAISED`` event (call before the other handlers attach), and keep
        Ignite's "terminating due to exception" log line out of ``engine``'s log: the raised error is shown once,
        as the command line's one line or as its traceback.

        Args:
            engine: the trainer or evaluator.
        """
        engine.add_event_handler(Events.EXCEPTION_RAISED, self)
        engine.logger.addFilter(_not_the_exception_line)

    def __call__(self, engine: Engine, error: Exception) -> None:
        raise error


class EpochLossMetric:
    """The mean training loss of each epoch as the trainer's metric :data:`TRAIN_LOSS_METRIC`, over all processes
    of a distributed run: MONAI's ``StatsHandler`` logs it at the end of every epoch (``Epoch[N] Metrics --
    train_loss_mean: ...``), also without a progress bar, and ``TensorBoardStatsHandler`` writes it per epoch.
    ``create_trainer`` attaches it before its handlers, so it is computed before they log the epoch.
    """

    def attach(self, engine: Engine) -> None:
        """Attach Ignite's ``Average`` of the batch losses (:func:`loss_output`) to ``engine``.

        Args:
            engine: the trainer.
        """
        from ignite.metrics import Average

        Average(output_transform=loss_output).attach(engine, TRAIN_LOSS_METRIC)


class EpochValidationHandler(ValidationHandler):
    """MONAI's epoch-level ``ValidationHandler`` that also validates after the last epoch.

    Validation runs every ``interval`` epochs, at the end of epoch ``max_epochs`` even when ``max_epochs`` is
    not a multiple of ``interval``, and when the trainer is stopped early (time limit, ``terminate()``) after an
    epoch it did not validate, so a short or cut run still selects (and exports) a best model.

    Args:
        validator: the evaluator to run.
        interval: epochs between validations.
        exec_at_start: also validate before the first epoch.
    """

    def __init__(self, validator: Engine, interval: int, exec_at_start: bool = False) -> None:
        super().__init__(interval=interval, validator=validator, epoch_level=True, exec_at_start=exec_at_start)

    def attach(self, engine: Engine) -> None:
        """Run the validator after every ``interval``-th epoch and after the last one.

        Args:
            engine: the trainer.

        Raises:
            FusionInputError: the validator has no data (the run would train, then find no best model to export).
        """
        data = getattr(self.validator, "data_loader", None)
        if isinstance(data, Sized) and len(data) == 0:
            raise FusionInputError("the validator has no data: a run validates to choose its best model (and "
                                   "exports none without); give the evaluator validation pairs")

        def due(trainer: Engine, epoch: int) -> bool:
            return epoch % self.interval == 0 or epoch == trainer.state.max_epochs

        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=due), self)
        engine.add_event_handler(Events.TERMINATE, self._validate_last_epoch)
        if self.exec_at_start:
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        """Validate the network as ``engine`` (the trainer) has it now."""
        super().__call__(engine)
        self._validated_epoch = engine.state.epoch

    def _validate_last_epoch(self, engine: Engine) -> None:
        if getattr(self, "_validated_epoch", None) != engine.state.epoch:
            self(engine)


class ValidationEarlyStopHandler(EarlyStopHandler):
    """MONAI's ``EarlyStopHandler`` listed with the trainer's handlers: it watches ``validator`` and stops the trainer.

    Declared in ``train#handlers`` (it needs the trainer, which the validator's handlers cannot reference without a
    cycle); attaching it to the trainer attaches it to ``validator``, so patience counts validations. With
    ``patience`` 0 it does nothing, so the handler list keeps its length and order (see the module docstring).

    Its count of validations without improvement and its best score are saved with the "last" checkpoint
    (``training_state`` holds it; see :class:`LastCheckpointSaver`) and restored on resume, so a resumed run counts
    on from where it was (its redone epochs are not bit-identical, so it may stop an epoch or two apart from an
    uninterrupted run); resuming a run that stopped early is refused (it would train on and replace its
    ``model.pt``) unless ``patience`` is raised or set to 0.

    Args:
        validator: the evaluator whose key metric is watched.
        patience: validations without improvement before the trainer stops; 0 disables early stopping.
        score_function: higher-is-better score of the validator; default :func:`validation_score`.
        min_delta: smallest change that counts as an improvement.
    """

    def __init__(
        self,
        validator: Engine,
        patience: int,
        score_function: Callable[[Engine], float] = validation_score,
        min_delta: float = 0.0,
    ) -> None:
        patience = as_count(patience, "early_stop_patience", minimum=0, unit="validations")
        super().__init__(patience=patience, score_function=score_function, min_delta=min_delta, epoch_level=True)
        self.validator = validator

    def attach(self, engine: Engine) -> None:
        """Stop ``engine`` (the trainer) when the validator's score stops improving.

        Args:
            engine: the trainer; nothing is attached when ``patience`` is 0.
        """
        if self.patience < 1:
            return
        self.set_trainer(engine)
        super().attach(self.validator)

    def state_dict(self) -> dict[str, Any]:
        """The validations without improvement so far (``counter``), the best score (``None`` before any) and the
        ``patience`` they were counted against.

        Returns:
            ``{"counter", "best_score", "patience"}``; ``{"counter": 0, "best_score": None, "patience": 0}`` when
            early stopping is off.
        """
        if self._handler is None:
            return {"counter": 0, "best_score": None, "patience": 0}
        return {"counter": self._handler.counter, "best_score": self._handler.best_score, "patience": self.patience}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue counting from a checkpoint's state (nothing to do when early stopping is off).

        Args:
            state_dict: a :meth:`state_dict` saved in a checkpoint.

        Raises:
            FusionInputError: the restored count already reaches ``patience``: the run stopped early.
        """
        if self._handler is None:
            return
        _check_not_stopped(state_dict, self.patience)
        self._handler.counter, self._handler.best_score = int(state_dict["counter"]), state_dict["best_score"]


def _check_not_stopped(state_dict: dict[str, Any], patience: int) -> None:
    """Refuse to continue an early stopper's saved state when the run stopped early (its count reached the patience
    it was saved with) and the count also reaches ``patience`` (0: off, nothing refused). A run interrupted before
    it stopped resumes with a lower patience, and stops at its next validation without improvement."""
    counter = int(state_dict["counter"])
    stopped = counter >= int(state_dict.get("patience") or counter)  # states without it: as if it had stopped
    if patience > 0 and stopped and counter >= patience:
        raise FusionInputError(
            f"the run stopped early: its last {counter} validation(s) did not improve on its best "
            f"(early_stop_patience {patience}); to train on, resume with a larger early_stop_patience (or 0 to "
            "switch early stopping off; lkcfusion train: in a --config file)"
        )


def check_resume(output_dir: str | Path, resume: bool | str | Path, network: torch.nn.Module,
                 early_stop_patience: int = 0, max_epochs: int | None = None) -> None:
    """What a resumed run would refuse when it starts, checked before anything is written (the training configs'
    ``initialize``: the refusal came after the run's TensorBoard files) and once by the launcher
    (``lkcfusion train --nproc N``) before the processes start: as :class:`ResumeCheckpointLoader` (a complete
    checkpoint, the network's tensors fit, not past ``max_epochs``) and :class:`ValidationEarlyStopHandler` (the
    run has not stopped early).

    Args:
        output_dir: the run's output folder.
        resume: the ``resume`` setting (see :func:`resume_option`).
        network: the run's network.
        early_stop_patience: the run's ``early_stop_patience``.
        max_epochs: the run's ``max_epochs``; ``None``: not checked.

    Raises:
        FusionInputError: the resume would be refused.
    """
    patience = as_count(early_stop_patience, "early_stop_patience", minimum=0, unit="validations")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # damaged newer checkpoints: the run's own loader names them
        path = ResumeCheckpointLoader(output_dir, {"network": network}, resume).path
    if path is None:
        return
    if max_epochs is not None:
        _check_epoch(path, as_count(max_epochs, "max_epochs"))
    saved = _read(path).get("early_stop")  # the loader found it whole, a dict of the run's objects
    try:
        if saved is not None:
            _check_not_stopped(saved, patience)
    except FusionInputError as error:
        raise FusionInputError(f"{path}: {error}") from None


class TimeLimitHandler:
    """Stop training after the epoch that ends past ``limit_s`` seconds, or before one that would not fit.

    Checked at the end of every epoch: the trainer stops when the time since it started plus the mean epoch
    time exceeds ``limit_s``, so a run with a time budget (e.g. 10 minutes on a GPU) ends on a whole epoch, which
    is validated (when :class:`EpochValidationHandler` validates every epoch) and exported as usual.
    In a distributed run the processes decide together (on the slowest one's elapsed time), so all stop after the
    same epoch.

    Args:
        limit_s: the budget in seconds; ``None`` or a value <= 0 disables it.
    """

    def __init__(self, limit_s: float | None) -> None:
        self.limit_s = float(limit_s) if limit_s else 0.0
        self._start = 0.0  # the clock at Events.STARTED and the epoch this run started from (resumed: past 0)
        self._first_epoch: int | None = None

    def attach(self, engine: Engine) -> None:
        """Start the clock when ``engine`` starts and check it after every epoch.

        Args:
            engine: the trainer; nothing is attached when the limit is disabled.
        """
        if self.limit_s <= 0:
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._check)

    def _started(self, engine: Engine) -> None:
        self._start = time.monotonic()
        self._first_epoch = None

    def _epoch_started(self, engine: Engine) -> None:
        if self._first_epoch is None:  # here, not at STARTED: a resumed run's epoch is restored after this handler
            self._first_epoch = engine.state.epoch - 1

    def _check(self, engine: Engine) -> None:
        elapsed = time.monotonic() - self._start
        if dist.is_initialized():  # every process stops after the same epoch: the slowest one's clock decides
            elapsed = max(all_gather_objects(elapsed))
        per_epoch = elapsed / max(engine.state.epoch - (self._first_epoch or 0), 1)
        if elapsed + per_epoch > self.limit_s and engine.state.epoch < engine.state.max_epochs:
            engine.logger.info(f"time limit {self.limit_s:.0f} s: stopping after epoch {engine.state.epoch}")
            engine.terminate()


class LastCheckpointSaver(CheckpointSaver):
    """The per-epoch "last" checkpoint ``checkpoint_epoch=N.pt`` (the newest kept), holding the trainer too.

    The engine it is attached to is saved under ``"trainer"`` beside ``save_dict`` (network, optimizer, LR
    scheduler), so that a resumed run continues at the right epoch. After each save the checkpoints of earlier
    epochs in ``save_dir`` are removed, except every ``keep_interval``-th epoch's: those stay for choosing an epoch
    afterwards by other measures than the validation loss (export one with
    :func:`~monai_lkcfusion.engines.export_weights`). Each checkpoint holds the interval it was saved with, and the
    checkpoints an earlier (resumed) session kept by its own interval stay: a resume with another ``keep_interval``
    deleted every checkpoint the first session had kept.

    Args:
        save_dir: the run's output folder.
        save_dict: objects with a ``state_dict()`` to save.
        keep_interval: keep the checkpoints of epochs divisible by it; 0 keeps only the newest.
    """

    def __init__(self, save_dir: str | Path, save_dict: dict[str, Any], keep_interval: int = 0) -> None:
        as_count(keep_interval, "keep_interval", minimum=0, unit="epochs")
        # n_saved=None: ignite keeps every file it writes, and _remove_earlier decides which ones go
        # the interval is saved with each checkpoint: a later session with another one keeps what this one kept
        save_dict = {**save_dict, "keep_interval": _Setting(keep_interval)}
        super().__init__(save_dir=str(save_dir), save_dict=save_dict, save_interval=1, n_saved=None)
        _write_atomically(self)
        self.keep_interval = keep_interval
        self.kept_before: set[int] = set()  # epochs an earlier session's checkpoints keep

    def attach(self, engine: Engine) -> None:
        """Save ``engine``'s state with the others after every epoch.

        Args:
            engine: the trainer, saved under ``"trainer"``.
        """
        self.save_dict["trainer"] = engine  # the dict object the ignite Checkpoint saves from
        super().attach(engine)
        engine.add_event_handler(Events.STARTED, self._note_earlier)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._remove_earlier)

    def _note_earlier(self, engine: Engine) -> None:
        found = checkpoint_epochs(self.save_dir)
        epochs = sorted(epoch for epoch, _ in found)
        older = epochs[:-1]  # checkpoints of an older version hold no interval: all but the newest were kept
        guessed = math.gcd(*older) if older else 0
        self.kept_before = set()
        for epoch, path in found:
            held = _read(path)
            if not isinstance(held, dict):  # cut short (the resume passed over it, with a warning): replaced, not kept
                continue
            saved = held.get("keep_interval")
            interval = int(saved["value"]) if saved is not None else guessed
            if epoch in older and saved is None or interval and epoch % interval == 0:
                self.kept_before.add(epoch)

    def _remove_earlier(self, engine: Engine) -> None:
        for epoch, path in checkpoint_epochs(self.save_dir):
            kept = epoch in self.kept_before or self.keep_interval and epoch % self.keep_interval == 0
            if epoch < engine.state.epoch and not kept:
                path.unlink(missing_ok=True)


class _Setting:
    """A number saved in a checkpoint beside the state dicts (``state_dict()``; nothing to load back)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"value": torch.tensor(self.value)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Nothing to restore: the resumed session has its own setting."""


_SCHEDULE_POSITION = ("last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "_is_initial")
"""LR scheduler state a resumed run takes from its checkpoint; the rest (``T_max``, ``eta_min``...) is the run's."""


def _check_fits(path: str | Path, key: str, saved: dict[str, torch.Tensor], module: torch.nn.Module) -> None:
    """Refuse a checkpoint whose ``key`` state does not fit ``module`` (another preset or network settings), which
    ``load_state_dict`` reports in a traceback of every differing tensor."""
    own = module.state_dict()
    differ = [f"{name} {tuple(saved[name].shape)} there, {tuple(tensor.shape)} here" for name, tensor in own.items()
              if name in saved and saved[name].shape != tensor.shape]
    differ += [f"{name} not there" for name in own if name not in saved]
    differ += [f"{name} not here" for name in saved if name not in own]
    if differ:
        more = f" and {len(differ) - 1} more" if len(differ) > 1 else ""
        raise FusionInputError(
            f"{path}: its {key} does not fit this run's ({differ[0]}{more}); resume with the run's network settings "
            "(preset, network_def), or start a new run in another folder"
        )


def _check_epoch(path: str | Path, max_epochs: int) -> None:
    """Refuse to resume from a checkpoint ``checkpoint_epoch=N.pt`` with ``N`` past ``max_epochs``."""
    match = re.fullmatch(rf"{CHECKPOINT_PREFIX}_epoch=(\d+)\.pt", Path(path).name)
    if match and int(match.group(1)) > max_epochs:
        raise FusionInputError(
            f"{path}: the run is at epoch {match.group(1)} already; to resume it give max_epochs "
            f"{match.group(1)} or more (lkcfusion train --epochs), or start a new run in another folder"
        )


class ResumeCheckpointLoader:
    """Load a "last" checkpoint into the network, optimizer, LR scheduler and trainer when the trainer starts.

    An LR scheduler takes its position (``last_epoch``, step count) from the checkpoint and keeps its settings from
    the resumed run's configuration, and the rate is set to where that schedule is at the restored epoch (for
    schedulers with a closed form, such as ``CosineAnnealingLR``): ``--resume --epochs 80`` with ``T_max =
    @max_epochs`` stretches the schedule to 80 epochs (restoring the old ``T_max`` ran the cosine past its end and
    back up to the starting rate; keeping the restored rate left a finished cosine at its minimum for every added
    epoch, as PyTorch steps it from the current rate), and a changed ``learning_rate`` is this run's schedule's.

    Args:
        output_dir: the run's output folder.
        load_dict: the objects saved by :class:`LastCheckpointSaver` (the trainer is added on attach).
        resume: ``True`` resumes from the newest checkpoint in ``output_dir`` when there is one; a path resumes
            from that checkpoint; ``False`` does nothing.
        map_location: where to load the tensors.

    Raises:
        FusionInputError: ``resume`` is ``True`` and ``output_dir`` holds checkpoints, none of them complete; the
            checkpoint lacks an object of ``load_dict``, or its network's tensors do not fit the network's.

    Warns:
        UserWarning: newer checkpoints than the one resumed from are damaged (they are named; they will be replaced).
    """

    def __init__(
        self,
        output_dir: str | Path,
        load_dict: dict[str, Any],
        resume: bool | str | Path = False,
        map_location: str | torch.device = "cpu",
    ) -> None:
        self.load_dict = dict(load_dict)
        self.map_location = map_location
        resume = resume_option(resume)
        self.path = last_checkpoint(output_dir) if resume is True else resume or None
        if resume is True and self.path is None and any(Path(output_dir).glob(f"{CHECKPOINT_PREFIX}_epoch=*.pt")):
            raise FusionInputError(  # starting over would silently retrain and overwrite them
                f"{output_dir}: no complete checkpoint to resume from (every {CHECKPOINT_PREFIX}_epoch=N.pt is cut "
                "short or damaged); delete them to start a new run there"
            )
        held = _read(self.path) if self.path is not None else None
        if held is _DAMAGED:  # given by path: torch.load's traceback
            raise FusionInputError(f"{self.path}: not a whole checkpoint (cut short or damaged); resume from another "
                                   f"{CHECKPOINT_PREFIX}_epoch=N.pt")
        if self.path is not None:  # MONAI's loader would fail with a traceback
            if isinstance(held, dict):  # checkpoints before the early-stop state was saved resume without it
                self.load_dict = {key: obj for key, obj in self.load_dict.items()
                                  if key in held or not isinstance(obj, ValidationEarlyStopHandler)}
            missing = [key for key in self.load_dict if not isinstance(held, dict) or key not in held]
            if missing:
                raise FusionInputError(f"{self.path}: not a checkpoint of this training (no {', '.join(missing)}); "
                                       "resume from a checkpoint_epoch=N.pt that a run wrote")
            for key, obj in self.load_dict.items():
                if isinstance(obj, torch.nn.Module):
                    _check_fits(self.path, key, held[key], obj)
        if resume is True and self.path is not None:  # a newer one was passed over: say so, it will be replaced
            epochs = checkpoint_epochs(output_dir)
            chosen = next(epoch for epoch, path in epochs if path == self.path)
            skipped = [path.name for epoch, path in epochs if epoch > chosen]
            if skipped:
                warnings.warn(f"{output_dir}: {', '.join(skipped)} cut short or damaged; resuming from "
                              f"{self.path.name}", UserWarning, stacklevel=2)

    def attach(self, engine: Engine) -> None:
        """Restore the checkpoint (if any) into ``engine`` and the other objects at ``Events.STARTED``.

        Args:
            engine: the trainer.

        Raises (when the run starts):
            FusionInputError: the checkpoint is further than the run's ``max_epochs`` (``--epochs``), or a restored
                object refuses its state (e.g. an early stopper whose run stopped early).
        """
        if self.path is None:
            return
        path = self.path
        engine.add_event_handler(  # before the loader, whose Ignite error would be a traceback
            Events.STARTED, lambda engine: _check_epoch(path, engine.state.max_epochs))
        schedulers = [obj for obj in self.load_dict.values() if isinstance(obj, torch.optim.lr_scheduler.LRScheduler)]
        settings: list[dict[str, Any]] = []

        def keep_settings(engine: Engine) -> None:
            settings[:] = [{k: v for k, v in sched.state_dict().items() if k not in _SCHEDULE_POSITION}
                           for sched in schedulers]

        def restore_settings(engine: Engine) -> None:  # the checkpoint gave the position; the run gives the rest
            for sched, own in zip(schedulers, settings):
                sched.__dict__.update(own)
                closed_form = getattr(sched, "_get_closed_form_lr", None)
                if closed_form is not None:  # the rate of the run's schedule at the restored epoch
                    for group, base, rate in zip(sched.optimizer.param_groups, sched.base_lrs, closed_form()):
                        group["initial_lr"], group["lr"] = base, rate
                    sched._last_lr = [group["lr"] for group in sched.optimizer.param_groups]

        engine.add_event_handler(Events.STARTED, keep_settings)
        loader = CheckpointLoader(load_path=str(self.path), load_dict={**self.load_dict, "trainer": engine},
                                  map_location=self.map_location)
        loader.logger = engine.logger  # as its attach() would set it

        def load(engine: Engine) -> None:
            try:
                loader(engine)
            except FusionInputError as error:  # a restored object refused its state: name the checkpoint
                raise FusionInputError(f"{self.path}: {error}") from None

        engine.add_event_handler(Events.STARTED, load)
        engine.add_event_handler(Events.STARTED, restore_settings)


class LossProgressBar(ProgressBar):
    """Ignite's progress bar showing the batch loss, attachable from a handler list (``attach(engine)``).

    Args:
        persist: keep the bar of each finished epoch on the screen.
    """

    def __init__(self, persist: bool = False) -> None:
        super().__init__(persist=persist)

    def attach(self, engine: Engine, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Show the progress of ``engine``'s epochs with its loss.

        Args:
            engine: the trainer.
            args: ignored (the signature of Ignite's ``ProgressBar.attach``).
            kwargs: ignored; the output transform is always the batch loss.
        """
        super().attach(engine, output_transform=lambda output: {"loss": loss_output(output)})


class MetricTableSaver:
    """Write an evaluation's per-pair fusion metrics and their per-task summary when the evaluator completes.

    Files in ``save_dir``: ``metrics.csv`` with one row per pair (``task``, ``pair``, then one column per metric)
    and ``summary.csv`` with one row per task and metric (``task, metric, n, mean, std``; see
    :func:`monai_lkcfusion.metrics.tables.summarize`). The values are the evaluator's per-image fusion metrics
    (``engine.state.metric_details[metric]``, from a :class:`~monai_lkcfusion.metrics.FusionMetricHandler`);
    the pair and task names come from the batches. In a distributed evaluation (each process scoring a contiguous
    shard, :func:`~monai_lkcfusion.engines.shard_items`) the metric values are already gathered over the processes
    by MONAI's metric buffers; the pair names are gathered here in the same rank order, and rank 0 alone writes
    the tables, so they equal a single-process run's. Attach it on every process.

    Args:
        save_dir: the output folder.
        metric_names: the metrics to write, in column order.
        pair_key: batch key of the pair's name.
        task_key: batch key of the pair's task (e.g. ``"MRI-PET"``).
        overwrite: replace the tables of an earlier evaluation in ``save_dir``; otherwise they are refused when the
            handler is attached, before any pair is scored (they were replaced without a word).
    """

    def __init__(
        self, save_dir: str | Path, metric_names: Sequence[str], pair_key: str = "name", task_key: str = "task",
        overwrite: bool = False,
    ) -> None:
        self.save_dir = Path(save_dir)
        self.metric_names = list(as_names(metric_names, "metric_names"))  # a string is one name (--metrics EN)
        self.pair_key = pair_key
        self.task_key = task_key
        self.overwrite = as_flag(overwrite, "overwrite")
        self._pairs: list[tuple[str, str]] = []

    def attach(self, engine: Engine) -> None:
        """Collect the pair names each iteration and write the tables at ``Events.COMPLETED``.

        Args:
            engine: the evaluator (on every process of a distributed run).

        Raises:
            FusionInputError: a table exists in ``save_dir`` and ``overwrite`` is off; at ``Events.COMPLETED``, the
                evaluator computed no per-image values of a metric in ``metric_names``.
        """
        earlier = [name for name in ("metrics.csv", "summary.csv") if (self.save_dir / name).exists()]
        if earlier and not self.overwrite:
            raise FusionInputError(f"{self.save_dir / earlier[0]}: results of an earlier evaluation; pass --overwrite "
                                   "true (overwrite) to replace them, or choose another output_dir")
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self._pairs.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        batch = engine.state.batch
        self._pairs.extend(zip(batch[self.task_key], batch[self.pair_key]))

    def _write(self, engine: Engine) -> None:
        from ..metrics.tables import summarize, write_table

        details = engine.state.metric_details
        missing = [name for name in self.metric_names if name not in details]
        if missing:
            raise FusionInputError(f"MetricTableSaver: the evaluator computed no per-image values of {missing}")
        columns = {name: torch.as_tensor(details[name]).reshape(-1).tolist() for name in self.metric_names}
        if dist.is_initialized():
            pairs = [pair for shard in all_gather_objects(self._pairs) for pair in shard]
            if not is_main_process():
                return
            self._pairs = pairs
        records = [
            {"task": task, "pair": pair, **{name: values[i] for name, values in columns.items()}}
            for i, (task, pair) in enumerate(self._pairs)
        ]
        write_table(records, self.save_dir / "metrics.csv", overwrite=self.overwrite)
        write_table(summarize(records, self.metric_names, by=("task",)), self.save_dir / "summary.csv",
                    overwrite=self.overwrite)


def best_model_saver(
    save_dir: str | Path,
    network: torch.nn.Module,
    key_metric: str = LOSS_METRIC,
    resume: bool | str | Path = False,
    filename: str = "best_model.pt",
) -> CheckpointSaver:
    """A validation handler saving the network's state dict whenever the key metric improves.

    The file also holds the saver's tracking state; when resuming, that state is restored from an existing
    ``save_dir/filename``, so a resumed training only replaces it with a better model.

    Args:
        save_dir: where to write ``filename``.
        network: the network to save.
        key_metric: ``"val_loss"`` or a fusion metric; its direction is :func:`lower_is_better`.
        resume: any true value continues the tracking of an earlier run.
        filename: file name of the best checkpoint.

    Returns:
        A MONAI ``CheckpointSaver`` for the evaluator.

    Raises:
        FusionInputError: ``resume`` is a checkpoint path that is not a file, or (resuming) an existing
            ``save_dir/filename`` is cut short or damaged.
    """
    saver = _BestModelSaver(
        save_dir=str(save_dir),
        save_dict={"network": network, "best": _BestRecord()},
        save_key_metric=True,
        key_metric_filename=filename,
        key_metric_negative_sign=lower_is_better(key_metric),
        key_metric_save_state=True,
    )
    _write_atomically(saver)
    best = Path(save_dir) / filename
    held = _read(best) if resume_option(resume) and best.is_file() else None
    if held is _DAMAGED:  # an earlier version's, cut short
        raise FusionInputError(f"{best}: cut short or damaged; delete it to resume (the best model is then chosen "
                               "among the resumed epochs)")
    if held is not None:
        saver.load_state_dict(held["checkpointer"])
        saver.restored = held.get("best")  # files before 0.4.3 hold none: the evaluator starts afresh, as it did
    return saver


class _BestRecord:
    """The evaluator's best key-metric value and its epoch, saved in ``best_model.pt`` beside the network."""

    def __init__(self) -> None:
        self.engine: Engine | None = None

    def state_dict(self) -> dict[str, Any]:
        """``{"value", "epoch"}`` of a MONAI workflow's tracking; empty for an engine without it."""
        state = getattr(self.engine, "state", None)
        if getattr(state, "best_metric_epoch", -1) == -1:
            return {}
        return {"value": float(state.best_metric), "epoch": int(state.best_metric_epoch)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to load: :func:`best_model_saver` reads the record itself."""


class _BestModelSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` for ``best_model.pt`` that also gives a resumed evaluator its best so far.

    MONAI's evaluator tracks its best key metric apart from the saver: after a resume it called the first
    validation, however much worse than the run's best, "new best metric ... at epoch N" (the saver's own tracking
    was restored, so ``best_model.pt`` stayed right).
    """

    restored: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        """Save with ``engine`` (the evaluator) and set its best value and epoch to the restored ones."""
        self.save_dict["best"].engine = engine
        super().attach(engine)
        if self.restored:
            engine.state.best_metric = self.restored["value"]
            engine.state.best_metric_epoch = self.restored["epoch"]


def train_handlers(
    output_dir: str | Path,
    save_dict: dict[str, Any],
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    validator: Engine | None = None,
    val_interval: int = 1,
    early_stop_patience: int = 0,
    resume: bool | str | Path = False,
    device: str | torch.device = "cpu",
    tensorboard: bool = True,
    progress: bool = True,
    time_limit: float | None = None,
    keep_checkpoint_interval: int = 0,
) -> list:
    """The trainer's default handlers, in the order of ``train#handlers`` in ``bundle/configs/train.json``.

    Args:
        output_dir: checkpoints and TensorBoard logs (``output_dir/tensorboard``).
        save_dict: ``network``, ``optimizer`` and ``lr_scheduler`` to checkpoint and resume (the early stopper is
            added when ``validator`` is given).
        lr_scheduler: stepped once per epoch when given.
        validator: run every ``val_interval`` epochs and after the last epoch when given.
        val_interval: epochs between validations.
        early_stop_patience: validations without improvement before stopping (0 disables it).
        resume: see :class:`ResumeCheckpointLoader`.
        device: where the checkpoint's tensors are loaded.
        tensorboard: log the batch loss to TensorBoard.
        progress: show a progress bar per epoch.
        time_limit: seconds of training after which no further epoch starts (see :class:`TimeLimitHandler`).
        keep_checkpoint_interval: keep every N-th epoch's checkpoint too (see :class:`LastCheckpointSaver`).

    Returns:
        The handlers: validation, LR schedule, early stop, time limit, resume; then the ones a single process runs in
        distributed training: "last" checkpoint, console statistics, TensorBoard, progress bar.
    """
    handlers: list = []
    if validator is not None:
        handlers.append(EpochValidationHandler(validator=validator, interval=val_interval))
    if lr_scheduler is not None:
        handlers.append(LrScheduleHandler(lr_scheduler=lr_scheduler, print_lr=False, epoch_level=True))
    if validator is not None:
        early_stop = ValidationEarlyStopHandler(validator=validator, patience=early_stop_patience)
        handlers.append(early_stop)
        save_dict = {**save_dict, "early_stop": early_stop}
    handlers.append(TimeLimitHandler(time_limit))
    handlers.append(ResumeCheckpointLoader(output_dir, save_dict, resume=resume, map_location=device))
    handlers.append(LastCheckpointSaver(output_dir, save_dict, keep_checkpoint_interval))
    handlers.append(StatsHandler(tag_name="train_loss", output_transform=loss_output, iteration_log=False))
    if tensorboard:
        handlers.append(
            TensorBoardStatsHandler(
                log_dir=str(Path(output_dir) / "tensorboard"), tag_name="train_loss", output_transform=loss_output
            )
        )
    if progress:
        handlers.append(LossProgressBar())
    return handlers


def validation_handlers(
    network: torch.nn.Module,
    output_dir: str | Path | None = None,
    key_metric: str = LOSS_METRIC,
    resume: bool | str | Path = False,
    best_filename: str = "best_model.pt",
    tensorboard: bool = True,
) -> list:
    """The evaluator's default handlers, in the order of ``validate#handlers`` in ``bundle/configs/train.json``.

    Args:
        network: the network saved as the best model.
        output_dir: the run's folder; without it only console statistics are attached.
        key_metric: the evaluator's key metric (picks the saver's direction).
        resume: continue the best-model tracking of an earlier run (see :func:`best_model_saver`).
        best_filename: file name of the best model in ``output_dir``.
        tensorboard: log the validation metrics to ``output_dir/tensorboard`` at the trainer's epoch.

    Returns:
        Console statistics, TensorBoard and the best-model saver.
    """
    handlers: list = [StatsHandler(iteration_log=False, output_transform=lambda x: None)]
    if output_dir is None:
        return handlers
    if tensorboard:
        handlers.append(
            TensorBoardStatsHandler(
                log_dir=str(Path(output_dir) / "tensorboard"), iteration_log=False, output_transform=lambda x: None
            )
        )
    handlers.append(best_model_saver(output_dir, network, key_metric, resume, best_filename))
    return handlers
