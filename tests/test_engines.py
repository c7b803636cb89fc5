"""Trainer/evaluator factories on monai.engines: training lowers the loss, checkpoints, resume, weight export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, ConcatItemsd, CopyItemsd, RandFlipd, RandSpatialCropd

from monai_lkcfusion.engines import (
    bundle_config,
    create_evaluator,
    create_trainer,
    export_weights,
    last_checkpoint,
    run_bundle_workflow,
    train_handlers,
    validation_handlers,
)
from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.networks import LKCFUNet
from monai_lkcfusion.networks.convert import read_state_dict

TINY = {"preset": "tiny", "roi_size": 32, "batch_size": 2, "samples_per_image": 1, "val_fraction": 0.34}


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
    assert [p.name for p in tmp_path.glob("checkpoint_epoch=*.pt")] == ["checkpoint_epoch=4.pt"]  # only the newest
    assert evaluator.state.metrics["val_loss"] < first  # training went on from the saved weights

    exported = export_weights(tmp_path / "best_model.pt", tmp_path / "model.pt")
    state = torch.load(exported, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    net = LKCFUNet.from_preset("tiny")
    net.load_state_dict(state)
    from_last = export_weights(last_checkpoint(tmp_path), tmp_path / "last.pt")
    net.load_state_dict(torch.load(from_last, weights_only=True))


def test_each_epochs_mean_training_loss_is_logged_without_a_progress_bar(tmp_path: Path, synthetic_pair) -> None:
    """With the progress bar off (a cluster job's log) the training loss was nowhere in the log, only in
    TensorBoard: each epoch's mean batch loss is the trainer's metric ``train_loss_mean``, logged per epoch."""
    import logging

    from monai_lkcfusion.engines import TRAIN_LOSS_METRIC

    trainer, _ = _build(_pairs(synthetic_pair), tmp_path, epochs=2, resume=False)
    losses: dict[int, list[float]] = {}
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: losses.setdefault(
        engine.state.epoch, []).append(engine.state.output["loss"].item()))
    means = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED,
                              lambda engine: means.append(engine.state.metrics[TRAIN_LOSS_METRIC]))
    records: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("monai.handlers.StatsHandler")  # MONAI's StatsHandler logs here
    logger.addHandler(handler)
    try:
        trainer.run()
    finally:
        logger.removeHandler(handler)
    assert means == pytest.approx([np.mean(losses[1]), np.mean(losses[2])], rel=1e-6) and means[0] != means[1]
    logged = [line for line in records if TRAIN_LOSS_METRIC in line]
    assert len(logged) == 2 and f"{means[1]:.4f}" in logged[1], records


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


def test_export_weights_errors(tmp_path: Path, monkeypatch) -> None:
    """A damaged checkpoint was a raw ``UnpicklingError``, one holding a list an ``AttributeError`` (helper); an
    interrupted write left a cut ``model.pt`` in place of the earlier one."""
    with pytest.raises(FusionInputError, match="not found"):
        export_weights(tmp_path / "missing.pt", tmp_path / "out.pt")
    torch.save({"epoch": 3}, tmp_path / "empty.pt")
    with pytest.raises(FusionInputError, match=r"empty.pt: no tensors found \(keys: epoch\)"):
        export_weights(tmp_path / "empty.pt", tmp_path / "out.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(FusionInputError, match="list.pt: holds a list, not a state dict"):
        export_weights(tmp_path / "list.pt", tmp_path / "out.pt")
    good = tmp_path / "good.pt"
    torch.save({"network": LKCFUNet.from_preset("tiny").state_dict(), "epoch": 1}, good)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:-300])
    with pytest.raises(FusionInputError, match="cut.pt: cannot read weights"):
        export_weights(tmp_path / "cut.pt", tmp_path / "out.pt")
    exported = export_weights(good, tmp_path / "out.pt")
    before = exported.read_bytes()

    def interrupted(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_weights(good, exported)
    assert exported.read_bytes() == before and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    monkeypatch.undo()
    # review helper: a step counter beside the network exported only {"step"}; the checkpoint as its own output was
    # replaced by weights only; a .safetensors output got a torch pickle
    net = LKCFUNet.from_preset("tiny")
    torch.save({"network": net.state_dict(), "step": torch.tensor(7)}, tmp_path / "stepped.pt")
    for name in ("w.pt", "w.safetensors"):
        out = export_weights(tmp_path / "stepped.pt", tmp_path / name)
        LKCFUNet.from_preset("tiny").load_state_dict(read_state_dict(out))  # every tensor of the network, no "step"
    with pytest.raises(FusionInputError, match="stepped.pt: is the input"):
        export_weights(tmp_path / "stepped.pt", tmp_path / "stepped.pt")
    assert "step" in torch.load(tmp_path / "stepped.pt", weights_only=True)
    # re-check helper: a record or a lone tensor under a wrapper key beside a flat state dict took its place
    for extra in ({"model": {"name": "tiny", "features": 4}}, {"net": {"scale": torch.ones(1)}}):
        torch.save({**net.state_dict(), **extra}, tmp_path / "flat.pt")
        assert set(read_state_dict(tmp_path / "flat.pt")) == set(net.state_dict())


def _harvard_like(root: Path, n: int = 3) -> Path:
    """A Harvard-layout folder ``train/MRI-CT/{MRI,CT}/i.png`` of random 40x36 pairs."""
    rng = np.random.default_rng(3)
    for folder in ("MRI", "CT"):
        (root / "train" / "MRI-CT" / folder).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (40, 36), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "train" / "MRI-CT" / folder / f"{i}.png")
    return root


def test_short_run_validates_at_the_end(tmp_path: Path, synthetic_pair: tuple[np.ndarray, np.ndarray]) -> None:
    """Fewer epochs than val_interval: validation still runs after the last epoch, so a best model exists."""
    torch.manual_seed(0)
    net = LKCFUNet.from_preset("tiny")
    train_loader, val_loader = _loaders(_pairs(synthetic_pair, n=2))
    evaluator = create_evaluator(net, val_loader, best_dir=tmp_path)
    validated = []
    evaluator.add_event_handler(Events.COMPLETED, lambda engine: validated.append(engine.state.epoch))
    trainer = create_trainer(net, train_loader, 2, evaluator=evaluator, val_interval=3, output_dir=tmp_path,
                             progress=False, tensorboard=False)
    trainer.run()
    assert validated == [2] and (tmp_path / "best_model.pt").is_file()


def test_train_json_short_run_and_handler_override(tmp_path: Path) -> None:
    """train.json for 1 epoch with val_interval 2 validates, exports model.pt, and a handler can be switched off
    by an override (here the trainer's TensorBoard: only the validation's event file is written). The run leaves
    the process's denormal flushing off."""
    data = _harvard_like(tmp_path / "data")
    out = tmp_path / "run"
    run_bundle_workflow("train.json", dataset_dir=str(data), output_dir=str(out), max_epochs=1, val_interval=2,
                        **{"train#handlers#7#_disabled_": True}, **TINY)
    assert (out / "best_model.pt").is_file() and (out / "model.pt").is_file()
    assert len(list((out / "tensorboard").iterdir())) == 1
    assert (torch.tensor([1e-40]) * 2).item() != 0.0  # a denormal survives: set_flush_denormal was not called


def test_config_handlers_match_python_defaults(tmp_path: Path) -> None:
    """train.json declares the same handlers, in the same order, as train_handlers()/validation_handlers()."""
    workflow = ConfigWorkflow(config_file=str(bundle_config("train.json")), workflow_type="train",
                              dataset_dir=str(_harvard_like(tmp_path / "data")), output_dir=str(tmp_path / "run"),
                              early_stop_patience=2, **TINY)
    workflow.initialize()
    parsed = {key: workflow.parser.get_parsed_content(f"{key}#handlers") for key in ("train", "validate")}
    net = LKCFUNet.from_preset("tiny")
    optimizer = torch.optim.Adam(net.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    evaluator = create_evaluator(net, [], handlers=[])
    state = {"network": net, "optimizer": optimizer, "lr_scheduler": scheduler}
    defaults = {
        "train": train_handlers(tmp_path, state, scheduler, evaluator, early_stop_patience=2),
        "validate": validation_handlers(net, tmp_path),
    }
    for key in parsed:
        assert [type(h) for h in parsed[key]] == [type(h) for h in defaults[key]], key


def test_time_limit_handler_stops_on_a_whole_epoch() -> None:
    """A 0.25 s budget stops a 0.04 s-per-epoch run early, after a complete epoch; no budget runs every epoch."""
    import time

    from ignite.engine import Engine

    from monai_lkcfusion.engines import TimeLimitHandler

    def run(limit: float | None) -> Engine:
        engine = Engine(lambda e, b: time.sleep(0.02))
        TimeLimitHandler(limit).attach(engine)
        engine.run(range(2), max_epochs=50)
        return engine

    limited = run(0.25)
    assert 2 <= limited.state.epoch < 10 and limited.state.iteration == 2 * limited.state.epoch
    assert run(None).state.epoch == 50 and run(0).state.epoch == 50


def test_time_limit_counts_only_the_epochs_of_a_resumed_run() -> None:
    """A run resumed at epoch 20 (the checkpoint is loaded after the time handler starts its clock): the epoch time
    was the elapsed time over all 20+ epochs, so the run went on well past its budget."""
    import time

    from ignite.engine import Engine, Events

    from monai_lkcfusion.engines import TimeLimitHandler

    engine = Engine(lambda e, b: time.sleep(0.05))
    TimeLimitHandler(0.32).attach(engine)
    engine.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "epoch", 20))  # as the resume loader does
    engine.run(range(2), max_epochs=100)  # 0.1 s per epoch: after 2 epochs 0.2 + 0.1 fits, after 3 it would not
    assert 21 <= engine.state.epoch <= 23


