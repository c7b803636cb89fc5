"""``lkcfusion train``: a tiny run through the bundle's train.json with a preset file, then --resume."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from monai_lkcfusion.cli import main
from monai_lkcfusion.engines import last_checkpoint
from monai_lkcfusion.errors import FusionInputError, user_error
from monai_lkcfusion.networks import load_network


def _write_pairs(root: Path, task: str, other: str, shape: tuple[int, int], seed: int, count: int = 4) -> None:
    """``count`` random 8-bit pairs in the Harvard layout ``root/train/<task>/{MRI,<other>}/<i>.png``."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        for folder in ("MRI", other):
            path = root / "train" / task / folder / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)


def test_train_cli_and_resume(tmp_path: Path, capsys) -> None:
    _write_pairs(tmp_path / "data", "MRI-CT", "CT", (48, 40), seed=2)
    preset = tmp_path / "tiny.json"
    preset.write_text(json.dumps({"preset": "tiny", "roi_size": 32, "batch_size": 2, "samples_per_image": 1,
                                  "val_interval": 2, "val_fraction": 0.25}))
    out = tmp_path / "run"
    args = ["train", "--config", str(preset), "--dataset-dir", str(tmp_path / "data"), "--tasks", "MRI-CT",
            "-o", str(out)]
    assert main([*args, "--epochs", "1"]) == 0  # fewer epochs than val_interval: validated at the end, exported
    # the log named neither the output folder nor its files (a hand-check helper)
    assert (f"wrote {out / 'model.pt'} (the best epoch by val_loss; checkpoints, run.json and TensorBoard logs in "
            f"{out})") in capsys.readouterr().out
    assert last_checkpoint(out).name == "checkpoint_epoch=1.pt" and (out / "model.pt").is_file()
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    assert last_checkpoint(out).name == "checkpoint_epoch=2.pt"
    net = load_network(out / "model.pt")
    assert net(torch.rand(1, 2, 24, 24)).shape == (1, 1, 24, 24)
    # user mistakes found by hand: one line each, exit 2, nothing trained (they ended in tracebacks, or trained every
    # epoch and then failed for want of a validation pair)
    mistakes = {("--epochs", "1", "--resume"): "the run is at epoch 2 already; to resume it give max_epochs 2 or more "
                                                "(lkcfusion train --epochs)",
                ("--tasks", "MRI-PET", "-o", str(tmp_path / "r2")): "no such folder; the task MRI-PET was asked for",
                ("--tasks", "MRI-CT", "MRI-PET", "-o", str(tmp_path / "r6")): "the task MRI-PET was asked for",
                ("--config", str(tmp_path / "few.json"), "-o", str(tmp_path / "r3")): "leave no validation",
                ("--device", "cuda", "-o", str(tmp_path / "r4")): "device cuda: CUDA is not available"}
    (tmp_path / "few.json").write_text(json.dumps({"val_fraction": 0.05}))
    run_files = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    for extra, needle in mistakes.items():
        if extra[:2] == ("--device", "cuda") and torch.cuda.is_available():
            continue
        capsys.readouterr()
        assert main([*args, *extra]) == 2, extra
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("lkcfusion: error:")]
        assert len(errors) == 1 and needle in errors[0] and "Traceback" not in err, err
    # the refused resume wrote nothing: it came after the run's TensorBoard files and rewrote run.json
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == run_files
    assert not any((tmp_path / name / "checkpoint_epoch=1.pt").exists() for name in ("r2", "r3", "r4"))
    damaged = tmp_path / "r5"  # its only checkpoint cut short: --resume must not start over and overwrite it
    damaged.mkdir()
    (damaged / "checkpoint_epoch=2.pt").write_bytes((out / "checkpoint_epoch=2.pt").read_bytes()[:1000])
    capsys.readouterr()
    assert main([*args[:-1], str(damaged), "--epochs", "3", "--resume"]) == 2
    assert "no complete checkpoint to resume from" in capsys.readouterr().err
    assert (damaged / "checkpoint_epoch=2.pt").stat().st_size == 1000 and not (damaged / "model.pt").exists()


def test_train_cli_missing_config(tmp_path: Path) -> None:
    assert main(["train", "--config", str(tmp_path / "missing.json")]) == 2


