"""Transforms: loading every picture mode, YCbCr round trip, modality scaling, resampling, slice sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from monai_lkcfusion.errors import FusionInputError, user_error
from monai_lkcfusion.transforms import (
    CheckMinSized,
    MergeLumad,
    RandSliced,
    ResampleToReferenced,
    SplitLumad,
    axial_axis,
    fusion_load_transforms,
    resample_to_reference,
    rgb_to_ycbcr,
    scale_to_unit,
    ycbcr_to_rgb,
)


def _pet_rgb(h: int = 20, w: int = 30) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 8 % 256, yy * 12 % 256, (xx + yy) * 4 % 256], -1).astype(np.uint8)


def test_load_pair_gray_and_colour(tmp_path):
    Image.fromarray(np.arange(600, dtype=np.uint8).reshape(20, 30)).save(tmp_path / "mri.png")
    Image.fromarray(_pet_rgb()).save(tmp_path / "pet.png")
    d = fusion_load_transforms()({"mri": str(tmp_path / "mri.png"), "other": str(tmp_path / "pet.png")})
    assert d["mri"].shape == (1, 20, 30) and d["other"].shape == (1, 20, 30) and d["other_cbcr"].shape == (2, 20, 30)
    assert d["mri"].dtype == torch.float32 and 0 <= float(d["mri"].min()) and float(d["mri"].max()) <= 1
    assert torch.allclose(d["mri"][0, 0, :5], torch.arange(5) / 255.0)  # row/column order kept, /255
    rgb = torch.as_tensor(_pet_rgb()).permute(2, 0, 1).float() / 255
    assert torch.allclose(d["other"][0], rgb_to_ycbcr(rgb)[0], atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16", "LA", "1"])
def test_picture_modes(tmp_path, mode):
    rgb = Image.fromarray(_pet_rgb())
    image = {"L": rgb.convert("L"), "RGB": rgb, "RGBA": rgb.convert("RGBA"), "P": rgb.convert("P"),
             "LA": rgb.convert("LA"), "1": rgb.convert("1"),
             "I;16": Image.fromarray((np.asarray(rgb.convert("L")).astype(np.uint16) * 200))}[mode]
    image.save(tmp_path / "x.png")
    d = fusion_load_transforms(split_luma=False)({"mri": str(tmp_path / "x.png"), "other": str(tmp_path / "x.png")})
    channels = 3 if mode in ("RGB", "RGBA", "P") else 1
    assert d["other"].shape == (channels, 20, 30)
    assert torch.isfinite(d["other"]).all() and float(d["other"].max()) <= 1 and float(d["other"].min()) >= 0
    assert float(d["other"].max()) > 0.5


def test_ycbcr_round_trip_and_merge():
    rgb = torch.rand(3, 9, 7)
    ycbcr = rgb_to_ycbcr(rgb)
    assert torch.allclose(ycbcr_to_rgb(ycbcr[:1], ycbcr[1:]), rgb, atol=1e-5)
    gray = torch.full((3, 4, 4), 0.3)
    assert torch.allclose(rgb_to_ycbcr(gray)[1:], torch.full((2, 4, 4), 0.5), atol=1e-6)
    d = SplitLumad("other")({"other": rgb})
    d["pred"] = d["other"]
    assert torch.allclose(MergeLumad("pred")(d)["pred"], rgb, atol=1e-5)
    assert MergeLumad("pred")({"pred": torch.zeros(1, 2, 2)})["pred"].shape == (1, 2, 2)


def test_scale_by_modality():
    ct = torch.tensor([[-1000.0, 0.0, 40.0, 1500.0, 3000.0]])
    scaled, rec = scale_to_unit(ct)
    assert "CT window" in rec["intensity_scaling"] and scaled[0, 0] == 0 and scaled[0, 3] == 1
    mr = torch.linspace(0, 1000, 1001)[None].clone()
    mr[0, 5] = float("nan")
    mr[0, 6] = float("inf")
    scaled, rec = scale_to_unit(mr, modality="MR")
    assert rec["nonfinite_voxels"] == 2 and "percentiles" in rec["intensity_scaling"]
    assert torch.isfinite(scaled).all() and scaled[0, 5] == 0 and scaled.max() == 1
    constant, _ = scale_to_unit(torch.full((1, 4, 4), 7.0))
    assert torch.isfinite(constant).all()
    with pytest.raises(FusionInputError, match="no finite voxel"):
        scale_to_unit(torch.full((1, 3, 3), float("nan")), name="x.nii")
    with pytest.raises(FusionInputError, match="unknown modality"):
        scale_to_unit(mr, modality="XR")


def _volume(shape, spacing, origin) -> MetaTensor:
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    affine[:3, 3] = torch.tensor(origin, dtype=torch.float64)
    x, y, z = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    world_x = x * spacing[0] + origin[0]
    return MetaTensor(world_x[None].clone(), affine=affine)


def test_resample_to_reference_is_affine_aware():
    mri = _volume((20, 16, 12), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    pet = _volume((12, 10, 8), (2.0, 2.0, 2.0), (-3.0, -2.0, -1.0))
    moved, coverage = resample_to_reference(pet, mri)
    assert moved.shape == (1, 20, 16, 12) and torch.equal(moved.affine, mri.affine)
    assert 0.5 < coverage <= 1.0
    # the PET encodes world x; inside its field of view the resampled value equals the MRI voxel's world x
    assert torch.allclose(moved[0, 2:18, 2:14, 2:10], mri[0, 2:18, 2:14, 2:10], atol=1e-3)
    far = _volume((12, 10, 8), (2.0, 2.0, 2.0), (500.0, 0.0, 0.0))
    with pytest.raises(FusionInputError, match="does not overlap"):
        resample_to_reference(far, mri)


def test_resample_2d_size_mismatch():
    a, b = MetaTensor(torch.rand(1, 10, 12)), MetaTensor(torch.rand(1, 8, 8))
    with pytest.raises(FusionInputError, match="--resample"):
        resample_to_reference(b, a)
    assert resample_to_reference(b, a, resize_2d=True)[0].shape == (1, 10, 12)


def test_axial_axis_and_rand_slice():
    assert axial_axis(torch.eye(4)) == 2
    sagittal_first = torch.tensor([[0.0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    assert axial_axis(sagittal_first) == 0
    vol = MetaTensor(torch.zeros(1, 16, 18, 8))
    vol[0, :, :, 3] = 1.0
    sampler = RandSliced(("mri", "other"))
    sampler.set_random_state(0)
    d = sampler({"mri": vol, "other": vol.clone() * 2})
    # an identity affine is RAS: an axial slice is shown anterior at the top, the patient's right on the left
    assert d["mri"].shape == (1, 18, 16) and d["mri"].meta["slice_index"] == 3 and float(d["other"].max()) == 2
    spacing = torch.diag(torch.tensor([0.5, 0.8, 3.0, 1.0], dtype=torch.float64))
    spaced = MetaTensor(vol.as_tensor() * torch.rand(vol.shape, generator=torch.Generator().manual_seed(0)),
                        affine=spacing)  # its slice 3 random: the layout below is seen
    plane = RandSliced("mri").set_random_state(0)({"mri": spaced})["mri"]
    assert np.allclose(plane.pixdim.numpy(), [0.8, 0.5]) and plane.meta["slice_axis"] == 2  # in-plane spacing kept
    # where it lies in the volume: rows along voxel axis 1, columns along 0, both reversed (RAS shown radiologically)
    assert (plane.meta["slice_rows"], plane.meta["slice_columns"], plane.meta["slice_flipped"]) == (1, 0, [0, 1])
    back = np.flip(plane[0].numpy(), (0, 1)).T  # undo the layout: the volume's slice in voxel order
    assert np.array_equal(back, spaced[0, :, :, plane.meta["slice_index"]].numpy())


def test_volume_pair_training_chain_on_demo_data():
    from monai.transforms import Compose

    from monai_lkcfusion.data import demo_files
    from monai_lkcfusion.transforms import LoadFusionImaged, ResampleToReferenced, ScaleModalityd

    files = demo_files()
    chain = Compose([LoadFusionImaged(("mri", "other")), ScaleModalityd(("mri", "other")),
                     ResampleToReferenced("other"), RandSliced(("mri", "other")), SplitLumad("other")])
    chain.set_random_state(1)
    d = chain({"mri": str(files["mri_3d"]), "other": str(files["pet_3d"])})
    assert d["mri"].shape == d["other"].shape == (1, 181, 145)  # (rows A -> P, columns R -> L)
    assert 0.5 < d["other"].meta["overlap_fraction"] < 1.0  # the PET grid is shifted: partial coverage
    assert float(d["mri"].max()) <= 1 and float(d["other"].max()) > 0.2
    # a slice cannot go back into its volume: Invertd said nothing and returned a made-up (1, 75, 93) "PET"
    from monai.transforms import Invertd

    with pytest.raises(RuntimeError) as caught:
        Invertd("other", transform=chain, orig_keys="other")(d)
    assert "a 2D slice cannot be inverted back to its volume" in str(user_error(caught.value))


def _gray8(rgb: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of the 8-bit picture that ``rgb`` (3, ...) in [0, 1] is written as, rounded to a gray level."""
    q = torch.round(rgb.double() * 255)
    return torch.round(0.299 * q[0] + 0.587 * q[1] + 0.114 * q[2])


