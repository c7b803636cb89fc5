"""The outside matrix of issue 8 through the real ``lkcfusion fuse``: bad input gives exit code 2 and one line
naming the file and the problem with no output; odd but valid input succeeds; outputs are atomic, kept unless
``--overwrite``; batch mode continues past bad pairs. Every input is made by the test."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from monai_lkcfusion.cli import main
from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.inference import fuse

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from dicom_util import write_series  # noqa: E402


def _gray(shape=(40, 36), seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)
    return path


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4) if affine is None else affine), str(path))
    return path


def _nifti_raw(path: Path, data: np.ndarray) -> Path:
    """A NIfTI of ``data``'s own type (complex, RGB24), unlike :func:`_nifti`'s float32."""
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def _volume(seed=0, shape=(20, 18, 8)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32) * 100


def _half(path: Path, source: Path) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _fuse(argv: list[str], capture) -> tuple[int, str, str]:
    code = main(["fuse", *argv])
    captured = capture.readouterr()
    return code, captured.out, captured.err


def _leftovers(folder: Path) -> list[str]:
    """Temporary files of the atomic writer left in ``folder``."""
    return [p.name for p in folder.iterdir() if ".tmp" in p.name]


# -- bad input: exit 2, one line naming the file and the problem, no output -------------------------------------
def _bad_case(name: str, d: Path) -> tuple[Path, Path, str]:
    """Build one bad pair: (mri, other, text the error must contain); the bad file is always ``other`` or ``mri``."""
    mri_png = _png(d / "mri.png", _gray())
    mri_nii = _nifti(d / "mri.nii.gz", _volume())
    if name == "missing file":
        return mri_png, d / "missing.png", "file not found"
    if name == "truncated PNG":
        return mri_png, _half(d / "cut.png", _png(d / "whole.png", _gray(seed=1))), "cannot read image"
    if name == "truncated NIfTI":
        return mri_nii, _half(d / "cut.nii", _nifti(d / "whole.nii", _volume(1))), "cannot read NIfTI"
    if name == "truncated NIfTI.gz":
        return mri_nii, _half(d / "cut.nii.gz", _nifti(d / "whole.nii.gz", _volume(1))), "cannot read NIfTI"
    if name == "truncated MHA":
        import SimpleITK as sitk

        sitk.WriteImage(sitk.GetImageFromArray(_volume(1)), str(d / "whole.mha"))
        return mri_nii, _half(d / "cut.mha", d / "whole.mha"), "cannot read image"
    if name == "empty file":
        (d / "empty.png").write_bytes(b"")
        return mri_png, d / "empty.png", "empty file"
    if name == "not an image":
        (d / "text.png").write_text("not a picture")
        return mri_png, d / "text.png", "cannot read image"
    if name == "unsupported format":
        (d / "scan.xyz").write_bytes(b"\0" * 64)
        return mri_png, d / "scan.xyz", "unsupported format"
    if name == "mixed DICOM series":
        write_series(d / "dicom", _volume(2, (4, 12, 12)), description="T1")
        write_series(d / "dicom", _volume(3, (4, 12, 12)), description="FLAIR")
        return d / "dicom", mri_nii, "2 DICOM series"
    if name == "folder without DICOM":
        (d / "nodicom").mkdir()
        (d / "nodicom" / "readme.txt").write_text("x")
        return d / "nodicom", mri_nii, "no DICOM series"
    if name == "empty folder beside a picture":  # the folder's problem, not "a volume cannot be a .png"
        (d / "empty").mkdir()
        return d / "empty", mri_png, "no DICOM series"
    if name == "volumes do not overlap":
        far = np.eye(4)
        far[:3, 3] = [500.0, 0.0, 0.0]
        return mri_nii, _nifti(d / "far.nii.gz", _volume(1), far), "does not overlap"
    if name == "2D sizes differ":
        return mri_png, _png(d / "small.png", _gray((30, 36), 1)), "--resample"
    if name == "2D with 3D":
        return mri_png, mri_nii, "is a 2D picture"
    if name == "wrong channels":
        return mri_nii, _nifti(d / "two.nii.gz", np.ones((20, 18, 8, 1, 2))), "need one 3D volume"
    if name == "4D volume":
        return mri_nii, _nifti(d / "frames.nii.gz", np.ones((20, 18, 8, 3))), "4D volume"
    if name == "all-NaN NIfTI":
        return mri_nii, _nifti(d / "nan.nii.gz", np.full((20, 18, 8), np.nan)), "no finite voxel"
    if name == "all-NaN float TIFF":
        Image.fromarray(np.full((40, 36), np.nan, np.float32)).save(d / "nan.tif")
        return mri_png, d / "nan.tif", "no finite voxel"
    if name == "complex NIfTI":  # the imaginary part would be dropped without a word
        return mri_nii, _nifti_raw(d / "complex.nii.gz", _volume(1) + 1j * _volume(2)), "complex values"
    if name == "complex NRRD":
        import SimpleITK as sitk

        sitk.WriteImage(sitk.GetImageFromArray((_volume(1) + 1j).astype(np.complex64)), str(d / "complex.nrrd"))
        return mri_nii, d / "complex.nrrd", "complex values"
    if name == "multi-page TIFF":
        pages = [Image.fromarray(_gray(seed=s)) for s in range(2)]
        pages[0].save(d / "pages.tif", save_all=True, append_images=pages[1:])
        return mri_png, d / "pages.tif", "frames/pages"
    raise AssertionError(name)


BAD_CASES = [
    "missing file", "truncated PNG", "truncated NIfTI", "truncated NIfTI.gz", "truncated MHA", "empty file",
    "not an image",
    "unsupported format", "mixed DICOM series", "folder without DICOM", "empty folder beside a picture",
    "volumes do not overlap", "2D sizes differ",
    "2D with 3D", "wrong channels", "4D volume", "all-NaN NIfTI", "all-NaN float TIFF", "multi-page TIFF",
    "complex NIfTI", "complex NRRD",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exit_2_one_line_no_output(case, tmp_path, capfd):
    """``capfd`` also sees what C++ readers (ITK, GDCM) print on file descriptor 2."""
    mri, other, problem = _bad_case(case, tmp_path)
    bad = mri if mri.is_dir() else other
    out = tmp_path / "out" / ("fused.png" if ".png" in (mri.suffix, other.suffix) else "fused.nii.gz")
    code, _, err = _fuse([str(mri), str(other), "-o", str(out), "--method", "max"], capfd)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lkcfusion: error: "), err
    assert str(bad) in lines[0] and problem in lines[0]
    assert not out.exists() and not (out.parent.exists() and _leftovers(out.parent))


@pytest.mark.parametrize("option, problem", [
    (["--device", "cuda"], "CUDA is not available"), (["--device", "tpu9"], "device tpu9: Invalid device string"),
    (["--batch-size", "0"], "batch_size (--batch-size) 0: give a whole number of at least 1"),
    (["--axis", "4"], "a volume has axes 0, 1, 2"),
    (["--modality", "XR"], "unknown modality 'XR'"), (["--method", "pca"], "unknown fusion method 'pca'"),
    (["--weights", "nonexist.pt"], "--weights nonexist.pt: the method 'max' uses no weights"),  # it was ignored
    (["--resample"], "--resample (resample=True) resizes 2D pictures"),  # on volumes it was accepted, doing nothing
])
def test_bad_options_exit_2_one_line(option, problem, tmp_path, capsys):
    if "cuda" in option and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    mri = _nifti(tmp_path / "mri.nii.gz", _volume())
    other = shutil.copy(mri, tmp_path / "ct.nii.gz")
    out = tmp_path / "f.nii.gz"
    code, _, err = _fuse([str(mri), str(other), "-o", str(out), "--method", "max", *option], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and problem in err, err
    assert not out.exists()


def test_inputs_that_do_not_match_are_named_before_the_output_format(tmp_path, capsys):
    """A one-slice NIfTI MRI with a PNG: "a 3D volume cannot be written as '.png'" sent the user to .nii.gz, only to
    be told then that the inputs do not match. The mismatch comes first, whatever the output."""
    mri = _nifti(tmp_path / "mri.nii.gz", np.random.default_rng(0).random((40, 36, 1)))
    pet = _png(tmp_path / "pet.png", _gray())
    for out in (tmp_path / "f.png", tmp_path / "f.nii.gz"):
        code, _, err = _fuse([str(mri), str(pet), "-o", str(out), "--method", "max"], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "but the MRI" in err and "one-slice" in err, err
        assert not out.exists()


@pytest.mark.parametrize("option, problem", [
    (["--axis", "3"], "--axis 3: a volume has axes 0, 1, 2"),
    (["--mri-series", "1.2.3"], "mri.png: is a file; a series (1.2.3) is chosen in a DICOM folder"),
    (["--other-series", "1.2.3"], "pet.png: is a file; a series (1.2.3) is chosen in a DICOM folder"),
])
def test_options_for_volumes_are_not_ignored_on_pictures(option, problem, tmp_path, capsys):
    """``--axis 3`` (no such axis) and a DICOM series choice for a file were ignored on 2D pictures: a typo or the
    wrong input went unnoticed. One line, exit 2."""
    mri, pet = _png(tmp_path / "mri.png", _gray()), _png(tmp_path / "pet.png", _gray(seed=1))
    out = tmp_path / "f.png"
    code, _, err = _fuse([str(mri), str(pet), "-o", str(out), "--method", "max", *option], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and problem in err, err
    assert not out.exists()


@pytest.mark.parametrize("option, problem", [
    (["--batch-size", "0"], "batch_size (--batch-size) 0: give a whole number of at least 1"),
    (["--workers", "0"], "workers 0: give a whole number of at least 1"),
    (["--threads", "-1"], "threads -1: give a whole number of at least 1"),
])
def test_bad_shared_options_on_folders_are_one_line_before_any_pair(option, problem, tmp_path, capsys):
    """An option every pair shares is refused once, exit 2, before any pair: on folders it failed each pair with the
    same line (24 lines on the Harvard MRI-PET test folder) and exited 1."""
    from PIL import Image

    for folder in ("MRI", "PET"):
        (tmp_path / folder).mkdir()
        for name in ("a.png", "b.png", "c.png"):
            Image.fromarray(np.full((16, 16), 90, np.uint8)).save(tmp_path / folder / name)
    out = tmp_path / "out"
    argv = ["--mri-dir", str(tmp_path / "MRI"), "--other-dir", str(tmp_path / "PET"), "-o", str(out), "--method", "max"]
    code, _, err = _fuse([*argv, *option], capsys)
    assert code == 2 and err.strip().splitlines() == [f"lkcfusion: error: {problem}"], err
    assert not out.exists()


@pytest.mark.parametrize("argv, problem", [
    (["fuse", "a.png", "b.png", "-o", "f.png", "--axis", "x"], "fuse: argument --axis: invalid int value: 'x'"),
    (["fuse", "a.png", "b.png"], "fuse: the following arguments are required: -o/--output"),
    (["fuse", "a.png", "b.png", "-o", "f.png", "--register", "nonrigid"], "fuse: argument --register: invalid choice"),
    (["metrics", "--fused", "F", "--mri", "M", "--other", "O", "--bogus"], "metrics: unrecognized arguments: --bogus"),
    (["fus"], "argument <command>: invalid choice: 'fus'"),
])
def test_usage_errors_are_one_line(argv, problem, capsys):
    """argparse's own errors (bad values, unknown or missing options): one line naming the command and where the
    options are listed, exit 2; they were a usage block of up to 14 lines and a second error line."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.strip().splitlines() == [f"lkcfusion: error: {problem}{err.split(problem, 1)[1].rstrip()}"], err
    assert err.rstrip().endswith("--help)") and "usage:" not in err


