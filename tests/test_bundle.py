"""The MONAI bundle: metadata fields, required workflow properties, network I/O, and the train/evaluate/inference
configs run end to end with tiny overrides on data the tests make (and on a few Harvard pairs when present)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow, verify_net_in_out
from PIL import Image

from monai_lkcfusion.data import demo_files
from monai_lkcfusion.engines import bundle_config, last_checkpoint, run_bundle_workflow
from monai_lkcfusion.inference import fuse_files
from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.networks import LKCFUNet, load_network

BUNDLE = bundle_config("train.json").parents[1]
TINY = {"preset": "tiny", "roi_size": 32, "batch_size": 2, "samples_per_image": 1, "val_interval": 1, "val_fraction": 0.34}

# mandatory keys of a bundle's metadata.json and of each tensor format specifier (MONAI bundle specification,
# docs/source/mb_specification.rst; the model-zoo meta schema requires the same and the model-zoo CI "name")
REQUIRED_META = (
    "version", "monai_version", "pytorch_version", "numpy_version", "task", "description", "authors",
    "copyright", "network_data_format", "name", "changelog",
)
REQUIRED_TENSOR = (
    "type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data", "channel_def",
)


def _write_harvard_like(root: Path, n: int = 3, size: tuple[int, int] = (72, 80)) -> Path:
    """A Harvard-layout folder of structured random pairs: gray MRI/CT and RGB PET."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    for split in ("train", "test"):
        for task, other in (("MRI-CT", "CT"), ("MRI-PET", "PET")):
            for i in range(n):
                mri = 120 + 80 * np.sin(xx / (3 + i)) * np.cos(yy / 5) + 10 * rng.standard_normal(size)
                blob = 255 * np.exp(-((yy - 20 - 5 * i) ** 2 + (xx - 40) ** 2) / 150.0)
                img = np.stack([blob, 0.5 * blob, 0.2 * blob], -1) if other == "PET" else blob
                for folder, array in (("MRI", mri), (other, img)):
                    path = root / split / task / folder / f"{i}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """train.json with tiny overrides for 2 epochs, then resumed to 3: returns (dataset_dir, output_dir)."""
    data = _write_harvard_like(tmp_path_factory.mktemp("harvard_like"))
    out = tmp_path_factory.mktemp("train")
    run_bundle_workflow("train.json", dataset_dir=str(data), output_dir=str(out), max_epochs=2, **TINY)
    assert last_checkpoint(out).name == "checkpoint_epoch=2.pt"
    workflow = run_bundle_workflow(
        "train.json", dataset_dir=str(data), output_dir=str(out), max_epochs=3, resume=True, **TINY
    )
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 3
    return data, out


def test_metadata_required_fields() -> None:
    meta = json.loads(bundle_config("metadata.json").read_text())
    assert not [k for k in REQUIRED_META if k not in meta]
    assert meta["version"] in meta["changelog"] and meta["monai_version"] == "1.6.1"
    fmt = meta["network_data_format"]
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    for spec in (image, pred):
        assert not [k for k in REQUIRED_TENSOR if k not in spec]
    assert image["num_channels"] == 2 and set(image["channel_def"]) == {"0", "1"} and "MRI" in image["channel_def"]["0"]
    assert pred["num_channels"] == 1
    assert (BUNDLE / "LICENSE").is_file() and (BUNDLE / "docs" / "README.md").is_file()


@pytest.mark.parametrize("config,workflow_type", [("train.json", "train"), ("inference.json", "infer")])
def test_required_properties(config: str, workflow_type: str, trained: tuple[Path, Path]) -> None:
    data, out = trained
    # train: the tiny Harvard-like data; inference: its default, the shipped demo data
    overrides = {"dataset_dir": str(data), "preset": "tiny", "val_fraction": TINY["val_fraction"]} \
        if workflow_type == "train" else {}  # 6 pairs: the default 0.1 would leave no validation pair (refused)
    workflow = ConfigWorkflow(
        config_file=str(bundle_config(config)), meta_file=str(bundle_config("metadata.json")),
        workflow_type=workflow_type, weights=str(out / "model.pt"), **overrides,
    )
    workflow.initialize()
    assert not workflow.check_properties()


def test_verify_net_in_out() -> None:
    verify_net_in_out(
        net_id="network_def", meta_file=str(bundle_config("metadata.json")),
        config_file=str(bundle_config("train.json")), preset="tiny",
    )


def test_train_checkpoints_resume_and_export(trained: tuple[Path, Path]) -> None:
    _, out = trained
    assert last_checkpoint(out).name == "checkpoint_epoch=3.pt"
    assert (out / "best_model.pt").is_file() and any((out / "tensorboard").iterdir())
    state = torch.load(out / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    net = load_network(out / "model.pt")
    assert isinstance(net, LKCFUNet) and net(torch.rand(1, 2, 40, 36)).shape == (1, 1, 40, 36)


def test_evaluate_json(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, out = trained
    run_bundle_workflow(
        "evaluate.json", workflow_type="infer", dataset_dir=str(data), weights=str(out / "model.pt"),
        output_dir=str(tmp_path), metrics=["EN", "Qabf", "SSIM"],
    )
    with open(tmp_path / "metrics.csv", newline="") as stream:
        pairs = list(csv.DictReader(stream))
    assert list(pairs[0]) == ["task", "pair", "EN", "Qabf", "SSIM"]
    assert [(r["task"], r["pair"]) for r in pairs] == [(t, f"{i}.png") for t in ("MRI-CT", "MRI-PET") for i in range(3)]
    for r in pairs:
        assert 0 < float(r["EN"]) <= 8 and 0 <= float(r["Qabf"]) <= 1 and 0 < float(r["SSIM"]) <= 2
    with open(tmp_path / "summary.csv", newline="") as stream:
        summary = list(csv.DictReader(stream))
    assert list(summary[0]) == ["task", "metric", "n", "mean", "std"]
    assert [(r["task"], r["metric"], r["n"]) for r in summary] == [
        (t, m, "3") for t in ("MRI-CT", "MRI-PET") for m in ("EN", "Qabf", "SSIM")
    ]
    en_ct = [float(r["EN"]) for r in pairs if r["task"] == "MRI-CT"]
    assert float(summary[0]["mean"]) == pytest.approx(np.mean(en_ct))
    assert float(summary[0]["std"]) == pytest.approx(np.std(en_ct))
    # a second run into the same folder replaced both tables without a word (hand-check helper): refused before
    # any pair is scored unless overwrite, as lkcfusion evaluate and inference.json do
    table = (tmp_path / "metrics.csv").read_bytes()
    again = {"workflow_type": "infer", "dataset_dir": str(data), "weights": str(out / "model.pt"),
             "output_dir": str(tmp_path), "metrics": ["EN"]}
    with pytest.raises(FusionInputError, match=r"metrics.csv: results of an earlier evaluation; pass --overwrite"):
        run_bundle_workflow("evaluate.json", **again)
    assert (tmp_path / "metrics.csv").read_bytes() == table
    run_bundle_workflow("evaluate.json", **{**again, "metrics": "EN"}, overwrite=True)  # `--metrics EN`: a string
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == "task,pair,EN"  # was "unknown ['E', 'N']"


def test_inference_json_on_demo_data(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """The default dataset_dir is the shipped demo data; the 2D demo pair is fused (the 3D one is left out)."""
    _, out = trained
    run_bundle_workflow(
        "inference.json", workflow_type="infer", weights=str(out / "model.pt"), output_dir=str(tmp_path),
        dataset="$@datalist[:1]",
    )
    fused = np.asarray(Image.open(tmp_path / "fused_mri_slice.png"))
    assert fused.ndim == 3 and fused.shape[-1] == 3 and fused.std() > 0  # colour PET: chroma restored
    files = demo_files()  # the bundle and fuse() run one pipeline: the same picture
    same = fuse_files(files["mri_2d"], files["pet_2d"], tmp_path / "api.png", weights=out / "model.pt")
    assert np.array_equal(np.asarray(Image.open(same)), fused)


def test_inference_json_gray_and_unmasked_as_fuse(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """``--color false`` and ``--mask_background false`` give what ``fuse(color=False, mask_background=False)`` does
    (the config had no setting for either: its transforms had to be deleted by hand)."""
    _, out = trained
    files = demo_files()
    for color, mask in ((False, True), ("false", "False"), (True, False)):  # bools, or strings from the shell
        folder = tmp_path / f"{color}-{mask}"
        run_bundle_workflow("inference.json", workflow_type="infer", weights=str(out / "model.pt"),
                            output_dir=str(folder), dataset="$@datalist[:1]", color=color, mask_background=mask)
        fused = np.asarray(Image.open(folder / "fused_mri_slice.png"))
        flags = {"color": color in (True,), "mask_background": mask in (True,)}
        same = fuse_files(files["mri_2d"], files["pet_2d"], folder / "api.png", weights=out / "model.pt", **flags)
        assert np.array_equal(np.asarray(Image.open(same)), fused)
        assert fused.ndim == (3 if flags["color"] else 2)
    with pytest.raises(FusionInputError, match="color 'no': give true or false"):
        run_bundle_workflow("inference.json", workflow_type="infer", weights=str(out / "model.pt"),
                            output_dir=str(tmp_path / "no"), dataset="$@datalist[:1]", color="no")


@pytest.mark.shared
def test_train_json_on_harvard(harvard_root: Path, tmp_path: Path) -> None:
    run_bundle_workflow(
        "train.json", dataset_dir=str(harvard_root), output_dir=str(tmp_path), max_epochs=1,
        datalist="$monai_lkcfusion.data.harvard_datalist(@dataset_dir, 'train', @tasks)[::80]", **TINY,
    )
    assert (tmp_path / "model.pt").is_file() and last_checkpoint(tmp_path).name == "checkpoint_epoch=1.pt"
