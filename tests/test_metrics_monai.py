"""FusionMetric (MONAI CumulativeIterationMetric), FusionMetricHandler in an Ignite engine, and `lkcfusion metrics`."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.handlers import from_engine
from PIL import Image

from monai_lkcfusion.cli import main
from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.metrics import FusionMetric, FusionMetricHandler, compute_fusion_metrics
from monai_lkcfusion.metrics.folders import read_gray, score_folders

NAMES = ("EN", "MI", "SSIM", "Qabf", "VIF", "PSNR")


def _batch(seed: int, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """A (2, 1, H, W) fused batch and its (2, 2, H, W) sources, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    sources = torch.rand(2, 2, size, size, generator=g)
    sources = torch.nn.functional.avg_pool2d(sources, 3, stride=1, padding=1)
    return sources.amax(dim=1, keepdim=True), sources


def test_fusion_metric_accumulates_and_matches_functional():
    metric = FusionMetric(metric_names=NAMES, input_scale=255.0, ssim_data_range=2)
    batches = [_batch(0), _batch(1)]
    for fused, sources in batches:
        metric(y_pred=fused, y=sources)
    means = metric.aggregate()
    assert list(means) == list(NAMES)
    fused = torch.cat([b[0] for b in batches]) * 255
    sources = torch.cat([b[1] for b in batches]) * 255
    f, s = fused.clamp(0, 255).round(), sources.clamp(0, 255).round()
    expected = compute_fusion_metrics(f, s[:, :1], s[:, 1:], names=NAMES, ssim_data_range=2)
    for name in NAMES:
        assert means[name] == pytest.approx(float(expected[name].mean()), rel=1e-9)
    metric.reset()
    with pytest.raises(FusionInputError, match="no images"):
        metric.aggregate()


def test_fusion_metric_without_rounding_scores_raw_values():
    fused, sources = _batch(2)
    metric = FusionMetric(metric_names=["SD"], input_scale=255.0, round_to_uint8=False)
    metric(y_pred=fused, y=sources)
    expected = (fused * 255).double().flatten(1).std(1, correction=0).mean()
    assert metric.aggregate()["SD"] == pytest.approx(float(expected))


def test_fusion_metric_refuses_unit_range_without_input_scale():
    """With the default input_scale=1, network outputs in [0, 1] would be rounded to 0/1 and scored as nonsense."""
    torch.manual_seed(0)
    mri, other = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    with pytest.raises(FusionInputError, match="pass input_scale=255"):
        FusionMetric(metric_names=["EN"])(y_pred=torch.maximum(mri, other), y=torch.cat([mri, other], 1))
    metric = FusionMetric(metric_names=["EN"], input_scale=255.0)
    metric(y_pred=torch.maximum(mri, other), y=torch.cat([mri, other], 1))
    assert metric.aggregate()["EN"] > 6.0  # random 8-bit values: near 8 bits


def test_fusion_metric_checks_shapes_and_names():
    fused, sources = _batch(3)
    with pytest.raises(FusionInputError, match="y \\(B, 2, H, W\\)"):
        FusionMetric()(y_pred=fused, y=sources[:, :1])
    with pytest.raises(FusionInputError, match="unknown"):
        FusionMetric(metric_names=["SSIM", "nope"])


def test_handler_in_ignite_engine():
    batches = [_batch(4), _batch(5)]

    def step(engine, batch):
        fused, sources = batch
        return {"pred": fused, "mri": sources[:, :1], "other": sources[:, 1:]}

    engine = Engine(step)
    handler = FusionMetricHandler(metric_name="Qabf", metric_names=["SSIM", "MI"], input_scale=255.0, prefix="val_")
    handler.attach(engine, "fusion_qabf")
    engine.run(batches, max_epochs=1)

    metric = FusionMetric(metric_names=["SSIM", "MI", "Qabf"], input_scale=255.0)
    for fused, sources in batches:
        metric(y_pred=fused, y=sources)
    expected = metric.aggregate()
    assert engine.state.metrics["fusion_qabf"] == pytest.approx(expected["Qabf"])
    for name in ("SSIM", "MI", "Qabf"):
        assert engine.state.metrics[f"val_{name}"] == pytest.approx(expected[name])
    assert engine.state.metric_details["fusion_qabf"].shape == (4, 3)
    # a SupervisedEvaluator's output (image, label, pred): a bare KeyError('mri') before (hand-check helper); the
    # message names the keys and the output_transform to give, which then scores the same
    supervised = Engine(lambda engine, batch: {"image": batch[1], "label": batch[1], "pred": batch[0]})
    FusionMetricHandler(metric_name="Qabf", input_scale=255.0).attach(supervised, "q")
    with pytest.raises(FusionInputError, match=r"has no 'mri', 'other' \(it has 'image', 'label', 'pred'\); give "
                                               r"the handler an output_transform, e.g. .*from_engine"):
        supervised.run(batches, max_epochs=1)
    supervised = Engine(lambda engine, batch: {"image": batch[1], "label": batch[1], "pred": batch[0]})
    FusionMetricHandler(metric_name="Qabf", input_scale=255.0,
                        output_transform=from_engine(["pred", "label"])).attach(supervised, "q")
    supervised.run(batches, max_epochs=1)
    assert supervised.state.metrics["q"] == pytest.approx(expected["Qabf"])