def test_no_command_writes_over_its_inputs(tmp_path, capsys):
    """A preview, a metrics table, an exported model or an evaluation is never written over (or into) the command's
    inputs: each wrote there with exit 0 (the MRI became a preview or CSV text, the trained weights a TorchScript
    archive, evaluate filled the MRI folder). Now one line, exit 2, and the inputs are unchanged."""
    from PIL import Image

    from monai_lkcfusion.networks import LKCFUNet, save_network

    for folder in ("MRI", "PET", "F"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(tmp_path / folder / "a.png")
    mri, pet, fused = (str(tmp_path / folder / "a.png") for folder in ("MRI", "PET", "F"))
    weights = save_network(LKCFUNet.from_preset("tiny"), tmp_path / "tiny.pt")
    before = {path: Path(path).read_bytes() for path in (mri, pet, fused, str(weights))}
    cases = [
        (["fuse", mri, pet, "-o", str(tmp_path / "f.png"), "--method", "max", "--preview", mri], "is the input"),
        (["fuse", mri, pet, "-o", str(tmp_path / "f.png"), "--method", "max", "--preview", fused], "output exists"),
        (["fuse", mri, pet, "-o", str(tmp_path / "g.png"), "--method", "max", "--preview", str(tmp_path / "g.png")],
         "is the output"),
        (["metrics", "--fused", fused, "--mri", mri, "--other", pet, "--csv", mri], "a table is written to a .csv file"),
        (["metrics", "--fused", str(tmp_path / "F"), "--mri", str(tmp_path / "MRI"), "--other", str(tmp_path / "PET"),
          "--json", pet], "a table is written to a .json file, not an image file"),  # with folders it was not checked
        (["metrics", "--fused", fused, "--mri", mri, "--other", pet, "--csv", str(weights)], "output exists"),
        (["metrics", "--fused", fused, "--mri", mri, "--other", pet, "--csv", str(tmp_path / "t.csv"), "--json",
          str(tmp_path / "t.csv")], "is the output"),
        (["export", "--weights", str(weights), "-o", str(weights)], "is the input"),
        (["evaluate", "--mri-dir", str(tmp_path / "MRI"), "--other-dir", str(tmp_path / "PET"), "-o",
          str(tmp_path / "MRI"), "--methods", "max"], "lies inside the input folder"),
    ]
    for argv, problem in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("lkcfusion: error:") and problem in err[0], (argv, err)
    from monai_lkcfusion.inference import fuse

    with pytest.raises(FusionInputError, match="is the input"):  # the Python call too, not only the CLI
        fuse(mri, pet, method="max", preview=pet, progress=False)
    assert {path: Path(path).read_bytes() for path in before} == before
    assert sorted(p.name for p in (tmp_path / "MRI").iterdir()) == ["a.png"]
    assert not (tmp_path / "f.png").exists() and not (tmp_path / "g.png").exists()


def test_other_commands_turn_os_errors_into_one_line(tmp_path, capsys):
    from monai_lkcfusion.networks import LKCFUNet, save_network

    weights = save_network(LKCFUNet.from_preset("tiny"), tmp_path / "tiny.pt")
    (tmp_path / "a_file").write_text("x")
    commands = [["bundle", str(tmp_path / "a_file" / "dest")],  # an OSError turned into one line by the CLI
                ["export", "--weights", str(weights), "-o", str(tmp_path / "a_file" / "m.ts")]]  # probed first
    for argv in commands:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "a_file" in err and "Not a directory" in err, err


def test_mixed_dicom_series_lists_them_and_can_be_chosen(tmp_path, capsys):
    t1 = write_series(tmp_path / "dicom", _volume(2, (4, 12, 12)), description="T1")
    write_series(tmp_path / "dicom", _volume(3, (4, 12, 12)), description="FLAIR")
    pet_affine = np.diag([1.0, 1.0, 2.0, 1.0])
    pet_affine[:3, 3] = [38.0, 48.0, 8.0]  # covers the series (RAS x 40-50, y 50-60, z 10-16)
    other = _nifti(tmp_path / "pet.nii.gz", _volume(1, (12, 12, 6)), pet_affine)
    out = tmp_path / "fused.nii.gz"
    argv = [str(tmp_path / "dicom"), str(other), "-o", str(out), "--method", "max"]
    code, _, err = _fuse(argv, capsys)
    assert code == 2 and "'T1'" in err and "'FLAIR'" in err and "--mri-series" in err and t1 in err
    code, _, err = _fuse([*argv, "--mri-series", t1], capsys)
    assert code == 0, err
    assert nib.load(str(out)).shape == (12, 12, 4)


def test_resample_option_for_2d_sizes(tmp_path, capsys):
    mri = _png(tmp_path / "mri.png", _gray())
    other = _png(tmp_path / "small.png", _gray((30, 27), 1))
    code, _, err = _fuse([str(mri), str(other), "-o", str(tmp_path / "f.png"), "--method", "max", "--resample"], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "f.png").size == (36, 40)


def test_fuse_files_refuses_numpy_arrays_before_fusing(tmp_path):
    """fuse_files on NumPy arrays wrote fuse()'s NumPy-layout result as if it were channel-first: an X=3 volume became
    an RGB picture (5, 22, 1, 1, 3), a (1, 22, 5) one had its axes swapped; other shapes failed only after fusing."""
    from monai_lkcfusion.inference import fuse_files

    volume = np.random.default_rng(0).random((3, 22, 5)).astype(np.float32)
    for mri, other, name in ((volume, volume, "mri"), (_nifti(tmp_path / "m.nii.gz", volume), volume, "other")):
        with pytest.raises(FusionInputError, match=f"^{name}: fuse_files reads and writes files; for a NumPy array"):
            fuse_files(mri, other, tmp_path / "f.nii.gz", method="max")
    assert not (tmp_path / "f.nii.gz").exists()
    tensor = MetaTensor(torch.from_numpy(volume)[None], affine=torch.eye(4))  # a MetaTensor keeps its geometry
    written = fuse_files(tensor, tensor, tmp_path / "f.nii.gz", method="max")
    assert nib.load(str(written)).shape == (3, 22, 5)


def test_volumes_without_geometry_are_not_placed_by_guess(tmp_path):
    """A NumPy volume has no affine: against a NIfTI MRI it was put at the identity (1 mm voxels at the origin) and
    fused with a "covers only 8%" warning; two arrays of different shapes were put into one corner (found by a
    hand-check helper). Refused now; arrays of one shape, and MetaTensors with their affines, still fuse."""
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = (-60.0, -70.0, 10.0)
    volume = _volume()
    mri = _nifti(tmp_path / "mri.nii.gz", volume, affine)
    for first, second, problem in ((mri, volume, r"other: an array has no geometry \(affine\) to place it against"),
                                   (volume, mri, r"mri: an array has no geometry \(affine\) to place it against"),
                                   (volume, volume[:10, :9], r"other: shape \(10, 9, 8\) differs from the MRI's")):
        with pytest.raises(FusionInputError, match=problem):
            fuse(first, second, method="max", progress=False)
    assert fuse(volume, volume, method="max", progress=False).shape == volume.shape
    placed = MetaTensor(torch.from_numpy(volume)[None], affine=torch.as_tensor(affine))
    assert fuse(mri, placed, method="max", progress=False).meta["overlap_fraction"] == 1.0


def test_python_api_raises_fusion_input_error(tmp_path):
    mri = _png(tmp_path / "mri.png", _gray())
    with pytest.raises(FusionInputError, match="cut.png: cannot read image"):
        fuse(mri, _half(tmp_path / "cut.png", mri), method="max")
    with pytest.raises(FusionInputError, match="no finite voxel"):
        fuse(np.full((8, 8), np.nan, np.float32), np.ones((8, 8), np.float32), method="max")
    with pytest.raises(FusionInputError, match="shape"):
        fuse(torch.rand(2, 8, 8), torch.rand(1, 8, 8), method="max")
    values = np.ones((8, 8), np.float32)
    bad = {"complex values": [values + 1j, torch.ones(1, 8, 8, dtype=torch.complex64)],
           "data type of kind .* is not numeric": [np.full((8, 8), None), np.full((8, 8), "a")],
           r"empty image \(shape \(0, 8\)\)": [np.ones((0, 8), np.float32)]}
    for problem, inputs in bad.items():
        for image in inputs:
            with pytest.raises(FusionInputError, match=f"mri: {problem}"):
                fuse(image, values if isinstance(image, np.ndarray) else torch.ones(1, 8, 8), method="max")


def test_bad_input_through_the_installed_command(tmp_path):
    """A real process: exit status 2 and a single stderr line without a traceback."""
    mri = _png(tmp_path / "mri.png", _gray())
    cut = _half(tmp_path / "cut.png", mri)
    exe = REPO / ".venv" / "bin" / "lkcfusion"
    command = [str(exe)] if exe.is_file() else [sys.executable, "-m", "monai_lkcfusion"]
    result = subprocess.run([*command, "fuse", str(mri), str(cut), "-o", str(tmp_path / "f.png"), "--method", "max"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "cut.png: cannot read image" in result.stderr
    assert not (tmp_path / "f.png").exists()


# -- odd but valid input: success ---------------------------------------------------------------------------------
def test_odd_pictures_fuse(tmp_path, capsys):
    gray = _gray()
    mri = _png(tmp_path / "mri.png", gray)
    rgb = np.stack([gray, _gray(seed=1), _gray(seed=2)], -1)
    others = {
        "rgba.png": (_png(tmp_path / "rgba.png", np.dstack([rgb, np.full_like(gray, 180)])), "RGB"),
        "palette.png": (_png(tmp_path / "palette.png", rgb, "P"), "RGB"),
        "deep.png": (_png(tmp_path / "deep.png", (gray.astype(np.uint16) * 250)), "L"),
        "constant.png": (_png(tmp_path / "constant.png", np.full_like(gray, 7)), "L"),
    }
    assert Image.open(others["deep.png"][0]).mode.startswith("I")  # really a 16-bit file
    for name, (other, mode) in others.items():
        out = tmp_path / "out" / name
        code, _, err = _fuse([str(mri), str(other), "-o", str(out), "--method", "max"], capsys)
        assert code == 0, (name, err)
        fused = Image.open(out)
        assert fused.size == (36, 40) and fused.mode == mode, name
    # both inputs constant: still a valid (constant) result
    flat = _png(tmp_path / "flat.png", np.full_like(gray, 50))
    code, _, err = _fuse([str(flat), str(others["constant.png"][0]), "-o", str(tmp_path / "c.png"), "--method", "mean"],
                         capsys)
    assert code == 0, err
    assert np.ptp(np.asarray(Image.open(tmp_path / "c.png"))) == 0


def test_nan_inf_voxels_masked_and_reported(tmp_path, capsys):
    data = _volume(1)
    data[2, 3, 4], data[5, 5, 5], data[0, 0, 0] = np.nan, np.inf, -np.inf
    mri = _nifti(tmp_path / "mri.nii.gz", _volume())
    other = _nifti(tmp_path / "holes.nii.gz", data)
    code, out, err = _fuse([str(mri), str(other), "-o", str(tmp_path / "f.nii.gz"), "--method", "max"], capsys)
    assert code == 0
    assert "holes.nii.gz: 3 NaN/Inf voxels set to 0" in err and len(err.strip().splitlines()) == 1
    assert np.isfinite(nib.load(str(tmp_path / "f.nii.gz")).get_fdata()).all()


def test_rgb24_nifti_is_a_colour_volume(tmp_path):
    """NIfTI's RGB24 voxels (one structured value each) read as a colour volume, 2D and 3D, not as an error."""
    from monai_lkcfusion.data import read_image

    for shape in ((20, 18, 8), (20, 18)):
        rgb = np.zeros(shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        rgb["R"], rgb["B"] = 200, 7
        rgb["G"] = np.arange(shape[1], dtype=np.uint8)[:, None] if len(shape) == 3 else np.arange(shape[1])
        img = read_image(_nifti_raw(tmp_path / "rgb.nii.gz", rgb))
        assert tuple(img.shape) == (3, 20, 18, shape[2] if len(shape) == 3 else 1) and img.meta["color"]
        assert img[0].unique().tolist() == [200.0] and img[2].unique().tolist() == [7.0]
        assert img[1, 0, :, 0].tolist() == list(range(shape[1]))
    fused = fuse(_nifti(tmp_path / "mri.nii.gz", _volume(shape=(20, 18, 1))), tmp_path / "rgb.nii.gz", method="max")
    assert tuple(fused.shape) == (3, 20, 18, 1)


def test_negative_ct_anisotropic_oblique_volumes(tmp_path, capsys):
    angle = 0.35
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    mri_affine = np.eye(4)
    mri_affine[:3, :3] = rotation @ np.diag([0.9, 1.1, 3.0])  # oblique, anisotropic
    mri_affine[:3, 3] = [-9.0, -10.0, -12.0]
    ct = np.random.default_rng(4).random((16, 16, 10)).astype(np.float32) * 3000 - 1024  # HU, mostly negative
    ct_affine = np.diag([1.5, 1.5, 2.5, 1.0])
    ct_affine[:3, 3] = [-12.0, -12.0, -12.0]
    mri = _nifti(tmp_path / "mri.nii.gz", _volume(), mri_affine)
    other = _nifti(tmp_path / "ct.nii.gz", ct, ct_affine)
    code, _, err = _fuse([str(mri), str(other), "-o", str(tmp_path / "f.nii.gz"), "--method", "max"], capsys)
    assert code == 0, err
    fused = nib.load(str(tmp_path / "f.nii.gz"))
    values = fused.get_fdata()
    assert fused.shape == (20, 18, 8) and np.allclose(fused.affine, mri_affine, atol=1e-5)
    assert np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0 and values.max() > 0.0


def test_very_large_slice_is_tiled(tmp_path, capsys):
    """Tiles never exceed ``tile_size`` (memory bounded by the tile, not the slice) and the result keeps the size."""
    mri, other = np.random.default_rng(0).random((2, 300, 230)).astype(np.float32)
    seen = []

    def predictor(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape[2:]))
        return torch.maximum(x[:, :1], x[:, 1:])

    fused = fuse(mri, other, model=predictor, tile_size=96, progress=False)
    assert fused.shape == (300, 230) and max(max(s) for s in seen) <= 96 and len(seen) > 1
    assert np.allclose(fused, np.maximum(mri, other), atol=1e-5)
    big = _gray((1400, 1100))  # larger than the default tile through the command line
    code, _, err = _fuse([str(_png(tmp_path / "m.png", big)), str(_png(tmp_path / "o.png", big[::-1].copy())),
                          "-o", str(tmp_path / "f.png"), "--method", "max"], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "f.png").size == (1100, 1400)


# -- outputs: kept unless --overwrite, atomic, batch continues ------------------------------------------------------
def test_existing_output_kept_unless_overwrite(tmp_path, capsys):
    mri = _png(tmp_path / "mri.png", _gray())
    other = _png(tmp_path / "ct.png", _gray(seed=1))
    out = tmp_path / "f.png"
    out.write_bytes(b"earlier result")
    code, _, err = _fuse([str(mri), str(other), "-o", str(out), "--method", "max"], capsys)
    assert code == 2 and "f.png: output exists; pass --overwrite" in err
    assert out.read_bytes() == b"earlier result"
    code, _, _ = _fuse([str(mri), str(other), "-o", str(out), "--method", "max", "--overwrite"], capsys)
    assert code == 0 and Image.open(out).size == (36, 40)


def test_failed_write_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    """A writer that dies half way (disk full) leaves the earlier output untouched and no temporary file."""
    from monai_lkcfusion.data import io

    def half_then_full(voxels, affine, path, codes=(1, 1)):  # the NIfTI writer's signature
        Path(path).write_bytes(b"\x5c\x01" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io, "_write_nifti", half_then_full)
    mri = _nifti(tmp_path / "mri.nii.gz", _volume())
    out = tmp_path / "res" / "f.nii.gz"
    out.parent.mkdir()
    out.write_bytes(b"earlier result")
    code, _, err = _fuse([str(mri), str(shutil.copy(mri, tmp_path / "ct.nii.gz")), "-o", str(out), "--method", "max",
                          "--overwrite"], capsys)
    assert code == 2 and "f.nii.gz: cannot write output (No space left on device)" in err
    assert len(err.strip().splitlines()) == 1
    assert out.read_bytes() == b"earlier result" and _leftovers(out.parent) == []


def test_unwritable_output_location(tmp_path, capsys):
    """Root ignores permission bits, so the output goes below a regular file (and into /proc)."""
    mri = _png(tmp_path / "mri.png", _gray())
    (tmp_path / "a_file").write_text("x")
    for out in (tmp_path / "a_file" / "sub" / "f.png", Path("/proc/lkcfusion_test.png")):
        code, _, err = _fuse([str(mri), str(mri), "-o", str(out), "--method", "max"], capsys)
        assert code == 2 and f"{out}: cannot write here" in err and len(err.strip().splitlines()) == 1, err


def test_unwritable_output_folder_is_one_line_before_any_pair(tmp_path, capsys):
    """Batch mode into a folder that cannot be written (/proc; below a file): one line, exit 2; it was one error line
    per pair and exit 1."""
    for folder in ("MRI", "PET"):
        (tmp_path / folder).mkdir()
        for name in ("a.png", "b.png", "c.png"):
            _png(tmp_path / folder / name, _gray())
    (tmp_path / "a_file").write_text("x")
    for out in (Path("/proc"), tmp_path / "a_file" / "fused"):
        code, printed, err = _fuse(["--mri-dir", str(tmp_path / "MRI"), "--other-dir", str(tmp_path / "PET"), "-o",
                                    str(out), "--method", "max"], capsys)
        assert code == 2 and err.strip().splitlines() == [f"lkcfusion: error: {out}: cannot write here"
                                                          + err.split("cannot write here", 1)[1].rstrip()], err
        assert "wrote" not in printed


def test_unwritable_places_refused_before_any_work(tmp_path, monkeypatch):
    """The output, --save-transform and --preview places are probed first, so no registration or long volume runs
    for a result that cannot be written: below a file, in /proc, and (with mount rights) on a read-only file system,
    which permission bits (ignored by root) would not show."""
    import monai_lkcfusion.inference as inference

    def never(*args, **kwargs):
        raise AssertionError("the pair was read and fused before the place was checked")

    monkeypatch.setattr(inference, "fuse_dict", never)
    mri = _nifti(tmp_path / "mri.nii.gz", _volume())
    ct = shutil.copy(mri, tmp_path / "ct.nii.gz")
    (tmp_path / "a_file").write_text("x")
    places = {tmp_path / "a_file" / "sub": "Not a directory", Path("/proc/lkcfusion_test"): "No such file"}
    read_only = tmp_path / "ro"
    read_only.mkdir()
    mounted = not subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(read_only)],
                                 capture_output=True).returncode
    if mounted:
        places[read_only] = "Read-only file system"
    try:
        for place, reason in places.items():
            calls = [lambda: inference.fuse_files(mri, ct, place / "f.nii.gz", method="max"),
                     lambda: inference.fuse(mri, ct, method="max", register="rigid", save_transform=place / "t.tfm"),
                     lambda: inference.fuse(mri, ct, method="max", preview=place / "p.png")]
            for call in calls:
                with pytest.raises(FusionInputError, match=f"cannot write here \\({reason}"):
                    call()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "ct.nii.gz", "mri.nii.gz", "ro"]  # no probe
        assert not mounted or list(read_only.iterdir()) == []
    finally:
        if mounted:
            subprocess.run(["umount", str(read_only)], check=True)