def test_luma_preserving_gamut_mapping():
    torch.manual_seed(0)
    y, cbcr = torch.rand(1, 200, 150), torch.rand(2, 200, 150)  # many colours outside the RGB gamut
    clipped, mapped = ycbcr_to_rgb(y, cbcr, preserve_luma=False), ycbcr_to_rgb(y, cbcr)
    assert 0 <= float(mapped.min()) and float(mapped.max()) <= 1
    luma8 = torch.round(y[0].double() * 255)
    assert (_gray8(clipped) - luma8).abs().gt(1).float().mean() > 0.3  # clipping changes the luma of many pixels
    assert (_gray8(mapped) - luma8).abs().max() <= 1  # the mapping does not
    assert torch.allclose(rgb_to_ycbcr(mapped)[0], y[0], atol=1e-5)
    # the hue is kept: the chroma is scaled by one factor s in [0, 1] per pixel
    chroma_in, chroma_out = cbcr - 0.5, rgb_to_ycbcr(mapped)[1:] - 0.5
    s = (chroma_out * chroma_in).sum(0) / (chroma_in**2).sum(0)
    assert s.min() >= -1e-5 and s.max() <= 1 + 1e-5 and torch.allclose(chroma_out, s * chroma_in, atol=1e-4)
    inside = ((clipped > 0) & (clipped < 1)).all(0)  # in-gamut colours are left as they are
    assert torch.allclose(mapped[:, inside], clipped[:, inside], atol=1e-5)
    d = MergeLumad("pred", preserve_luma=True)({"pred": MetaTensor(y, meta={"x": 1}), "other_cbcr": cbcr})
    assert d["pred"].meta["x"] == 1 and torch.allclose(d["pred"], mapped)


