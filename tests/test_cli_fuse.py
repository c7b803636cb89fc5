"""``lkcfusion fuse`` and ``lkcfusion demo``: outputs, exit codes, one-line errors, overwrite and batch rules."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from monai_lkcfusion.cli import main


def _pair(folder, name, size=(40, 36), colour=False):
    rng = np.random.default_rng(len(name))
    (folder / "mri").mkdir(parents=True, exist_ok=True)
    (folder / "pet").mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random(size) * 255).astype(np.uint8)).save(folder / "mri" / name)
    other = rng.random((*size, 3) if colour else size) * 255
    Image.fromarray(other.astype(np.uint8)).save(folder / "pet" / name)


def test_single_pair_and_overwrite_rule(tmp_path, capsys):
    _pair(tmp_path, "a.png", colour=True)
    out = tmp_path / "out" / "fused.png"
    args = [str(tmp_path / "mri" / "a.png"), str(tmp_path / "pet" / "a.png"), "-o", str(out), "--method", "max"]
    assert main(["fuse", *args]) == 0
    assert Image.open(out).mode == "RGB" and Image.open(out).size == (36, 40)
    before = out.read_bytes()
    capsys.readouterr()
    assert main(["fuse", *args[:-2], "--method", "mean"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == before
    assert main(["fuse", *args[:-2], "--method", "mean", "--overwrite"]) == 0
    assert out.read_bytes() != before


def test_batch_continues_past_bad_pair(tmp_path, capsys):
    for name in ("p1.png", "p2.png", "p3.png"):
        _pair(tmp_path, name)
    (tmp_path / "pet" / "p2.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "fused"
    code = main(["fuse", "--mri-dir", str(tmp_path / "mri"), "--other-dir", str(tmp_path / "pet"), "-o", str(out),
                 "--method", "dwt"])
    captured = capsys.readouterr()
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["p1.png", "p3.png"]
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert len(errors) == 1 and "p2.png" in errors[0]


def test_errors_are_one_line_with_no_output(tmp_path, capsys):
    affine = np.eye(4)
    nib.save(nib.Nifti1Image(np.ones((10, 10, 6), np.float32), affine), str(tmp_path / "t1.nii.gz"))
    affine[:3, 3] = [400.0, 0.0, 0.0]
    nib.save(nib.Nifti1Image(np.ones((5, 5, 3), np.float32), affine), str(tmp_path / "pet.nii.gz"))
    cases = [
        ([str(tmp_path / "t1.nii.gz"), str(tmp_path / "pet.nii.gz"), "--method", "max"], "does not overlap"),
        ([str(tmp_path / "missing.nii.gz"), str(tmp_path / "pet.nii.gz"), "--method", "max"], "file not found"),
        ([str(tmp_path / "t1.nii.gz"), str(tmp_path / "gone.nii.gz"), "--method", "max", "--register", "rigid"],
         "gone.nii.gz: file not found"),  # before "registration: on" is announced
        ([str(tmp_path / "t1.nii.gz"), str(tmp_path / "pet.nii.gz"), "--method", "pca"], "unknown fusion method"),
    ]
    for argv, message in cases:
        assert main(["fuse", *argv, "-o", str(tmp_path / "fused.nii.gz")]) == 2
        out, err = capsys.readouterr()
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not (tmp_path / "fused.nii.gz").exists() and "registration: on" not in out


def test_weights_option_with_tiny_network(tmp_path):
    import torch

    from monai_lkcfusion.networks import LKCFUNet, save_network

    weights = save_network(LKCFUNet.from_preset("tiny"), tmp_path / "tiny.pt")
    _pair(tmp_path, "a.png", size=(45, 37))
    out = tmp_path / "f.png"
    assert main(["fuse", str(tmp_path / "mri" / "a.png"), str(tmp_path / "pet" / "a.png"), "-o", str(out),
                 "--weights", str(weights), "--no-optimize", "--device", "cpu"]) == 0
    assert Image.open(out).size == (37, 45)
    assert torch.load(weights, weights_only=True)  # what was loaded is a plain state dict


@pytest.mark.slow
def test_demo_writes_2d_and_3d(tmp_path, capsys):
    from monai_lkcfusion.data import demo_files, read_image

    assert main(["demo", "--output", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "fused_2d.png" in printed and "fused_3d.nii.gz" in printed
    fused = nib.load(str(tmp_path / "fused_3d.nii.gz"))
    mri = read_image(demo_files()["mri_3d"])
    assert fused.shape == tuple(mri.shape[1:]) and np.allclose(fused.affine, mri.affine.numpy())
    assert Image.open(tmp_path / "fused_2d.png").mode == "RGB"


def test_gray_background_and_tta_options(tmp_path):
    _pair(tmp_path, "a.png", colour=True)
    mri, pet = tmp_path / "mri" / "a.png", tmp_path / "pet" / "a.png"
    black = np.asarray(Image.open(mri)).copy()
    black[:5] = 0
    Image.fromarray(black).save(mri)
    colour = np.asarray(Image.open(pet)).copy()
    colour[:5] = 0
    Image.fromarray(colour).save(pet)
    outputs = {}
    for name, flags in (("default", []), ("gray", ["--gray"]), ("kept", ["--no-mask-background"]),
                        ("tta", ["--tta", "--method", "lkcfunet"])):
        outputs[name] = tmp_path / f"{name}.png"
        assert main(["fuse", str(mri), str(pet), "-o", str(outputs[name]), "--method", "mean", *flags]) == 0
    default, gray = np.asarray(Image.open(outputs["default"])), np.asarray(Image.open(outputs["gray"]))
    assert default.shape == (40, 36, 3) and gray.shape == (40, 36)
    assert (default[:5] == 0).all()  # both inputs black there
    luma = np.round(default.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))
    assert np.abs(luma - gray).max() <= 1  # the colour output's gray level is the fused luma
    tta = np.asarray(Image.open(outputs["tta"]))
    assert tta.shape == (40, 36, 3) and (tta[:5] == 0).all()
    assert np.array_equal(np.asarray(Image.open(outputs["kept"])), default)  # mean of two zeros is zero


@pytest.mark.parametrize("option", [["--workers", "0"], ["--threads", "-2"]])
def test_bad_worker_counts_are_one_line_errors(tmp_path, capsys, option):
    _pair(tmp_path, "a.png")
    args = [str(tmp_path / "mri" / "a.png"), str(tmp_path / "pet" / "a.png"), "-o", str(tmp_path / "f.png")]
    assert main(["fuse", *args, "--method", "max", *option]) == 2
    err = capsys.readouterr().err
    assert f"{option[0][2:]} {option[1]}: give a whole number" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "f.png").exists()


def test_batch_of_mhd_raw_pairs_counts_each_image_once(tmp_path, capsys):
    """A .mhd header with its .raw data beside it is one image: the .raw was reported as an unpaired entry and the
    run exited 1 although every pair was fused."""
    import SimpleITK as sitk

    for folder, value in (("mri", 300.0), ("pet", 20.0)):
        (tmp_path / folder).mkdir()
        image = sitk.GetImageFromArray((np.random.default_rng(0).random((4, 16, 16)) * value).astype(np.float32))
        sitk.WriteImage(image, str(tmp_path / folder / "case1.mhd"))
    assert (tmp_path / "mri" / "case1.raw").is_file()
    code = main(["fuse", "--mri-dir", str(tmp_path / "mri"), "--other-dir", str(tmp_path / "pet"),
                 "-o", str(tmp_path / "out"), "--method", "max"])
    out = capsys.readouterr().out
    assert code == 0 and "fused 1 pair(s); 0 failed or unpaired" in out
    assert (tmp_path / "out" / "case1.nii.gz").is_file()


def test_batch_of_empty_folders_is_an_error(tmp_path, capsys):
    """Two empty folders (a mistyped path in a script) printed "fused 0 pair(s)" and exited 0."""
    (tmp_path / "MRI").mkdir()
    (tmp_path / "PET").mkdir()
    code = main(["fuse", "--mri-dir", str(tmp_path / "MRI"), "--other-dir", str(tmp_path / "PET"),
                 "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "no images to fuse" in err and "Traceback" not in err


def test_batch_arguments_that_are_files_say_so(tmp_path, capsys):
    """``--mri-dir`` naming a file said "no such folder"; ``-o`` naming an existing file said only "File exists"."""
    for folder in ("MRI", "PET"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / folder / "a.png")
    (tmp_path / "existing.png").write_bytes(b"x")
    cases = {("--mri-dir", str(tmp_path / "MRI" / "a.png"), "-o", str(tmp_path / "out")): "is a file, not a folder",
             ("--mri-dir", str(tmp_path / "MRI"), "-o", str(tmp_path / "existing.png")): "-o names the output folder"}
    for (flag, mri, out_flag, out), message in cases.items():
        code = main(["fuse", flag, mri, "--other-dir", str(tmp_path / "PET"), out_flag, out, "--method", "max"])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err


def test_folder_of_pictures_as_the_mri_points_at_batch_mode(tmp_path, capsys):
    """A folder of PNGs given as the MRI was "folder holds no DICOM series", with no word about --mri-dir."""
    (tmp_path / "MRI").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "MRI" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ct.png")
    code = main(["fuse", str(tmp_path / "MRI"), str(tmp_path / "ct.png"), "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and "1 image file(s)" in err and "--mri-dir/--other-dir" in err and "Traceback" not in err
    # the same sub-folder inside --mri-dir told the user to use --mri-dir (hand-check helper): it says why now
    for folder in ("M", "C"):
        (tmp_path / folder / "sub").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / folder / "sub" / "a.png")
    code = main(["fuse", "--mri-dir", str(tmp_path / "M"), "--other-dir", str(tmp_path / "C"), "-o",
                 str(tmp_path / "out"), "--method", "max"])
    err = capsys.readouterr().err
    assert code == 1 and "a folder is read as one DICOM series" in err and "does not search their sub-folders" in err
