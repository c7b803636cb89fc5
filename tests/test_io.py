"""Readers and writers: formats, geometry round trips, atomic writes, one-line errors for bad files."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from monai_lkcfusion.data import atomic_path, read_image, write_image
from monai_lkcfusion.errors import FusionInputError


def _oblique_affine() -> np.ndarray:
    angle = np.deg2rad(12.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.9, 1.1, 2.5])
    affine[:3, 3] = [-40.5, 12.25, -7.0]
    return affine


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_volume_round_trip_keeps_geometry(tmp_path, suffix):
    data = torch.rand(1, 7, 6, 5)
    img = MetaTensor(data, affine=torch.as_tensor(_oblique_affine()))
    path = write_image(img, tmp_path / f"v{suffix}")
    back = read_image(path)
    assert back.shape == (1, 7, 6, 5)
    assert np.allclose(back.affine.numpy(), _oblique_affine(), atol=1e-5)
    assert torch.allclose(back, data, atol=1e-6)


def test_nifti_reader_matches_nibabel(tmp_path):
    arr = np.random.default_rng(0).random((5, 4, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(arr, _oblique_affine()), str(tmp_path / "a.nii.gz"))
    img = read_image(tmp_path / "a.nii.gz")
    assert np.allclose(img[0].numpy(), arr) and img.meta["spatial_dims"] == 3
    nib.save(nib.Nifti1Image(arr[:, :, :, None, None], _oblique_affine()), str(tmp_path / "v.nii.gz"))
    assert np.allclose(read_image(tmp_path / "v.nii.gz")[0].numpy(), arr)  # (X, Y, Z, 1, 1): a 1-vector is gray
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), str(tmp_path / "t.nii.gz"))
    with pytest.raises(FusionInputError, match="3 frames"):
        read_image(tmp_path / "t.nii.gz")


def test_picture_round_trip(tmp_path):
    rgb = torch.rand(3, 9, 11)
    back = read_image(write_image(rgb, tmp_path / "c.png"))
    assert back.shape == (3, 9, 11) and torch.allclose(back / 255, rgb, atol=0.5 / 255 + 1e-6)
    gray = read_image(write_image(rgb[:1], tmp_path / "g.png"))
    assert gray.shape == (1, 9, 11) and gray.meta["display_max"] == 255
    with pytest.raises(FusionInputError, match="cannot be written"):
        write_image(torch.rand(1, 4, 4, 4), tmp_path / "v.png")


def test_jpeg_output_keeps_the_gray_levels(tmp_path):
    """A fused colour slice written as JPEG (lossy) reads back within 2 gray levels of the PNG (exact): PIL's
    default quality and quarter-resolution chroma moved them by up to ~40 on this real PET slice."""
    from monai_lkcfusion.data import demo_files
    from monai_lkcfusion.inference import fuse
    from monai_lkcfusion.metrics.utils import gray8

    files = demo_files()
    fused = fuse(files["mri_2d"], files["pet_2d"], method="max")  # (3, H, W): colour, sharp edges
    exact, lossy = (gray8(read_image(write_image(fused, tmp_path / f"f{suffix}"))) for suffix in (".png", ".jpg"))
    assert fused.shape[0] == 3 and np.abs(lossy - exact).max() <= 2


def test_existing_output_kept_and_atomic(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"precious")
    with pytest.raises(FusionInputError, match="--overwrite"):
        write_image(torch.rand(1, 4, 4), target)
    assert target.read_bytes() == b"precious"
    write_image(torch.rand(1, 4, 4), target, overwrite=True)
    assert read_image(target).shape == (1, 4, 4)
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "half.nii.gz") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_bad_files_give_one_line_errors(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:40])
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti at all")
    (tmp_path / "x.xyz").write_bytes(b"1")
    cases = {"missing.png": "not found", "empty.png": "empty file", "cut.png": "cannot read",
             "junk.nii.gz": "cannot read", "x.xyz": "unsupported format", ".": "no DICOM series"}
    for name, message in cases.items():
        with pytest.raises(FusionInputError, match=message) as info:
            read_image(tmp_path / name)
        assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


@pytest.mark.parametrize("suffix", [".MHA", ".Mha", ".Nii.Gz", ".NII", ".Nrrd", ".PNG", ".Jpg"])
def test_upper_and_mixed_case_extensions_are_written_whole(tmp_path, suffix):
    """The extension picks the format whatever its case; ``F.MHA`` was left empty (ITK wrote the temporary file's
    ``.MHA`` name as a ``.mhd`` header and a ``.raw`` beside it) and ``.Nii.Gz`` too (nibabel refused it), while the
    write reported success."""
    volume = suffix.lower() not in (".png", ".jpg")
    data = torch.rand(1, 6, 5, 4) if volume else torch.rand(1, 6, 5)
    img = MetaTensor(data, affine=torch.as_tensor(_oblique_affine())) if volume else data
    path = write_image(img, tmp_path / f"F{suffix}")
    back = read_image(path)
    assert path.name == f"F{suffix}" and path.stat().st_size > 0
    assert back.shape == data.shape
    assert torch.allclose(back / (1 if volume else 255), data, atol=1e-6 if volume else 0.03)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"F{suffix}"]  # nothing left beside it


@pytest.mark.parametrize("unit, mm", [("meter", 1000.0), ("micron", 0.001), ("mm", 1.0), ("unknown", 1.0)])
def test_nifti_spatial_units_are_read_as_millimetres(tmp_path, unit, mm):
    """``xyzt_units`` metres were read as millimetres: a PET on the MRI's grid stored in metres covered "0%" of it
    (0.001 mm voxels) and was fused anyway; ITK converts to mm, and so do we. Outputs say mm."""
    affine = _oblique_affine()
    stored = affine.copy()
    stored[:3] /= mm  # the same geometry in the file's unit
    nii = nib.Nifti1Image(np.random.default_rng(0).random((5, 4, 3)).astype(np.float32), stored)
    nii.header.set_xyzt_units(unit)
    nib.save(nii, str(tmp_path / "a.nii.gz"))
    img = read_image(tmp_path / "a.nii.gz")
    assert np.allclose(img.affine.numpy()[:3], affine[:3], atol=1e-6)
    out = nib.load(str(write_image(img, tmp_path / "b.nii.gz")))
    assert out.header.get_xyzt_units()[0] == "mm" and np.allclose(out.affine, affine, atol=1e-5)