def test_mask_background_zero_where_both_sources_are_zero():
    from monai_lkcfusion.transforms import MaskBackground, MaskBackgroundd

    pair = torch.rand(2, 8, 9)
    pair[:, :3] = 0.0  # both background
    pair[0, 5:, :] = 0.0  # only the MRI is background: kept
    pred = torch.rand(1, 8, 9) + 0.1
    out = MaskBackground()(pred, pair)
    assert (out[:, :3] == 0).all() and torch.equal(out[:, 3:], pred[:, 3:])
    d = MaskBackgroundd("pred")({"pred": MetaTensor(pred), "image": pair})
    assert isinstance(d["pred"], MetaTensor) and torch.equal(d["pred"], out)


def test_array_and_dict_forms_keep_metadata_and_history():
    from monai_lkcfusion import transforms as T

    for name in ("LoadFusionImage", "ScaleModality", "ResampleToReference", "SplitLuma", "MergeLuma",
                 "MaskBackground", "AddFusionRecord", "SaveFused", "RandSlice"):
        array, dict_form = getattr(T, name), getattr(T, f"{name}d")
        assert getattr(T, f"{name}D") is dict_form and getattr(T, f"{name}Dict") is dict_form
        assert array.backend and dict_form.backend == array.backend
    img = MetaTensor(torch.rand(3, 6, 5) * 255, meta={"filename_or_obj": "pet.png", "display_max": 255.0})
    img.push_applied_operation({"class": "Earlier"})
    scaled = T.ScaleModality()(img)
    y, cbcr = T.SplitLuma()(scaled)
    assert y.meta["filename_or_obj"] == "pet.png" and "display range" in y.meta["intensity_scaling"]
    assert [op["class"] for op in y.applied_operations] == ["Earlier"] and cbcr.shape == (2, 6, 5)
    assert "intensity_scaling" not in img.meta  # the input's meta is not changed