def _write_pairs(root, names, size=48):
    dirs = {k: root / k for k in ("fused", "mri", "other")}
    for d in dirs.values():
        d.mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        mri = rng.integers(0, 256, (size, size), dtype=np.uint8)
        other = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)  # colour: read as BT.601 luma
        Image.fromarray(mri).save(dirs["mri"] / name)
        Image.fromarray(other).save(dirs["other"] / name)
        Image.fromarray(np.maximum(mri, other[..., 0])).save(dirs["fused"] / name)
    return dirs


def test_cli_metrics_writes_table_csv_json(tmp_path, capsys):
    dirs = _write_pairs(tmp_path, ["a.png", "b.png"])
    csv_path, json_path, summary_path = tmp_path / "m.csv", tmp_path / "m.json", tmp_path / "s.csv"
    argv = ["metrics", "--fused", str(dirs["fused"]), "--mri", str(dirs["mri"]), "--other", str(dirs["other"]),
            "--ssim-data-range", "2", "--csv", str(csv_path), "--json", str(json_path), "--summary-csv",
            str(summary_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "a.png" in out and "b.png" in out
    assert [line.split()[0] for line in out.strip().splitlines()[-3:]] == ["n", "std", "mean"]
    assert "SSIM data range 2 (--ssim-data-range" in out  # evaluate's default is another: the table says which
    triple = [read_gray(dirs[k] / "b.png") for k in ("fused", "mri", "other")]
    expected = compute_fusion_metrics(*triple, ssim_data_range=2)
    document = json.loads(json_path.read_text())
    assert document["pairs"]["b.png"] == pytest.approx(expected)
    assert document["options"]["ssim_data_range"] == 2
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["pair"] for r in rows] == ["a.png", "b.png"]
    assert float(rows[1]["SSIM"]) == pytest.approx(expected["SSIM"])
    mean_en = (document["pairs"]["a.png"]["EN"] + expected["EN"]) / 2
    assert document["mean"]["EN"] == pytest.approx(mean_en) and document["n"]["EN"] == 2
    summary = {r["metric"]: r for r in csv.DictReader(summary_path.open())}
    assert list(summary) == list(expected) and float(summary["EN"]["mean"]) == pytest.approx(mean_en)
    assert int(summary["EN"]["n"]) == 2
    assert float(summary["EN"]["std"]) == pytest.approx(abs(document["pairs"]["a.png"]["EN"] - expected["EN"]) / 2)


def test_cli_metrics_reports_missing_counterparts(tmp_path, capsys):
    dirs = _write_pairs(tmp_path, ["a.png", "b.png"])
    (dirs["other"] / "b.png").unlink()
    argv = ["metrics", "--fused", str(dirs["fused"]), "--mri", str(dirs["mri"]), "--other", str(dirs["other"])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "b.png (no other image)" in err and "Traceback" not in err
    (dirs["mri"] / "b.png").unlink()  # neither source: both named (it said "no MRI image" only)
    (dirs["mri"] / "a.png").unlink()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "a.png (no MRI image)" in err and "b.png (no MRI and no other image)" in err


def test_cli_metrics_warns_of_pairs_without_a_fused_image(tmp_path, capsys):
    """Pairs not fused are not scored, and the mean is then over fewer pairs than the folders hold: one warning line
    names them (they were skipped silently); an MRI without its other image is no pair and is not named."""
    names = [f"p{i}.png" for i in range(8)]
    dirs = _write_pairs(tmp_path, names)
    for name in names[1:]:
        (dirs["fused"] / name).unlink()
    (dirs["other"] / names[-1]).unlink()
    argv = ["metrics", "--fused", str(dirs["fused"]), "--mri", str(dirs["mri"]), "--other", str(dirs["other"])]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        "lkcfusion: warning: 6 MRI/other pair(s) have no fused image and are not scored: p1, p2, p3, p4, p5 and 1 more"]
    assert out.strip().splitlines()[-3].split()[:2] == ["n", "1"]
    with pytest.warns(UserWarning, match="6 MRI/other pair"):
        assert list(score_folders(dirs["fused"], dirs["mri"], dirs["other"])) == ["p0.png"]
    for name in names[1:-1]:
        (dirs["fused"] / name).write_bytes((dirs["fused"] / names[0]).read_bytes())
    assert main(argv) == 0 and capsys.readouterr().err == ""
    import unicodedata  # a pair whose two names differ only in Unicode form (copied from macOS) is a pair too

    composed, decomposed = (unicodedata.normalize(form, "pätient.png") for form in ("NFC", "NFD"))
    (dirs["mri"] / composed).write_bytes((dirs["mri"] / names[0]).read_bytes())
    (dirs["other"] / decomposed).write_bytes((dirs["other"] / names[0]).read_bytes())
    assert main(argv) == 0 and "1 MRI/other pair(s) have no fused image" in capsys.readouterr().err


def test_cli_metrics_scores_three_files(tmp_path, capsys):
    """Three files score that one triple whatever their names; files mixed with folders, or a missing path, refuse."""
    dirs = _write_pairs(tmp_path, ["a.png", "b.png"])
    (dirs["other"] / "b.png").rename(dirs["other"] / "pet_b.png")
    json_path = tmp_path / "one.json"
    files = [str(dirs["fused"] / "b.png"), str(dirs["mri"] / "b.png"), str(dirs["other"] / "pet_b.png")]
    argv = ["metrics", "--fused", files[0], "--mri", files[1], "--other", files[2], "--json", str(json_path)]
    assert main(argv) == 0
    triple = [read_gray(path) for path in files]
    assert json.loads(json_path.read_text())["pairs"] == {"b.png": pytest.approx(compute_fusion_metrics(*triple))}
    capsys.readouterr()
    assert main(["metrics", "--fused", files[0], "--mri", str(dirs["mri"]), "--other", files[2]]) == 2
    assert "not a mix (fused file, mri folder, other file)" in capsys.readouterr().err
    assert main(["metrics", "--fused", str(tmp_path / "nope.png"), "--mri", files[1], "--other", files[2]]) == 2
    err = capsys.readouterr().err
    assert "nope.png: no such file or folder" in err and len(err.strip().splitlines()) == 1


def test_cli_metrics_refuses_volumes_and_16_bit_pictures(tmp_path, capsys):
    """Only 8-bit 2D pictures are scored (as the literature's evaluators read them); anything else is named."""
    import nibabel as nib

    dirs = _write_pairs(tmp_path, ["a.png"])
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4), np.float32), np.eye(4)), str(tmp_path / "v.nii.gz"))
    Image.fromarray(np.full((48, 48), 40000, np.uint16)).save(tmp_path / "deep.png")
    for fused, problem in ((tmp_path / "v.nii.gz", "the metrics score 2D 8-bit pictures"),
                           (tmp_path / "deep.png", "not an 8-bit picture")):
        argv = ["metrics", "--fused", str(fused), "--mri", str(dirs["mri"] / "a.png"), "--other",
                str(dirs["other"] / "a.png")]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{fused}: {problem}" in err and len(err.strip().splitlines()) == 1



