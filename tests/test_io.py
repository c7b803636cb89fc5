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


def test_nifti_whose_qform_and_sform_disagree_is_warned(tmp_path):
    """nibabel (and this package) place such a file by its sform, ITK and 3D Slicer by its qform: say so."""
    import warnings

    data = np.random.default_rng(0).random((12, 10, 6)).astype(np.float32)
    qform = np.diag([0.9, 0.9, 3.0, 1.0])
    qform[:3, 3] = (-50.0, -40.0, -9.0)
    for shift, warned in ((0.0, False), (0.05, False), (40.0, True)):
        sform = qform.copy()
        sform[0, 3] += shift
        image = nib.Nifti1Image(data, None)
        image.set_qform(qform, code=1)
        image.set_sform(sform, code=2)
        nib.save(image, tmp_path / "m.nii.gz")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            read = read_image(tmp_path / "m.nii.gz")
        said = [str(w.message) for w in caught if "qform and sform" in str(w.message)]
        assert bool(said) == warned, said
        assert np.allclose(read.affine.numpy(), sform)  # the sform is used, as nibabel and MONAI do
        if warned:
            assert "40.0 mm apart" in said[0] and "3D Slicer use the qform" in said[0]


def test_volume_with_a_sheared_affine_is_written_by_its_sform_only(tmp_path):
    """A NIfTI qform cannot hold a shear: both forms were written, the qform an approximation 10 mm off that ITK and
    3D Slicer place the result by (and this package's reader then warned of): the sform only now, with a warning."""
    import warnings

    import SimpleITK as sitk

    affine = np.array([[1.0, 0.3, 0.0, -32.0], [0.0, 1.0, 0.0, -57.0], [0.0, 0.0, 1.0, 7.0], [0.0, 0.0, 0.0, 1.0]])
    volume = MetaTensor(torch.rand(1, 30, 30, 12), affine=torch.as_tensor(affine))
    with pytest.warns(UserWarning, match="has a shear.*sform only"):
        write_image(volume, tmp_path / "f.nii.gz")
    header = nib.load(tmp_path / "f.nii.gz").header
    assert int(header["qform_code"]) == 0 and int(header["sform_code"]) == 1
    np.testing.assert_allclose(header.get_sform(), affine, atol=1e-5)
    with pytest.raises(RuntimeError, match="orthonormal"):  # ITK refuses it rather than misplace it
        sitk.ReadImage(str(tmp_path / "f.nii.gz"))
    for suffix in (".nrrd", ".nii.gz"):  # other formats keep it; an oblique affine without shear keeps both forms
        oblique = np.eye(4)
        oblique[:3, :3] = np.array([[0.9, -0.3, 0.0], [0.3, 0.9, 0.0], [0.0, 0.0, 1.0]]) * [1.0, 1.0, 2.5]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            write_image(MetaTensor(torch.rand(1, 8, 8, 4), affine=torch.as_tensor(oblique)), tmp_path / f"o{suffix}")
    assert int(nib.load(tmp_path / "o.nii.gz").header["qform_code"]) == 1


