"""fuse(): colour handling, any size, volumes on the MRI grid (NIfTI and DICOM), overlap and weights errors."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from dicom_util import write_series
from monai.data import MetaTensor
from PIL import Image

from monai_lkcfusion.data import read_image
from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.inference import build_predictor, fuse, fuse_files
from monai_lkcfusion.networks import LKCFUNet
from monai_lkcfusion.transforms import fusion_load_transforms, rgb_to_ycbcr


@pytest.fixture(scope="module")
def tiny_net() -> LKCFUNet:
    torch.manual_seed(0)
    return LKCFUNet.from_preset("tiny").eval()


def _pet_png(path, h=60, w=50):
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-((yy - h / 2) ** 2 + (xx - w / 3) ** 2) / 150.0)
    rgb = np.stack([np.clip(blob * 1.6, 0, 1), np.clip(blob * 1.2 - 0.3, 0, 1), 0.2 * blob], -1)
    Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(path)


def _mri_png(path, h=60, w=50):
    yy, xx = np.mgrid[0:h, 0:w]
    Image.fromarray((120 + 60 * np.sin(xx / 4.0) * np.cos(yy / 5.0)).astype(np.uint8)).save(path)


@pytest.mark.parametrize("method", ["max", "tiny"])
def test_colour_pet_keeps_its_chroma(tmp_path, tiny_net, method):
    _mri_png(tmp_path / "mri.png")
    _pet_png(tmp_path / "pet.png")
    kwargs = {"model": tiny_net, "optimize": False} if method == "tiny" else {"method": method}
    fused = fuse(tmp_path / "mri.png", tmp_path / "pet.png", **kwargs)
    assert fused.shape == (3, 60, 50) and fused.meta["color"]
    pet = torch.as_tensor(np.array(Image.open(tmp_path / "pet.png")), dtype=torch.float32).permute(2, 0, 1) / 255
    inside = ((fused > 1e-3) & (fused < 1 - 1e-3)).all(0)  # pixels where RGB was not clipped to the gamut
    assert inside.float().mean() > 0.5
    chroma_out, chroma_pet = rgb_to_ycbcr(fused)[1:], rgb_to_ycbcr(pet)[1:]
    assert torch.allclose(chroma_out[:, inside], chroma_pet[:, inside], atol=1e-4)
    out = fuse_files(tmp_path / "mri.png", tmp_path / "pet.png", tmp_path / "fused.png", **kwargs)
    written = torch.as_tensor(np.array(Image.open(out)), dtype=torch.float32).permute(2, 0, 1) / 255
    assert written.shape == (3, 60, 50)
    assert torch.allclose(rgb_to_ycbcr(written)[1:, inside], chroma_pet[:, inside], atol=2.5 / 255)


def test_gray_any_size_in_equals_out(tmp_path, tiny_net):
    rng = np.random.default_rng(0)
    mri, ct = rng.random((250, 230), dtype=np.float32), rng.random((250, 230), dtype=np.float32)
    fused = fuse(mri, ct, model=tiny_net, optimize=False)
    assert isinstance(fused, np.ndarray) and fused.shape == (250, 230) and 0 <= fused.min() and fused.max() <= 1
    assert np.array_equal(fuse(mri, ct, method="max"), np.maximum(mri, ct))
    Image.fromarray((mri * 255).astype(np.uint8)).save(tmp_path / "m.png")
    Image.fromarray((ct * 255).astype(np.uint8)).save(tmp_path / "c.png")
    out = fuse_files(tmp_path / "m.png", tmp_path / "c.png", tmp_path / "f.png", model=tiny_net, optimize=False)
    assert Image.open(out).size == (230, 250) and Image.open(out).mode == "L"
    with pytest.raises(FusionInputError, match="--resample"):
        fuse(mri, ct[:200], method="max")
    assert fuse(mri, ct[:200], method="max", resample=True).shape == (250, 230)


def test_eight_bit_picture_same_as_file_array_or_tensor(tmp_path, tiny_net):
    """An 8-bit picture is scaled by its display range whichever way it comes: file, uint8 array, uint8 tensor."""
    rng = np.random.default_rng(1)
    mri = rng.integers(0, 211, (40, 36), dtype=np.uint8)  # not reaching 255: percentile scaling would differ
    ct = rng.integers(0, 200, (40, 36), dtype=np.uint8)
    Image.fromarray(mri).save(tmp_path / "m.png")
    Image.fromarray(ct).save(tmp_path / "c.png")
    from_file = fuse(tmp_path / "m.png", tmp_path / "c.png", model=tiny_net, optimize=False)
    from_array = fuse(mri, ct, model=tiny_net, optimize=False)
    from_tensor = fuse(torch.from_numpy(mri)[None], torch.from_numpy(ct)[None], model=tiny_net, optimize=False)
    assert "display range / 255" in from_tensor.meta["mri_intensity_scaling"]
    assert np.array_equal(from_array, from_file.numpy()[0])
    assert torch.equal(from_tensor.as_tensor(), from_file.as_tensor())


def _nifti(path, shape, spacing, origin, values):
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(values(shape).astype(np.float32), affine), str(path))
    return affine


def _blob(shape):
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    return np.exp(-sum(g**2 for g in grid) * 3) * 1000


def test_nifti_volume_lands_on_mri_grid(tmp_path, tiny_net):
    mri_affine = _nifti(tmp_path / "t1.nii.gz", (40, 36, 24), (1.0, 1.0, 1.0), (-20.0, -18.0, -12.0), _blob)
    _nifti(tmp_path / "pet.nii.gz", (22, 20, 14), (2.0, 2.0, 2.0), (-21.3, -17.1, -13.9), _blob)
    out = fuse_files(tmp_path / "t1.nii.gz", tmp_path / "pet.nii.gz", tmp_path / "fused.nii.gz",
                     model=tiny_net, optimize=False, progress=False, batch_size=4)
    fused = nib.load(str(out))
    assert fused.shape == (40, 36, 24) and np.array_equal(fused.affine, mri_affine)
    data = fused.get_fdata()
    assert np.isfinite(data).all() and 0 <= data.min() and data.max() <= 1
    result = fuse(tmp_path / "t1.nii.gz", tmp_path / "pet.nii.gz", method="max", progress=False)
    assert 0.9 < result.meta["overlap_fraction"] <= 1.0 and "percentiles" in result.meta["other_intensity_scaling"]
    centre = result[0, 20, 18, 12]
    assert float(centre) == pytest.approx(1.0, abs=0.05)  # both blobs peak at the same world point
    assert fuse(tmp_path / "t1.nii.gz", tmp_path / "pet.nii.gz", method="mean", axis=0, progress=False).shape == (
        1, 40, 36, 24)


def test_dicom_series_as_mri(tmp_path):
    volume = (np.random.default_rng(0).random((6, 20, 24)) * 1000).astype(np.uint16)  # (Z, rows, cols)
    write_series(tmp_path / "t1", volume)
    ref = read_image(tmp_path / "t1")
    assert ref.shape == (1, 24, 20, 6) and ref.meta["modality"] == "MR"
    # LPS (-50, -60, 10) is RAS (50, 60, 10); columns run along +x (L), i.e. -x in RAS
    assert np.allclose(ref.affine.numpy()[:3, 3], [50.0, 60.0, 10.0])
    assert np.allclose(np.abs(np.diag(ref.affine.numpy()))[:3], [0.8, 0.9, 2.0])
    pet = MetaTensor(torch.rand(1, 12, 10, 4), affine=ref.affine.clone())
    pet.affine[:3, :3] *= 2.0
    nib.save(nib.Nifti1Image(pet[0].numpy(), pet.affine.numpy()), str(tmp_path / "pet.nii.gz"))
    out = fuse_files(tmp_path / "t1", tmp_path / "pet.nii.gz", tmp_path / "fused.nrrd", method="max", progress=False)
    back = read_image(out)
    assert back.shape == ref.shape and np.allclose(back.affine.numpy(), ref.affine.numpy(), atol=1e-5)
    write_series(tmp_path / "t1", volume[:3], description="T2", origin_lps=(0.0, 0.0, 0.0))
    with pytest.raises(FusionInputError, match="2 DICOM series") as info:
        fuse(tmp_path / "t1", tmp_path / "pet.nii.gz", method="max")
    assert "T1" in str(info.value) and "T2" in str(info.value) and "\n" not in str(info.value)


def test_non_overlapping_pet_is_refused_without_output(tmp_path):
    _nifti(tmp_path / "t1.nii.gz", (20, 20, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), _blob)
    _nifti(tmp_path / "pet.nii.gz", (10, 10, 5), (2.0, 2.0, 2.0), (300.0, 0.0, 0.0), _blob)
    with pytest.raises(FusionInputError, match="does not overlap") as info:
        fuse_files(tmp_path / "t1.nii.gz", tmp_path / "pet.nii.gz", tmp_path / "fused.nii.gz", method="max")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "fused.nii.gz").exists() and len(list(tmp_path.iterdir())) == 2


def test_nonfinite_voxels_are_masked_and_reported():
    vol = torch.rand(1, 8, 8, 6)
    vol[0, 2, 3, 1] = float("nan")
    vol[0, 4, 4, 4] = float("inf")
    with pytest.warns(UserWarning, match="2 NaN/Inf voxels"):
        fused = fuse(vol, torch.rand(1, 8, 8, 6), method="mean", progress=False)
    assert torch.isfinite(fused).all()
    with pytest.raises(FusionInputError, match="all NaN"):
        fuse(torch.full((1, 4, 4), float("nan")), torch.rand(1, 4, 4), method="max")


def test_missing_default_weights_and_bad_inputs(monkeypatch, tmp_path):
    import monai_lkcfusion.networks as networks

    monkeypatch.setattr(networks, "default_weights_path", lambda: tmp_path / "models" / "model.pt")
    with pytest.raises(FusionInputError, match="no LKC-FUNet weights"):
        fuse(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32))
    with pytest.raises(FusionInputError, match="unknown fusion method"):
        fuse(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32), method="pca")
    with pytest.raises(FusionInputError, match="shape"):
        fuse(torch.rand(2, 8, 8), torch.rand(1, 8, 8), method="max")
    with pytest.raises(FusionInputError, match="a 2D picture .* but the MRI"):
        fuse(torch.rand(1, 8, 8, 8), torch.rand(1, 8, 8), method="max")


def _blur(x: torch.Tensor) -> torch.Tensor:
    """A predictor that is not pixel-wise: the 3x3 mean of the pair's average (replicated border)."""
    mean = (x[:, :1] + x[:, 1:]) / 2
    return torch.nn.functional.avg_pool2d(torch.nn.functional.pad(mean, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def test_large_slices_are_tiled_without_seams():
    """Overlapping tiles blended with Gaussian weights: a tile's border (where the network sees an edge that the
    image does not have) counts little wherever another tile covers the pixel with its inside, so the tiled result
    is the whole pass away from the image's border except for small differences on the seams. A pixel-wise 'max'
    could not show a blending fault: every tile gives it the same value."""
    rng = np.random.default_rng(3)
    mri, ct = (rng.random((70, 50), dtype=np.float32) * 0.8 + 0.1 for _ in range(2))
    assert np.allclose(fuse(mri, ct, method="max", tile_size=32, progress=False), np.maximum(mri, ct), atol=1e-5)
    whole = np.asarray(fuse(mri, ct, model=_blur, progress=False))
    padded = np.pad((mri + ct) / 2, 1, mode="edge")
    reference = sum(padded[i:i + 70, j:j + 50] for i in range(3) for j in range(3)) / 9
    assert np.allclose(whole, reference, atol=1e-6)
    tiled = np.asarray(fuse(mri, ct, model=_blur, tile_size=32, progress=False))
    inside = np.abs(tiled - whole)[3:-3, 3:-3]  # at the image's border every tile's weight is MONAI's floor
    assert tiled.shape == (70, 50) and inside.mean() < 5e-4 and (inside > 1e-2).mean() < 0.01


@pytest.mark.shared
def test_harvard_pet_pair_keeps_pet_chroma(harvard_root, tmp_path):
    from monai_lkcfusion.data import harvard_datalist

    item = harvard_datalist(harvard_root, "test", tasks="MRI-PET")[0]
    out = fuse_files(item["mri"], item["other"], tmp_path / item["name"], method="max")
    fused = torch.as_tensor(np.array(Image.open(out)), dtype=torch.float32).permute(2, 0, 1) / 255
    pet = torch.as_tensor(np.array(Image.open(item["other"])), dtype=torch.float32).permute(2, 0, 1) / 255
    inside = ((fused > 0.01) & (fused < 0.99)).all(0)
    assert fused.shape == (3, 256, 256) and inside.float().mean() > 0.1
    assert torch.allclose(rgb_to_ycbcr(fused)[1:, inside], rgb_to_ycbcr(pet)[1:, inside], atol=2.5 / 255)


# -- the one pipeline against an independent reference (NumPy/SciPy/PIL, none of the package's transforms) ---------
_TO_YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def _read_unit(path: Path) -> np.ndarray:
    """A Harvard/demo picture as float64 in [0, 1]: (H, W) gray or (H, W, 3) RGB."""
    return np.asarray(Image.open(path), dtype=np.float64) / 255.0


def _reference_2d(mri_png: Path, other_png: Path, predict, mask: bool, preserve_luma: bool) -> np.ndarray:
    """Scale, luma, fuse, clip, mask and put the chroma back, written out from the conventions in DESIGN.md."""
    mri, other = _read_unit(mri_png), _read_unit(other_png)
    ycc = other @ _TO_YCBCR.T + np.array([0.0, 0.5, 0.5]) if other.ndim == 3 else other[..., None]
    fused = np.clip(predict(mri, ycc[..., 0]), 0.0, 1.0)
    if mask:
        fused = fused * ((mri != 0) | (ycc[..., 0] != 0))
    if other.ndim == 2:
        return fused[None]
    offset = np.concatenate([np.zeros_like(ycc[..., :1]), ycc[..., 1:] - 0.5], -1) @ np.linalg.inv(_TO_YCBCR).T
    if preserve_luma:  # largest s in [0, 1] with 0 <= Y + s * offset <= 1 for R, G and B
        bound = np.where(offset > 0, 1.0 - fused[..., None], fused[..., None]) / np.maximum(np.abs(offset), 1e-12)
        offset = offset * np.minimum(bound.min(-1, keepdims=True), 1.0)
    return np.moveaxis(np.clip(fused[..., None] + offset, 0.0, 1.0), -1, 0)


def _net_predict(net: torch.nn.Module):
    def predict(mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        pair = torch.as_tensor(np.stack([mri, other]), dtype=torch.float32)[None]
        with torch.no_grad():
            return net(pair)[0, 0].double().numpy()

    return predict


def _old_behaviour(mri, other, model) -> np.ndarray:
    """The pipeline with the two intended changes switched off: no background mask, R/G/B clipping."""
    from monai_lkcfusion.inference import fuse_dict
    from monai_lkcfusion.inferers import FusionInferer
    from monai_lkcfusion.transforms import fusion_postprocessing, fusion_preprocessing

    post = fusion_postprocessing(mask_background=False, preserve_luma=False)
    pred = fuse_dict({"mri": mri, "other": other}, model, fusion_preprocessing(), FusionInferer(optimize=False), post)
    return pred["pred"].numpy()


def _check_against_reference(mri_png: Path, other_png: Path, net: torch.nn.Module) -> None:
    for model, predict in ((net, _net_predict(net)), ("max", np.maximum)):
        kwargs = {"model": net, "optimize": False} if model is net else {"method": "max"}
        new = fuse(mri_png, other_png, progress=False, **kwargs).numpy()
        assert np.allclose(new, _reference_2d(mri_png, other_png, predict, True, True), atol=5e-4)  # float32 vs 64
        old = _old_behaviour(mri_png, other_png, net if model is net else build_predictor(None, "max"))
        assert np.allclose(old, _reference_2d(mri_png, other_png, predict, False, False), atol=5e-4)
        luma = fuse(mri_png, other_png, progress=False, color=False, **kwargs)
        assert luma.shape == (1, *new.shape[1:]) and not luma.meta["color"]
        if new.shape[0] == 3:  # what a clinician sees is the fused luma, to within one gray level
            gray = np.round(np.round(new * 255).transpose(1, 2, 0) @ _TO_YCBCR[0])
            assert np.abs(gray - np.round(luma.numpy()[0] * 255)).max() <= 1
        both_zero = (_read_unit(mri_png) == 0) & (np.atleast_3d(_read_unit(other_png)).max(-1) == 0)
        assert (new[:, both_zero] == 0).all()


def test_demo_2d_matches_reference(tiny_net):
    from monai_lkcfusion.data import demo_files

    files = demo_files()
    _check_against_reference(files["mri_2d"], files["pet_2d"], tiny_net)


@pytest.mark.shared
@pytest.mark.parametrize("task,other", [("MRI-PET", "PET"), ("MRI-SPECT", "SPECT"), ("MRI-CT", "CT")])
def test_harvard_pairs_match_reference(harvard_root, task, other):
    from monai_lkcfusion.networks import default_weights_path, load_network

    net = load_network(default_weights_path()).eval()
    for mri in sorted((harvard_root / "test" / task / "MRI").glob("*.png"))[:2]:
        _check_against_reference(mri, harvard_root / "test" / task / other / mri.name, net)


def test_demo_3d_matches_reference():
    """Percentile scaling, affine-aware trilinear resampling onto the MRI grid (edges kept within the PET's field of
    view, 0 outside), voxel-wise max, background mask."""
    from scipy.ndimage import map_coordinates

    from monai_lkcfusion.data import demo_files

    files = demo_files()
    mri_img, pet_img = nib.load(str(files["mri_3d"])), nib.load(str(files["pet_3d"]))

    def unit(volume: np.ndarray) -> np.ndarray:
        low, high = np.percentile(volume, [0.5, 99.5])
        return np.clip((volume - low) / (high - low), 0.0, 1.0)

    mri, pet = unit(mri_img.get_fdata()), unit(pet_img.get_fdata())
    to_pet = np.linalg.inv(pet_img.affine) @ mri_img.affine  # MRI voxel -> PET voxel
    grid = np.indices(mri.shape).reshape(3, -1)
    coords = to_pet[:3, :3] @ grid + to_pet[:3, 3:]
    # inside the PET's field of view (voxel centres +- half a voxel) its edge values are kept, outside it is 0
    inside = np.all((coords > -0.5) & (coords < np.array(pet.shape)[:, None] - 0.5), axis=0)
    moved = (map_coordinates(pet, coords, order=1, mode="nearest") * inside).reshape(mri.shape)
    reference = np.maximum(mri, moved) * ((mri != 0) | (moved != 0))
    fused = fuse(files["mri_3d"], files["pet_3d"], method="max", progress=False)
    assert fused.shape == (1, *mri.shape) and np.allclose(fused.affine.numpy(), mri_img.affine, atol=1e-5)
    assert np.abs(fused.numpy()[0] - reference).max() < 1e-4


def test_fuse_with_a_network_optimises_it_once(monkeypatch, tiny_net):
    import monai_lkcfusion.networks as networks

    calls = []
    real = networks.optimize_for_inference

    def counting(net, *args, **kwargs):
        calls.append(net)
        return real(net, *args, **kwargs)

    monkeypatch.setattr(networks, "optimize_for_inference", counting)
    net = LKCFUNet.from_preset("tiny").eval()
    mri, ct = np.random.default_rng(1).random((2, 40, 36), dtype=np.float32)
    results = [fuse(mri, ct, model=net, device="cpu") for _ in range(3)]
    assert len(calls) == 1 and all(np.array_equal(results[0], r) for r in results[1:])
    with torch.no_grad():
        next(net.parameters()).mul_(0.5)  # the network changed in place (e.g. a training step): optimise again
    fuse(mri, ct, model=net, device="cpu")
    assert len(calls) == 2


def test_weights_file_is_loaded_once(monkeypatch, tmp_path):
    import monai_lkcfusion.networks as networks
    from monai_lkcfusion.networks import save_network

    weights = save_network(LKCFUNet.from_preset("tiny"), tmp_path / "tiny.pt")
    loads = []
    real = networks.load_network
    monkeypatch.setattr(networks, "load_network", lambda *a, **k: loads.append(a) or real(*a, **k))
    mri, ct = np.random.default_rng(2).random((2, 24, 20), dtype=np.float32)
    for _ in range(2):
        fuse(mri, ct, weights=weights, device="cpu", optimize=False)
    assert len(loads) == 1


def test_flip_tta_averages_over_flips():
    seen = []

    def lopsided(x: torch.Tensor) -> torch.Tensor:  # not flip-equivariant: a left-right ramp times the MRI
        seen.append(x.clone())
        ramp = torch.linspace(0, 1, x.shape[-1]).expand_as(x[:, :1])
        return x[:, :1] * ramp

    mri = np.random.default_rng(3).random((12, 10), dtype=np.float32) * 0.8 + 0.1  # in [0, 1]: kept as it is
    plain = fuse(mri, mri, model=lopsided, progress=False)
    seen.clear()
    tta = fuse(mri, mri, model=lopsided, progress=False, tta=True)
    assert len(seen) == 4 and torch.equal(seen[1], seen[0].flip(-1)) and torch.equal(seen[2], seen[0].flip(-2))
    ramp = np.linspace(0, 1, 10, dtype=np.float32)
    assert np.allclose(plain, mri * ramp) and np.allclose(tta, mri * 0.5, atol=1e-6)  # (ramp + reversed) / 2
    seen.clear()  # a model that varies along rows and columns: the both-axes flip must be undone on both axes too
    rows, columns = np.linspace(0, 1, 12, dtype=np.float32), np.linspace(0, 1, 10, dtype=np.float32)

    def tilted(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return x[:, :1] * torch.from_numpy(np.outer(rows, columns))

    assert np.allclose(fuse(mri, mri, model=tilted, progress=False), mri * np.outer(rows, columns), atol=1e-6)
    seen.clear()
    tta = fuse(mri, mri, model=tilted, progress=False, tta=True)
    assert len(seen) == 4 and torch.equal(seen[3], seen[0].flip(-2, -1))
    assert np.allclose(tta, mri * 0.25, atol=1e-6)  # (r + r')(c + c') / 4 with r + r' = c + c' = 1
    with pytest.raises(FusionInputError, match="'max' has no network"):  # it was accepted and did nothing
        fuse(mri, mri, method="max", tta=True)
    assert np.array_equal(fuse(mri, mri, method="max", tta="false"), fuse(mri, mri, method="max"))
    seen.clear()  # a bundle override string "false" must not switch TTA on (a non-empty string is truthy)
    assert np.array_equal(fuse(mri, mri, model=lopsided, progress=False, tta="false"), plain) and len(seen) == 1
    with pytest.raises(FusionInputError, match="tta 'no': give true or false"):
        fuse(mri, mri, method="max", tta="no")


def test_background_is_exactly_zero_with_a_network(tiny_net, synthetic_pair):
    mri, other = synthetic_pair
    mri[:10], other[:10] = 0.0, 0.0  # a band of joint background
    fused = fuse(mri, other, model=tiny_net, optimize=False)
    kept = fuse(mri, other, model=tiny_net, optimize=False, mask_background=False)
    assert (fused[:10] == 0).all() and (kept[:10] != 0).any()
    assert np.array_equal(fused[10:], kept[10:])


def test_worker_policy(monkeypatch):
    from monai_lkcfusion.inferers import worker_policy
    from monai_lkcfusion.machine import available_cores

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cpu, cores = torch.device("cpu"), available_cores()
    assert worker_policy(None, None, cpu) == (cores, 1)  # one single-thread worker per core
    assert worker_policy(None, 2, cpu) == (max(1, cores // 2), 2)
    assert worker_policy(3, None, cpu) == (3, max(1, cores // 3))
    assert worker_policy(1, None, cpu) == (1, None)  # one worker: PyTorch's own thread count (the plain path)
    assert worker_policy(4, 4, cpu) == (4, 4)  # both given: as asked
    assert worker_policy(None, None, torch.device("meta")) == (1, None)  # not the CPU: one worker, threads untouched
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores + 1))  # more torchrun processes on this machine than cores
    assert worker_policy(None, None, cpu) == (1, 1)
    for bad in ({"workers": 0}, {"threads": -1}, {"workers": 1.5}, {"threads": True}):
        with pytest.raises(FusionInputError, match="whole number"):
            worker_policy(bad.get("workers"), bad.get("threads"), cpu)


def test_volume_with_workers_matches_one_worker(tiny_net):
    """Slices fused by concurrent workers: the same volume as one worker, PyTorch's thread count restored after."""
    from monai_lkcfusion.inferers import FusionInferer

    rng = np.random.default_rng(3)
    pair = torch.from_numpy(rng.random((1, 2, 40, 36, 11), dtype=np.float32))  # 11 slices: uneven chunks
    before = torch.get_num_threads()
    one = FusionInferer(batch_size=4, device="cpu", workers=1)(pair, tiny_net)
    assert torch.get_num_threads() == before
    seen: list[int] = []

    def net(x: torch.Tensor) -> torch.Tensor:  # records the thread count each chunk runs with
        seen.append(torch.get_num_threads())
        assert not torch.is_grad_enabled()
        return tiny_net(x).clamp(0.0, 1.0)

    three = FusionInferer(batch_size=4, device="cpu", workers=3, threads=1, optimize=False)(pair, net)
    assert torch.get_num_threads() == before and set(seen) == {1}
    assert len(seen) > 3  # batches of 4 slices went out in chunks
    assert three.shape == one.shape == (1, 1, 40, 36, 11)
    assert torch.allclose(three, one, atol=1e-4)
    optimised = FusionInferer(batch_size=4, device="cpu", workers=2)(pair, tiny_net)
    assert torch.allclose(optimised, one, atol=1e-4)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_eight_bit_colour_volume_keeps_its_colours(tmp_path, suffix):
    """An 8-bit pseudo-colour PET volume (RGB24 NIfTI, uint8 vector NRRD) is scaled by its display range, as the
    same colours in a PNG are: fused with a black MRI, the colours come back unchanged (no hue shift)."""
    import SimpleITK as sitk

    rgb = np.zeros((12, 10, 4, 3), np.uint8)
    rgb[...] = (0, 0, 140)  # dark blue body
    rgb[4:8, 3:7] = (250, 60, 10)  # hot spot: red
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    mri = tmp_path / "mri.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((12, 10, 4), np.float32), affine), str(mri))
    pet = tmp_path / f"pet{suffix}"
    if suffix == ".nii.gz":
        rgb24 = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
        nib.save(nib.Nifti1Image(rgb.view(rgb24)[..., 0], affine), str(pet))
    else:  # ITK vector image: (Z, Y, X, 3) array, LPS geometry equal to the RAS affine above
        image = sitk.GetImageFromArray(np.ascontiguousarray(rgb.transpose(2, 1, 0, 3)), isVector=True)
        image.SetSpacing((2.0, 2.0, 3.0))
        image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
        sitk.WriteImage(image, str(pet))
    fused = fuse(mri, pet, method="max")  # (3, X, Y, Z) in [0, 1]
    assert fused.shape == (3, 12, 10, 4) and "display range / 255" in fused.meta["other_intensity_scaling"]
    colours = fused.permute(1, 2, 3, 0).numpy() * 255.0
    assert np.abs(colours[5, 4, 1] - (250, 60, 10)).max() <= 2.0
    assert np.abs(colours[0, 0, 0] - (0, 0, 140)).max() <= 2.0


def test_two_dimensional_nifti_is_written_back_two_dimensional(tmp_path):
    """A 2D NIfTI MRI (64, 60) gave a (64, 60, 1) result (found by a hand-check helper): the output now has the MRI's
    shape and affine, in NIfTI; other formats and volumes keep theirs."""
    import nibabel as nib

    affine = np.diag([0.8, 0.9, 1.0, 1.0])
    affine[:3, 3] = (-20.0, 15.0, 4.0)
    mri = np.random.default_rng(0).random((64, 60)).astype(np.float32) * 100
    nib.save(nib.Nifti1Image(mri, affine), str(tmp_path / "mri.nii.gz"))
    nib.save(nib.Nifti1Image(mri[::-1].copy(), affine), str(tmp_path / "pet.nii"))
    out = fuse_files(tmp_path / "mri.nii.gz", tmp_path / "pet.nii", tmp_path / "f.nii.gz", method="max")
    fused = nib.load(str(out))
    assert fused.shape == (64, 60) and fused.header["dim"][0] == 2 and np.allclose(fused.affine, affine)
    np.testing.assert_allclose(np.asarray(fused.dataobj), np.maximum(mri, mri[::-1]) / 100, atol=0.02)


def test_two_dimensional_itk_files_keep_their_geometry(tmp_path):
    """2D MHA/NRRD files carry spacing, origin and direction: they are one-slice volumes (as a 2D NIfTI is), so
    the other image is placed in world coordinates and the output keeps the MRI's plane, not its pixel indices."""
    import SimpleITK as sitk

    mri = np.zeros((40, 36), np.float32)  # (rows y, columns x)
    mri[:10] = 500.0  # a band along the first rows
    image = sitk.GetImageFromArray(mri)
    image.SetSpacing((0.7, 0.9))
    image.SetOrigin((-12.0, 30.0))
    sitk.WriteImage(image, str(tmp_path / "mri.mha"))
    pet = np.zeros((40, 36), np.float32)
    pet[20, 10] = 1000.0  # world x = -20 + 10 * 1.4 = -6, y = 20 + 20 * 1.2 = 44
    moved = sitk.GetImageFromArray(pet)
    moved.SetSpacing((1.4, 1.2))
    moved.SetOrigin((-20.0, 20.0))
    sitk.WriteImage(moved, str(tmp_path / "pet.nrrd"))
    for suffix in (".mha", ".nii.gz"):
        out = fuse_files(tmp_path / "mri.mha", tmp_path / "pet.nrrd", tmp_path / f"f{suffix}", method="max")
        fused = sitk.ReadImage(str(out))
        assert fused.GetSize() == (36, 40, 1)
        assert np.allclose(fused.GetSpacing()[:2], (0.7, 0.9), atol=1e-6)
        assert np.allclose(fused.GetOrigin()[:2], (-12.0, 30.0), atol=1e-6)
        array = sitk.GetArrayFromImage(fused)[0]  # (rows, columns) as in the MRI
        assert array[:10].min() > 0.5 and array[12:].max() < 0.9  # the band stays in the first rows
        spot = np.unravel_index(np.argmax(np.where(np.arange(40)[:, None] >= 12, array, 0)), array.shape)
        x, y = fused.TransformIndexToPhysicalPoint((int(spot[1]), int(spot[0]), 0))[:2]
        assert abs(x + 6.0) <= 1.0 and abs(y - 44.0) <= 1.0  # the PET spot at its world position


def test_picture_written_as_volume_is_not_transposed(tmp_path):
    """A 2D picture written to NIfTI/NRRD/MHA follows ITK's layout for pictures (x along the columns)."""
    import SimpleITK as sitk

    picture = np.zeros((30, 20), np.uint8)
    picture[:5] = 200  # the first rows
    Image.fromarray(picture).save(tmp_path / "m.png")
    Image.fromarray(picture).save(tmp_path / "ct.png")
    for suffix in (".nii.gz", ".mha"):
        out = fuse_files(tmp_path / "m.png", tmp_path / "ct.png", tmp_path / f"f{suffix}", method="max")
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "m.png")))
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))[0]
        assert written.shape == reference.shape == (30, 20)
        assert np.array_equal(written > 0.5, reference > 100)


def test_numpy_volume_of_four_slices_is_not_silently_a_picture():
    """A float (X, Y, 4) volume has an RGBA picture's shape: it was composited as colour without a word (one slice
    lost as alpha). It is now warned, and the (1, X, Y, Z) tensor the warning suggests is fused as a volume."""
    x, y = np.meshgrid(np.arange(32), np.arange(30), indexing="ij")
    mri = np.stack([(300 + 50 * k + 500 * np.sin(x / 5) ** 2) * ((x - 16) ** 2 + (y - 15) ** 2 < 150)
                    for k in range(4)], -1).astype(np.float32)
    pet = np.stack([np.exp(-((x - 10) ** 2 + (y - 18) ** 2) / 40) * 1000 * (k + 1) for k in range(4)], -1)
    with pytest.warns(UserWarning, match=r"read as a colour picture .* pass a \(1, X, Y, Z\) tensor"):
        fuse(mri, pet.astype(np.float32), method="max", progress=False)
    volume = fuse(torch.as_tensor(mri)[None], torch.as_tensor(pet, dtype=torch.float32)[None], method="max",
                  progress=False)
    assert tuple(volume.shape) == (1, 32, 30, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an 8-bit picture is what the shape means: no warning
        fuse((np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8),
             (np.random.default_rng(1).random((16, 16, 3)) * 255).astype(np.uint8), method="max", progress=False)


def test_single_sagittal_slice_is_fused_in_its_own_plane(tmp_path):
    """A one-slice sagittal NIfTI (1, Y, Z) was cut along the axial axis into 64 strips one pixel wide: the network
    never saw the image. It is now fused in its plane, as the same slice given as a 2D array shown as a sagittal
    picture is (superior at the top, anterior on the left: with an identity RAS affine, both axes reversed)."""
    rng = np.random.default_rng(1)
    mri = (rng.random((40, 48)) * 400 + 100).astype(np.float32)
    pet = (np.exp(-((np.arange(40)[:, None] - 20) ** 2 + (np.arange(48) - 12) ** 2) / 30) * 900).astype(np.float32)
    for name, data in (("m", mri), ("p", pet)):
        nib.save(nib.Nifti1Image(data[None], np.eye(4)), str(tmp_path / f"{name}.nii.gz"))  # (1, Y, Z): sagittal
    net = LKCFUNet.from_preset("tiny").eval()
    volume = fuse(tmp_path / "m.nii.gz", tmp_path / "p.nii.gz", model=net, color=False, progress=False)
    shown = (np.ascontiguousarray(data[::-1, ::-1].T) for data in (mri, pet))  # (Y, Z) -> rows Z down, columns Y
    picture = np.asarray(fuse(*shown, model=net, color=False, progress=False)).T[::-1, ::-1]
    assert volume.shape == (1, 1, 40, 48) and np.abs(volume[0, 0].numpy() - picture).max() < 1e-4


def test_swapped_arguments_are_warned(tmp_path):
    """A pseudo-colour PET given as the MRI (and the MRI as the other image) was fused in gray without a word."""
    from monai_lkcfusion.data import demo_files

    files = demo_files()
    with pytest.warns(UserWarning, match="the arguments are swapped"):
        fuse(files["pet_2d"], files["mri_2d"], method="max", progress=False)
    gray_rgb = np.repeat(np.asarray(Image.open(files["mri_2d"]).convert("L"))[..., None], 3, axis=2)
    Image.fromarray(gray_rgb).save(tmp_path / "mri_rgb.png")  # an MRI saved as RGB: gray, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fuse(files["mri_2d"], files["pet_2d"], method="max", progress=False)
        fuse(tmp_path / "mri_rgb.png", files["mri_2d"], method="max", progress=False)


@pytest.mark.parametrize("optimize", [False, True])
def test_fusing_leaves_the_callers_network_in_its_mode(synthetic_pair, optimize):
    """A network passed mid-training came back in eval mode (MONAI's inferers leave the mode to the caller); it is
    still run in eval mode (dropout off), so the result is the eval-mode one."""
    mri, other = synthetic_pair
    torch.manual_seed(0)
    net = LKCFUNet.from_preset("tiny", dropout=0.5)
    expected = fuse(mri, other, model=copy.deepcopy(net).eval(), optimize=optimize, progress=False)
    net.train()
    fused = fuse(mri, other, model=net, optimize=optimize, progress=False)
    assert net.training and all(m.training for m in net.modules())
    assert np.allclose(fused, expected, atol=1e-5)


@pytest.mark.parametrize("layout", ["flip_x", "flip_xy", "swap_xy", "lps_swapped"])
def test_a_volume_is_fused_the_same_whatever_its_voxel_order(tmp_path, layout):
    """The same anatomy stored in another voxel order (RAS against LPS, rows and columns swapped: dcm2niix, ITK and
    DICOM-derived files differ so) gave other fused values, up to 0.19 (hand-check helper): the network is not
    equivariant to flips and transposes and saw each slice in the file's order. Slices now go in in one anatomical
    layout, so the results agree voxel for voxel in world space; training slices (RandSliced) are taken the same way."""
    from monai_lkcfusion.transforms import RandSliced

    rng = np.random.default_rng(4)
    x, y, z = np.meshgrid(np.arange(36), np.arange(44), np.arange(10), indexing="ij")
    head = ((x - 18) / 15) ** 2 + ((y - 21) / 19) ** 2 < 1
    mri = (head * (300 + 200 * np.sin(x / 3) * np.cos(y / 5) + 60 * rng.random(head.shape))).astype(np.float32)
    pet = (head * np.exp(-((x - 10) ** 2 + (y - 30) ** 2) / 40) * 900 * (1 + z / 10)).astype(np.float32)
    affine = np.diag([0.9, 1.1, 3.0, 1.0])
    affine[:3, 3] = (-15.0, 20.0, 4.0)
    change = {"flip_x": ((0, 1, 2), (0,)), "flip_xy": ((0, 1, 2), (0, 1)), "swap_xy": ((1, 0, 2), ()),
              "lps_swapped": ((1, 0, 2), (0, 1))}[layout]

    def stored(data: np.ndarray, order: tuple, flips: tuple) -> tuple[np.ndarray, np.ndarray]:
        moved, new = data, affine.copy()
        for axis in flips:  # voxel i -> n - 1 - i: the world point of the new index 0 is the old last one
            new[:3, 3] += new[:3, axis] * (data.shape[axis] - 1)
            new[:3, axis] *= -1
            moved = np.flip(moved, axis)
        return np.ascontiguousarray(moved.transpose(order)), new[:, [*order, 3]]

    net = LKCFUNet.from_preset("tiny").eval()
    results, slices = [], []
    for order, flips in (((0, 1, 2), ()), change):
        for name, data in (("m", mri), ("p", pet)):
            array, new = stored(data, order, flips)
            nib.save(nib.Nifti1Image(array, new), str(tmp_path / f"{name}.nii.gz"))
        fused = fuse(tmp_path / "m.nii.gz", tmp_path / "p.nii.gz", model=net, color=False, progress=False)[0].numpy()
        back = np.ascontiguousarray(fused.transpose(np.argsort(order)))  # the first storage order again
        results.append(np.flip(back, flips) if flips else back)
        volume = fusion_load_transforms()({"mri": str(tmp_path / "m.nii.gz"), "other": str(tmp_path / "p.nii.gz")})
        sampler = RandSliced(("mri", "other")).set_random_state(0)
        slices.append(sampler(volume)["mri"].as_tensor().numpy())
    assert float(np.abs(results[0]).max()) > 0.1  # the network saw the anatomy
    np.testing.assert_allclose(results[1], results[0], atol=1e-5)
    np.testing.assert_allclose(slices[1], slices[0], atol=1e-6)


def test_a_slab_of_a_few_slices_is_fused_in_its_own_plane(tmp_path):
    """A coronal slab of 3 slices (X, 3, Z) was cut along the axial axis into strips 3 pixels wide, padded by
    replication (up to 0.41 off its slices fused one by one; hand-check helper): it is fused across its thin axis,
    each slice as that slice alone is; so is a single slice whose own plane is narrow, (1, 5, 200) (the review found
    it cut into 1 x 5 strips); a small volume whose slices are all short is cut where they are widest."""
    from monai_lkcfusion.transforms import slicing_axis

    rng = np.random.default_rng(5)
    mri = (rng.random((40, 3, 48)) * 0.8 + 0.1).astype(np.float32)  # in [0, 1]: not rescaled per volume
    pet = np.zeros_like(mri)
    pet[10:20, :, 5:30] = 0.9
    net = LKCFUNet.from_preset("tiny").eval()
    slab = fuse(MetaTensor(torch.from_numpy(mri)[None]), MetaTensor(torch.from_numpy(pet)[None]), model=net,
                color=False, progress=False)
    for j in range(3):
        alone = fuse(*(MetaTensor(torch.from_numpy(np.ascontiguousarray(a[:, j:j + 1]))[None]) for a in (mri, pet)),
                     model=net, color=False, progress=False)
        np.testing.assert_allclose(slab[0, :, j].numpy(), alone[0, :, 0].numpy(), atol=1e-5)
    eye = np.eye(4)
    shapes = ((3, 181, 217), (181, 3, 217), (256, 256, 3), (6, 7, 8), (1, 40, 48), (40, 7, 5), (1, 5, 200),
              (1, 200, 5), (1, 7, 300), (6, 6, 6))
    assert [slicing_axis(eye, shape) for shape in shapes] == [0, 1, 2, 0, 0, 2, 0, 0, 0, 2]


def test_images_already_scaled_to_unit_are_not_scaled_again(harvard_root, tmp_path):
    """read_image() records display_max 255 for a picture; the record outlived the values: read_image(p) / 255, a
    MONAI ScaleIntensity, the package's own load transforms, or a fused result fed back were divided by 255 again and
    fused nearly black (max 0.004; hand-check helper). A record that the values contradict is dropped with a warning:
    fractions in [0, 1] under 255, or values above it (the review: a scaled image times 255 saturated half its pixels
    once the scaled image recorded 1); a dark 8-bit picture of 0s and 1s keeps its record; the package's own scaling
    drops it."""
    from monai.transforms import ScaleIntensity

    folder = harvard_root / "test" / "MRI-CT"
    name = sorted(path.name for path in (folder / "MRI").glob("*.png"))[0]
    mri, ct = folder / "MRI" / name, folder / "CT" / name
    expected = fuse(mri, ct, method="max", progress=False)
    from monai.transforms import NormalizeIntensity, Resize

    undershoot = lambda image: image / 255.0 - 0.01  # noqa: E731 (a bicubic resize's undershoot: below 0)
    bicubic = lambda image: Resize((300, 300), mode="bicubic")(image / 255.0)  # noqa: E731 (and overshoot above 1)
    scaled_from_data = (undershoot, bicubic, NormalizeIntensity(), lambda image: image / 255.0 * 100)
    for scale in (lambda image: image / 255.0, ScaleIntensity(), *scaled_from_data):
        with pytest.warns(UserWarning, match=r"not whole numbers\) do not fit the display_max 255 its metadata "
                                             r"records: the record is dropped"):
            fused = fuse(scale(read_image(mri)), scale(read_image(ct)), method="max", progress=False)
        if scale in scaled_from_data:  # by modality from the data, not divided by 255 again (mean 0.002 before)
            assert float(fused.mean()) > 0.5 * float(expected.mean()), float(fused.mean())
        elif isinstance(scale, ScaleIntensity):  # stretched to the full range: the same picture up to a gain
            assert float(fused.max()) == pytest.approx(1.0, abs=1e-6)
        else:
            np.testing.assert_allclose(fused.numpy(), expected.numpy(), atol=1e-6)
    loaded = fusion_load_transforms()({"mri": str(mri), "other": str(ct)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the package's own scaling leaves no record to contradict
        again = fuse(loaded["mri"], loaded["other"], method="max", progress=False)
        fed_back = fuse(expected, ct, method="max", progress=False)  # max(max(A, B), B)
        times_255 = fuse(expected * 255, ct, method="max", progress=False)  # scaled from its data, not clamped
    assert "display_max" not in expected.meta
    np.testing.assert_allclose(again.numpy(), expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(fed_back.numpy(), expected.numpy(), atol=1e-6)
    saturated = float((expected >= 1.0).float().mean()) + 0.01  # the CT's bone: 7% of this slice
    assert float((times_255 >= 1.0).float().mean()) <= saturated
    as_bytes = fuse(MetaTensor((expected * 255).round().to(torch.uint8)), ct, method="max", progress=False)
    np.testing.assert_allclose(as_bytes.numpy(), expected.numpy(), atol=1 / 255)  # uint8: / 255
    stamped = MetaTensor(expected.as_tensor() * 255, meta={"display_max": 1.0})
    with pytest.warns(UserWarning, match=r"\) do not fit the display_max 1 its metadata records: the record is "
                                         r"dropped and the values scaled from the data"):
        assert float((fuse(stamped, ct, method="max", progress=False) >= 1.0).float().mean()) <= saturated
    dark = np.zeros((40, 36), np.uint8)
    dark[10:30, 8:28] = 1  # an 8-bit picture of 0s and 1s: values 1/255, not a full-range [0, 1] image
    Image.fromarray(dark).save(tmp_path / "dark.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        darkest = fuse(read_image(tmp_path / "dark.png"), np.zeros((40, 36), np.uint8), method="max", progress=False)
    assert float(darkest.max()) == pytest.approx(1 / 255, abs=1e-6)


def test_a_batch_of_volumes_is_fused_each_by_its_own_affine():
    """A collated batch of volumes (has_geometry a tensor, one affine per item) crashed ("Boolean value of Tensor with
    more than one value is ambiguous"), and a batch mixing orientations was laid out by its first item's affine
    (review): each item is fused as it is alone."""
    from monai.data import list_data_collate

    from monai_lkcfusion.inferers import FusionInferer

    rng = np.random.default_rng(6)
    net = LKCFUNet.from_preset("tiny").eval()
    inferer = FusionInferer(device="cpu", optimize=False)
    lps = torch.diag(torch.tensor([-1.0, -1.0, 2.0, 1.0], dtype=torch.float64))
    items = [MetaTensor(torch.from_numpy(rng.random((2, 20, 24, 6)).astype(np.float32)), affine=affine,
                        meta={"has_geometry": True}) for affine in (torch.eye(4, dtype=torch.float64), lps)]
    batch = list_data_collate([{"image": item} for item in items])["image"]
    assert isinstance(batch.meta["has_geometry"], torch.Tensor) and batch.affine.shape == (2, 4, 4)
    fused = inferer(batch, net)
    for i, item in enumerate(items):
        np.testing.assert_allclose(fused[i].numpy(), inferer(item[None], net)[0].numpy(), atol=1e-6)


def test_numpy_volumes_keep_their_voxel_order():
    """An array has no anatomy (its identity affine is no place): its slices go into the network as stored, unlike a
    MetaTensor's or a file's, which are laid out by their affine (a dropped has_geometry record once rotated them)."""
    rng = np.random.default_rng(7)
    mri, pet = (rng.random((20, 24, 5)).astype(np.float32) for _ in range(2))  # in [0, 1]: not rescaled
    net = LKCFUNet.from_preset("tiny").eval()
    fused = fuse(mri, pet, model=net, color=False, mask_background=False, progress=False, optimize=False)
    with torch.no_grad():
        slices = [net(torch.from_numpy(np.stack([mri[..., z], pet[..., z]]))[None])[0, 0].clamp(0, 1) for z in range(5)]
    np.testing.assert_allclose(fused, torch.stack(slices, -1).numpy(), atol=1e-5)
    placed = fuse(MetaTensor(torch.from_numpy(mri)[None]), MetaTensor(torch.from_numpy(pet)[None]), model=net,
                  color=False, mask_background=False, progress=False, optimize=False)  # identity affine: RAS
    assert not np.allclose(placed[0].numpy(), fused, atol=1e-3)


@pytest.mark.parametrize("size", [(40, 36), (36, 36)])
def test_pictures_loaded_by_monais_pil_reader_fuse_as_their_files(tmp_path, tiny_net, size):
    """``LoadImage`` (PILReader) gives a picture as ``(C, W, H)`` float32 without its 8-bit record: fused as the file is
    (the network sees the stored row order, values / 255) and returned in the layout given; it was fused transposed
    and percentile-scaled, up to 0.5 apart, without a word, and written transposed by ``SaveFused``.
    ``reverse_indexing=False`` (``(C, H, W)``) too (a square picture says so in its meta)."""
    from monai.data import PILReader
    from monai.transforms import LoadImage

    from monai_lkcfusion.transforms import SaveFused

    h, w = size
    _mri_png(tmp_path / "m.png", h, w)
    _pet_png(tmp_path / "p.png", h, w)
    from_file = fuse(tmp_path / "m.png", tmp_path / "p.png", model=tiny_net, optimize=False)
    saved = fuse_files(tmp_path / "m.png", tmp_path / "p.png", tmp_path / "f.png", model=tiny_net, optimize=False)
    for reverse in (True, False):
        load = LoadImage(reader=PILReader(reverse_indexing=reverse), ensure_channel_first=True, image_only=True)
        mri, pet = load(tmp_path / "m.png"), load(tmp_path / "p.png")
        if not reverse and h == w:  # a square picture's order cannot be told: MONAI's default unless said
            mri.meta["rows_columns_swapped"] = pet.meta["rows_columns_swapped"] = False
        fused = fuse(mri, pet, model=tiny_net, optimize=False)
        assert fused.meta["mri_intensity_scaling"] == from_file.meta["mri_intensity_scaling"] == "display range / 255"
        expected = from_file.as_tensor().transpose(1, 2) if reverse else from_file.as_tensor()
        assert torch.allclose(fused.as_tensor(), expected, atol=1e-6), reverse
        written = SaveFused(tmp_path / f"out{reverse}")(fused).meta["saved_to"]  # the stored order, as the file's
        assert np.array_equal(np.asarray(Image.open(written)), np.asarray(Image.open(saved)))


def test_a_picture_loaded_by_monai_paired_with_a_path_is_refused(tmp_path):
    """A square MRI from MONAI's ``LoadImage`` (``(C, W, H)``) with the PET as a path (``(C, H, W)``): the two were
    paired transposed against each other and fused without a word."""
    from monai.transforms import LoadImage

    _mri_png(tmp_path / "m.png", 40, 40)
    _pet_png(tmp_path / "p.png", 40, 40)
    mri = LoadImage(ensure_channel_first=True, image_only=True)(tmp_path / "m.png")
    for pair in ((mri, tmp_path / "p.png"), (tmp_path / "p.png", mri)):
        with pytest.raises(FusionInputError, match=r"m\.png: a picture loaded by MONAI's LoadImage .* load both the "
                                                   "same way"):
            fuse(*pair, method="max")


def test_metatensors_loaded_without_their_channel_first_are_refused(tmp_path):
    """MONAI's ``LoadImage`` without ``ensure_channel_first`` gives ``(X, Y, Z)`` / ``(W, H, 3)``: refused, naming the
    option (a volume of 3 voxels along X was fused as an RGB picture of its Y-Z plane without a word)."""
    from monai.transforms import LoadImage

    load = LoadImage(image_only=True)  # MONAI's default: ensure_channel_first=False
    rng = np.random.default_rng(0)
    for name, shape in (("slab.nii.gz", (3, 20, 18)), ("vol.nii.gz", (12, 20, 18))):
        nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32) * 100, np.eye(4)), str(tmp_path / name))
        image = load(tmp_path / name)
        with pytest.raises(FusionInputError, match="ensure_channel_first"):
            fuse(image, image.clone(), method="max")
    _pet_png(tmp_path / "p.png")
    with pytest.raises(FusionInputError, match="ensure_channel_first"):
        fuse(load(tmp_path / "p.png"), load(tmp_path / "p.png"), method="max")
