"""Trainer/evaluator factories on monai.engines: training lowers the loss, checkpoints, resume, weight export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, ConcatItemsd, CopyItemsd, RandFlipd, RandSpatialCropd

from monai_lkcfusion.engines import create_evaluator, create_trainer, export_weights, last_checkpoint
from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.networks import LKCFUNet


def _pairs(synthetic_pair: tuple[np.ndarray, np.ndarray], n: int = 4) -> list[dict]:
    """Shifted copies of the synthetic pair as dicts of (1, H, W) arrays."""
    mri, other = synthetic_pair
    return [
        {"mri": np.roll(mri, 3 * i, axis=1)[None], "other": np.roll(other, 2 * i, axis=0)[None]} for i in range(n)
    ]


def _loaders(data: list[dict]) -> tuple[DataLoader, DataLoader]:
    concat = [ConcatItemsd(["mri", "other"], "image"), CopyItemsd("image", names="label")]
    train = Compose(
        [concat[0], RandSpatialCropd("image", (32, 32), random_size=False), RandFlipd("image", 0.5, 1), concat[1]]
    )
    return (
        DataLoader(Dataset(data, train), batch_size=2, shuffle=True),
        DataLoader(Dataset(data, Compose(concat)), batch_size=2),
    )


def _build(data: list[dict], out: Path, epochs: int, resume: bool):
    torch.manual_seed(0)
    net = LKCFUNet.from_preset("tiny")
    train_loader, val_loader = _loaders(data)
    evaluator = create_evaluator(net, val_loader, best_dir=out, resume=resume)
    trainer = create_trainer(
        net, train_loader, epochs, lr=1e-2, evaluator=evaluator, output_dir=out, resume=resume, progress=False
    )
    return trainer, evaluator


def test_train_checkpoint_resume_export(tmp_path: Path, synthetic_pair: tuple[np.ndarray, np.ndarray]) -> None:
    data = _pairs(synthetic_pair)
    trainer, evaluator = _build(data, tmp_path, epochs=2, resume=False)
    trainer.run()
    assert trainer.state.epoch == 2
    first = evaluator.state.metrics["val_loss"]
    assert np.isfinite(first)
    assert last_checkpoint(tmp_path).name == "checkpoint_epoch=2.pt"
    assert (tmp_path / "best_model.pt").is_file() and (tmp_path / "tensorboard").is_dir()

    # resume to a larger epoch count: epochs 3..4 run, the state continues from the checkpoint
    trainer, evaluator = _build(data, tmp_path, epochs=4, resume=True)
    epochs_run = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: epochs_run.append(engine.state.epoch))
    trainer.run()
    assert epochs_run == [3, 4] and trainer.state.epoch == 4
    assert last_checkpoint(tmp_path).name == "checkpoint_epoch=4.pt"
    assert evaluator.state.metrics["val_loss"] < first  # training went on from the saved weights

    exported = export_weights(tmp_path / "best_model.pt", tmp_path / "model.pt")
    state = torch.load(exported, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    net = LKCFUNet.from_preset("tiny")
    net.load_state_dict(state)
    from_last = export_weights(last_checkpoint(tmp_path), tmp_path / "last.pt")
    net.load_state_dict(torch.load(from_last, weights_only=True))


def test_resume_at_final_epoch_runs_nothing(tmp_path: Path, synthetic_pair: tuple[np.ndarray, np.ndarray]) -> None:
    data = _pairs(synthetic_pair, n=2)
    trainer, _ = _build(data, tmp_path, epochs=1, resume=False)
    trainer.run()
    before = torch.load(last_checkpoint(tmp_path), weights_only=True)["network"]
    trainer, _ = _build(data, tmp_path, epochs=1, resume=True)
    trainer.run()
    after = trainer.network.state_dict()
    assert trainer.state.epoch == 1
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_export_weights_errors(tmp_path: Path) -> None:
    with pytest.raises(FusionInputError, match="not found"):
        export_weights(tmp_path / "missing.pt", tmp_path / "out.pt")
    torch.save({"epoch": 3}, tmp_path / "empty.pt")
    with pytest.raises(FusionInputError, match="no network weights"):
        export_weights(tmp_path / "empty.pt", tmp_path / "out.pt")