def test_disk_full_on_a_small_file_system(tmp_path, capsys):
    """A real full disk: a 64 KiB tmpfs (needs root and mount rights; skipped otherwise)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        mri = _nifti(tmp_path / "mri.nii", np.random.default_rng(0).random((48, 48, 24)))  # 220 KB as float32
        other = shutil.copy(mri, tmp_path / "ct.nii")
        code, _, err = _fuse([str(mri), str(other), "-o", str(mount / "f.nii"), "--method", "max"], capsys)
        assert code == 2 and "f.nii: cannot write output (No space left on device)" in err, err
        assert list(mount.iterdir()) == []
        # JPEG and BMP: PIL's encoders ignored the short write: a cut file, "wrote", exit 0, and with --overwrite an
        # earlier good output replaced by it (hand-check helper)
        from monai_lkcfusion.data import demo_files

        picture, partner = demo_files()["mri_2d"], demo_files()["pet_2d"]  # colour: 196 KB as BMP, 45 KB as JPEG
        small = _png(tmp_path / "small.png", np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8))
        for suffix, room in ((".bmp", 0), (".jpg", 48), (".png", 48)):  # KiB taken before the write
            (mount / "filler").write_bytes(b"\0" * (room << 10))
            target = mount / f"f{suffix}"
            shutil.copy(small, target)  # an earlier output, whole
            before = target.read_bytes()
            code, printed, err = _fuse([str(picture), str(partner), "-o", str(target), "--method", "max",
                                        "--overwrite"], capsys)
            assert code == 2 and "cannot write output (No space left on device)" in err, (suffix, printed, err)
            assert target.read_bytes() == before
            assert sorted(p.name for p in mount.iterdir()) == sorted(["filler", target.name])
            target.unlink()
        # --save-transform: ITK does not report a short write: an empty .tfm was "written" (exit 0) and replaced a good
        # one with --overwrite (re-check helper)
        (mount / "filler").unlink()
        transform = mount / "t.tfm"
        register = [str(small), str(small), "--method", "max", "--register", "rigid", "--save-transform",
                    str(transform)]
        assert _fuse([str(small), str(_png(tmp_path / "small2.png", np.asarray(Image.open(small)))), "-o",
                      str(tmp_path / "one.png"), *register[2:]], capsys)[0] == 0
        good = transform.read_bytes()
        with open(mount / "filler", "wb", buffering=0) as fill, contextlib.suppress(OSError):
            while True:  # take whatever room is left
                fill.write(b"\0" * 1024)
        code, printed, err = _fuse([str(small), str(tmp_path / "small2.png"), "-o", str(tmp_path / "two.png"),
                                    *register[2:], "--overwrite"], capsys)
        assert code == 2 and "t.tfm: cannot write output (the transform does not read back whole" in err, err
        assert transform.read_bytes() == good
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_batch_continues_past_bad_pairs(tmp_path, capsys):
    mri_dir, other_dir, out = tmp_path / "mri", tmp_path / "ct", tmp_path / "fused"
    mri_dir.mkdir()
    other_dir.mkdir()
    for name in ("a.png", "b.png", "c.png", "d.png", "e.png"):
        _png(mri_dir / name, _gray())
    _png(other_dir / "a.png", _gray(seed=1))
    _half(other_dir / "b.png", other_dir / "a.png")  # corrupt
    _png(other_dir / "c.png", _gray((20, 20)))  # other size
    _png(other_dir / "e.png", _gray(seed=2))  # d has no partner
    code, printed, err = _fuse(["--mri-dir", str(mri_dir), "--other-dir", str(other_dir), "-o", str(out),
                                "--method", "max"], capsys)
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "e.png"]
    errors = [line for line in err.splitlines() if line.startswith("lkcfusion: error:")]
    assert len(errors) == 3 and "Traceback" not in err
    for name in ("b.png", "c.png", "d.png"):
        assert sum(name in line for line in errors) == 1, (name, errors)
    assert "fused 2 pair(s); 3 failed" in printed


def test_documents_beside_the_images_are_not_pairs_but_unknown_formats_are(tmp_path, capsys):
    """A README or a CSV in a batch folder counted as an unpaired image: an error line and exit 1 although every pair
    was fused. Documents are not entries now; a file of an unreadable image format still is, and is reported."""
    mri_dir, other_dir, out = tmp_path / "mri", tmp_path / "pet", tmp_path / "fused"
    for folder, seed in ((mri_dir, 0), (other_dir, 1)):
        folder.mkdir()
        for name in ("a.png", "b.png"):
            _png(folder / name, _gray(seed=seed))
    (mri_dir / "README.txt").write_text("T1 slices of subject 7")
    (other_dir / "Results.CSV").write_text("pair,EN\n")
    (other_dir / "notes.md").write_text("#")
    argv = ["--mri-dir", str(mri_dir), "--other-dir", str(other_dir), "-o", str(out), "--method", "max"]
    code, printed, err = _fuse(argv, capsys)
    assert code == 0 and err == "" and "fused 2 pair(s); 0 failed or unpaired" in printed
    (mri_dir / "c.mgz").write_bytes(b"\0" * 64)  # an image in a format the package does not read
    code, printed, err = _fuse([*argv, "--overwrite"], capsys)
    assert code == 1 and "c.mgz" in err and "fused 2 pair(s); 1 failed" in printed


def test_metrics_and_evaluate_name_a_corrupt_file(tmp_path, capsys):
    for folder in ("mri", "ct", "fused"):
        (tmp_path / folder).mkdir()
        for name in ("a.png", "b.png"):
            _png(tmp_path / folder / name, _gray((48, 48), seed=len(folder) + ord(name[0])))
    _half(tmp_path / "ct" / "b.png", tmp_path / "ct" / "a.png")
    commands = [
        ["metrics", "--fused", str(tmp_path / "fused"), "--mri", str(tmp_path / "mri"), "--other", str(tmp_path / "ct")],
        ["evaluate", "--mri-dir", str(tmp_path / "mri"), "--other-dir", str(tmp_path / "ct"), "-o", str(tmp_path / "ev"),
         "--methods", "max"],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "b.png: cannot read image" in err, (argv[0], err)


def test_metrics_names_every_pair_it_cannot_score_at_once(tmp_path, capsys):
    """`lkcfusion metrics` over folders stopped at the first unscorable pair, so a folder with several could only
    be mended one run at a time (hand-check helper): one line names them all (a mean over the rest would not be the
    folder's, so nothing is scored)."""
    import numpy as np
    from PIL import Image

    for folder in ("mri", "ct", "fused"):
        (tmp_path / folder).mkdir()
        for name in ("a.png", "b.png", "c.png", "d.png"):
            _png(tmp_path / folder / name, _gray((48, 48), seed=len(folder) + ord(name[0])))
    _half(tmp_path / "ct" / "b.png", tmp_path / "ct" / "a.png")  # cut short
    Image.fromarray(np.full((48, 48), 4000, np.uint16)).save(tmp_path / "mri" / "c.png")  # 16-bit
    _png(tmp_path / "fused" / "d.png", _gray((40, 48), seed=9))  # another size
    assert main(["metrics", "--fused", str(tmp_path / "fused"), "--mri", str(tmp_path / "mri"), "--other",
                 str(tmp_path / "ct")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lkcfusion: error: 3 pairs cannot be scored: "), err
    assert "b.png: cannot read image" in err[0] and "c.png: not an 8-bit picture" in err[0], err
    assert "d.png: sizes differ: fused (40, 48)" in err[0], err


@pytest.mark.parametrize("option, example", [("--csv", "metrics.csv"), ("--summary-csv", "summary.csv"),
                                             ("--json", "metrics.json")])
def test_metrics_output_that_is_a_folder_is_refused_before_scoring(tmp_path, capsys, option, example):
    """`lkcfusion metrics --csv FOLDER` scored every pair, printed the table, then failed suggesting 'fused.nii.gz'."""
    for folder in ("mri", "ct", "fused"):
        (tmp_path / folder).mkdir()
        _png(tmp_path / folder / "a.png", _gray((48, 48), seed=len(folder)))
    (tmp_path / "tables").mkdir()
    code = main(["metrics", "--fused", str(tmp_path / "fused"), "--mri", str(tmp_path / "mri"),
                 "--other", str(tmp_path / "ct"), option, str(tmp_path / "tables")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "", captured.out  # nothing scored or printed
    assert captured.err.strip() == (f"lkcfusion: error: {tmp_path / 'tables'}: is a folder; give a file name "
                                    f"(e.g. {tmp_path / 'tables' / example})")


@pytest.mark.parametrize("option, value, said", [
    ("--device", "meta", "device meta: not a device this package runs on; use cpu or cuda"),
    ("--device", "xla", "device xla: not a device this package runs on"),
    ("--device", "mps", "device mps: Apple's MPS is not available on this machine"),
    ("--device", "cpu:5", "device cpu:5: the CPU has no device index"),
    ("--threads", "100000", "threads 100000: more than 4 per core of this machine"),
    ("--workers", "20000", "workers 20000: more than 4 per core of this machine"),
])
def test_devices_and_thread_counts_this_machine_cannot_use_are_one_line(tmp_path, capsys, option, value, said):
    """Hand-check helper: --device meta ended in a traceback, mps/xla/cpu:5 blamed the (healthy) weights file,
    --threads 20000 was OpenMP's bare "Thread creation failed" and 100000 a segfault (exit 139)."""
    if value == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    mri, other = _png(tmp_path / "mri.png", _gray()), _png(tmp_path / "ct.png", _gray(seed=1))
    code, _, err = _fuse([str(mri), str(other), "-o", str(tmp_path / "f.png"), option, value], capsys)
    errors = [line for line in err.splitlines() if line.startswith("lkcfusion: error:")]
    assert code == 2 and len(errors) == 1 and said in errors[0] and "Traceback" not in err, err
    assert not (tmp_path / "f.png").exists()
    if option == "--device":  # cpu:0 is the CPU (it blamed the weights file; re-check helper)
        assert _fuse([str(mri), str(other), "-o", str(tmp_path / "f.png"), "--device", "cpu:0"], capsys)[0] == 0


@pytest.mark.parametrize("argv, said", [
    (["fuse", "--mri-dir", "{d}/m", "--other-dir", "{d}/c", "-o", ""], "-o/--output: an empty value"),
    (["fuse", "{d}/m/a.png", "", "-o", "{d}/y.png"], "OTHER: an empty value"),
    (["evaluate", "--mri-dir", "{d}/m", "--other-dir", "{d}/c", "-o", ""], "an empty value"),
    (["metrics", "--mri", "{d}/m", "--other", "{d}/c", "--fused", "{d}/m", "--json", ""],
     "--json: an empty value"),
    (["fuse", "{d}/m/a.png", "{d}/c/a.png", "-o", "{d}/y.png", "--modality", ""], "--modality: an empty value"),
])
def test_empty_values_are_refused(tmp_path, capsys, argv, said):
    """-o "" in batch mode ended in a traceback (AttributeError), evaluate -o "" wrote into the working folder and
    said "wrote /metrics.csv", metrics --json "" wrote nothing without a word, --modality "" was auto (helper)."""
    from monai_lkcfusion.cli import main

    for folder in ("m", "c"):
        (tmp_path / folder).mkdir()
        _png(tmp_path / folder / "a.png", _gray(seed=len(folder)))
    code = main([arg.format(d=tmp_path) for arg in argv])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("lkcfusion: error:")]
    assert code == 2 and len(errors) == 1 and said in errors[0] and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "m"]
