"""DICOM as scanners and PACS exports write it: enhanced multi-frame files, localizers, missing pixel sizes,
undecodable compression, CD/PACS folder layouts. Each case is read right or refused in one line."""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from monai_lkcfusion.cli import main
from monai_lkcfusion.data.io import read_image
from monai_lkcfusion.errors import FusionInputError

sys.path.insert(0, str(Path(__file__).parent))
from dicom_util import write_frames, write_series  # noqa: E402

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
FRAMES = 6


def _frames() -> np.ndarray:
    return np.random.default_rng(0).integers(100, 1000, (FRAMES, 10, 12)).astype(np.uint16)


ENHANCED_MISPLACED = {  # positions (LPS) and orientations of each frame; the refusal's words
    "frames shuffled": ([(0, 0, 3.0 * k) for k in (0, 2, 5, 1, 4, 3)], [AXIAL] * FRAMES, "not stored in slice order"),
    "missing frames": ([(0, 0, 3.0 * k + (9 if k > 2 else 0)) for k in range(FRAMES)], [AXIAL] * FRAMES,
                       "not evenly spaced"),
    "two echoes": ([(0, 0, 3.0 * (k % 3)) for k in range(FRAMES)], [AXIAL] * FRAMES, "6 frames at only 3 slice"),
    "two orientations": ([(0, 0, 3.0 * k) for k in range(FRAMES)], [AXIAL] * 3 + [(0, 1, 0, 0, 0, -1)] * 3,
                         "3 frame(s) of another orientation"),
    "gantry tilt": ([(0, 2.0 * k, 3.0 * k) for k in range(FRAMES)], [AXIAL] * FRAMES, "gantry tilt"),
}