def test_train_cli_refuses_no_epochs(tmp_path: Path, capsys) -> None:
    """``--epochs 0`` (or below) is refused in one line before anything runs (it ended in a traceback)."""
    for epochs in ("0", "-3"):
        assert main(["train", "--epochs", epochs, "--dataset-dir", str(tmp_path), "-o", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert f"--epochs {epochs}: give a whole number of epochs of at least 1" in err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("nproc", ["0", "-2"])
def test_train_cli_refuses_no_processes_before_reading_the_config(tmp_path: Path, capsys, nproc: str) -> None:
    """``--nproc 0`` is the count that is wrong, whatever the config holds: it is named first, in one line, and nothing
    is read or written (the message was about the config when that was wrong too)."""
    code = main(["train", "--nproc", nproc, "--config", str(tmp_path / "missing.json"), "--dataset-dir", str(tmp_path),
                 "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"lkcfusion: error: --nproc {nproc}: give a whole number of processes of at least 1"]
    assert not (tmp_path / "run").exists()


def test_gpu_recipe_needs_no_earlier_weights() -> None:
    """The GPU recipe (benchmarks/train_gpu.py) layers over the shipped model's configs and builds its network from a
    random start that fuses as pixel max, with AMP and direct convolutions on CUDA; nothing under runs/ is read."""
    from monai.bundle import ConfigParser

    from monai_lkcfusion.engines import bundle_config

    configs = Path(__file__).resolve().parents[1] / "configs"
    names = ["default_model_disjoint", "default_model_residual", "default_model_residual_continue", "default_model_gpu"]
    parser = ConfigParser()
    parser.read_config([bundle_config("train.json"), *(configs / f"{name}.json" for name in names)])
    assert parser.get_parsed_content("init_weights") is None and parser["time_limit"] == 540
    assert parser.get_parsed_content("spectral_convolutions") is False  # the config's device is CUDA
    assert parser["cudnn_benchmark"] is True  # set_determinism turned cuDNN's algorithm search off
    net = parser.get_parsed_content("network_def").eval()
    assert net.config["output_mode"] == "max_residual" and net.config["dropout"] == 0.2
    pair = torch.rand(2, 2, 64, 48)
    with torch.no_grad():
        assert torch.equal(net(pair), pair.amax(dim=1, keepdim=True))


def test_whole_slices_of_two_sizes_are_one_line(tmp_path: Path, capfd) -> None:
    """Whole-slice training (no crop) on pairs of two sizes: a one-line error naming the sizes, exit 2, and no
    traceback, also none logged by MONAI's StatsHandler (it was a collate RuntimeError traceback, exit 1)."""
    rng = np.random.default_rng(3)
    for i, size in enumerate([(40, 48), (40, 48), (32, 32), (32, 32), (40, 48), (32, 32)]):
        for folder in ("MRI", "CT"):
            path = tmp_path / "data" / "train" / "MRI-CT" / folder / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(path)
    whole_slices = [
        "@load_transforms",
        {"_target_": "ConcatItemsd", "keys": ["mri", "other"], "name": "image", "dim": 0},
        {"_target_": "SelectItemsd", "keys": ["image"]},
        {"_target_": "EnsureTyped", "keys": "image", "track_meta": False},
        {"_target_": "CopyItemsd", "keys": "image", "names": "label"},
    ]
    config = tmp_path / "whole.json"
    config.write_text(json.dumps({"preset": "tiny", "roi_size": 32, "batch_size": 6, "val_fraction": 0.34,
                                  "val_interval": 1,
                                  "train#preprocessing#transforms": whole_slices,
                                  "train_batch_shape": "$(@batch_size, 2, 40, 48)"}))
    code = main(["train", "--config", str(config), "--dataset-dir", str(tmp_path / "data"), "-o", str(tmp_path / "run"),
                 "--epochs", "1", "--device", "cpu"])
    err = capfd.readouterr().err
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        "lkcfusion: error: a batch holds samples of sizes 32x32, 40x48: whole-slice training and validation need pairs "
        "of one size (and square slices with RandRotate90d); crop them (roi_size with RandSpatialCropSamplesd), resize "
        "the pairs, or batch one at a time (training: batch_size 1; validation: validate#dataloader#batch_size 1)")


def test_a_pair_of_two_sizes_is_named_before_training(tmp_path: Path, capfd) -> None:
    """An MRI of 48 x 48 beside a CT of 40 x 40 failed inside MONAI's dataset with a long traceback naming neither
    file (found by a hand-check helper): one line naming both, exit 2."""
    rng = np.random.default_rng(4)
    for i in range(6):
        for folder in ("MRI", "CT"):
            path = tmp_path / "data" / "train" / "MRI-CT" / folder / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            size = (40, 40) if (i, folder) == (3, "CT") else (48, 48)
            Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(path)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"preset": "tiny", "roi_size": 32, "batch_size": 2, "val_fraction": 0.34}))
    code = main(["train", "--config", str(config), "--dataset-dir", str(tmp_path / "data"), "-o", str(tmp_path / "run"),
                 "--epochs", "1", "--device", "cpu"])
    err = capfd.readouterr().err
    assert code == 2 and "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("lkcfusion: error: ") and "CT/3.png: size (40, 40) differs from the MRI's (48, 48)" in last
    assert "MRI/3.png" in last, last


