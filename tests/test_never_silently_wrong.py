"""Issue 17: never a silently wrong fusion. DICOM gaps, modality scaling, overflow, NaN weights, partial overlap,
no-clobber races, inputs as outputs, output-name collisions, stale temporary files, option values as code,
detached headers pointing elsewhere, and the tracebacks that became one line. Every input is made here."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from monai_lkcfusion.cli import main
from monai_lkcfusion.data.atomic import atomic_path, write_text
from monai_lkcfusion.data.io import fit_float32, read_image, write_image
from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.inference import fuse
from monai_lkcfusion.networks import LKCFUNet, save_network
from monai_lkcfusion.progress import Progress, Stage
from monai_lkcfusion.transforms import fusion_load_transforms, scale_to_unit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from dicom_util import write_series  # noqa: E402


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(code: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lkcfusion: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None, dtype=np.float32) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data, dtype), np.eye(4) if affine is None else affine), str(path))
    return path


def _volume(seed=0, shape=(20, 18, 8)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32) * 100


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def _gray(shape=(40, 36), seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


# -- 1. DICOM series with missing, corrupt, duplicated or unevenly spaced slices ---------------------------------
def _series(folder: Path, slices: int = 12, spacing: float = 3.0) -> Path:
    volume = (np.random.default_rng(1).random((slices, 16, 18)) * 1000).astype(np.uint16)
    write_series(folder, volume, spacing=(1.0, 1.0, spacing))
    return folder


def _damage(folder: Path, how: str) -> str:
    """Damage a series in one of several ways; returns text the error must contain."""
    files = sorted(folder.glob("*.dcm"))
    if how == "4 slices deleted":
        for f in files[4:8]:
            f.unlink()
        return "about 4 slice(s) missing"
    if how == "first inner slice deleted":
        files[1].unlink()
        return "not evenly spaced"
    if how == "truncated file":
        data = files[5].read_bytes()
        files[5].write_bytes(data[: len(data) * 2 // 3])
        return files[5].name
    if how == "random bytes":
        files[3].write_bytes(os.urandom(3000))
        return files[3].name
    if how == "duplicated file":
        shutil.copy(files[6], folder / "copy_of_6.dcm")
        return "duplicated slice"
    if how == "moved slice":  # one slice's position shifted by 1.4 mm (uneven spacing)
        import pydicom

        ds = pydicom.dcmread(files[7])
        ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [
            float(ds.ImagePositionPatient[2]) + 1.4]
        ds.save_as(files[7])
        return "not evenly spaced"
    if how == "gantry tilt":  # a tilted CT: each slice 3 mm on along z and 3 * tan(15 deg) = 0.8 mm on along y
        import pydicom

        for f in files:
            ds = pydicom.dcmread(f)
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y + (z - 10.0) * np.tan(np.radians(15.0)), z]
            ds.save_as(f)
        return "gantry tilt of about 15 degrees"
    raise ValueError(how)


DICOM_DAMAGE = ["4 slices deleted", "first inner slice deleted", "truncated file", "random bytes", "duplicated file",
                "moved slice", "gantry tilt"]


@pytest.mark.parametrize("how", DICOM_DAMAGE)
def test_irregular_dicom_series_refused_or_accepted_with_numbers(tmp_path, capsys, how):
    series = _series(tmp_path / "ct")
    needle = _damage(series, how)
    mri = _series(tmp_path / "mri")  # an intact series on the same grid
    out = tmp_path / "f.nii.gz"
    code, _, err = _run(["fuse", str(mri), str(series), "-o", str(out), "--method", "max"], capsys)
    _one_line_error(code, err, str(series), needle, "--allow-irregular-slices")
    assert not out.exists()
    code, stdout, err = _run(["fuse", str(mri), str(series), "-o", str(out), "--method", "max",
                              "--allow-irregular-slices"], capsys)
    assert code == 0 and out.exists() and "wrote" in stdout
    assert "lkcfusion: warning:" in err and "accepted: --allow-irregular-slices" in err and "Traceback" not in err


def test_regular_dicom_series_reads_without_warning(tmp_path, recwarn):
    series = _series(tmp_path / "ok")
    (tmp_path / "ok" / "IM0099").write_bytes(b"not dicom")  # a stray file is named: it may be a damaged slice
    with pytest.raises(FusionInputError, match="not readable DICOM slices .*remove those.*: IM0099; complete or clean "
                                               "up the series folder"):  # it said "were skipped" while refusing
        read_image(series)
    (tmp_path / "ok" / "IM0099").unlink()
    (tmp_path / "ok" / "DICOMDIR").write_bytes(b"index of a CD export")  # not a slice, not an error
    (tmp_path / "ok" / "README.txt").write_text("export notes")  # documents neither (they were named as slices)
    img = read_image(series)
    assert img.shape[-1] == 12 and abs(float(img.affine[2, 2]) - 3.0) < 1e-6
    assert not [w for w in recwarn if "slice" in str(w.message)]


def test_irregular_series_in_python_api(tmp_path):
    series = _series(tmp_path / "s")
    _damage(series, "4 slices deleted")
    with pytest.raises(FusionInputError, match="up to .* mm from their true position"):
        read_image(series)
    with pytest.warns(UserWarning, match="accepted"):
        img = read_image(series, allow_irregular_slices=True)
    assert img.shape[-1] == 8


# -- 2. modality scaling: the MRI is never CT-windowed unless asked ----------------------------------------------
@pytest.mark.parametrize("dtype,low", [(np.int16, -610), (np.int16, -32000), (np.float32, -700.0), (np.int32, -2e9)])
def test_mri_with_negative_values_is_scaled_as_mr(tmp_path, capsys, dtype, low):
    data = _volume(2) * 10
    data[0, 0, 0], data[1, 1, 1] = low, low  # a few undershoot voxels, as in nibabel's anatomical.nii
    if low < -1000:
        data[:5] = low / 2  # signed data with a large negative part
    mri = _nifti(tmp_path / "mri.nii.gz", data, dtype=dtype)
    other = _nifti(tmp_path / "pet.nii.gz", _volume(3))
    fused = fuse(str(mri), str(other), method="max", progress=False)
    assert fused.meta["mri_intensity_scaling"].startswith("MR percentiles")
    scaled, _ = scale_to_unit(torch.as_tensor(data[None].astype(np.float32)), "MR")
    assert float((scaled > 0).float().mean()) > 0.5  # the structure survives
    code, out, _ = _run(["fuse", str(mri), str(other), "-o", str(tmp_path / "f.nii.gz"), "--method", "max"], capsys)
    assert code == 0 and "MRI scaled by MR percentiles" in out and "other by" in out


def test_small_negative_noise_keeps_the_background_black(tmp_path):
    """A PET whose zero background holds small negative noise (reconstruction), or an MRI with noise about 0 in the
    air: the 0.5th percentile, below 0, lifted 0 to ~0.02 after scaling, so the background mask never fired and the
    fusion had a uniform haze where both images are empty (found by a hand-check helper). A z-scored MRI, whose
    background lies far below 0, keeps its low percentile."""
    rng = np.random.default_rng(0)
    mri = np.zeros((24, 20, 10), np.float32)
    mri[4:20, 4:16, 2:8] = 100.0 + 20.0 * rng.random((16, 12, 6))
    pet = np.zeros_like(mri)
    pet[8:14, 6:12, 3:7] = 800.0 + 100.0 * rng.random((6, 6, 4))
    noisy = pet.copy()
    background = (pet == 0) & (rng.random(pet.shape) < 0.3)
    noisy[background] = rng.normal(0.0, 10.0, int(background.sum()))  # about 1% of the maximum
    empty = (mri == 0) & (noisy <= 0)  # nothing in either image (positive noise is signal as far as anyone can tell)
    for method in ("max", "lkcfunet"):
        fused = fuse(str(_nifti(tmp_path / "mri.nii.gz", mri)), str(_nifti(tmp_path / "pet.nii.gz", noisy)),
                     method=method, progress=False)
        assert "negatives taken as noise about 0" in fused.meta["other_intensity_scaling"]
        assert float(fused[0].numpy()[empty].max()) == 0.0, method
        clean = fuse(str(_nifti(tmp_path / "mri.nii.gz", mri)), str(_nifti(tmp_path / "pet.nii.gz", pet)),
                     method=method, progress=False)
        np.testing.assert_allclose(fused.numpy()[:, ~background], clean.numpy()[:, ~background], atol=0.02)
    z = (mri - mri.mean()) / mri.std()  # background at -0.8, tissue up to 2.3
    scaled, record = scale_to_unit(torch.as_tensor(z[None]), "MR")
    assert "noise" not in record["intensity_scaling"] and float(scaled[0][mri == 0].max()) == 0.0
    assert float(scaled[0][mri > 0].min()) > 0.2  # tissue below the mean keeps its contrast (not clipped to 0)
    tissue = rng.uniform(-120.0, 3000.0, (1, 20, 20, 8)).astype(np.float32)  # a CT cropped to tissue, no air (a
    tissue[tissue < -90.0] = rng.uniform(-120.0, -90.0, int((tissue < -90.0).sum()))  # review): fat is signal
    _, record = scale_to_unit(torch.as_tensor(tissue))
    assert "noise" not in record["intensity_scaling"] and "= [-" in record["intensity_scaling"], record


def test_unit_range_data_with_a_rounding_undershoot_stays_unit_range():
    """Float data in [0, 1] with one voxel at -1e-7 (an interpolation undershoot) was scaled by its percentiles
    instead, moving a Harvard MRI slice by up to 48 gray levels on a third of its pixels."""
    rng = np.random.default_rng(1)
    mri = rng.random((1, 48, 40)).astype(np.float32) * 0.8
    pet = rng.random((1, 48, 40)).astype(np.float32)
    reference = fuse(torch.as_tensor(mri), torch.as_tensor(pet), method="max", progress=False)
    mri[0, 0, 0] = -1e-7
    fused = fuse(torch.as_tensor(mri), torch.as_tensor(pet), method="max", progress=False)
    assert fused.meta["mri_intensity_scaling"] == "display range / 1"
    np.testing.assert_allclose(fused.numpy(), reference.numpy(), atol=1e-6)


def test_modalities_can_be_set_and_ct_is_still_detected(tmp_path, capsys):
    ct = np.full((20, 18, 8), -1000.0, np.float32)  # air around a head of soft tissue and bone
    ct[4:16, 4:14] = 40.0
    ct[4:16, 4] = 1200.0
    mri = _nifti(tmp_path / "mri.nii.gz", _volume())
    other = _nifti(tmp_path / "ct.nii.gz", ct, dtype=np.int16)
    fused = fuse(str(mri), str(other), method="max", progress=False)
    assert fused.meta["other_intensity_scaling"].startswith("CT window")
    forced = fuse(str(mri), str(other), method="max", progress=False, mri_modality="CT", modality="PET")
    assert forced.meta["mri_intensity_scaling"].startswith("CT window")
    assert forced.meta["other_intensity_scaling"].startswith("PET percentiles")
    code, out, _ = _run(["fuse", str(mri), str(other), "-o", str(tmp_path / "f.nii.gz"), "--method", "max",
                         "--mri-modality", "MR", "--modality", "CT"], capsys)
    assert code == 0 and "other (CT) by CT window [-500, 1500] HU" in out
    code, _, err = _run(["fuse", str(mri), str(other), "-o", str(tmp_path / "g.nii.gz"), "--method", "max",
                         "--mri-modality", "XR"], capsys)
    _one_line_error(code, err, "unknown modality 'XR'")


def test_signed_int32_picture_is_not_windowed_as_ct(tmp_path):
    ramp = np.linspace(-2e9, 2e9, 40 * 36).reshape(40, 36).astype(np.int32)
    Image.fromarray(ramp).save(tmp_path / "other.tif")
    scaled, record = scale_to_unit(read_image(tmp_path / "other.tif"))
    assert "percentiles" in record["intensity_scaling"]
    assert float((scaled == 1).float().mean()) < 0.01 and float((scaled == 0).float().mean()) < 0.01


# -- 3. values beyond float32 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("factor", [1e300, 1e40, -1e200])
def test_huge_float64_values_keep_their_structure(tmp_path, capsys, factor):
    base = _volume(4).astype(np.float64) + 1.0
    mri = _nifti(tmp_path / "mri.nii.gz", _volume())
    plain = fuse(str(mri), str(_nifti(tmp_path / "p.nii.gz", base, dtype=np.float64)), method="max", progress=False)
    huge = _nifti(tmp_path / "huge.nii.gz", base * factor, dtype=np.float64)
    with pytest.warns(UserWarning, match="exceed the float32 range"):
        fused = fuse(str(mri), str(huge), method="max", progress=False)
    assert torch.isfinite(fused).all()
    if factor > 0:
        assert torch.allclose(fused, plain, atol=1e-5)  # the same image, in other units
    with pytest.warns(UserWarning, match="exceed the float32 range"):
        arr = fuse(_volume(), (base * factor).astype(np.float64), method="max", progress=False)
    assert np.isfinite(arr).all() and arr.max() > 0.5
    code, _, err = _run(["fuse", str(mri), str(huge), "-o", str(tmp_path / "f.nii.gz"), "--method", "max"], capsys)
    assert code == 0 and "exceed the float32 range" in err and "divided by 2^" in err


def test_fit_float32_dtypes():
    for dtype in (np.uint8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64):
        info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else np.finfo(dtype)
        array = np.array([info.min, 0, info.max], dtype=dtype)
        with np.errstate(all="ignore"):
            out = fit_float32(array)
        assert out.dtype == np.float32 and np.isfinite(out).all() and out[2] > out[1] >= out[0]


# -- 4. NaN/Inf or wrong-dtype weights, and outputs checked before writing --------------------------------------
def _tiny_weights(path: Path, poison: str | None = None, **kwargs) -> Path:
    net = LKCFUNet.from_preset("tiny", **kwargs) if kwargs else LKCFUNet.from_preset("tiny")
    state = {k: v.clone() for k, v in net.state_dict().items()}
    if poison == "nan":
        state["stem_conv.weight"][0, 0, 0, 0] = float("nan")
    elif poison == "inf":
        key = next(k for k in state if k.endswith("head.2.weight"))
        state[key][:] = float("inf")
    elif poison == "int":
        state["stem_conv.weight"] = state["stem_conv.weight"].to(torch.int64)
    torch.save(state, path)
    return path


@pytest.mark.parametrize("poison,needle", [("nan", "NaN/Inf values"), ("inf", "NaN/Inf values"),
                                           ("int", "not floating point")])
def test_broken_weights_are_refused(tmp_path, capsys, poison, needle):
    weights = _tiny_weights(tmp_path / f"{poison}.pt", poison)
    mri, other = _png(tmp_path / "mri.png", _gray()), _png(tmp_path / "ct.png", _gray(seed=1))
    code, _, err = _run(["fuse", str(mri), str(other), "-o", str(tmp_path / "f.png"), "--weights", str(weights)],
                        capsys)
    _one_line_error(code, err, str(weights), needle)
    assert not (tmp_path / "f.png").exists()


def test_nan_output_is_never_written(tmp_path):
    def broken(x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :1], float("nan"))

    with pytest.raises(FusionInputError, match="NaN/Inf values"):
        fuse(_gray().astype(np.float32) / 255, _gray(seed=1).astype(np.float32) / 255, model=broken)
    for name in ("n.png", "n.nii.gz", "n.nrrd"):
        with pytest.raises(FusionInputError, match="NaN/Inf values"):
            write_image(torch.full((1, 4, 4, 4 if name != "n.png" else 1)[: 3 if name == "n.png" else 4],
                                   float("nan")), tmp_path / name)
        assert not (tmp_path / name).exists()


def test_weights_of_another_channel_count(tmp_path, capsys):
    weights = _tiny_weights(tmp_path / "rgb.pt", in_channels=3)
    mri, other = _png(tmp_path / "mri.png", _gray()), _png(tmp_path / "ct.png", _gray(seed=1))
    code, _, err = _run(["fuse", str(mri), str(other), "-o", str(tmp_path / "f.png"), "--weights", str(weights)],
                        capsys)
    _one_line_error(code, err, "3 input", "fusion needs 2 inputs")


# -- 5. partial overlap ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shift", [10.0, 15.0])
def test_partial_overlap_is_reported_with_the_fraction(tmp_path, capsys, shift):
    mri = _nifti(tmp_path / "mri.nii.gz", _volume())
    moved = np.eye(4)
    moved[0, 3] = shift  # 20 voxels along x, shifted by 10 or 15: 50% or 25% covered
    other = _nifti(tmp_path / "pet.nii.gz", _volume(1), moved)
    code, out, err = _run(["fuse", str(mri), str(other), "-o", str(tmp_path / "f.nii.gz"), "--method", "max"], capsys)
    expected = f"{(20 - shift) / 20:.0%}"
    assert code == 0 and f"covers only {expected}" in err and "overlap_fraction" in err
    assert f"covers {expected} of the MRI grid" in out


# -- 6. no-clobber is atomic -------------------------------------------------------------------------------------
def test_concurrent_writers_never_both_win(tmp_path):
    target = tmp_path / "f.png"
    barrier = threading.Barrier(2)
    results: list[str] = []

    def writer(tag: str) -> None:
        try:
            with atomic_path(target) as tmp:  # both pass the exists() check, then race for the name
                tmp.write_text(tag)
                barrier.wait(timeout=10)
            results.append(f"wrote {tag}")
        except FusionInputError as err:
            results.append(str(err))

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wrote = [r for r in results if r.startswith("wrote")]
    assert len(wrote) == 1 and any("output exists" in r for r in results), results
    assert target.read_text() == wrote[0][-1]
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]


def test_output_created_meanwhile_is_kept(tmp_path):
    target = tmp_path / "f.nii.gz"
    with pytest.raises(FusionInputError, match="output exists"):
        with atomic_path(target) as tmp:
            tmp.write_text("mine")
            target.write_text("someone else's")  # another run finished first
    assert target.read_text() == "someone else's"


# -- 7. an input is never the output -----------------------------------------------------------------------------
def test_output_equal_to_an_input_is_refused(tmp_path, capsys):
    mri, other = _png(tmp_path / "mri.png", _gray()), _png(tmp_path / "ct.png", _gray(seed=1))
    before = mri.read_bytes(), other.read_bytes()
    for target in (mri, other, tmp_path / "." / "ct.png"):
        code, _, err = _run(["fuse", str(mri), str(other), "-o", str(target), "--method", "max", "--overwrite"], capsys)
        _one_line_error(code, err, "is the input")
    os.link(mri, tmp_path / "hardlink.png")
    code, _, err = _run(["fuse", str(mri), str(other), "-o", str(tmp_path / "hardlink.png"), "--method", "max",
                         "--overwrite"], capsys)
    _one_line_error(code, err, "is the input")
    assert (mri.read_bytes(), other.read_bytes()) == before
    for d in ("MRI", "CT"):
        (tmp_path / d).mkdir()
    _png(tmp_path / "MRI" / "a.png", _gray()), _png(tmp_path / "CT" / "a.png", _gray(seed=1))
    for out_dir in ("MRI", "CT", "MRI/."):
        code, _, err = _run(["fuse", "--mri-dir", str(tmp_path / "MRI"), "--other-dir", str(tmp_path / "CT"), "-o",
                             str(tmp_path / out_dir), "--method", "max", "--overwrite"], capsys)
        _one_line_error(code, err, "is the input folder")
    code, _, err = _run(["fuse", "--mri-dir", str(tmp_path / "MRI"), "--other-dir", str(tmp_path / "CT"), "-o",
                         str(tmp_path / "MRI" / "fused"), "--method", "max"], capsys)  # would pair as a series
    _one_line_error(code, err, "lies inside the input folder")
    assert sorted(p.name for p in (tmp_path / "MRI").iterdir()) == ["a.png"]



def test_one_image_as_both_inputs_is_refused(tmp_path, capsys):
    """An image fused with itself comes back unchanged: the same file (also under a second name: a hard link), folder or
    series twice is a slip."""
    mri = _png(tmp_path / "mri.png", _gray())
    os.link(mri, tmp_path / "hardlink.png")  # one file under two names
    for second in (mri, tmp_path / "." / "mri.png", tmp_path / "hardlink.png"):
        code, _, err = _run(["fuse", str(mri), str(second), "-o", str(tmp_path / "f.png"), "--method", "max"], capsys)
        _one_line_error(code, err, "given as both the MRI and the other image")
    with pytest.raises(FusionInputError, match="given as both the MRI and the other image"):
        fuse(str(mri), mri, method="max")
    (tmp_path / "MRI").mkdir()
    _png(tmp_path / "MRI" / "a.png", _gray())
    code, _, err = _run(["fuse", "--mri-dir", str(tmp_path / "MRI"), "--other-dir", str(tmp_path / "MRI") + "/",
                         "-o", str(tmp_path / "out"), "--method", "max"], capsys)
    _one_line_error(code, err, "given as both the mri and the other folder")
    code, _, err = _run(["metrics", "--fused", str(tmp_path / "MRI"), "--mri", str(tmp_path / "MRI"), "--other",
                         str(tmp_path / "MRI")], capsys)
    _one_line_error(code, err, "given as both the fused and the mri folder")
    assert not (tmp_path / "f.png").exists() and not (tmp_path / "out").exists()
    # two series of one DICOM folder are two images
    volume = (np.random.default_rng(1).random((6, 16, 18)) * 1000).astype(np.uint16)
    first = write_series(tmp_path / "two", volume, description="T1")
    second = write_series(tmp_path / "two", volume[:, ::-1].copy(), description="CT", modality="CT")
    fused = fuse(str(tmp_path / "two"), str(tmp_path / "two"), method="max", mri_series=first, other_series=second,
                 progress=False)
    assert fused.shape == (1, 18, 16, 6)


def test_tta_with_a_baseline_is_refused(tmp_path, capsys):
    mri, other = _png(tmp_path / "mri.png", _gray()), _png(tmp_path / "ct.png", _gray(seed=1))
    code, _, err = _run(["fuse", str(mri), str(other), "-o", str(tmp_path / "f.png"), "--method", "max", "--tta"],
                        capsys)
    _one_line_error(code, err, "--tta", "'max' has no network")
    with pytest.raises(FusionInputError, match="'mean' has no network"):
        fuse(str(mri), str(other), method="mean", tta=True)
    assert not (tmp_path / "f.png").exists()

# -- 8. output-name collisions and earlier results ---------------------------------------------------------------
def test_two_inputs_of_one_output_name_are_both_named(tmp_path):
    from monai_lkcfusion.engines import FileFusionEngine

    items = []
    for d in ("p1", "p2"):
        (tmp_path / d).mkdir()
        items.append({"mri": str(_png(tmp_path / d / "mri.png", _gray())),
                      "other": str(_png(tmp_path / d / "ct.png", _gray(seed=2)))})
    items.append({"mri": str(_nifti(tmp_path / "mri.nii.gz", _volume())),
                  "other": str(_nifti(tmp_path / "pet.nii.gz", _volume(1)))})
    engine = FileFusionEngine(items, lambda x: x.max(1, keepdim=True)[0], tmp_path / "out", output_suffix=".nii.gz")
    with pytest.raises(FusionInputError) as err:
        engine.run()
    message = str(err.value)
    assert "2 of 3 pairs failed" in message and message.count("is also the output of") == 2
    assert str(tmp_path / "p1" / "mri.png") in message and str(tmp_path / "p2" / "mri.png") in message
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fused_mri.nii.gz"]
    # the bundle's way (a SaveFusedd in the post-processing): the second input was told "output exists; pass
    # --overwrite" about the file this same run had just written (hand-check helper)
    from monai.transforms import Compose

    from monai_lkcfusion.transforms import SaveFusedd, fusion_postprocessing

    saving = Compose([*fusion_postprocessing().transforms, SaveFusedd("pred", tmp_path / "bundle")])
    engine = FileFusionEngine(items[:2], lambda x: x.max(1, keepdim=True)[0], postprocessing=saving)
    with pytest.raises(FusionInputError) as err:
        engine.run()
    assert "1 of 2 pairs failed" in str(err.value) and "is also the output of" in str(err.value), err.value


def test_bundle_inference_and_evaluate_keep_earlier_results(tmp_path, capsys):
    from monai_lkcfusion.engines import run_bundle_workflow

    root = tmp_path / "data"
    for d in ("MRI", "CT"):
        (root / d).mkdir(parents=True)
    _png(root / "MRI" / "a.png", _gray()), _png(root / "CT" / "a.png", _gray(seed=1))
    weights = save_network(LKCFUNet.from_preset("tiny"), tmp_path / "tiny.pt")
    out = tmp_path / "eval"
    kwargs = {"weights": str(weights), "dataset_dir": str(root), "output_dir": str(out), "device": "$torch.device('cpu')"}
    run_bundle_workflow("inference.json", (), "infer", **kwargs)
    first = (out / "fused_a.png").stat().st_mtime_ns
    with pytest.raises(FusionInputError, match="output exists"):
        run_bundle_workflow("inference.json", (), "infer", **kwargs)
    assert (out / "fused_a.png").stat().st_mtime_ns == first
    # `python -m monai.bundle run ... --overwrite false` passes the string "false", which must not mean "on"
    with pytest.raises(FusionInputError, match="output exists"):
        run_bundle_workflow("inference.json", (), "infer", overwrite="false", **kwargs)
    with pytest.raises(FusionInputError, match="overwrite 'no': give true or false"):
        run_bundle_workflow("inference.json", (), "infer", overwrite="no", **kwargs)
    assert (out / "fused_a.png").stat().st_mtime_ns == first
    run_bundle_workflow("inference.json", (), "infer", overwrite="True", **kwargs)
    assert (out / "fused_a.png").stat().st_mtime_ns != first
    # an output folder that holds inputs: with overwrite an input named like a result (fused_a.png) was replaced and
    # then fused; without, the results stayed among the inputs (found by a hand-check helper)
    _png(root / "MRI" / "fused_a.png", _gray(seed=2)), _png(root / "CT" / "fused_a.png", _gray(seed=3))
    before = {p: p.read_bytes() for p in root.rglob("*.png")}
    for folder in ("MRI", "CT"):
        with pytest.raises(FusionInputError, match=f"{folder}: holds input images of this run; write the results to"):
            run_bundle_workflow("inference.json", (), "infer", **{**kwargs, "output_dir": str(root / folder)},
                                overwrite=True)
    assert {p: p.read_bytes() for p in root.rglob("*.png")} == before
    argv = ["evaluate", "--mri-dir", str(root / "MRI"), "--other-dir", str(root / "CT"), "-o", str(tmp_path / "ev"),
            "--methods", "max", "--metrics", "EN"]
    assert _run(argv, capsys)[0] == 0
    code, _, err = _run(argv, capsys)
    _one_line_error(code, err, "earlier evaluation", "--overwrite")
    assert _run([*argv, "--overwrite"], capsys)[0] == 0


# -- 9. temporary files of killed writers ------------------------------------------------------------------------
def test_stale_temporaries_are_removed_and_names_stay_short(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".lkcfusion-{int(dead.stdout)}-0badc0de.tmp.nii.gz"
    stale.write_bytes(b"half a volume")
    live = tmp_path / f".lkcfusion-{os.getpid()}-0badc0de.tmp.png"  # this process: kept
    live.write_bytes(b"in progress")
    write_text(tmp_path / "x.json", "{}")
    assert not stale.exists() and live.exists()
    long_name = "a" * 245 + ".nii.gz"  # 252 bytes: the temporary name must not grow it
    write_image(torch.rand(1, 4, 4, 4), tmp_path / long_name)
    assert (tmp_path / long_name).exists()
    with pytest.raises(FusionInputError, match="longer than file systems allow"):
        write_image(torch.rand(1, 4, 4, 4), tmp_path / ("b" * 256 + ".nii.gz"))


# -- 10. option values are data, never config code ---------------------------------------------------------------
@pytest.mark.parametrize("option", ["--dataset-dir", "-o"])
@pytest.mark.parametrize("prefix", ["$", "@", "%"])
def test_option_values_are_never_run_as_code(tmp_path, capsys, monkeypatch, option, prefix):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    value = f"{prefix}__import__('pathlib').Path('{marker}').touch()" if prefix == "$" else f"{prefix}output_dir"
    argv = ["train", "--dataset-dir", str(tmp_path), "-o", str(tmp_path / "run"), "--epochs", "1", "--preset", "tiny"]
    argv[argv.index(option) + 1] = value
    code, _, err = _run(argv, capsys)
    _one_line_error(code, err, "would be read as config code", "./")
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_python_overrides_from_users_can_be_kept_literal(tmp_path):
    from monai_lkcfusion.engines import run_bundle_workflow

    marker = tmp_path / "pwned"
    with pytest.raises(FusionInputError, match="would be read as config code"):
        run_bundle_workflow("inference.json", (), "infer", allow_expressions=False,
                            dataset_dir=f"$__import__('pathlib').Path('{marker}').touch()")
    assert not marker.exists()


def test_bundle_docs_say_overrides_are_code():
    text = (REPO / "docs" / "reliability.md").read_text() + (REPO / "bundle" / "docs" / "README.md").read_text()
    assert "--key value" in text and "overrides are code" in text


# -- 11. detached headers pointing at other files ----------------------------------------------------------------
def _raw(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vol.raw").write_bytes(np.arange(4 * 4 * 2, dtype=np.uint8).tobytes())
    return folder / "vol.raw"


@pytest.mark.parametrize("kind", ["nhdr", "mhd", "nrrd-detached"])
@pytest.mark.parametrize("where", ["absolute", "parent", "symlink"])
def test_data_file_outside_the_header_folder_is_refused(tmp_path, capsys, kind, where):
    outside = _raw(tmp_path / "elsewhere")
    here = tmp_path / "hdr"
    here.mkdir()
    if where == "absolute":
        name = str(outside)
    elif where == "parent":
        name = "../elsewhere/vol.raw"
    else:
        (here / "link.raw").symlink_to(outside)
        name = "link.raw"
    if kind == "mhd":
        header = here / "scan.mhd"
        header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 2\nElementType = MET_UCHAR\n"
                          f"ElementDataFile = {name}\n")
    else:
        header = here / ("scan.nhdr" if kind == "nhdr" else "scan.nrrd")
        header.write_text(f"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 4 4 2\nencoding: raw\ndata file: {name}\n\n")
    with pytest.raises(FusionInputError, match="outside the header's folder"):
        read_image(header)
    mri = _nifti(tmp_path / "mri.nii.gz", np.ones((4, 4, 2)))
    code, _, err = _run(["fuse", str(mri), str(header), "-o", str(tmp_path / "f.nii.gz"), "--method", "max"], capsys)
    _one_line_error(code, err, "--allow-external-data")
    assert read_image(header, allow_external_data=True).shape == (1, 4, 4, 2)
    if where == "parent":  # a data file beside the header is fine
        shutil.copy(outside, here / "vol.raw")
        header.write_text(header.read_text().replace(name, "vol.raw"))
        assert read_image(header).shape == (1, 4, 4, 2)


# -- 12. former tracebacks: one line, exit 2 ---------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (4, 4), (3, 9)])
def test_tiny_images_fuse_with_the_network(tmp_path, capsys, shape):
    weights = save_network(LKCFUNet.from_preset("tiny"), tmp_path / "tiny.pt")
    mri, other = _png(tmp_path / "m.png", _gray(shape)), _png(tmp_path / "o.png", _gray(shape, 1))
    code, _, err = _run(["fuse", str(mri), str(other), "-o", str(tmp_path / "f.png"), "--weights", str(weights)],
                        capsys)
    assert code == 0, err
    assert np.asarray(Image.open(tmp_path / "f.png")).shape == shape


def _png_header_only(path: Path, width: int, height: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_one_line(tmp_path, capsys):
    bomb = _png_header_only(tmp_path / "bomb.png", 20000, 10000)  # 200 megapixels
    other = _png(tmp_path / "ct.png", _gray())
    code, _, err = _run(["fuse", str(bomb), str(other), "-o", str(tmp_path / "f.png"), "--method", "max"], capsys)
    _one_line_error(code, err, "bomb.png", "too large to decode")


@pytest.mark.parametrize("content,needle", [
    ([{"mri": "a.png", "other": "b.png"}], "not a list"),
    ({"test": [{"image": "a.png", "other": "b.png"}]}, 'needs "mri" and "other"'),
    ({"test": {"mri": "a.png"}}, "not a list of pairs"),
    ({"training": []}, "no section 'test'"),
    ("not json", "not a JSON datalist"),
])
def test_bad_datalists_are_one_line(tmp_path, content, needle):
    from monai_lkcfusion.engines import fusion_pairs

    (tmp_path / "datalist.json").write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(FusionInputError, match=needle):
        fusion_pairs(tmp_path)


def test_dataset_dir_with_two_second_modality_folders_is_refused(tmp_path):
    """MRI/ beside PET/ and CT/: the bundle silently paired the MRIs with CT/ (the first in its list) and ignored
    PET/, or said "no pairs found" when only PET/ matched."""
    from monai_lkcfusion.engines import fusion_pairs

    for folder in ("MRI", "PET", "CT"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / folder / "a.png")
    with pytest.raises(FusionInputError, match="CT/, PET/: keep one second-modality folder"):
        fusion_pairs(tmp_path)
    shutil.rmtree(tmp_path / "CT")
    assert [Path(item["other"]).parent.name for item in fusion_pairs(tmp_path)] == ["PET"]


def test_dataset_dir_of_another_layout_names_every_folder_as_a_folder(tmp_path):
    """The message said ``beside one of CT, PET, SPECT, other/``: the slash on the last name only, so CT, PET and
    SPECT read as file names; docs/reliability.md quoted it with every slash (docs hand-check helper)."""
    from monai_lkcfusion.engines import fusion_pairs

    (tmp_path / "MRI").mkdir()
    with pytest.raises(FusionInputError, match="beside one of CT/, PET/, SPECT/, other/ "):
        fusion_pairs(tmp_path / "MRI")


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii.gz"])
def test_full_disk_while_writing_itk_formats(tmp_path, monkeypatch, suffix):
    import SimpleITK as sitk

    def full(*args, **kwargs):
        raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: ... ERROR: No space left on device")

    monkeypatch.setattr(sitk, "WriteImage", full)
    if suffix == ".nii.gz":
        monkeypatch.setattr(nib, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(FusionInputError, match="No space left on device"):
        write_image(torch.rand(1, 4, 4, 4), tmp_path / f"f{suffix}")
    assert list(tmp_path.iterdir()) == []


def test_training_images_smaller_than_the_crop_name_the_file(tmp_path):
    small = _png(tmp_path / "small.png", _gray((30, 40)))
    chain = fusion_load_transforms(min_size=64)
    with pytest.raises(Exception) as err:
        chain({"mri": str(small), "other": str(small)})
    cause = err.value
    while not isinstance(cause, FusionInputError) and cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, FusionInputError) and "small.png" in str(cause) and "roi_size" in str(cause)


def test_train_with_images_smaller_than_roi_size(tmp_path, capsys):
    for task, other in (("MRI-CT", "CT"),):
        for d in ("MRI", other):
            folder = tmp_path / "train" / task / d
            folder.mkdir(parents=True)
            for i in range(10):  # enough for a validation pair at the default val_fraction 0.1
                _png(folder / f"p{i}.png", _gray((32, 32), i))
    code, _, err = _run(["train", "--dataset-dir", str(tmp_path), "-o", str(tmp_path / "run"), "--epochs", "1",
                         "--preset", "tiny", "--tasks", "MRI-CT"], capsys)
    err = "\n".join(line for line in err.splitlines() if "Loading dataset" not in line)  # MONAI's cache bar
    _one_line_error(code, err, "size (32, 32) is smaller than the training crop", "roi_size")  # names the file


@pytest.mark.slow
def test_bundle_command_wrapper_gives_one_line(tmp_path):
    from monai_lkcfusion.engines import bundle_config

    (tmp_path / "wrong").mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "monai_lkcfusion.run_bundle", "run", "--config_file", str(bundle_config("inference.json")),
         "--meta_file", str(bundle_config("metadata.json")), "--dataset_dir", str(tmp_path / "wrong"),
         "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 2, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("lkcfusion: error:")]
    assert len(errors) == 1 and "expected datalist.json or MRI/" in errors[0] and "Traceback" not in run.stderr


def test_settings_nothing_reads_are_refused(tmp_path, capsys):
    """A misspelt setting was added to the config and ignored, exit 0: ``--datset_dir`` fused the demo data instead of
    the user's folder, ``{"roi_sise": 64}`` in a train override trained with the default size (hand-check helper)."""
    from monai_lkcfusion.engines import bundle_config, run_bundle_workflow
    from monai_lkcfusion.engines.workflow import check_known_settings
    from monai_lkcfusion.run_bundle import run_bundle_command

    with pytest.raises(FusionInputError, match=r"^inference.json: unknown setting 'datset_dir' \(did you mean "
                                               r"'dataset_dir'\?\); nothing in the config reads it"):
        run_bundle_workflow("inference.json", (), "infer", datset_dir=str(tmp_path), output_dir=str(tmp_path / "o"))
    out = tmp_path / "out"
    code = run_bundle_command(["run", "--config_file", str(bundle_config("inference.json")), "--datset_dir",
                               str(tmp_path), "--output_dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and [line for line in err.splitlines() if "lkcfusion: error:" in line] == [
        "lkcfusion: error: inference.json: unknown setting 'datset_dir' (did you mean 'dataset_dir'?); nothing in the "
        "config reads it, so it would be ignored"], err
    assert not out.exists()
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"roi_sise": 64, "_desc_": "comments are settings too"}))
    code, _, err = _run(["train", "--config", str(typo), "--preset", "tiny", "--dataset-dir", str(tmp_path), "-o",
                         str(tmp_path / "run"), "--device", "cpu"], capsys)
    _one_line_error(code, err, f"{typo}: unknown setting 'roi_sise' (did you mean 'roi_size'?)")
    assert not (tmp_path / "run").exists()
    # a new id that the same overrides use is read; a nested key of a known id is the id's business
    check_known_settings({"network_def"}, {"init_weights": "w.pt", "network_def#x": 1}, "o.json", '["@init_weights"]')
    with pytest.raises(FusionInputError, match="unknown setting 'init_weight'"):
        check_known_settings({"network_def"}, {"init_weight": "w.pt"}, "o.json", '["@init_weights"]')