@pytest.mark.parametrize("key_metric, smaller_wins", [("val_loss", True), ("MSE", True), ("Nabf", True),
                                                      ("Qabf", False), ("SSIM", False)])
def test_key_metric_direction_is_the_metrics_own(tmp_path, key_metric, smaller_wins) -> None:
    """MSE and Nabf are lower-is-better: the evaluator, the best-model saver and early stopping kept the worse model
    for them (only ``val_loss`` was treated as lower-is-better)."""
    from types import SimpleNamespace

    from monai_lkcfusion.engines import best_model_saver, validation_score

    net = LKCFUNet.from_preset("tiny")
    evaluator = create_evaluator(net, [], key_metric=key_metric, handlers=[])
    saver = best_model_saver(tmp_path, net, key_metric=key_metric)
    scores = {}
    for value in (0.1, 0.2):
        engine = SimpleNamespace(state=SimpleNamespace(key_metric_name=key_metric, metrics={key_metric: value}))
        scores[value] = (saver._key_metric_checkpoint.score_function(engine), validation_score(engine))
    assert evaluator.metric_cmp_fn(0.1, 0.2) is smaller_wins
    assert (scores[0.1][0] > scores[0.2][0]) is smaller_wins and (scores[0.1][1] > scores[0.2][1]) is smaller_wins


