"""Registration of the other modality to the MRI: core, transforms, fuse(), CLI and bundle (issue 16)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd

from monai_lkcfusion.cli import main
from monai_lkcfusion.data import demo_files
from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.inference import fuse
from monai_lkcfusion.registration import (
    alignment_preview,
    foreground_mask,
    itk_image,
    mean_displacement,
    moved_affine,
    read_transform,
    register,
    resample_image,
    transform_matrix,
    write_transform,
)
from monai_lkcfusion.transforms import (
    LoadFusionImage,
    LoadFusionImaged,
    RegisterToReference,
    RegisterToReferenced,
    ResampleToReference,
    ResampleToReferenced,
    ScaleModality,
    ScaleModalityd,
)


def _load(path) -> MetaTensor:
    return ScaleModality()(LoadFusionImage()(str(path)))


def _rigid(ndim: int, angles, shift, centre) -> np.ndarray:
    """ITK matrix of a rigid motion (degrees, mm/pixels) about ``centre``."""
    motion = sitk.Euler2DTransform() if ndim == 2 else sitk.Euler3DTransform()
    motion.SetCenter([float(c) for c in centre])
    if ndim == 2:
        motion.SetAngle(float(np.deg2rad(angles)))
    else:
        motion.SetRotation(*np.deg2rad(angles).tolist())
    motion.SetTranslation([float(s) for s in shift])
    return transform_matrix(motion, ndim)


def _foreground_corr(a: torch.Tensor, b: torch.Tensor, mri: torch.Tensor) -> float:
    mask = foreground_mask(itk_image(mri)).T
    return float(np.corrcoef(np.asarray(a[0])[mask], np.asarray(b[0])[mask])[0, 1])


@pytest.fixture(scope="module")
def demo_2d() -> tuple[MetaTensor, MetaTensor]:
    files = demo_files()
    return _load(files["mri_2d"]), _load(files["pet_2d"])


def test_matrix_frames_round_trip(tmp_path):
    """Matrix <-> SimpleITK transform <-> .tfm/.txt file; moved_affine undoes itself with the inverse matrix."""
    matrix = _rigid(3, (4.0, -3.0, 7.0), (2.0, -5.0, 1.5), (10.0, 0.0, -4.0))
    for name in ("t.tfm", "t.txt"):
        path = write_transform(matrix, tmp_path / name)
        np.testing.assert_allclose(read_transform(path, 3), matrix, atol=1e-10)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = (-60.0, -80.0, 10.0)
    np.testing.assert_allclose(moved_affine(moved_affine(affine, matrix), np.linalg.inv(matrix)), affine, atol=1e-9)
    with pytest.raises(FusionInputError, match="2D transform for 3D"):
        read_transform(write_transform(np.eye(3), tmp_path / "two.tfm"), 3)
    with pytest.raises(FusionInputError, match="transform files end in"):
        write_transform(matrix, tmp_path / "t.json")
    bspline = sitk.BSplineTransformInitializer(sitk.Image([32, 32, 32], sitk.sitkFloat32), [3, 3, 3])
    bspline.SetParameters(np.random.default_rng(0).normal(0, 3, bspline.GetNumberOfParameters()).tolist())
    sitk.WriteTransform(bspline, str(tmp_path / "bspline.tfm"))
    with pytest.raises(FusionInputError, match="non-rigid"):
        read_transform(tmp_path / "bspline.tfm", 3)
    with pytest.raises(FusionInputError, match="not found"):
        read_transform(tmp_path / "missing.tfm", 3)


def test_register_2d_recovers_known_motion_and_fusion_matches(demo_2d):
    """Demo slice pair, PET moved by 8 degrees and (12, -9) px: found back within 1 px; fusion as if aligned."""
    mri, pet = demo_2d
    motion = _rigid(2, 8.0, (12.0, -9.0), (72.0, 90.0))
    moved = resample_image(pet, motion)
    result = register(mri, moved, "rigid")
    assert result.converged and result.overlap > 0.9 and not result.warnings
    assert result.metric < result.initial_metric
    assert abs(result.rotation_degrees - 8.0) < 0.5 and result.shift > 1.0  # what it found, in words a user reads
    assert mean_displacement(result.matrix, np.linalg.inv(motion), mri) < 1.0
    aligned = fuse(mri, pet, method="max", color=False)
    registered = fuse(mri, moved, method="max", color=False, register="rigid")
    assert registered.meta["registration"]["kind"] == "rigid"
    assert _foreground_corr(registered, aligned, mri) >= 0.985


def test_register_small_functional_region(demo_2d):
    """A PET whose uptake is in a small region (a hot spot over a dim brain; <15% of the head above 10% of the
    maximum) is registered back within 1 px, and its fusion matches the aligned pair's."""
    mri, pet = demo_2d
    yy, xx = np.mgrid[: pet.shape[1], : pet.shape[2]]
    spot = torch.as_tensor(np.exp(-((yy - 70.0) ** 2 + (xx - 60.0) ** 2) / (2 * 9.0**2)), dtype=torch.float32)
    small = (0.08 * pet + spot).clamp(0, 1)
    head = torch.as_tensor(foreground_mask(itk_image(mri)).T)
    assert float((small.max(0).values > 0.1 * small.max())[head].float().mean()) < 0.15
    motion = _rigid(2, -6.0, (-8.0, 10.0), (72.0, 90.0))
    moved = resample_image(small, motion)
    result = register(mri, moved, "rigid")
    assert mean_displacement(result.matrix, np.linalg.inv(motion), mri) < 1.0
    aligned = fuse(mri, small, method="max", color=False)
    registered = fuse(mri, moved, method="max", color=False, register="rigid")
    assert _foreground_corr(registered, aligned, mri) >= 0.97