@pytest.mark.parametrize("case", ENHANCED_MISPLACED)
def test_enhanced_multiframe_frames_itk_would_misplace_are_refused(tmp_path, capsys, case):
    """ITK stacks an enhanced file's frames as stored, from frame 1, evenly (1 mm when uneven): shuffled frames,
    gaps, several echoes in one file, mixed orientations and a tilt were all read without a word, misplaced."""
    positions, orientations, needle = ENHANCED_MISPLACED[case]
    path = tmp_path / "enh" / "IM_0001"
    write_frames(path, _frames(), positions, orientations)
    for source in (path, path.parent):
        with pytest.raises(FusionInputError, match=re.escape(needle)) as info:
            read_image(source, allow_irregular_slices=True)  # the flag cannot make ITK place them right
        assert "\n" not in str(info.value) and "dcm2niix" in str(info.value)
    nib.save(nib.Nifti1Image(np.ones((12, 10, 6), np.float32), np.eye(4)), str(tmp_path / "pet.nii.gz"))
    out = tmp_path / "f.nii.gz"
    code = main(["fuse", str(path.parent), str(tmp_path / "pet.nii.gz"), "-o", str(out), "--method", "max"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lkcfusion: error:") and needle in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("step", [3.0, -3.0])
def test_enhanced_multiframe_in_slice_order_is_placed_frame_by_frame(tmp_path, step):
    """Frames ascending or descending along the normal: every frame's first voxel lies at its
    ImagePositionPatient (LPS -> RAS), and the values are the stored ones."""
    frames = _frames()
    positions = [(-20.0, 30.0, 40.0 + step * k) for k in range(FRAMES)]
    write_frames(tmp_path / "enh.dcm", frames, positions, [AXIAL] * FRAMES)
    img = read_image(tmp_path / "enh.dcm")
    assert img.shape == (1, 12, 10, FRAMES) and np.array_equal(img[0].numpy(), frames.transpose(2, 1, 0))
    for k, position in enumerate(positions):
        ras = (img.affine.numpy() @ np.array([0, 0, k, 1.0]))[:3]
        assert np.allclose(ras, np.array(position) * [-1, -1, 1], atol=1e-4)


def test_enhanced_pet_with_a_rescale_slope_per_frame_is_scaled_frame_by_frame(tmp_path):
    """Enhanced PET stores one RescaleSlope per frame (PixelValueTransformationSequence); ITK applied frame 1's to
    every frame (frame 6 read 1000x too bright, frame 2 at half its value)."""
    frames = np.tile(((np.arange(FRAMES) + 1) * 100)[:, None, None], (1, 10, 12)).astype(np.uint16)
    slopes = [0.5, 1.0, 2.0, 3.0, 0.25, 1e-3]
    write_frames(tmp_path / "pet.dcm", frames, [(0, 0, 3.0 * k) for k in range(FRAMES)], [AXIAL] * FRAMES,
                 slopes=slopes, modality="PT")
    values = read_image(tmp_path / "pet.dcm")[0].numpy()  # (X, Y, Z)
    expected = (np.asarray(slopes) * frames[:, 0, 0])[None, None, :]
    assert np.allclose(values, expected, rtol=1e-5)


def test_localizer_saved_in_the_series_is_named(tmp_path):
    """A scout of another plane with the series' UID: the refusal named orientations, 76.7 mm gaps and a 36.9 degree
    gantry tilt (all computed with the localizer mixed in) but not the file to remove."""
    volume = _frames()
    uid = write_series(tmp_path / "t1", volume)
    write_series(tmp_path / "scout", volume[:1], uid=uid, description="LOC")
    scout = pydicom.dcmread(next((tmp_path / "scout").iterdir()))
    scout.ImageOrientationPatient, scout.ImagePositionPatient = [1, 0, 0, 0, 0, -1], [-50, 0, 100]
    scout.save_as(tmp_path / "t1" / "LOC_001.dcm")
    with pytest.raises(FusionInputError, match=r"1 slice\(s\) of another orientation .* than the other 6 "
                                               r"\(LOC_001.dcm: a localizer\? remove them\)") as info:
        read_image(tmp_path / "t1")
    assert "gantry tilt" not in str(info.value) and "evenly spaced" not in str(info.value)
    (tmp_path / "t1" / "LOC_001.dcm").unlink()
    assert read_image(tmp_path / "t1").shape == (1, 12, 10, FRAMES)


@pytest.mark.parametrize("spacing", [None, [0.0, 0.0], [-0.9, 0.8]])
def test_dicom_without_a_pixel_size_is_refused_not_read_at_1_mm(tmp_path, spacing):
    """No PixelSpacing (or 0, or negative): ITK read 1 mm pixels without a word, so the image was placed against
    the other one at a guessed size; refused (series and single file), read with a warning when accepted."""
    write_series(tmp_path / "s", _frames())
    for name in (tmp_path / "s").iterdir():
        ds = pydicom.dcmread(name)
        if spacing is None:
            del ds.PixelSpacing
        else:
            ds.PixelSpacing = spacing
        ds.save_as(name)
    one = min((tmp_path / "s").iterdir())
    for source in (tmp_path / "s", one):
        with pytest.raises(FusionInputError, match="PixelSpacing above 0.*pixel size is unknown") as info:
            read_image(source)
        assert "--allow-irregular-slices" in str(info.value) and "\n" not in str(info.value)
        with pytest.warns(UserWarning, match="accepted: --allow-irregular-slices"):
            read_image(source, allow_irregular_slices=True)


def test_undecodable_transfer_syntax_is_named_in_one_line(tmp_path, capfd):
    """HTJ2K (or any codec GDCM lacks): the message was ITK's "Failed to change to Implicit Transfer Syntax" with a
    C++ source path, and GDCM printed "Invalid marker size" per file."""
    from pydicom.encaps import encapsulate

    write_series(tmp_path / "s", _frames())
    for name in (tmp_path / "s").iterdir():
        ds = pydicom.dcmread(name)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.201"  # HTJ2K Lossless
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(200)])
        ds["PixelData"].VR = "OB"
        ds.save_as(name)
    for source in (tmp_path / "s", next((tmp_path / "s").iterdir())):
        with pytest.raises(FusionInputError, match=r"compressed as High-Throughput JPEG 2000 .*\(1.2.840.10008.1.2.4"
                                                   r".201\), which the installed DICOM reader .* cannot decode; convert"):
            read_image(source)
    write_series(tmp_path / "mri", _frames())
    capfd.readouterr()
    code = main(["fuse", str(tmp_path / "mri"), str(tmp_path / "s"), "-o", str(tmp_path / "f.nii.gz")])
    lines = capfd.readouterr().err.strip().splitlines()  # GDCM's own lines included (file descriptor 2)
    assert code == 2 and len(lines) == 1 and "cannot decode" in lines[0], lines


def test_pacs_export_folder_names_the_series_sub_folders(tmp_path):
    """A CD/PACS export (DICOMDIR at the top, slices in DICOM/ST0/SE0/) given as the series folder: "folder holds
    no DICOM series" did not say where the slices were."""
    write_series(tmp_path / "cd" / "DICOM" / "ST0" / "SE0", _frames())
    (tmp_path / "cd" / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + bytes(40))
    with pytest.raises(FusionInputError, match=r"cd: folder holds no DICOM series; its sub-folders hold DICOM files "
                                               r"\(DICOM/ST0/SE0\): give the folder of one series, e\.g\. .*SE0$"):
        read_image(tmp_path / "cd")
    assert read_image(tmp_path / "cd" / "DICOM" / "ST0" / "SE0").shape == (1, 12, 10, FRAMES)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.52", "1.2.840.10008.1.2.4.53", "1.2.840.10008.1.2.4.55"])