def test_val_loss_is_the_training_loss_of_the_bundle(tmp_path) -> None:
    """``val_loss`` picks best_model.pt: it must be the loss the run trains on (the shipped recipes weight the terms
    2:1:2 with a max-variance SSIM), not a default FusionLoss 1:1:1."""
    from monai_lkcfusion.losses import FusionLoss

    workflow = ConfigWorkflow(config_file=str(bundle_config("train.json")), workflow_type="train",
                              dataset_dir=str(_harvard_like(tmp_path / "data")), output_dir=str(tmp_path / "run"),
                              **TINY)
    workflow.initialize()
    workflow.parser["loss"]["intensity_weight"] = 5.0
    workflow.parser["loss"]["ssim_form"] = "max_variance"
    loss = workflow.parser.get_parsed_content("loss", lazy=False)
    evaluator = workflow.parser.get_parsed_content("validate#evaluator", lazy=False)
    evaluator.run()
    batches = list(workflow.parser.get_parsed_content("validate#dataloader"))
    assert len(batches) == 1  # one batch: val_loss is that batch's loss
    with torch.no_grad():
        pred = evaluator.network.eval()(batches[0]["image"]).clamp(0, 1)
        expected, default = float(loss(pred, batches[0]["label"])), float(FusionLoss()(pred, batches[0]["label"]))
    assert evaluator.state.metrics["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert abs(expected - default) > 1e-3


@pytest.mark.parametrize("setting, value, message", [
    ("batch_size", 0, "batch_size 0: give a whole number of at least 1"),
    ("samples_per_image", 0, "samples_per_image 0"),
    ("val_interval", 0, "val_interval 0"),
    ("learning_rate", "abc", "learning_rate 'abc': needs a positive number"),
    ("learning_rate", -1, "learning_rate -1"),
    ("device", "gpu7", "device gpu7: Invalid device string"),
    # a GPU the machine lacks passed, then failed in the network's .to() with an 84-line traceback (helper)
    ("device", "cuda:7", "device cuda:7: (CUDA is not available on this machine|this machine has)"),
    ("loss#ssim_form", "maxvar", "ssim_form must be one of"),
    ("loss#edge_weight", "abc", "edge_weight must be 0 or positive, got 'abc'"),
    ("cudnn_benchmark", "yes", "cudnn_benchmark 'yes': give true or false"),
    ("keep_checkpoint_interval", -1, "keep_checkpoint_interval -1: give a whole number of epochs of at least 0"),
    ("keep_checkpoint_interval", "2", "keep_checkpoint_interval '2': give a whole number of epochs"),
    # refused only after run.json and a TensorBoard file were written (re-check helper)
    ("key_metric", "val_SSIM", "key_metric 'val_SSIM': not a metric; choose val_loss or one of EN,"),
    ("val_metrics", ["SSIM", "XX"], r"val_metrics: unknown \['XX'\]; choose from EN,"),
    ("val_metrics", "Qabf", r"val_metrics 'Qabf': give a list of names, e.g. \['Qabf'\]"),
])
def test_bad_training_settings_are_one_line_before_anything_is_built(tmp_path, monkeypatch, setting, value, message):
    """Each ended in a traceback (MONAI's "Failed to instantiate"), val_interval 0 only after a whole epoch."""
    import monai_lkcfusion.networks as networks
    from monai_lkcfusion.engines import run_bundle_workflow

    built = []
    real = networks.LKCFUNet.from_preset
    monkeypatch.setattr(networks.LKCFUNet, "from_preset", lambda *a, **k: built.append(1) or real(*a, **k))
    settings = {**TINY, "max_epochs": 1, "device": "cpu", setting: value}
    with pytest.raises(FusionInputError, match=message):
        run_bundle_workflow("train.json", (), "train", dataset_dir=str(_harvard_like(tmp_path / "data")),
                            output_dir=str(tmp_path / "run"), **settings)
    assert not (tmp_path / "run" / "model.pt").exists() and (setting.startswith("loss") or not built)
    assert setting.startswith("loss") or not (tmp_path / "run").exists()  # nothing written


def test_device_given_as_a_name_trains(tmp_path):
    """``--device cpu`` on ``python -m monai.bundle run`` arrives as a string: ``@device.type`` raised."""
    from monai_lkcfusion.engines import run_bundle_workflow

    run_bundle_workflow("train.json", (), "train", dataset_dir=str(_harvard_like(tmp_path / "data")),
                        output_dir=str(tmp_path / "run"), device="cpu", **{**TINY, "max_epochs": 1})
    assert (tmp_path / "run" / "model.pt").is_file()


def test_a_trainer_whose_validator_has_no_data_is_refused_before_training(tmp_path: Path,
                                                                            synthetic_pair) -> None:
    """create_trainer with an evaluator over no pairs trained every epoch and then had no best model to export."""
    net = LKCFUNet.from_preset("tiny")
    train_loader, _ = _loaders(_pairs(synthetic_pair, n=2))
    with pytest.raises(FusionInputError, match="the validator has no data"):
        create_trainer(net, train_loader, 2, evaluator=create_evaluator(net, []), output_dir=tmp_path,
                       progress=False, tensorboard=False)


def test_val_loss_is_the_mean_over_pairs_whatever_the_batches(synthetic_pair) -> None:
    """val_loss was MONAI's mean of per-batch losses: 3 pairs in batches of 2 weighed the last pair as much as the
    first two together (a distributed run's 2 + 1 shards alike), and the best model was chosen on that (found by a
    hand-check helper). It is the mean of each pair's loss now, for any batch size."""
    from monai_lkcfusion.losses import FusionLoss

    torch.manual_seed(0)
    net = LKCFUNet.from_preset("tiny").eval()
    data = _pairs(synthetic_pair, n=3)
    concat = Compose([ConcatItemsd(["mri", "other"], "image"), CopyItemsd("image", names="label")])
    loss = FusionLoss()
    with torch.no_grad():
        sources = torch.stack([torch.as_tensor(concat(dict(item))["image"]) for item in data]).float()
        expected = float(torch.stack([loss(net(s[None]).clamp(0, 1), s[None]) for s in sources]).mean())
    for batch_size in (1, 2, 4):
        evaluator = create_evaluator(net, DataLoader(Dataset(data, concat), batch_size=batch_size),
                                     loss_function=loss, handlers=[])
        evaluator.run()
        assert evaluator.state.metrics["val_loss"] == pytest.approx(expected, rel=1e-5), batch_size


def test_bundle_evaluation_scores_the_masked_output_as_fuse_writes_it():
    """evaluate.json scored the raw network output, while lkcfusion evaluate and fuse() zero the pixels where both
    sources are 0: the bundle's table described an image no user gets (EN/SSIM apart in the third decimal; hand-check
    helper). The evaluator masks when asked, evaluate.json asks."""
    from monai.bundle import ConfigParser

    from monai_lkcfusion.engines import bundle_config, clamp_prediction

    sources = torch.zeros(2, 2, 8, 8)
    sources[0, 0, 2:5, 2:5] = 0.7  # item 0: a square in the MRI only; item 1: all background
    output = {"pred": torch.full((2, 1, 8, 8), 1.3), "label": sources}
    plain = clamp_prediction()(output)["pred"]
    masked = clamp_prediction(mask_background=True)(output)["pred"]
    assert float(plain.min()) == 1.0 and float(masked[1].max()) == 0.0
    assert torch.equal(masked[0, 0] > 0, sources[0, 0] > 0) and float(masked.max()) == 1.0
    parser = ConfigParser()
    parser.read_config(str(bundle_config("evaluate.json")))
    assert parser["mask_background"] is True and parser["evaluator"]["mask_background"] == "@mask_background"