def test_misspelt_arguments_of_components_are_refused(tmp_path, capsys):
    """``{"loss#ssim_weigth": 2}`` or ``{"train#dataloader#batch_sise": 2}`` in a ``lkcfusion train --config`` file
    (the id ``loss`` is known) ended in MONAI's 52-line ``Failed to instantiate component`` traceback, exit 1, once
    the run built the component (hand-check helper). One line now, before anything runs; the arguments the
    project's own configs set are all known."""
    from monai.bundle import ConfigParser

    from monai_lkcfusion.engines import bundle_config
    from monai_lkcfusion.engines.workflow import check_known_settings
    from monai_lkcfusion.run_bundle import check_command_overrides

    cases = {"loss#ssim_weigth": "FusionLoss takes no argument 'ssim_weigth' (did you mean 'ssim_weight'?)",
             "train#dataloader#batch_sise": "DataLoader takes no argument 'batch_sise' (did you mean 'batch_size'?)"}
    for key, said in cases.items():
        typo = tmp_path / "typo.json"
        typo.write_text(json.dumps({key: 2}))
        code, _, err = _run(["train", "--config", str(typo), "--preset", "tiny", "--dataset-dir", str(tmp_path), "-o",
                             str(tmp_path / "run"), "--device", "cpu"], capsys)
        _one_line_error(code, err, f"{typo}: unknown setting '{key}': {said}")
        assert not (tmp_path / "run").exists()
    with pytest.raises(FusionInputError, match="unknown setting 'loss#ssim_weigth': FusionLoss takes no argument"):
        check_command_overrides(["run", "--config_file", str(bundle_config("train.json")), "--loss#ssim_weigth", "2"])
    repo = Path(__file__).resolve().parents[1]
    base = ConfigParser.load_config_file(str(bundle_config("train.json")))
    presets = {path.name: ConfigParser.load_config_file(str(path))
               for path in sorted((repo / "configs").glob("*.json"))}
    text = json.dumps([base, *presets.values()], default=str)  # some are merged after others, which use their ids
    for name, content in presets.items():
        check_known_settings(base, content, name, text, base)
    check_known_settings(base, {"train#handlers#1#print_lr": True, "loss#edge_weight": 1.0, "network_def#name": "x",
                                "validate#handlers#2#_disabled_": True}, "o.json", "", base)