def test_dicom_file_named_without_an_extension(tmp_path):
    """Scanners and PACS exports name files ``IM_0001``: such a file, alone or as the only file of a folder, is read
    as DICOM (recognised by its ``DICM`` marker); it was refused as "unsupported format ''", the folder a KeyError."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from dicom_util import write_series

    plane = (np.random.default_rng(0).random((1, 16, 18)) * 1000).astype(np.uint16)
    write_series(tmp_path / "one", plane, spacing=(0.5, 0.6, 2.0))
    (dcm,) = (tmp_path / "one").iterdir()
    named = dcm.rename(tmp_path / "one" / "IM_0001")
    copy = tmp_path / "copy.dcm"  # the same bytes, named as before
    copy.write_bytes(named.read_bytes())
    reference = read_image(copy)
    for source in (named, tmp_path / "one"):
        image = read_image(source)
        assert image.shape == reference.shape == (1, 18, 16, 1)
        assert torch.equal(image.as_tensor(), reference.as_tensor()) and np.allclose(image.affine, reference.affine)
    text = tmp_path / "notes"  # no extension and not DICOM: still named as an unsupported format
    text.write_text("x" * 200)
    with pytest.raises(FusionInputError, match="unsupported format"):
        read_image(text)


def test_exif_orientation_is_not_applied_and_is_warned(tmp_path):
    """A photo viewer rotates a JPEG/PNG with an EXIF orientation; its partner has no such tag, so the stored order is
    read, and the tag is named (it was read without a word while the docs said "as displayed")."""
    import warnings

    stored = (np.arange(20 * 30).reshape(20, 30) % 251).astype(np.uint8)
    for orientation, warned in ((1, False), (6, True)):
        image = Image.fromarray(stored)
        exif = image.getexif()
        exif[0x0112] = orientation
        image.save(tmp_path / "m.png", exif=exif)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            read = read_image(tmp_path / "m.png")
        assert np.array_equal(read[0].numpy(), stored)
        said = [str(w.message) for w in caught if "EXIF orientation" in str(w.message)]
        assert bool(said) == warned and (not said or "EXIF orientation 6" in said[0]), said


@pytest.mark.parametrize("codes", [(0, 4), (1, 2), (2, 0), (0, 0), (1, 1)])
def test_fused_nifti_keeps_the_mris_coordinate_codes(tmp_path, capsys, codes) -> None:
    """Every NIfTI result was written with qform and sform code 1 (scanner): an MNI-template MRI (sform code 4)
    came back as scanner space, and a header without orientation (both 0) came back with nibabel's guess written
    as real geometry, which ITK and 3D Slicer then placed elsewhere than the input (helper). The codes are kept,
    and a header without orientation is named."""
    import SimpleITK as sitk

    from monai_lkcfusion.cli import main

    rng = np.random.default_rng(0)
    affine = np.array([[1.5, 0, 0, -10], [0, 1.2, 0, 20], [0, 0, 2, 5], [0, 0, 0, 1.0]])
    paths = []
    for name in ("mri", "pet"):
        if codes == (0, 0):
            nii = nib.Nifti1Image((rng.random((20, 24, 16)) * 1000).astype(np.int16), None)
            nii.header.set_zooms((1.5, 1.2, 2.0))
        else:
            nii = nib.Nifti1Image((rng.random((20, 24, 16)) * 1000).astype(np.int16), affine)
            nii.header.set_qform(affine if codes[0] else None, code=codes[0])
            nii.header.set_sform(affine if codes[1] else None, code=codes[1])
        nib.save(nii, str(tmp_path / f"{name}.nii.gz"))
        paths.append(str(tmp_path / f"{name}.nii.gz"))
    out = tmp_path / "fused.nii.gz"
    assert main(["fuse", *paths, "-o", str(out), "--method", "max", "-q"]) == 0
    err = capsys.readouterr().err
    written, source = nib.load(str(out)), nib.load(paths[0])
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == codes
    assert np.allclose(written.affine, source.affine, atol=1e-4)
    itk_in, itk_out = sitk.ReadImage(paths[0]), sitk.ReadImage(str(out))  # ITK (and Slicer) place it as the input
    for get in ("GetOrigin", "GetDirection", "GetSpacing"):
        assert np.allclose(getattr(itk_in, get)(), getattr(itk_out, get)(), atol=1e-5), get
    assert ("header gives no orientation" in err) == (codes == (0, 0)), err


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.float64])
def test_fit_float32_gives_one_new_copy_in_index_order(dtype) -> None:
    """The ITK reader passes a transposed view of ITK's own buffer: ``fit_float32`` makes the one float32 copy, in
    the view's index order and C-contiguous (the reader made three copies, 7x the volume's size at peak), and never
    returns the buffer itself."""
    from monai_lkcfusion.data.io import fit_float32

    stored = (np.arange(2 * 3 * 4) * 7 % 23).astype(dtype).reshape(2, 3, 4)
    view = stored.transpose(2, 1, 0)
    out = fit_float32(view)
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"] and out.shape == (4, 3, 2)
    assert np.array_equal(out, view.astype(np.float32)) and not np.shares_memory(out, stored)
    for dtype in (np.float64, np.float32):  # beyond the safe range (1e30; float32 too, review helper): scaled down
        huge = np.full((3, 2), 3e38, dtype=dtype).T
        with pytest.warns(UserWarning, match="divided by 2"):
            scaled = fit_float32(huge)
        assert scaled.flags["C_CONTIGUOUS"] and scaled.max() <= 1e30 and scaled.shape == (2, 3)


def test_an_unoriented_grid_moved_since_it_was_read_is_written_where_it_now_lies(tmp_path, capsys) -> None:
    """An MRI without orientation (codes 0) kept codes 0 after MONAI's Orientation/Spacing gave it a new affine:
    every reader then placed the result by its voxel sizes, up to 25 mm from the MetaTensor's affine (review
    helper); and a 2D such NIfTI ended in a traceback (``Expecting 2 zoom values``)."""
    from monai.transforms import CenterSpatialCrop, EnsureChannelFirst, LoadImage, Orientation

    from monai_lkcfusion.cli import main

    nii = nib.Nifti1Image(np.random.default_rng(0).random((12, 10, 6)).astype(np.float32), None)
    nii.header.set_zooms((1.5, 1.2, 2.0))
    nib.save(nii, str(tmp_path / "mri.nii.gz"))
    loaded = EnsureChannelFirst()(LoadImage(image_only=True)(str(tmp_path / "mri.nii.gz")))
    for transform, codes in ((lambda x: x, (0, 0)), (Orientation("LPI"), (1, 1)),
                             (CenterSpatialCrop((6, 4, -1)), (1, 1))):  # a centred crop keeps nibabel's placement
                                                                        # rule but not the voxels' places (re-check)
        moved = transform(loaded)
        out = write_image(moved, tmp_path / "out.nii.gz", overwrite=True)
        header = nib.load(str(out)).header
        assert (int(header["qform_code"]), int(header["sform_code"])) == codes
        assert np.allclose(nib.load(str(out)).affine, np.asarray(moved.affine), atol=1e-4)
    for name in ("mri2d", "ct2d"):  # 2D files without orientation
        flat = nib.Nifti1Image(np.random.default_rng(1).random((14, 9)).astype(np.float32) * 100, None)
        flat.header.set_zooms((0.8, 0.9))
        nib.save(flat, str(tmp_path / f"{name}.nii.gz"))
    assert main(["fuse", str(tmp_path / "mri2d.nii.gz"), str(tmp_path / "ct2d.nii.gz"), "-o", str(tmp_path / "f.nii.gz"),
                 "--method", "max", "-q"]) == 0, capsys.readouterr().err
    written = nib.load(str(tmp_path / "f.nii.gz"))
    assert written.shape == (14, 9) and int(written.header["sform_code"]) == 0
    assert np.allclose(written.affine, nib.load(str(tmp_path / "mri2d.nii.gz")).affine)