@pytest.mark.slow
def test_register_3d_demo_volume_recovers_known_motion():
    """The demo PET volume (2 mm grid) moved in the world by (6, -4, 8) degrees and (7, -5, 6) mm: < 1 voxel."""
    files = demo_files()
    mri, pet = _load(files["mri_3d"]), _load(files["pet_3d"])
    motion = _rigid(3, (6.0, -4.0, 8.0), (7.0, -5.0, 6.0), (0.0, -20.0, 20.0))
    moved = pet.clone()
    moved.affine = torch.as_tensor(moved_affine(pet.affine, np.linalg.inv(motion)))  # the head moved between scans
    result = register(mri, moved, "rigid", num_threads=1)
    assert result.converged
    assert mean_displacement(result.matrix, motion, mri) < 1.0
    aligned = fuse(mri, pet, method="max", progress=False)
    registered = fuse(mri, moved, method="max", register="rigid", progress=False)
    assert _foreground_corr(registered, aligned, mri) >= 0.985


def _ct_like_volume(path) -> MetaTensor:
    """A CT-like volume in HU made from the demo T1 on its grid: air -1000, tissue ~40, a bright 5-voxel skull rim."""
    import nibabel as nib
    from scipy import ndimage

    t1 = nib.load(str(demo_files()["mri_3d"]))
    data = t1.get_fdata()
    head = ndimage.binary_fill_holes(ndimage.binary_closing(data > 15, iterations=3))
    inner = ndimage.binary_erosion(head, iterations=5)
    ct = np.full(data.shape, -1000.0)
    ct[head] = 40 + 0.1 * data[head]
    ct[head & ~inner] = 1200.0
    ct[inner & (data > 15) & (data < 60)] = 10.0
    nib.save(nib.Nifti1Image(ct.astype(np.float32), t1.affine), str(path))
    return _load(path)


def _moved_header(
    volume: MetaTensor, mri: MetaTensor, degrees: tuple[float, float, float], shift: tuple[float, float, float]
) -> tuple[MetaTensor, np.ndarray]:
    """``volume`` with its header rotated by ``degrees`` about x, y, z (about the MRI's brain centre) and shifted by
    ``shift`` mm; and the fixed-to-moving map that registration should find, in ITK's LPS frame."""
    from scipy import ndimage
    from scipy.spatial.transform import Rotation

    affine = np.asarray(volume.affine, dtype=float)  # RAS, as MONAI loads NIfTI
    centre = (affine @ np.r_[ndimage.center_of_mass(np.asarray(mri[0]) > 0.1), 1.0])[:3]  # the brain's, world
    rotation = Rotation.from_euler("XYZ", degrees, degrees=True).as_matrix()
    world = np.eye(4)  # anatomy at world point x is at world @ x in the moved file
    world[:3, :3], world[:3, 3] = rotation, centre - rotation @ centre + np.asarray(shift)
    moved = volume.clone()
    moved.affine = torch.as_tensor(world @ affine)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return moved, flip @ world @ flip