def test_valid_component_arguments_are_not_refused(tmp_path):
    """The argument check refused valid settings (review helper): an index into a list that an earlier config
    replaced (``train#preprocessing#transforms#1#gamma_range`` after configs/default_model_disjoint.json) was judged
    against train.json's list (``ConcatItemsd takes no argument``), as files were merged by their top-level ids;
    ``loss#_target_`` with ``loss#reduction`` in one file was judged against the old target; ``LoadImaged``'s
    reader arguments and ``RandIntensityRemapd``'s ``gamma_range`` (``**kwargs`` not handed to their bases) were
    refused. Typos are still found."""
    from monai_lkcfusion.engines.workflow import _config_workflow

    repo = Path(__file__).resolve().parents[1]
    disjoint = str(repo / "configs" / "default_model_disjoint.json")
    (tmp_path / "target.json").write_text(json.dumps({"loss#_target_": "torch.nn.L1Loss", "loss#reduction": "sum"}))
    (tmp_path / "load.json").write_text(json.dumps({"load_transforms": {"_target_": "LoadImaged", "keys": "x"}}))
    for files, overrides in (([disjoint], {"train#preprocessing#transforms#1#gamma_range": [0.4, 2.0]}),
                             ([str(tmp_path / "target.json")], {}),
                             ([str(tmp_path / "load.json")], {"load_transforms#reverse_indexing": False})):
        _config_workflow("train.json", files, "train", True, overrides)
    with pytest.raises(FusionInputError, match="ConcatItemsd takes no argument 'nmae'"):  # EnsureTyped in train.json
        _config_workflow("train.json", [disjoint], "train", True, {"train#preprocessing#transforms#3#nmae": "x"})
    with pytest.raises(FusionInputError, match="DataLoader takes no argument 'pin_memroy'"):
        _config_workflow("train.json", [str(tmp_path / "load.json")], "train", True, {"train#dataloader#pin_memroy": 1})