def test_retired_jpeg_transfer_syntaxes_that_gdcm_decodes_are_read(tmp_path, syntax):
    """JPEG processes 3/5, 6/8 and 10/12 (retired, in old archives): GDCM decodes them, and they were read before
    the transfer-syntax check, which refused them as undecodable."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate

    plane = np.random.default_rng(0).integers(0, 255, (1, 16, 16)).astype(np.uint16)
    write_series(tmp_path / "s", plane)
    name = next((tmp_path / "s").iterdir())
    ds = pydicom.dcmread(name)
    buffer = io.BytesIO()
    Image.fromarray(plane[0].astype(np.uint8)).save(buffer, format="JPEG", quality=95, progressive=True)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.file_meta.TransferSyntaxUID, ds.PixelData = syntax, encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(name)
    img = read_image(name)
    assert img.shape == (1, 16, 16, 1) and abs(float(img.mean()) - float(plane.mean())) < 2.0


def test_a_long_series_with_a_localizer_names_it(tmp_path, monkeypatch):
    """A 3000-slice series with one localizer: the localizer is named and the rest kept (the orientation shared by
    most slices was found by comparing every pair: 11 s for 2000 slices on one core, before any reading; now one
    pass, measured by hand: timings are not unit tests)."""
    from monai_lkcfusion.data.io import check_dicom_slices

    write_series(tmp_path / "s", _frames()[:1])
    template = pydicom.dcmread(next((tmp_path / "s").iterdir()))
    count = 3000

    def header(name, *args, **kwargs):
        ds = copy.deepcopy(template)  # Dataset.copy() shares the elements: a set value would reach every copy
        k = int(Path(name).stem)
        ds.ImagePositionPatient = [-50.0, -60.0, 0.5 * k]
        ds.SOPInstanceUID = f"1.2.3.{k}"
        if k == 7:  # a sagittal scout saved in the series
            ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
        return ds

    monkeypatch.setattr(pydicom, "dcmread", header)
    files = [str(tmp_path / "fake" / f"{k}.dcm") for k in range(count)]
    (tmp_path / "fake").mkdir()
    with pytest.raises(FusionInputError, match=r"1 slice\(s\) of another orientation .* than the other 2999 \(7\.dcm"):
        check_dicom_slices(tmp_path / "fake", files, [])


def _slices(folder: Path, count: int = 6, side: int = 512) -> list[str]:
    """A series of ``count`` 16-bit slices of ``side`` x ``side``, its files in slice order."""
    volume = np.random.default_rng(2).integers(0, 4000, (count, side, side)).astype(np.uint16)
    write_series(folder, volume, spacing=(1.0, 1.0, 2.0))
    return [str(f) for f in sorted(folder.glob("*.dcm"))]


def test_checking_slices_does_not_read_their_pixels(tmp_path):
    """The slice check reads headers only: a 512^2 slice's 512 KB of pixels are not loaded (reading every slice's
    pixels took half of the check of a 450-slice CT, and ITK reads them again); tracemalloc sees pydicom's bytes."""
    import tracemalloc

    from monai_lkcfusion.data.io import check_dicom_slices

    files = _slices(tmp_path / "s")
    tracemalloc.start()
    try:
        kept, messages = check_dicom_slices(tmp_path / "s", files)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert kept == files and messages == []
    assert peak < 512 * 512 * 2 // 2, f"{peak} bytes traced: pixel data was read"


@pytest.mark.parametrize("side", [16, 512])  # pixels read with the header (small) or left unread (large)
@pytest.mark.parametrize("half", [False, True])
def test_a_truncated_slice_is_named_without_reading_pixels(tmp_path, side, half):
    """A slice cut short (by 2 bytes, or by half of its pixels) is still found by the header-only check, and named."""
    from monai_lkcfusion.data.io import check_dicom_slices

    files = _slices(tmp_path / "s", side=side)
    data = Path(files[3]).read_bytes()
    Path(files[3]).write_bytes(data[: len(data) - (side * side if half else 2)])
    named = rf"1 file\(s\) of the folder are not readable DICOM .*{Path(files[3]).name}"
    with pytest.raises(FusionInputError, match=named):
        check_dicom_slices(tmp_path / "s", files)


def test_a_slice_declaring_fewer_pixel_bytes_than_its_size_is_named(tmp_path):
    """A slice whose pixel data is complete as declared but shorter than Rows x Columns (the header claims more
    rows) is not a readable slice."""
    from monai_lkcfusion.data.io import check_dicom_slices

    files = _slices(tmp_path / "s")
    ds = pydicom.dcmread(files[2])
    ds.Rows = 520
    ds.save_as(files[2])
    with pytest.raises(FusionInputError, match=rf"not readable DICOM .*{Path(files[2]).name}"):
        check_dicom_slices(tmp_path / "s", files)