def test_edge_recipe_layers_the_edge_term_on_the_stage_7_loss() -> None:
    """configs/default_model_edge.json (stage 8, docs/RESULTS.md) over the stage-7 stack: the same loss with the
    edge-preservation term at weight 4, every epoch's checkpoint kept; its starting weights come from runs/."""
    from monai.bundle import ConfigParser

    from monai_lkcfusion.engines import bundle_config

    configs = Path(__file__).resolve().parents[1] / "configs"
    names = ["default_model_disjoint", "default_model_residual", "default_model_residual_continue", "default_model_edge"]
    parser = ConfigParser()
    parser.read_config([bundle_config("train.json"), *(configs / f"{name}.json" for name in names)])
    loss = parser.get_parsed_content("loss")
    assert (loss.intensity_weight, loss.ssim_weight, loss.gradient_weight, loss.edge_weight) == (2.0, 1.0, 2.0, 4.0)
    assert loss.intensity_sigma == 2.0 and loss.ssim_form == "max_variance"
    assert parser["keep_checkpoint_interval"] == 1 and parser["max_epochs"] == 3
    assert parser["init_weights"] == "runs/bundle_0.3.1_model.pt"


def test_an_option_that_an_override_file_makes_unread_is_refused(tmp_path: Path, capsys) -> None:
    """``--preset small`` with a config whose ``network_def`` is its own (e.g. loads ``init_weights``) trained that
    network; ``--tasks MRI-PET`` with ``configs/default_model_disjoint.json`` (its own ``split``) trained every task;
    both exit 0 (found by a hand-check helper). One line now, before anything is read."""
    own = tmp_path / "own_network.json"
    own.write_text(json.dumps({"network_def": "$monai_lkcfusion.networks.LKCFUNet.from_preset('tiny')"}))
    repo = Path(__file__).resolve().parents[1]
    cases = ((["--config", str(own), "--preset", "small"], "--preset: nothing reads it once", "own_network.json"),
             (["--config", str(repo / "configs" / "default_model_disjoint.json"), "--tasks", "MRI-PET"],
              "--tasks: nothing reads it once", "default_model_disjoint.json"))
    for options, said, culprit in cases:
        code = main(["train", *options, "--dataset-dir", str(tmp_path / "nowhere"), "-o", str(tmp_path / "run")])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("lkcfusion: error:")]
        assert code == 2 and len(lines) == 1 and said in lines[0] and culprit in lines[0], err
        assert not (tmp_path / "run").exists()
    from monai.bundle import ConfigParser

    from monai_lkcfusion.engines import bundle_config
    from monai_lkcfusion.engines.workflow import check_overrides_are_read

    base = ConfigParser.load_config_file(str(bundle_config("train.json")))
    own_split = {"split": "$monai_lkcfusion.data.split_by_fraction(my_items, 0.2)"}  # the datalist (@tasks) is then
    with pytest.raises(FusionInputError, match="--tasks: nothing reads it once own_split.json"):  # read by nothing
        check_overrides_are_read([base, own_split], ["train.json", "own_split.json"], {"tasks": ["MRI-PET"]})
    own_datalist = {"datalist": "$monai_lkcfusion.data.load_fusion_datalist('d.json', 'training')"}
    check_overrides_are_read([base, own_datalist], ["train.json", "d.json"], {"dataset_dir": "x"})  # MONAI needs it
    check_overrides_are_read([base, own_datalist], ["train.json", "d.json"], {"preset": "tiny", "max_epochs": 2})


