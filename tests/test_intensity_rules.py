"""The documented intensity, slicing and DICOM rules on data made up here (docs/inference.md, step 2 and 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_lkcfusion import fuse
from monai_lkcfusion.data import read_image
from monai_lkcfusion.transforms import ScaleModality, scale_to_unit, slicing_axis
from monai_lkcfusion.transforms.spatial import MIN_SLICE_SIDE


def test_unknown_float_image_with_a_zero_background_keeps_zero_black():
    """A float image of unknown modality with ~10% of its voxels exactly 0 (background) and a small negative 0.5th
    percentile (reconstruction noise): "negatives taken as noise", 0 stays 0 (black), so the background mask works."""
    rng = np.random.default_rng(0)
    values = rng.uniform(50.0, 1000.0, 20000)
    values[:2000] = 0.0  # 10% background
    values[2000:2300] = rng.uniform(-20.0, -1.0, 300)  # 1.5% small negatives: the 0.5th percentile is below 0
    img = torch.from_numpy(rng.permutation(values).reshape(1, 100, 200).astype(np.float32))
    assert np.percentile(img.numpy(), 0.5) < 0
    scaled, record = scale_to_unit(img)
    assert "negatives taken as noise" in record["intensity_scaling"]
    assert torch.all(scaled[img == 0] == 0) and torch.all(scaled[img < 0] == 0)
    high = np.percentile(img.numpy().astype(np.float64), 99.5)
    inside = (img > 0) & (img < high)
    assert torch.allclose(scaled[inside], img[inside] / high, atol=1e-6)


@pytest.mark.parametrize("air", [0.02, 0.05])
def test_ct_with_a_few_percent_air_is_detected_as_ct(air):
    """docs: a CT holds air at about -1000 HU; at least 1% of the voxels in [-1100, -900] HU marks a CT of unknown
    modality, which is then scaled by the CT window (-500, 1500) HU, not by percentiles."""
    rng = np.random.default_rng(1)
    hu = rng.uniform(0.0, 80.0, 20000)  # brain tissue
    hu[: int(air * hu.size)] = -1000.0
    hu[-500:] = rng.uniform(300.0, 1400.0, 500)  # bone
    img = torch.from_numpy(rng.permutation(hu).reshape(1, 100, 200).astype(np.float32))
    scaled, record = scale_to_unit(img)
    assert record.get("modality") == "CT" and "CT window" in record["intensity_scaling"]
    assert torch.allclose(scaled, ((img + 500.0) / 2000.0).clamp(0, 1), atol=1e-6)


def _write_ct_series(folder, rng):
    from dicom_util import write_series

    hu = rng.uniform(0.0, 80.0, (6, 20, 18))
    hu[:, :4] = -1000.0  # air above the head: 20% of the voxels
    write_series(folder, hu + 1024.0, modality="CT", description="CT")  # stored values; intercept set below
    import pydicom

    for name in sorted(folder.iterdir()):
        ds = pydicom.dcmread(name)
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.save_as(name)
    return hu


def test_the_callers_modality_wins_over_the_dicom_tag(tmp_path):
    """A series tagged Modality CT, read with modality="PET" (the caller's word), is scaled as PET (percentiles),
    not with the CT window; without it the tag decides (CT window)."""
    rng = np.random.default_rng(2)
    _write_ct_series(tmp_path / "ct", rng)
    image = read_image(tmp_path / "ct")
    assert "CT window" in ScaleModality()(image).meta["intensity_scaling"]
    as_pet = ScaleModality()(read_image(tmp_path / "ct"), "PET")
    assert "PET percentiles" in as_pet.meta["intensity_scaling"] and as_pet.meta["modality"] == "PET"
    assert "PET percentiles" in ScaleModality(modality="PET")(read_image(tmp_path / "ct")).meta["intensity_scaling"]
    values = image.numpy().astype(np.float64)
    low, high = np.percentile(values, [0.5, 99.5])
    assert np.allclose(as_pet.numpy(), np.clip((values - low) / (high - low), 0, 1), atol=1e-5)


def test_fuse_with_modality_pet_scales_a_ct_tagged_series_as_pet(tmp_path):
    rng = np.random.default_rng(3)
    from dicom_util import write_series

    write_series(tmp_path / "mr", rng.integers(0, 900, (6, 20, 18)))
    _write_ct_series(tmp_path / "ct", rng)
    fused = fuse(tmp_path / "mr", tmp_path / "ct", method="max", modality="PET", progress=False)
    assert "PET percentiles" in fused.meta["other_intensity_scaling"]
    default = fuse(tmp_path / "mr", tmp_path / "ct", method="max", progress=False)
    assert "CT window" in default.meta["other_intensity_scaling"]


def test_axial_slices_exactly_min_slice_side_wide_are_still_cut_axially():
    """docs: the axial axis is used when its slices are at least MIN_SLICE_SIDE voxels a side."""
    shape = (MIN_SLICE_SIDE, 30, 20)  # axial slices 8 x 30; the other axes would give larger slices
    assert slicing_axis(None, shape) == 2
    seen = []

    def recording(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape[-2:]))
        return x[:, :1]

    rng = np.random.default_rng(4)
    mri, other = rng.random(shape, dtype=np.float32), rng.random(shape, dtype=np.float32)
    fused = fuse(mri, other, model=recording, progress=False, workers=1)
    assert fused.shape == shape and set(seen) == {(MIN_SLICE_SIDE, 30)}
    assert slicing_axis(None, (MIN_SLICE_SIDE - 1, 30, 20)) == 0  # narrower: the plane with the longest short side


def test_dicom_series_with_two_rescale_slopes_keeps_fractions(tmp_path):
    """Two distinct RescaleSlopes in one series (slope 1 and 0.01): the fractional values of the 0.01 slices survive
    (ITK takes one slice's pixel type: integers would round them)."""
    import pydicom
    from dicom_util import write_series

    rng = np.random.default_rng(5)
    values = np.round(rng.uniform(0.0, 50.0, (6, 12, 10)), 2)
    values[:3] = np.round(values[:3])  # integer slices, slope 1
    write_series(tmp_path / "pet", np.zeros_like(values), modality="PT", description="PET")
    for k, name in enumerate(sorted((tmp_path / "pet").iterdir())):
        ds = pydicom.dcmread(name)
        ds.RescaleSlope, ds.RescaleIntercept = (1 if k < 3 else 0.01), 0
        ds.PixelData = np.round(values[k] / float(ds.RescaleSlope)).astype(np.uint16).tobytes()
        ds.save_as(name)
    volume = read_image(tmp_path / "pet")[0].numpy()  # (X, Y, Z)
    assert np.abs(volume - values.transpose(2, 1, 0)).max() < 1e-4


def test_percentile_scaling_holds_one_float64_copy():
    """The percentiles are taken in float64 on one copy, partitioned in place: a second copy (NumPy's own) took
    0.9 GB more for a 512^2 x 450 CT. tracemalloc sees NumPy's buffers (PyTorch's are not traced)."""
    import tracemalloc

    img = torch.from_numpy(np.random.default_rng(0).uniform(0.0, 1000.0, (1, 64, 64, 64)).astype(np.float32))
    expected = np.percentile(img.numpy().astype(np.float64), [0.5, 99.5])
    tracemalloc.start()
    try:
        scaled, record = scale_to_unit(img, modality="MR")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * 8 * img.numel(), f"{peak / (8 * img.numel()):.2f} float64 copies"
    assert f"[{expected[0]:.6g}, {expected[1]:.6g}]" in record["intensity_scaling"]
    reference = ((img - expected[0]) / (expected[1] - expected[0])).clamp(0.0, 1.0)
    assert torch.equal(scaled, reference)


def test_nonfinite_voxels_become_zero_and_the_rest_is_unchanged():
    """NaN and Inf voxels become 0 (counted); the finite ones get exactly the values of the plain formula, with and
    without them present (the in-place scaling and the view of all-finite data give the same bits)."""
    rng = np.random.default_rng(1)
    clean = torch.from_numpy(rng.uniform(-1000.0, 2000.0, (1, 30, 40, 20)).astype(np.float32))
    dirty = clean.clone()
    dirty[0, :3, 0, 0] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    for img, count in ((clean, 0), (dirty, 3)):
        scaled, record = scale_to_unit(img, modality="CT")
        assert record["nonfinite_voxels"] == count
        reference = ((img - -500.0) / 2000.0).clamp(0.0, 1.0)
        reference[~torch.isfinite(img)] = 0.0
        assert torch.equal(scaled, reference)