# -- 13. clearer messages, output problems before the fusion -----------------------------------------------------
def test_output_problems_are_found_before_fusion(tmp_path, capsys, monkeypatch):
    import monai_lkcfusion.inference as inference

    def never(*args, **kwargs):
        raise AssertionError("fusion ran although the output is unusable")

    monkeypatch.setattr(inference, "fuse", never)
    mri, other = _nifti(tmp_path / "mri.nii.gz", _volume()), _nifti(tmp_path / "pet.nii.gz", _volume(1))
    (tmp_path / "outdir").mkdir()
    cases = [(tmp_path / "outdir", "is a folder; give an output file name"),
             (tmp_path / "f.xyz", "unsupported output format '.xyz'"),
             (tmp_path / "noext", "no file extension"),
             (tmp_path / "f.png", "a 3D volume cannot be written as '.png'"),
             (tmp_path / "f.jpg", "a 3D volume cannot be written as '.jpg'")]
    for target, needle in cases:
        code, _, err = _run(["fuse", str(mri), str(other), "-o", str(target), "--method", "max"], capsys)
        _one_line_error(code, err, needle)


def test_fifo_and_one_slice_nifti_messages(tmp_path, capsys):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    mri = _png(tmp_path / "mri.png", _gray())
    code, _, err = _run(["fuse", str(mri), str(fifo), "-o", str(tmp_path / "f.png"), "--method", "max"], capsys)
    _one_line_error(code, err, "not a regular file")
    flat = _nifti(tmp_path / "flat.nii.gz", np.ones((40, 36)))
    code, _, err = _run(["fuse", str(mri), str(flat), "-o", str(tmp_path / "f.png"), "--method", "max"], capsys)
    _one_line_error(code, err, "one-slice volume (40, 36, 1)", "is a 2D picture (40 x 36)")