def test_cli_metrics_names_fused_nifti_files(tmp_path, capsys):
    """A 2D NIfTI result is not an 8-bit picture: named as such (it was called a 3D volume), and in a folder it is
    not passed over as a pair "without a fused image"."""
    import nibabel as nib

    dirs = _write_pairs(tmp_path, ["a.png", "b.png"])
    flat = nib.Nifti1Image(np.full((48, 48), 0.5, np.float32), np.eye(4))
    nib.save(flat, str(tmp_path / "flat.nii.gz"))
    (dirs["fused"] / "b.png").unlink()
    nib.save(flat, str(dirs["fused"] / "b.nii.gz"))
    for fused in (tmp_path / "flat.nii.gz", dirs["fused"]):
        mri, other = (dirs[k] / "a.png" if fused.is_file() else dirs[k] for k in ("mri", "other"))
        assert main(["metrics", "--fused", str(fused), "--mri", str(mri), "--other", str(other)]) == 2
        err = capsys.readouterr().err
        name = fused if fused.is_file() else dirs["fused"] / "b.nii.gz"
        assert f"{name}: the metrics score 2D 8-bit pictures" in err and len(err.strip().splitlines()) == 1, err

def test_metatensor_inputs_score_like_plain_tensors():
    """Images that arrive as MetaTensors (MONAI pipelines, bundle evaluation) score exactly like plain tensors."""
    from monai.data import MetaTensor

    gen = torch.Generator().manual_seed(0)
    mri, other = (torch.randint(0, 256, (2, 1, 48, 44), generator=gen).float() for _ in range(2))
    fused = torch.maximum(mri, other)
    plain = compute_fusion_metrics(fused, mri, other)
    meta = compute_fusion_metrics(*(MetaTensor(t) for t in (fused, mri, other)))
    assert plain.keys() == meta.keys()
    for name, value in plain.items():
        assert torch.equal(torch.as_tensor(meta[name]).as_subclass(torch.Tensor), torch.as_tensor(value)), name