def test_preprocessing_is_invertible_on_volumes():
    """Invertd puts the resampled other modality back on its own grid; its metadata (not the MRI's) is kept."""
    from monai.transforms import Invertd

    from monai_lkcfusion.transforms import ScaleModality, fusion_preprocessing

    mri = _volume((20, 16, 12), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    pet = _volume((12, 10, 8), (2.0, 2.0, 2.0), (-3.0, -2.0, -1.0))
    pet.meta.update({"filename_or_obj": "pet.nii.gz", "modality": "PT"})
    pre = fusion_preprocessing()
    d = pre({"mri": mri, "other": pet})
    assert d["image"].shape == (2, 20, 16, 12) and torch.equal(d["image"].affine, mri.affine)
    other = d["other"]
    assert other.meta["filename_or_obj"] == "pet.nii.gz" and other.meta["modality"] == "PET"
    assert [op["class"] for op in other.applied_operations] == ["ResampleToReference"]
    back = Invertd("other", transform=pre, orig_keys="other")(d)["other"]
    assert back.shape == pet.shape and torch.allclose(back.affine, pet.affine) and not back.applied_operations
    inner = (slice(None), slice(2, 10), slice(2, 8), slice(2, 6))  # away from the MRI grid's border
    assert torch.allclose(back[inner], ScaleModality()(pet)[inner], atol=1e-4)
    from monai_lkcfusion.inference import fuse_dict
    from monai_lkcfusion.inferers import FusionInferer, build_predictor
    from monai_lkcfusion.transforms import fusion_postprocessing

    fused = fuse_dict({"mri": mri, "other": pet}, build_predictor(None, "max"), pre, FusionInferer(),
                      fusion_postprocessing())
    on_pet_grid = Invertd("pred", transform=pre, orig_keys="other")(fused)["pred"]  # the fused image on the PET grid
    assert on_pet_grid.shape == pet.shape and torch.allclose(on_pet_grid.affine, pet.affine)
    same = MetaTensor(torch.rand(1, 5, 4))
    resizer = ResampleToReferenced("other", resize_2d=True)
    small = resizer({"mri": MetaTensor(torch.rand(1, 10, 8)), "other": same})
    assert small["other"].shape == (1, 10, 8) and resizer.inverse(small)["other"].shape == (1, 5, 4)


def _pairs_on_disk(tmp_path, kind: str) -> list[dict[str, str]]:
    """Two gray MRI / colour PET picture pairs, or two MRI / CT-in-HU NIfTI volume pairs, made here."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    items = []
    for i in range(2):
        if kind == "png":
            mri, other = tmp_path / f"m{i}.png", tmp_path / f"p{i}.png"
            Image.fromarray(rng.integers(0, 255, (24, 32), dtype=np.uint8)).save(mri)
            Image.fromarray(_pet_rgb(24, 32)).save(other)
        else:
            mri, other = tmp_path / f"m{i}.nii.gz", tmp_path / f"c{i}.nii.gz"
            nib.save(nib.Nifti1Image(rng.normal(500, 100, (16, 20, 6)).astype(np.float32), np.eye(4)), mri)
            ct = np.full((10, 12, 4), -1000, np.int16)
            ct[2:6, 3:7] = 40
            nib.save(nib.Nifti1Image(ct, np.diag([2.0, 2.0, 2.0, 1.0])), other)
        items.append({"mri": str(mri), "other": str(other)})
    return items


@pytest.mark.parametrize("kind", ["png", "nifti"])
def test_pipelines_collate_in_a_monai_dataloader(tmp_path, kind):
    """The ready-made chains (and the documented training chain) batch in a MONAI DataLoader: no metadata value
    that MONAI's collate cannot handle (it refuses ``None``)."""
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, RandFlipd, RandSpatialCropd

    from monai_lkcfusion.transforms import LoadFusionImaged, ScaleModalityd, fusion_preprocessing

    items = _pairs_on_disk(tmp_path, kind)
    chains = {"preprocessing": fusion_preprocessing()}
    if kind == "png":
        chains["load"] = fusion_load_transforms()
        chains["training"] = Compose([fusion_load_transforms(), RandSpatialCropd(("mri", "other"), (16, 16)),
                                      RandFlipd(("mri", "other"), prob=0.5, spatial_axis=1)])
    else:
        chains["volume training"] = Compose([LoadFusionImaged(("mri", "other")), ScaleModalityd(("mri", "other")),
                                             ResampleToReferenced("other"), RandSliced(("mri", "other")),
                                             SplitLumad("other")])
    for name, chain in chains.items():
        batch = next(iter(DataLoader(Dataset(items, chain), batch_size=2, num_workers=0)))
        key = "image" if name == "preprocessing" else "mri"
        assert batch[key].shape[0] == 2, name
        if kind == "nifti" and name == "preprocessing":
            assert batch["other"].meta["modality"] == ["CT", "CT"]  # detected from the HU values, and recorded


def test_resampling_keeps_edge_values_inside_the_field_of_view():
    """A constant PET of 8 mm voxels whose extent (centres +- half a voxel) covers the MRI grid exactly: every MRI
    voxel gets the full value, as ITK's linear interpolation gives (zero padding faded the outer 4 mm to 0.56 and a
    corner to 0.18, and counted 5% of the grid as uncovered); one voxel further out is 0."""
    from monai_lkcfusion.transforms import resample_to_reference

    mri = MetaTensor(torch.rand(1, 64, 64, 16), affine=torch.eye(4, dtype=torch.float64))
    pet_affine = torch.diag(torch.tensor([8.0, 8.0, 8.0, 1.0], dtype=torch.float64))
    pet_affine[:3, 3] = 3.5  # voxel 0 spans -0.5..7.5 mm: the PET covers -0.5..63.5 mm, the MRI centres 0..63
    pet = MetaTensor(torch.full((1, 8, 8, 2), 7.0), affine=pet_affine)
    moved, coverage = resample_to_reference(pet, mri)
    assert coverage == 1.0 and torch.equal(moved.as_tensor(), torch.full((1, 64, 64, 16), 7.0))
    shifted = pet_affine.clone()
    shifted[0, 3] += 1.0  # now MRI column x = 0 lies outside the PET's extent
    moved, coverage = resample_to_reference(MetaTensor(pet.as_tensor(), affine=shifted), mri)
    assert (moved[0, 0] == 0).all() and (moved[0, 1:] == 7.0).all() and coverage == 63 / 64


def test_percentile_window_of_a_sparse_or_constant_image_is_not_silent():
    """A PET with uptake in 0.1% of its voxels has equal 0.5/99.5 percentiles (0, 0): every non-zero SUV became 1
    (binarised); a constant MRI became 0. Now the sparse one keeps its ratios (full range) and both are warned."""
    from monai_lkcfusion.transforms import scale_to_unit

    pet = torch.zeros(1, 32, 32, 8)
    pet[0, 10:14, 10:14, 3:5] = torch.linspace(1, 20, 32).reshape(4, 4, 2)
    with pytest.warns(UserWarning, match="percentiles are equal"):
        scaled, record = scale_to_unit(pet, "PET", name="pet.nii.gz")
    assert torch.allclose(scaled, pet / 20) and "full range [0, 20]" in record["intensity_scaling"]
    with pytest.warns(UserWarning, match="constant image"):
        scale_to_unit(torch.full((1, 8, 8, 4), 500.0), "MR", name="mri.nii.gz")


@pytest.mark.parametrize("padding", [-1024.0, -3024.0, -32768.0])
def test_ct_with_padding_outside_the_reconstruction_circle_is_windowed_as_ct(padding):
    """-32768 padding (the 16-bit minimum) hid the CT: percentile scaling mapped soft tissue to 0.97 and air to 0.94."""
    from monai_lkcfusion.transforms import scale_to_unit

    ct = torch.full((1, 64, 64, 4), -1000.0)  # air
    ct[0, 16:48, 16:48] = 40.0  # soft tissue
    ct[0, 28:36, 28:36] = 1200.0  # bone
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    ct[0][((yy - 31.5) ** 2 + (xx - 31.5) ** 2) > 31.5**2] = padding  # outside the circle
    scaled, record = scale_to_unit(ct)
    assert record["modality"] == "CT" and "CT window" in record["intensity_scaling"]
    assert float(scaled[0, 20, 20, 0]) == pytest.approx((40 + 500) / 2000)


def test_rand_sliced_missing_keys_and_mismatched_grids():
    """``allow_missing_keys`` with no key present raised ``KeyError ()``; volumes of different slice counts an
    ``IndexError`` (or slices from different places)."""
    sampler = RandSliced(("mri", "other"), allow_missing_keys=True)
    assert sampler({"label": 1}) == {"label": 1}
    with pytest.raises(FusionInputError, match="one slice index needs volumes on one grid"):
        sampler({"mri": torch.rand(1, 8, 8, 6), "other": torch.rand(1, 8, 8, 3)})


def test_partly_transparent_pictures_are_warned(tmp_path):
    """A PET overlay saved at 50% opacity was composited onto black at half its values without a word (hand-check
    helper): warned, for files and (H, W, 4) arrays; a transparent background or an opaque picture is not."""
    import warnings

    from monai_lkcfusion.transforms import LoadFusionImage

    rgb = _pet_rgb()
    half = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    masked = np.dstack([rgb, np.where(rgb.max(axis=-1) > 0, 255, 0).astype(np.uint8)])  # opaque or transparent
    Image.fromarray(half).save(tmp_path / "half.png")
    Image.fromarray(masked).save(tmp_path / "masked.png")
    with pytest.warns(UserWarning, match=r"half.png: 100% of its pixels are partly transparent; .* composited onto"):
        read = LoadFusionImage()(str(tmp_path / "half.png"))
    assert float(read.max()) == pytest.approx(float(rgb.max()) * 128 / 255, abs=1e-3)  # still composited
    with pytest.warns(UserWarning, match="partly transparent"):
        LoadFusionImage()(half)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LoadFusionImage()(str(tmp_path / "masked.png"))
        LoadFusionImage()(masked)


def test_a_volume_among_training_pictures_is_refused_as_a_volume(tmp_path):
    """A 3D NIfTI in a 2D training set was "size (256, 256, 6) is smaller than the training crop roi_size (64, 64,
    64)", and a smaller roi_size, as advised, ended in MONAI's traceback (hand-check helper): train.json's 2D
    roi_size refuses it as a volume."""
    import nibabel as nib

    from monai_lkcfusion.transforms import fusion_load_transforms

    for name in ("mri", "pet"):
        nib.save(nib.Nifti1Image(np.ones((80, 80, 6), np.float32), np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
    chain = fusion_load_transforms(min_size=[64, 64])
    with pytest.raises(RuntimeError) as caught:
        chain({"mri": str(tmp_path / "mri.nii.gz"), "other": str(tmp_path / "pet.nii.gz")})
    message = str(user_error(caught.value))
    assert message.endswith("mri.nii.gz: a 3D volume (80, 80, 6), where the training crop roi_size (64, 64) takes 2D "
                            "images; slice volumes first (RandSliced, docs/data.md; in a training config with its own "
                            "volume chain, also set load_transforms#min_size) or give 2D pictures"), message
    picture = MetaTensor(torch.zeros(1, 70, 64))
    assert CheckMinSized("mri", [64, 64])({"mri": picture})["mri"] is picture
    with pytest.raises(FusionInputError, match=r"size \(70, 50\) is smaller than the training crop roi_size"):
        CheckMinSized("mri", [64, 64])({"mri": MetaTensor(torch.zeros(1, 70, 50))})


def test_load_transforms_never_ct_window_the_mri_under_any_key():
    """fusion_load_transforms(keys=("t1", "pet")) lost the rule that the MRI is scaled as MR (the fallback was keyed
    on the literal "mri"): an MRI volume with air at -1000 was CT-windowed (hand-check helper)."""
    from monai_lkcfusion.transforms import fusion_load_transforms

    rng = np.random.default_rng(0)
    mri = np.full((40, 40), -1000.0, np.float32)
    mri[8:32, 8:32] = rng.random((24, 24)).astype(np.float32) * 800 + 200
    pet = rng.random((40, 40)).astype(np.float32)
    for keys in (("mri", "other"), ("t1", "pet")):
        d = fusion_load_transforms(keys=keys)({keys[0]: mri, keys[1]: pet})
        assert not d[keys[0]].meta["intensity_scaling"].startswith("CT"), (keys, d[keys[0]].meta["intensity_scaling"])


def test_dict_transforms_with_missing_keys_and_the_record_leaves_its_input():
    """MaskBackgroundd("pred", allow_missing_keys=True) raised KeyError('image') without "pred"; AddFusionRecord
    changed its input's metadata in place (hand-check helper)."""
    from monai_lkcfusion.transforms import AddFusionRecord, MaskBackgroundd

    d = {"mri": MetaTensor(torch.ones(1, 4, 4))}
    assert MaskBackgroundd("pred", allow_missing_keys=True)(d) == d
    fused = MetaTensor(torch.ones(1, 4, 4), meta={"intensity_scaling": "MR percentiles"})
    other = MetaTensor(torch.ones(1, 4, 4), meta={"intensity_scaling": "CT window", "modality": "CT"})
    recorded = AddFusionRecord()(fused, fused, other)
    assert fused.meta["intensity_scaling"] == "MR percentiles" and "other_modality" not in fused.meta
    assert recorded.meta["other_modality"] == "CT" and "intensity_scaling" not in recorded.meta
    assert recorded.data_ptr() == fused.data_ptr()  # the voxels are shared, not copied


def test_the_dict_resampler_takes_the_overlap_threshold() -> None:
    """``min_overlap`` of ``ResampleToReference`` could not be reached through its dict wrapper (code review)."""
    import warnings

    from monai.data import MetaTensor

    shifted = torch.eye(4, dtype=torch.float64)
    shifted[0, 3] = 10.0  # 20 voxels along x, 10 of them on the reference grid: 50% covered
    data = {"mri": MetaTensor(torch.rand(1, 20, 20, 20), affine=torch.eye(4, dtype=torch.float64)),
            "other": MetaTensor(torch.rand(1, 20, 20, 20), affine=shifted)}
    for threshold, warned in ((0.9, True), (0.4, False)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = ResampleToReferenced("other", min_overlap=threshold)(dict(data))
        assert out["other"].meta["overlap_fraction"] == pytest.approx(0.5, abs=0.06)
        assert any("covers only" in str(w.message) for w in caught) == warned, [str(w.message) for w in caught]
    for bad in ("0.3", None, 1.5):  # refused when built, not when first applied (review helper)
        with pytest.raises(FusionInputError, match="min_overlap .*: give a fraction from 0 to 1"):
            ResampleToReferenced("other", min_overlap=bad)
    assert ResampleToReferenced("other", "mri", "bilinear", False, True)({"mri": data["mri"]}).keys() == {"mri"}
    assert ResampleToReferenced("other", min_overlap=np.float32(0.5)).transform.min_overlap == 0.5  # NumPy numbers