# -- 14. progress ------------------------------------------------------------------------------------------------
def test_progress_lines_when_not_a_terminal():
    stream = io.StringIO()
    with Progress(4, "fusing mri.nii.gz", "slices", interval=0.0, stream=stream) as bar:
        for _ in range(4):
            bar.update()
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("lkcfusion: fusing mri.nii.gz: 4/4 slices (100%)")
    quiet = io.StringIO()
    Progress(4, "x", stream=quiet, enabled=False, interval=0.0).update()
    assert quiet.getvalue() == ""


def test_volume_fusion_reports_progress(tmp_path, capsys, monkeypatch):
    import monai_lkcfusion.progress as progress

    monkeypatch.setattr(progress.Progress.__init__, "__defaults__", (
        "steps", 0.0, None, True))  # a line per step, for the test
    mri, other = _nifti(tmp_path / "mri.nii.gz", _volume()), _nifti(tmp_path / "pet.nii.gz", _volume(1))
    code, _, err = _run(["fuse", str(mri), str(other), "-o", str(tmp_path / "f.nii.gz"), "--method", "max",
                         "--batch-size", "4"], capsys)
    assert code == 0 and "lkcfusion: fusing mri.nii.gz: 8/8 slices (100%)" in err
    code, _, err = _run(["fuse", str(mri), str(other), "-o", str(tmp_path / "g.nii.gz"), "--method", "max",
                         "--quiet"], capsys)
    assert code == 0 and "fusing" not in err