@pytest.mark.slow
def test_register_3d_ct_rotated_about_three_axes_is_found_by_the_search(tmp_path):
    """A CT-like volume whose header is rotated by (10, -15, -12) degrees about x, y, z and shifted 42 mm ended 7.5
    voxels off, reported as converged with a better metric (a hand-check helper's case): gradient descent stops in a
    local optimum. The 3D coarse rotation search starts it in the right basin: < 1 voxel (affine too, to its own
    floor). The same volume unmoved, and a mostly empty one, get the warnings that fit them."""
    mri = _load(demo_files()["mri_3d"])
    ct = _ct_like_volume(tmp_path / "ct.nii.gz")
    moved, motion = _moved_header(ct, mri, (10.0, -15.0, -12.0), (25.0, -30.0, 15.0))
    without = register(mri, moved, "rigid", search=False)
    assert mean_displacement(without.matrix, motion, mri) > 3.0 and without.metric < without.initial_metric
    result = register(mri, moved, "rigid")
    assert mean_displacement(result.matrix, motion, mri) < 1.0, result
    assert 20.0 < result.rotation_degrees < 25.0
    # affine starts from the rigid search's pose too: it ended 8.0 mm off; its own floor on this synthetic CT is about
    # 1.9 voxels (unmoved, it drifts that far from the identity with a better metric)
    affine = register(mri, moved, "affine")
    assert mean_displacement(affine.matrix, motion, mri) < 3.0, affine
    # the same volume unmoved: kept, and said so (it warned that the metric "got worse than at the start": on one
    # grid the start samples voxel centres exactly and scores a little higher than any near pose)
    aligned = register(mri, ct, "rigid")
    assert mean_displacement(aligned.matrix, np.eye(4), mri) < 0.1
    assert not any("got worse" in w for w in aligned.warnings), aligned.warnings
    assert any("registration kept the files' own alignment it started from" in w for w in aligned.warnings)
    # only a small core left (mostly air): mutual information near 0 is doubtful whatever it did (no warning before)
    core = ct.clone()
    core[:, :, :, :] = 0.0
    x, y, z = (n // 2 for n in ct.shape[1:])
    box = (slice(None), slice(x - 15, x + 15), slice(y - 15, y + 15), slice(z - 10, z + 10))
    core[box] = ct[box]
    empty = register(mri, core, "rigid")
    assert empty.metric > -0.05 and any("mutual information stayed low" in w for w in empty.warnings), empty


@pytest.mark.slow
def test_register_3d_rotation_beyond_the_search_grid_is_followed(tmp_path):
    """A CT-like volume rotated by (35, 35, -35) degrees about x, y, z (53 degrees in all) ended 10.8 voxels off,
    "converged", after one coarse grid of +-20 degrees per axis: the grid is searched again around a best pose on its
    edge (0.1 voxels)."""
    mri = _load(demo_files()["mri_3d"])
    moved, motion = _moved_header(_ct_like_volume(tmp_path / "ct.nii.gz"), mri, (35.0, 35.0, -35.0), (0.0, 0.0, 0.0))
    result = register(mri, moved, "rigid")
    assert mean_displacement(result.matrix, motion, mri) < 1.0, result
    assert result.rotation_degrees > 45.0 and any("rotates the other image" in w for w in result.warnings)


def test_affine_and_reproducible(demo_2d):
    """Affine registration of an aligned pair stays near the identity; the same call gives the same matrix."""
    mri, pet = demo_2d
    first = register(mri, pet, "affine")
    assert mean_displacement(first.matrix, np.eye(3), mri) < 1.0
    np.testing.assert_array_equal(register(mri, pet, "affine").matrix, first.matrix)  # one SimpleITK thread


def test_an_affine_result_that_stretches_the_image_is_warned(demo_2d):
    """A PET picture at 0.7x the MRI's scale (10 degrees, (10, -5) px) ended 56 px off, stretched 1.31 x 0.99, with
    no warning (found by hand); a start at the foregrounds' scale ratio fixed it but made aligned real PET slices end
    16-47 px off (a PET's foreground is its tracer, not the head; hand-check helper), so it was taken back. Such a
    stretch is reported now; an aligned pair's affine result is not."""
    mri, pet = demo_2d
    similarity = sitk.Similarity2DTransform()
    similarity.SetCenter((72.0, 90.0))
    similarity.SetScale(0.7)
    similarity.SetAngle(float(np.deg2rad(10.0)))
    similarity.SetTranslation((10.0, -5.0))
    found = register(mri, resample_image(pet, transform_matrix(similarity, 2)), "affine")
    assert any(w.startswith("it scales the other image by ") and "different sizes" in w for w in found.warnings)
    assert not any("scales the other image" in w for w in register(mri, pet, "affine").warnings)


def _repeats_bit_for_bit(fixed: MetaTensor, other: MetaTensor) -> None:
    """``other`` moved by 6 degrees and (5, -7) px registers to the same matrix, bit for bit, three times."""
    moved = resample_image(other, _rigid(2, 6.0, (5.0, -7.0), (127.5, 127.5)))
    first = register(fixed, moved, "rigid").matrix
    for _ in range(2):
        np.testing.assert_array_equal(register(fixed, moved, "rigid").matrix, first)


def test_register_repeats_bit_for_bit_and_keeps_the_global_thread_count(demo_2d):
    """The same call gives the same transform, bit for bit (one thread for every SimpleITK filter of the call);
    SimpleITK's global default thread count is back after the call; 0 threads is refused."""
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    _repeats_bit_for_bit(*demo_2d)
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before
    with pytest.raises(FusionInputError, match="num_threads 0: give a whole number of at least 1"):
        register(*demo_2d, num_threads=0)
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before


def test_real_pet_slice_registers_bit_for_bit(harvard_root):
    """The methods' own thread setting left other filters on all cores: two calls on this moved Harvard PET slice
    ended up to 3.9 mm apart (0.3 mm with the default threads), and docs promised ~1e-14."""
    folder = harvard_root / "test" / "MRI-PET"
    _repeats_bit_for_bit(_load(folder / "MRI" / "25015.png"), _load(folder / "PET" / "25015.png"))


def test_transform_keeps_voxels_moves_affine_and_inverts(demo_2d):
    """RegisterToReferenced changes the affine only (metadata record, applied_operations); Invertd restores it."""
    mri, pet = demo_2d
    motion = _rigid(2, 5.0, (6.0, 4.0), (72.0, 90.0))
    moved = resample_image(pet, motion)
    chain = Compose([RegisterToReferenced("other", kind="rigid"), ResampleToReferenced("other")])
    out = chain({"mri": mri, "other": moved})
    record = out["other"].meta["registration"]
    assert record["kind"] == "rigid" and np.asarray(record["matrix"]).shape == (3, 3)
    assert out["other"].shape[1:] == mri.shape[1:]
    back = Invertd("other", transform=chain, orig_keys="other")(out)["other"]
    np.testing.assert_allclose(np.asarray(back.affine, dtype=float)[[0, 1, -1]][:, [0, 1, -1]], np.eye(3), atol=1e-6)
    assert "registration" not in back.meta
    assert _foreground_corr(back, moved, mri) > 0.97
    untouched = RegisterToReference("none")(moved, mri)
    assert untouched is moved


def test_2d_pictures_of_two_sizes_register_with_resample(demo_2d):
    """A moved PET picture saved at another size (3/4 of the MRI's): refused without --resample (the message named no
    way out: resample said "register first", registration "resize first"); with it, resized to the MRI's size, then
    registered: the fusion matches the aligned pair, and Invertd gives the picture back at its own size."""
    mri, pet = demo_2d
    moved = resample_image(pet, _rigid(2, 6.0, (9.0, -7.0), (72.0, 90.0)))
    size = tuple(round(0.75 * s) for s in mri.shape[1:])
    pixels = torch.nn.functional.interpolate(moved.as_tensor()[None], size=size, mode="bilinear", align_corners=False)
    small = MetaTensor(pixels[0], meta={**moved.meta, "filename_or_obj": "small.png"})
    with pytest.raises(FusionInputError, match=r"small.png: size .* pass --resample to resize it to the MRI's first"):
        fuse(mri, small, method="max", register="rigid")
    aligned = fuse(mri, pet, method="max", color=False)
    registered = fuse(mri, small, method="max", color=False, register="rigid", resample=True)
    assert registered.shape == aligned.shape and registered.meta["registration"]["kind"] == "rigid"
    assert _foreground_corr(registered, aligned, mri) >= 0.97
    chain = Compose([RegisterToReferenced("other", kind="rigid", resize_2d=True),
                     ResampleToReferenced("other", resize_2d=True)])
    out = chain({"mri": mri, "other": small})
    assert out["other"].shape[1:] == mri.shape[1:]
    back = Invertd("other", transform=chain, orig_keys="other")(out)["other"]
    assert back.shape == small.shape and not back.applied_operations and "registration" not in back.meta


def test_colour_registered_on_luma_all_channels_together(demo_2d):
    """An RGB PET moves as one: every channel is resampled with the transform found on the luma."""
    mri, _ = demo_2d
    rgb = _load(demo_files()["pet_2d"])
    assert rgb.shape[0] == 3
    motion = _rigid(2, -7.0, (5.0, 9.0), (72.0, 90.0))
    moved = resample_image(rgb, motion)
    registered = RegisterToReference("rigid")(moved, mri)
    matrix = np.asarray(registered.meta["registration"]["matrix"])
    on_grid = ResampleToReference()(registered, mri)
    for c in range(3):  # each channel as if resampled alone with the same affine
        alone = registered[c:c + 1].clone()
        np.testing.assert_allclose(ResampleToReference()(alone, mri)[0], on_grid[c], atol=1e-5)
    luma_only = register(mri, moved, "rigid").matrix
    np.testing.assert_allclose(matrix, luma_only, atol=1e-9)


def test_saved_transform_applies_the_same(demo_2d, tmp_path):
    """fuse(save_transform=) then fuse(transform=) gives the same fused image as registering again."""
    mri, pet = demo_2d
    moved = resample_image(pet, _rigid(2, 4.0, (-7.0, 5.0), (72.0, 90.0)))
    first = fuse(mri, moved, method="max", register="rigid", save_transform=tmp_path / "t.tfm",
                 preview=tmp_path / "check.png")
    again = fuse(mri, moved, method="max", transform=tmp_path / "t.tfm")
    np.testing.assert_allclose(np.asarray(again), np.asarray(first), atol=1e-5)
    assert again.meta["registration"]["kind"] == "file"
    assert (tmp_path / "check.png").stat().st_size > 0


def test_a_preview_is_kept_unless_overwrite(demo_2d, tmp_path, monkeypatch):
    """``fuse(preview=P, overwrite=False)`` replaced an existing ``P`` without a word (docstring helper), unlike the
    transform file beside it and the command line: it is refused before any work, and replaced with ``overwrite``."""
    import monai_lkcfusion.inference as inference

    mri, pet = demo_2d
    preview = tmp_path / "check.png"
    preview.write_bytes(b"an earlier preview")
    monkeypatch.setattr(inference, "fuse_dict", lambda *a, **k: pytest.fail("fused before the check"))
    with pytest.raises(FusionInputError, match="check.png: output exists"):
        fuse(mri, pet, method="max", preview=preview, overwrite=False)
    assert preview.read_bytes() == b"an earlier preview"
    monkeypatch.undo()
    fuse(mri, pet, method="max", preview=preview)
    assert preview.read_bytes()[:4] == b"\x89PNG"


def test_failures_are_one_line_errors(demo_2d):
    """Constant images, 2D against 3D, unknown kinds, both a kind and a transform: FusionInputError."""
    mri, pet = demo_2d
    with pytest.raises(FusionInputError, match="constant image"):
        RegisterToReference("rigid")(torch.full_like(pet, 0.3), mri)
    with pytest.raises(FusionInputError, match="the MRI is a constant image"):
        register(torch.zeros_like(mri), pet)
    volume = MetaTensor(torch.rand(1, 16, 16, 16))
    with pytest.raises(FusionInputError, match="3D image but the MRI is 2D"):
        RegisterToReference("rigid")(volume, mri)
    with pytest.raises(FusionInputError, match="unknown kind"):
        RegisterToReference("bspline")
    with pytest.raises(FusionInputError, match="not both"):
        RegisterToReference("rigid", transform=np.eye(3))
    with pytest.raises(FusionInputError, match="transform matrix for 2D"):
        RegisterToReference("none", transform=np.eye(4))(pet, mri)


def test_no_overlap_and_not_converged_warn():
    """Volumes far apart with centres of mass forced off: an error or a small-overlap warning; no convergence."""
    rng = np.random.default_rng(0)
    data = torch.as_tensor(rng.random((1, 24, 24, 24)), dtype=torch.float32)
    mri = MetaTensor(data, affine=torch.eye(4))
    far = MetaTensor(data.clone(), affine=torch.as_tensor(np.array(
        [[1, 0, 0, 500.0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])))
    with pytest.raises(FusionInputError, match="overlap"):
        register(mri, far, "rigid", init="world")
    with pytest.warns(UserWarning, match=r"did not converge within 1 iterations at the finest level \(the optimiser"):
        RegisterToReference("rigid", iterations=1, shrink_factors=(1,), smoothing_sigmas=(0.0,))(
            MetaTensor(data.clone(), affine=torch.eye(4)), mri)



def test_an_alignment_worse_than_the_start_is_warned(demo_2d):
    """Beyond the search range (60 degrees) the optimiser ended where the images match less than at the start, and
    the result was written without a word (a hand-check helper saw 180-degree header flips end so, 86-104 mm off)."""
    mri, pet = demo_2d
    moved = resample_image(pet, _rigid(2, 60.0, (5.0, -4.0), (72.0, 90.0)))
    result = register(mri, moved, "rigid")
    assert result.metric > result.initial_metric
    assert any("mutual information got worse than at the start" in w for w in result.warnings), result.warnings


def test_a_slab_mri_is_reported(tmp_path):
    """Rotations that tilt a slab are weakly determined: an oblique 18-slice slab came back 7.9 mm off, converged and
    better by mutual information, without a word. A slab MRI (thinner than 0.3 of its width) is reported; a volume
    of the same content stacked thicker is not."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    field = gaussian_filter(rng.random((48, 48, 24)), 2.0).astype(np.float32)  # smooth structure, (X, Y, Z)
    results = {}
    for slices, thickness in ((8, 1.5), (24, 2.0)):  # 12 mm against 48 mm across: a slab; 48 mm: a volume
        data = torch.as_tensor(field[None, :, :, :slices])
        affine = torch.diag(torch.tensor([1.0, 1.0, thickness, 1.0]))
        mri = MetaTensor(data, affine=affine)
        moved = MetaTensor(data.clone(), affine=torch.as_tensor(_rigid(3, (0.0, 0.0, 2.0), (1.0, -1.0, 0.0),
                                                                       (24.0, 24.0, slices)) @ affine.numpy()))
        results[slices] = register(mri, moved, "rigid").warnings
    assert any("the MRI is a slab (12 mm thick, 48 mm across)" in w for w in results[8]), results[8]
    assert not any("slab" in w for w in results[24]), results[24]


def test_motion_of_a_matrix():
    """The rotation angle and the centre's shift reported for a found transform."""
    from monai_lkcfusion.registration import _motion

    centre = np.array([10.0, -20.0, 30.0])
    matrix = _rigid(3, (0.0, 0.0, 25.0), (3.0, 4.0, 0.0), centre)  # about the centre: only the shift moves it
    assert np.allclose(_motion(matrix, centre), (25.0, 5.0))
    assert np.allclose(_motion(_rigid(2, -40.0, (0.0, 0.0), (0.0, 0.0)), np.zeros(2)), (40.0, 0.0))
    scaled = matrix.copy()
    scaled[:3, :3] *= 1.1  # affine: the angle of its rotation part
    assert np.isclose(_motion(scaled, centre)[0], 25.0)

def test_non_linear_transform_files_are_refused_by_type(tmp_path):
    """A B-spline whose control grid lies away from the points a linearity probe would try is still refused."""
    grid = sitk.Image([16, 16, 16], sitk.sitkFloat32)
    grid.SetOrigin((100.0, 100.0, 100.0))
    bspline = sitk.BSplineTransformInitializer(grid, [4, 4, 4])
    bspline.SetParameters((np.random.default_rng(0).normal(0, 3, len(bspline.GetParameters()))).tolist())
    sitk.WriteTransform(bspline, str(tmp_path / "bs.tfm"))
    with pytest.raises(FusionInputError, match="not a linear"):
        read_transform(tmp_path / "bs.tfm", 3)
    sitk.WriteTransform(sitk.CompositeTransform([sitk.Euler3DTransform(), sitk.ScaleTransform(3)]),
                        str(tmp_path / "linear.tfm"))
    assert np.allclose(read_transform(tmp_path / "linear.tfm", 3), np.eye(4))


def test_far_apart_volumes_register_from_centres_of_mass(tmp_path, capsys, monkeypatch):
    """With init "auto", a start that does not overlap at all (world coordinates 500 mm apart) is skipped, not a
    traceback: the centres-of-mass start registers the pair; with no start overlapping, one line."""
    import nibabel as nib

    z, y, x = np.mgrid[0:24, 0:24, 0:24]
    blob = ((x - 12) ** 2 + (y - 10) ** 2 + (z - 12) ** 2 < 60).astype(np.float32)
    data = blob + np.random.default_rng(0).random((24, 24, 24)).astype(np.float32) * 0.2
    shifted = np.eye(4)
    shifted[0, 3] = 500.0
    mri = MetaTensor(torch.as_tensor(data)[None], affine=torch.eye(4))
    result = register(mri, MetaTensor(torch.as_tensor(data)[None], affine=torch.as_tensor(shifted)), "rigid")
    assert result.initialization == "moments" and result.overlap > 0.9
    assert abs(abs(result.matrix[0, 3]) - 500.0) < 1.0  # the 500 mm between the two files' origins
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "mri.nii.gz"))
    nib.save(nib.Nifti1Image(data, shifted), str(tmp_path / "far.nii.gz"))
    argv = ["fuse", str(tmp_path / "mri.nii.gz"), str(tmp_path / "far.nii.gz"), "-o", str(tmp_path / "f.nii.gz"),
            "--method", "max", "--register", "rigid"]
    assert main(argv) == 0 and "Traceback" not in capsys.readouterr().err

    def no_overlap(*args, **kwargs):
        raise RuntimeError("All samples map outside moving image buffer")

    monkeypatch.setattr(sitk.ImageRegistrationMethod, "MetricEvaluate", no_overlap)
    with pytest.raises(FusionInputError, match="do not overlap from either start"):
        register(mri, MetaTensor(torch.as_tensor(data)[None], affine=torch.as_tensor(shifted)), "rigid")
    assert main([*argv, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "do not overlap from either start" in err and len(err.strip().splitlines()) == 1


def test_one_slice_volumes_name_the_file_at_fault(tmp_path, capsys):
    """A 2D NIfTI is read as a one-slice volume, which cannot be registered: the line named the other file and
    blamed "the MRI" whichever was one slice (``ct.nii.gz: the MRI is too small to register, size (40, 36, 1)``);
    now it names the file at fault, says what it is and what to do (hand-check helper, twenty-first session)."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    data = {"slab.nii.gz": rng.random((40, 36, 1)), "slab2.nii.gz": rng.random((40, 36, 1)),
            "volume.nii.gz": rng.random((40, 36, 16))}
    for name, array in data.items():
        nib.save(nib.Nifti1Image(array.astype(np.float32), np.eye(4)), str(tmp_path / name))
    cases = (("slab", "volume", "slab", "the MRI"), ("volume", "slab", "slab", "the other image"),
             ("slab", "slab2", "slab", "the MRI"))
    for mri, other, fault, role in cases:
        argv = ["fuse", str(tmp_path / f"{mri}.nii.gz"), str(tmp_path / f"{other}.nii.gz"), "-o",
                str(tmp_path / "f.nii.gz"), "--method", "max", "--register", "rigid"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"lkcfusion: error: {tmp_path / fault}.nii.gz: {role} is a one-slice volume"), err
        assert "fuse without --register" in err and len(err.strip().splitlines()) == 1


def test_2d_slices_far_apart_register_from_centres_of_mass(demo_2d):
    """Two 2D images whose world coordinates are 500 px apart: the world start, tried beside the centres of mass in
    2D, does not overlap, and its failure failed the pair; it is skipped, and the pose kept at the centres-of-mass
    start is said so (not "got worse ... doubtful", measured against no transform at all)."""
    mri, _ = demo_2d
    far = mri.clone()
    shifted = np.asarray(mri.affine, dtype=float).copy()
    shifted[0, 2] += 500.0
    far.affine = torch.as_tensor(shifted)
    result = register(mri, far, "rigid")
    assert result.initialization == "moments" and abs(result.shift - 500.0) < 1.0
    assert not any("got worse" in w for w in result.warnings), result.warnings


def test_alignment_preview_shapes(demo_2d):
    """The check picture: checkerboard + edge overlay side by side; volumes: three planes."""
    mri, pet = demo_2d
    picture = alignment_preview(mri, pet)
    assert picture.dtype == np.uint8 and picture.shape == (mri.shape[1], 2 * mri.shape[2] + 4, 3)
    volume = torch.rand(1, 20, 24, 28)
    assert alignment_preview(volume, volume).shape[:2] == (24 + 4 + 20 + 4 + 20, 28 + 4 + 28)


@pytest.mark.parametrize("options, named", [
    (["--preview", "p.png"], "--preview is for one pair"),
    (["--transform", "t.tfm"], "--transform is for one pair"),
    (["--transform", "t.tfm", "--preview", "p.png"], "--transform and --preview are for one pair"),
])
def test_cli_single_pair_options_on_folders_name_what_was_given(tmp_path, capsys, options, named):
    """Folders of pairs with --preview or --transform: one line naming the option(s) given (it named both always)."""
    from PIL import Image

    for folder in ("MRI", "PET"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((16, 16), 90, np.uint8)).save(tmp_path / folder / "a.png")
    argv = ["fuse", "--mri-dir", str(tmp_path / "MRI"), "--other-dir", str(tmp_path / "PET"), "-o",
            str(tmp_path / "out"), "--method", "max", *options]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"lkcfusion: error: {named} (MRI OTHER -o OUT), not folders"]
    assert not (tmp_path / "out").exists()


def test_cli_register_transform_preview(tmp_path, capsys):
    """lkcfusion fuse --register rigid says so, writes the transform and the preview; --transform reuses it."""
    files = demo_files()
    moved = resample_image(LoadFusionImage()(str(files["pet_2d"])), _rigid(2, 6.0, (8.0, -6.0), (72.0, 90.0)))
    from PIL import Image

    other = tmp_path / "pet_moved.png"
    Image.fromarray(np.moveaxis(np.asarray(moved.clamp(0, 255)).round().astype(np.uint8), 0, -1)).save(other)
    code = main(["fuse", str(files["mri_2d"]), str(other), "-o", str(tmp_path / "fused.png"), "--method", "max",
                 "--register", "rigid", "--save-transform", str(tmp_path / "t.tfm"), "--preview",
                 str(tmp_path / "check.png")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "registration: on (rigid)" in out.out and "registered" in out.out and "converged" in out.out
    assert (tmp_path / "t.tfm").is_file() and (tmp_path / "check.png").is_file()
    # the side files are named as the result is (the preview was written without a word; hand-check helper)
    assert f"wrote {tmp_path / 't.tfm'} (transform)" in out.out and f"wrote {tmp_path / 'check.png'} (alignment " \
        "preview)" in out.out
    code = main(["fuse", str(files["mri_2d"]), str(other), "-o", str(tmp_path / "again.png"), "--method", "max",
                 "--transform", str(tmp_path / "t.tfm")])
    assert code == 0
    first = np.asarray(Image.open(tmp_path / "fused.png"), dtype=int)
    again = np.asarray(Image.open(tmp_path / "again.png"), dtype=int)
    assert np.abs(first - again).max() <= 1
    capsys.readouterr()
    code = main(["fuse", str(files["mri_2d"]), str(files["pet_3d"]), "-o", str(tmp_path / "x.png"), "--method",
                 "max", "--register", "rigid"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "lkcfusion: error:" in err and "Traceback" not in err
    code = main(["fuse", str(files["mri_2d"]), str(other), "-o", str(tmp_path / "y.png"), "--method", "max",
                 "--register", "rigid", "--transform", str(tmp_path / "t.tfm")])
    assert code == 2


def test_a_preview_that_is_not_a_png_is_refused_before_any_work(tmp_path, capsys):
    """``--preview check.jpg`` was refused after the registration and the fusion had run (their work lost, seconds
    for a slice, minutes for a volume): now before (hand-check helper, twenty-first session)."""
    files = demo_files()
    code = main(["fuse", str(files["mri_2d"]), str(files["pet_2d"]), "-o", str(tmp_path / "f.png"), "--method", "max",
                 "--register", "rigid", "--preview", str(tmp_path / "check.jpg")])
    out = capsys.readouterr()
    assert code == 2 and out.err == f"lkcfusion: error: {tmp_path / 'check.jpg'}: the preview is a .png picture\n"
    assert "registered" not in out.out and not (tmp_path / "f.png").exists()


@pytest.mark.parametrize("place, extra, problem", [
    ("t.xyz", ["--register", "rigid"], "t.xyz: name the transform file with .tfm or .txt (or give an existing folder)"),
    ("fused.png", ["--register", "rigid"], "fused.png: name the transform file with .tfm or .txt"),
    ("t.tfm", [], "--save-transform writes the transform that --register finds: add --register rigid"),
    ("MRI", ["--register", "rigid"], "MRI: is the input"),
])
def test_cli_save_transform_place_is_refused_before_any_work(tmp_path, capsys, place, extra, problem):
    """A --save-transform place that is not a transform file: it became a folder ``t.xyz/pet.tfm`` (with ``-o
    fused.png --save-transform fused.png`` a failed run left ``fused.png/pet.tfm``), without --register it was
    ignored, and an input DICOM folder got the transform file inside it."""
    from PIL import Image

    (tmp_path / "MRI").mkdir()
    mri, other = tmp_path / "MRI" / "mri.png", tmp_path / "pet.png"
    for path, value in ((mri, 90), (other, 150)):
        Image.fromarray(np.pad(np.full((24, 24), value, np.uint8), 8)).save(path)
    if place == "MRI":
        mri = tmp_path / "MRI"  # stands for a DICOM series folder: never written into
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = main(["fuse", str(mri), str(other), "-o", str(tmp_path / "fused.png"), "--method", "max",
                 "--save-transform", str(tmp_path / place), *extra])
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lkcfusion: error: ") and problem in lines[0], out.err
    assert out.out == ""  # refused before "registration: on"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_transform_files_of_a_run_are_one_per_pair_and_kept(tmp_path, capsys):
    """Batch and bundle runs named transform files after the other image and replaced existing ones: in a datalist
    whose other images share a name (p1/pet.png, p2/pet.png) one transform was lost without a word, and a rerun
    without --overwrite replaced earlier transforms. Now ``<MRI name>.tfm`` (one per pair, like the results) and an
    existing one is kept unless overwrite."""
    import json

    from PIL import Image

    from monai_lkcfusion.engines import run_bundle_workflow
    from monai_lkcfusion.networks import LKCFUNet, save_network

    files = demo_files()
    pet = np.asarray(Image.open(files["pet_2d"]).convert("RGB"))
    items = []
    for i, (angle, shift) in enumerate(((5, (6, 2)), (-4, (-3, 5)))):
        (tmp_path / f"p{i}").mkdir()
        Image.open(files["mri_2d"]).save(tmp_path / f"p{i}" / f"mri{i}.png")
        moved = Image.fromarray(pet).rotate(angle, resample=Image.BILINEAR, translate=shift)
        moved.save(tmp_path / f"p{i}" / "pet.png")
        items.append({"mri": str(tmp_path / f"p{i}" / f"mri{i}.png"), "other": str(tmp_path / f"p{i}" / "pet.png")})
    (tmp_path / "datalist.json").write_text(json.dumps({"test": items}))
    weights = save_network(LKCFUNet.from_preset("tiny"), tmp_path / "tiny.pt")
    from monai_lkcfusion.engines import fusion_pairs

    assert fusion_pairs(tmp_path / "datalist.json") == fusion_pairs(tmp_path)  # the file itself, as the model card says
    kwargs = {"weights": str(weights), "dataset_dir": str(tmp_path), "device": "$torch.device('cpu')",
              "register": "rigid", "save_transform": str(tmp_path / "tfm")}
    run_bundle_workflow("inference.json", (), "infer", output_dir=str(tmp_path / "out"), **kwargs)
    saved = {p.name: p.read_bytes() for p in (tmp_path / "tfm").iterdir()}
    assert sorted(saved) == ["mri0.tfm", "mri1.tfm"] and saved["mri0.tfm"] != saved["mri1.tfm"]
    with pytest.raises(FusionInputError, match=r"mri0.tfm: transform file exists; pass --overwrite"):
        run_bundle_workflow("inference.json", (), "infer", output_dir=str(tmp_path / "out2"), **kwargs)
    assert {p.name: p.read_bytes() for p in (tmp_path / "tfm").iterdir()} == saved
    # the command line's batch mode: the same rule
    for folder in ("MRI", "PET"):
        (tmp_path / folder).mkdir()
    for i, item in enumerate(items):
        Image.open(item["mri"]).save(tmp_path / "MRI" / f"a{i}.png")
        Image.open(item["other"]).save(tmp_path / "PET" / f"a{i}.png")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a0.tfm").write_text("kept")
    argv = ["fuse", "--mri-dir", str(tmp_path / "MRI"), "--other-dir", str(tmp_path / "PET"), "-o",
            str(tmp_path / "f"), "--method", "max", "--register", "rigid", "--save-transform", str(tmp_path / "t")]
    assert main(argv) == 1
    assert "a0.tfm: transform file exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "t" / "a0.tfm").read_text() == "kept" and (tmp_path / "t" / "a1.tfm").is_file()
    assert main([*argv, "--overwrite"]) == 0 and (tmp_path / "t" / "a0.tfm").read_text() != "kept"
    one = ["fuse", items[0]["mri"], items[0]["other"], "-o", str(tmp_path / "one.png"), "--method", "max",
           "--register", "rigid", "--save-transform", str(tmp_path / "t" / "a1.tfm")]  # one pair: before any work
    kept = (tmp_path / "t" / "a1.tfm").read_bytes()
    assert main(one) == 2 and "a1.tfm: transform file exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "t" / "a1.tfm").read_bytes() == kept and not (tmp_path / "one.png").exists()
    # a transforms folder in an input folder was made first (even when the run was then refused) and paired as an
    # entry next to the MRIs: "MRI/tfm: no partner", exit 1 (hand-check helper); refused before anything is made
    (tmp_path / "plain.txt").write_text("a file")
    for place in (tmp_path / "MRI" / "tfm", tmp_path / "plain.txt"):
        capsys.readouterr()
        assert main([*argv[:-1], str(place)]) == 2
        err = capsys.readouterr().err
        assert ("lies inside the input folder" if place.parent.name == "MRI" else "is a file") in err, err
    assert sorted(p.name for p in (tmp_path / "MRI").iterdir()) == ["a0.png", "a1.png"]
    refused = ["fuse", "--mri-dir", str(tmp_path / "MRI"), "--other-dir", str(tmp_path / "PET"), "-o",
               str(tmp_path / "plain.txt"), "--method", "max", "--register", "rigid", "--save-transform",
               str(tmp_path / "t2")]  # -o is a file: refused, and the transforms folder not made
    assert main(refused) == 2
    assert not (tmp_path / "t2").exists()


def test_bundle_inference_config_has_register_option():
    """inference.json: register / transform / save_transform, RegisterToReferenced before the resampling."""
    from monai.bundle import ConfigParser

    from monai_lkcfusion.bundle_files import bundle_root

    parser = ConfigParser()
    parser.read_config(f"{bundle_root()}/configs/inference.json")
    assert parser["register"] == "none" and parser["transform"] is None
    parser["register"] = "rigid"
    parser["dataset_dir"] = str(demo_files()["mri_2d"].parent)
    chain = parser.get_parsed_content("preprocessing")
    names = [type(t).__name__ for t in chain.transforms]
    assert names.index("RegisterToReferenced") + 1 == names.index("ResampleToReferenced")
    assert chain.transforms[names.index("RegisterToReferenced")].transform.kind == "rigid"
    files = demo_files()
    d = Compose([LoadFusionImaged(("mri", "other")), ScaleModalityd(("mri", "other"))])(
        {"mri": str(files["mri_2d"]), "other": str(files["pet_2d"])})
    assert "registration" in chain.transforms[names.index("RegisterToReferenced")](d)["other"].meta


@pytest.mark.slow
@pytest.mark.parametrize("task", ["MRI-CT", "MRI-PET", "MRI-SPECT"])
def test_real_pairs_come_back(harvard_root, task):
    """Real Harvard slices moved by 7 degrees and (15, -12) px come back within 1 px of where registration puts the
    unmoved pair (the full evaluation, 72 pairs: benchmarks/registration_accuracy.py and docs/registration.md)."""
    name = {"MRI-CT": "16013.png", "MRI-PET": "25038.png", "MRI-SPECT": "15009.png"}[task]
    folder = harvard_root / "test" / task
    mri, other = _load(folder / "MRI" / name), _load(folder / task.split("-")[1] / name)
    motion = _rigid(2, 7.0, (15.0, -12.0), (127.5, 127.5))
    found = register(mri, resample_image(other, motion), "rigid")
    unmoved = register(mri, other, "rigid")
    assert found.converged
    assert mean_displacement(found.matrix, np.linalg.inv(motion) @ unmoved.matrix, mri) < 1.0


def test_real_aligned_pet_slices_stay_in_place_with_affine(harvard_root):
    """Aligned Harvard PET slices registered with affine: a start at the foregrounds' scale ratio (taken back) made
    them end 16-47 px off, stretched up to 2.4x, without a warning (hand-check helper). They stay within a few px of
    the atlas alignment, unstretched."""
    for name in ("25015.png", "25038.png", "41066.png"):
        folder = harvard_root / "test" / "MRI-PET"
        mri = _load(folder / "MRI" / name)
        found = register(mri, _load(folder / "PET" / name), "affine")
        assert mean_displacement(found.matrix, np.eye(3), mri) < 8.0, name
        assert not any("scales the other image" in w for w in found.warnings), (name, found.warnings)


@pytest.mark.slow
def test_real_partial_slice_keeps_the_better_start(harvard_root):
    """A low CT slice covering about half of the MRI's foreground: its centre-of-mass start is 50 px off and looked
    better on the coarse metric; with init="auto" both starts are searched and refined, and the better end wins."""
    folder = harvard_root / "train" / "MRI-CT"
    mri, other = _load(folder / "MRI" / "16003.png"), _load(folder / "CT" / "16003.png")
    motion = _rigid(2, 1.3, (-3.5, -20.8), (127.5, 127.5))
    found = register(mri, resample_image(other, motion), "rigid")
    assert found.initialization == "world"
    # the centre-of-mass start ended 53 px off; the better end is 1.32 px from the known motion (1, 2 or all
    # threads), the offset of this patient's atlas pair (docs/registration.md). The unmoved pair's own registration
    # is no reference: run inside the whole suite it ended 0.6-2.9 px from identity.
    assert mean_displacement(found.matrix, np.linalg.inv(motion), mri) < 2.5


@pytest.mark.slow
@pytest.mark.xfail(reason="mutual information puts the unmoved Harvard PET 2-3 px from the atlas alignment "
                          "(docs/registration.md): the issue's < 1 px target against the atlas is not met")
def test_real_pet_pair_matches_atlas_alignment(harvard_root):
    """The issue's target on a real pair: the known motion itself within 1 px (fails on the atlas's PET)."""
    folder = harvard_root / "test" / "MRI-PET"
    mri, other = _load(folder / "MRI" / "25038.png"), _load(folder / "PET" / "25038.png")
    motion = _rigid(2, 7.0, (15.0, -12.0), (127.5, 127.5))
    found = register(mri, resample_image(other, motion), "rigid")
    assert mean_displacement(found.matrix, np.linalg.inv(motion), mri) < 1.0