def test_validation_pairs_of_several_sizes_are_validated(tmp_path: Path, capfd) -> None:
    """Validation takes whole slices: pairs of two sizes among the validation pairs stopped the run at its first
    validation, after a whole epoch of training (batches of 4; hand-check helper). Validation goes pair by pair
    (its loss and metrics are per pair, so the batch size changes no number)."""
    rng = np.random.default_rng(4)
    for i, size in enumerate([(40, 48), (36, 36), (48, 40), (40, 48), (36, 36), (44, 52), (40, 40), (48, 48)]):
        for folder in ("MRI", "CT"):
            path = tmp_path / "data" / "train" / "MRI-CT" / folder / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(path)
    config = tmp_path / "crops.json"
    config.write_text(json.dumps({"preset": "tiny", "roi_size": 32, "batch_size": 2, "samples_per_image": 1,
                                  "val_fraction": 0.5, "val_interval": 1}))
    code = main(["train", "--config", str(config), "--dataset-dir", str(tmp_path / "data"), "-o", str(tmp_path / "run"),
                 "--epochs", "1", "--device", "cpu"])
    assert code == 0, capfd.readouterr().err[-2000:]
    assert (tmp_path / "run" / "model.pt").is_file()


def _own_volumes(tmp_path: Path) -> tuple[list[dict], dict, Path, Path]:
    """Four made-up subjects (MRI 40x40x12 at 1x1x2 mm, one stored in LPS order; PET on a coarser, shifted grid), a
    picture pair, their datalist (3 volumes and the pictures to train on, 1 volume to validate) and a config
    naming it; returns (volume items, picture item, datalist, config)."""
    from monai_lkcfusion.data import write_fusion_datalist

    rng = np.random.default_rng(4)
    x, y, z = np.meshgrid(np.arange(40), np.arange(40), np.arange(12), indexing="ij")
    items = []
    for i in range(4):
        mri = 400 * np.exp(-((x - 20 - i) ** 2 + (y - 18) ** 2) / 150.0) * (z > 1) + 5 * rng.random(x.shape)
        pet = 10 * np.exp(-((x[::2, ::2, ::2] - 22) ** 2 + (y[::2, ::2, ::2] - 20) ** 2) / 40.0)
        mri_affine = np.diag([1.0, 1.0, 2.0, 1.0])
        pet_affine = np.diag([2.0, 2.0, 4.0, 1.0])
        pet_affine[:3, 3] = [0.5, -0.5, 0.0]
        if i == 1:  # stored in LPS voxel order
            mri, mri_affine = mri[::-1, ::-1], mri_affine @ np.array([[-1, 0, 0, 39], [0, -1, 0, 39], [0, 0, 1, 0],
                                                                    [0, 0, 0, 1.0]])
        for name, data, affine in (("mri", mri, mri_affine), ("pet", pet, pet_affine)):
            nib.save(nib.Nifti1Image(np.ascontiguousarray(data, dtype=np.float32), affine),
                     str(tmp_path / f"s{i}_{name}.nii.gz"))
        items.append({"mri": str(tmp_path / f"s{i}_mri.nii.gz"), "other": str(tmp_path / f"s{i}_pet.nii.gz")})
    for name in ("mri", "pet"):  # one pair of pictures among the volumes
        Image.fromarray(rng.integers(0, 256, (40, 36), dtype=np.uint8)).save(tmp_path / f"p_{name}.png")
    picture = {"mri": str(tmp_path / "p_mri.png"), "other": str(tmp_path / "p_pet.png")}
    listing = write_fusion_datalist(tmp_path / "list.json",
                                    {"training": [*items[:3], picture], "validation": items[3:]})
    own = tmp_path / "own.json"
    own.write_text(json.dumps({
        "datalist": f"$monai_lkcfusion.data.load_fusion_datalist('{listing}', 'training')",
        "split": f"$[@datalist, monai_lkcfusion.data.load_fusion_datalist('{listing}', 'validation')]",
        "preset": "tiny", "roi_size": 32, "batch_size": 2, "samples_per_image": 1}))
    return items, picture, listing, own