def test_stage_reports_long_steps_only():
    stream = io.StringIO()
    with Stage("registering ct.nii.gz", interval=0.02, stream=stream):
        time.sleep(0.3)
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 2 and all(line.startswith("lkcfusion: registering ct.nii.gz, ") for line in lines)
    assert lines[-1].endswith(" s")
    for enabled, step in ((True, 0.0), (False, 0.15)):  # a short step, or a quiet one: nothing
        quiet = io.StringIO()
        with Stage("x", interval=0.05, stream=quiet, enabled=enabled):
            time.sleep(step)
        time.sleep(0.1)  # no line after the step either
        assert quiet.getvalue() == ""


def test_volume_fusion_says_what_it_reads_and_writes(tmp_path, capsys, monkeypatch):
    """Reading, resampling and writing a CT volume took up to a minute on a busy CPU before the slice count
    started: nothing was printed in that time."""
    import monai_lkcfusion.progress as progress

    import monai_lkcfusion.inference as inference

    monkeypatch.setattr(progress, "STAGE_INTERVAL", 0.001)  # every step counts as long, for the test
    write = inference.write_image

    def slow_write(*args, **kwargs):  # a small volume is written in under a millisecond: a large one is not
        time.sleep(0.05)
        return write(*args, **kwargs)

    monkeypatch.setattr(inference, "write_image", slow_write)
    mri, other = _nifti(tmp_path / "mri.nii.gz", _volume()), _nifti(tmp_path / "pet.nii.gz", _volume(1))
    code, _, err = _run(["fuse", str(mri), str(other), "-o", str(tmp_path / "f.nii.gz"), "--method", "max"], capsys)
    assert code == 0 and "lkcfusion: reading and preparing mri.nii.gz and pet.nii.gz, " in err
    assert "lkcfusion: writing f.nii.gz, " in err
    code, _, err = _run(["fuse", str(mri), str(other), "-o", str(tmp_path / "g.nii.gz"), "--method", "max",
                         "--quiet"], capsys)
    assert code == 0 and "lkcfusion: " not in err.replace("lkcfusion: warning", "")


def test_dicom_series_with_a_rescale_slope_per_slice_keeps_fractions(tmp_path):
    """PET scanners write one RescaleSlope per slice; ITK took the pixel type of one slice (slope 1: integers) and
    rounded every other slice's values (SUV 20.5 read as 20, a whole SUV lost)."""
    import pydicom

    rng = np.random.default_rng(3)
    suv = rng.uniform(0.1, 20.5, (6, 16, 12))  # (Z, rows, cols)
    suv[0] = 0.0  # an empty first slice, written with slope 1 as scanners do
    write_series(tmp_path / "pet", np.zeros_like(suv), modality="PT", description="PET")
    for k, name in enumerate(sorted((tmp_path / "pet").iterdir())):
        ds = pydicom.dcmread(name)
        ds.RescaleSlope, ds.RescaleIntercept = (suv[k].max() / 60000 if suv[k].max() > 0 else 1.0), 0
        ds.PixelData = np.round(suv[k] / ds.RescaleSlope).astype(np.uint16).tobytes()
        ds.save_as(name)
    volume = read_image(tmp_path / "pet")[0].numpy()  # (X, Y, Z)
    assert np.abs(volume - suv.transpose(2, 1, 0)).max() < 1e-3


def test_folder_holding_one_enhanced_multiframe_file_reads_as_that_file(tmp_path):
    """A folder with one enhanced multi-frame DICOM was refused as "4D image" while the file itself read fine."""
    from dicom_util import write_enhanced

    volume = np.random.default_rng(0).integers(0, 1000, (12, 10, 5))
    expected = write_enhanced(tmp_path / "enh" / "mr.dcm", volume)
    for source in (tmp_path / "enh", tmp_path / "enh" / "mr.dcm"):
        img = read_image(source)
        assert img.shape == (1, 12, 10, 5) and np.allclose(img.affine.numpy(), expected, atol=1e-4)
        assert np.array_equal(img[0].numpy(), volume)