def test_own_volumes_config_trains_on_volume_pairs_with_fixed_validation_slices(tmp_path: Path) -> None:
    """Training on one's own volumes had no config: a hand-made chain validated a random slice per validation
    (val_loss, which picks the best model, moved by up to 0.2 between two validations of the same weights), a
    picture among the volumes crashed in RandSliced, and a roi larger than the slices was ignored (volumes helper).
    configs/own_volumes.json: volumes of any grid, a picture pair too, the middle slice for validation."""
    from monai.bundle import ConfigParser

    from monai_lkcfusion.data import load_fusion_datalist
    from monai_lkcfusion.engines import bundle_config

    own_volumes = Path(__file__).resolve().parents[1] / "configs" / "own_volumes.json"
    items, picture, listing, own = _own_volumes(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--config", str(own), "--config", str(own_volumes), "--dataset-dir", str(tmp_path),
                 "-o", str(out), "--epochs", "1"]) == 0
    assert (out / "model.pt").is_file()
    parser = ConfigParser(ConfigParser.load_config_files([bundle_config("train.json"), str(own), str(own_volumes)]))
    parser["dataset_dir"] = str(tmp_path)
    validate, train = (parser.get_parsed_content(f"{step}#preprocessing", lazy=False) for step in ("validate", "train"))
    item = load_fusion_datalist(listing, "validation")[0]
    first, second = validate(dict(item))["image"], validate(dict(item))["image"]
    assert first.shape == (2, 40, 40) and torch.equal(first, second)  # the same (middle) slice every time
    assert validate(dict(picture))["image"].shape == (2, 40, 36)  # a picture is its own slice
    assert train(dict(items[0]))[0]["image"].shape == (2, 32, 32)
    parser["roi_size"] = 48  # larger than the slices: refused with the file's name (it trained on whole slices)
    with pytest.raises(RuntimeError) as wrapped:  # MONAI's "applying transform ..." around the one line
        parser.get_parsed_content("train#preprocessing", lazy=False)(dict(items[0]))
    assert "s0_mri.nii.gz" in str(user_error(wrapped.value)) and "48" in str(user_error(wrapped.value))


def test_volumes_left_whole_for_validation_are_refused_before_training(tmp_path: Path, capsys) -> None:
    """A hand-made volume chain without slicing in validate#preprocessing trained a whole epoch, then ended in a
    135-line traceback at the first validation (volumes helper): refused in one line before training."""
    items, _, _, own = _own_volumes(tmp_path)
    whole = tmp_path / "whole.json"
    chain = json.loads((Path(__file__).resolve().parents[1] / "configs" / "own_volumes.json").read_text())
    validation = chain["validate#preprocessing#transforms#0"]
    validation["transforms"] = [t for t in validation["transforms"] if "RandSliced" not in t["_target_"]
                                and "CheckMinSized" not in t["_target_"]]
    whole.write_text(json.dumps(chain))
    out = tmp_path / "run"
    assert main(["train", "--config", str(own), "--config", str(whole), "--dataset-dir", str(tmp_path), "-o", str(out),
                 "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lkcfusion: error: ") and "s3_mri.nii.gz: a validation item of shape (2, 40, 40, 12)" \
        in err[-1], err
    assert not list(out.glob("checkpoint_epoch=*.pt"))


def test_starting_from_weights_by_replacing_network_records_the_network_trained(tmp_path: Path, capsys) -> None:
    """Fine-tuning as docs/training.md once said, ``"network": "$...load_network(@init_weights).to(@device)"``: the
    record (run.json) held the preset's network (``output_mode`` ``direct`` for max-residual weights), ``--preset
    tiny`` trained the weights' own network without a word, and the run could not be resumed (``its network does
    not fit this run's``); found by a hand-check helper fine-tuning the shipped weights. The record is now the
    network trained, and ``--preset`` is refused as unread."""
    from monai_lkcfusion.networks import LKCFUNet, as_max_residual

    _write_pairs(tmp_path / "data", "MRI-PET", "PET", (40, 40), seed=5)
    weights = tmp_path / "start.pt"
    torch.save(as_max_residual(LKCFUNet.from_preset("tiny")).state_dict(), weights)
    config = tmp_path / "start.json"
    config.write_text(json.dumps({"init_weights": str(weights), "roi_size": 32, "batch_size": 2, "val_fraction": 0.25,
                                  "network": "$monai_lkcfusion.networks.load_network(@init_weights).to(@device)"}))
    args = ["train", "--config", str(config), "--dataset-dir", str(tmp_path / "data"), "--epochs", "1",
            "--device", "cpu"]
    assert main([*args, "--preset", "small", "-o", str(tmp_path / "refused")]) == 2
    assert "--preset: nothing reads it once" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "run"
    assert main([*args, "-o", str(out)]) == 0
    recorded = json.loads((out / "run.json").read_text())["network"]
    assert recorded == json.loads(json.dumps({**load_network(weights).config, "dropout": recorded["dropout"]}))
    assert recorded["output_mode"] == "max_residual" and recorded["features"] == 4
    assert main([*args[:5], "--epochs", "2", "--resume", "--device", "cpu", "-o", str(out)]) == 0
    assert last_checkpoint(out).name == "checkpoint_epoch=2.pt"
