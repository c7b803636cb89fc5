"""Property-based tests (hypothesis): transforms, fusion and metrics never give NaN or crash on random shapes,
dtypes and ranges; the image readers, fed corrupted bytes, give an image or a FusionInputError and nothing else."""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from monai.data import MetaTensor
from PIL import Image

from monai_lkcfusion.baselines import BASELINE_METHODS, fuse_baseline
from monai_lkcfusion.data import read_image
from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.inference import fuse
from monai_lkcfusion.losses import FusionLoss
from monai_lkcfusion.metrics import DEFAULT_METRICS, compute_fusion_metrics
from monai_lkcfusion.transforms import resample_to_reference, rgb_to_ycbcr, scale_to_unit, ycbcr_to_rgb

# subnormal floats are left out: a process that ran the bundle's train.json has flush-denormal on
FAST = settings(max_examples=30, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = st.sampled_from([np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64])


@st.composite
def raw_images(draw, min_side: int = 1, max_side: int = 24, dims: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """An array of any of :data:`DTYPES` over that dtype's whole range (floats with NaN/Inf and huge values)."""
    ndim = draw(st.sampled_from(dims))
    shape = draw(hnp.array_shapes(min_dims=ndim, max_dims=ndim, min_side=min_side, max_side=max_side))
    dtype = np.dtype(draw(DTYPES))
    if dtype.kind == "f":
        elements = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False, width=8 * dtype.itemsize)
    else:
        elements = st.integers(int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
    return draw(hnp.arrays(dtype, shape, elements=elements))


def _finite_unit(x) -> bool:
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    return bool(np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0)


# -- transforms ---------------------------------------------------------------------------------------------------
@FAST
@given(raw_images(dims=(2, 3)), st.sampled_from([None, "MR", "CT", "PET", "SPECT"]),
       st.sampled_from([None, 1.0, 255.0, 65535.0]))
def test_scale_to_unit_is_finite_in_unit_range(array, modality, display_max):
    img = torch.as_tensor(array.astype(np.float64))[None]
    with np.errstate(over="ignore"):
        finite = int(np.isfinite(array.astype(np.float32)).sum())  # it works in float32: 1e300 counts as Inf
    if finite == 0:
        with pytest.raises(FusionInputError, match="no finite voxel"):
            scale_to_unit(img, modality=modality, display_max=display_max)
        return
    scaled, record = scale_to_unit(img, modality=modality, display_max=display_max)
    assert scaled.shape == img.shape and _finite_unit(scaled)
    assert record["nonfinite_voxels"] == array.size - finite


RGB_SHAPES = hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=12).map(lambda s: (3, *s[1:]))


@FAST
@given(hnp.arrays(np.float32, RGB_SHAPES, elements=st.floats(0.0, 1.0, width=32, allow_subnormal=False)))
def test_ycbcr_round_trip_stays_in_range(rgb):
    rgb = torch.as_tensor(rgb)
    ycbcr = rgb_to_ycbcr(rgb)
    assert torch.isfinite(ycbcr).all() and ycbcr.min() >= -1e-6 and ycbcr.max() <= 1 + 1e-6
    back = ycbcr_to_rgb(ycbcr[:1], ycbcr[1:])
    assert _finite_unit(back) and torch.allclose(back, rgb, atol=1e-5)
    # any luma with any chroma in [0, 1] still gives a displayable RGB
    assert _finite_unit(ycbcr_to_rgb(torch.rand_like(rgb[:1]), torch.rand_like(rgb[1:])))


@FAST
@given(st.tuples(st.integers(2, 9), st.integers(2, 9), st.integers(2, 9)),
       st.lists(st.floats(0.3, 3.0), min_size=3, max_size=3), st.floats(-0.6, 0.6, allow_subnormal=False),
       st.lists(st.floats(-6.0, 6.0, allow_subnormal=False), min_size=3, max_size=3), st.booleans())
def test_resample_to_reference_keeps_grid_and_is_finite(shape, spacing, angle, shift, far):
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = np.asarray(shift) + (1000.0 if far else 0.0)
    moving = MetaTensor(torch.rand(1, *shape), affine=torch.as_tensor(affine))
    reference = MetaTensor(torch.rand(1, 6, 5, 4), affine=torch.eye(4, dtype=torch.float64))
    try:
        moved, coverage = resample_to_reference(moving, reference)
    except FusionInputError as err:  # a small or shifted volume may miss the reference; a far one always does
        assert "does not overlap" in str(err)
        return
    assert not far and tuple(moved.shape) == (1, 6, 5, 4) and 0.0 < coverage <= 1.0
    assert torch.isfinite(moved.as_tensor()).all() and torch.allclose(moved.affine, reference.affine)


# -- fusion -------------------------------------------------------------------------------------------------------
@FAST
@given(raw_images(max_side=20, dims=(2,)), st.data(), st.sampled_from(BASELINE_METHODS), st.booleans())
def test_fuse_any_2d_input_gives_finite_unit_image(mri, data, method, colour):
    h, w = mri.shape
    shape = (h, w, 3) if colour else (h, w)
    other = data.draw(raw_images(min_side=1, max_side=1, dims=(2,)).map(lambda a: np.resize(a, shape)))
    try:
        fused = fuse(mri, other, method=method, progress=False)
    except FusionInputError as err:  # only an image without any finite value may be refused
        assert "no finite voxel" in str(err)
        return
    assert fused.shape == ((h, w, 3) if colour else (h, w)) and _finite_unit(fused)


@FAST
@given(hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=19), st.sampled_from(BASELINE_METHODS),
       st.integers(0, 2**31 - 1))
def test_baselines_any_shape(shape, method, seed):
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.rand(shape, generator=gen), torch.rand(shape, generator=gen)
    fused = fuse_baseline(a, b, method)
    assert fused.shape == a.shape and torch.isfinite(fused).all()
    assert fused.min() >= -1e-5 and fused.max() <= 1 + 1e-5


@FAST
@given(st.integers(1, 3), st.integers(1, 40), st.integers(1, 40), st.sampled_from(["rand", "const", "binary"]),
       st.integers(0, 2**31 - 1))
def test_fusion_loss_finite(batch, h, w, kind, seed):
    gen = torch.Generator().manual_seed(seed)
    make = {"rand": lambda s: torch.rand(s, generator=gen), "const": lambda s: torch.full(s, 0.3),
            "binary": lambda s: (torch.rand(s, generator=gen) > 0.5).float()}[kind]
    sources = make((batch, 2, h, w))
    for options in ({}, {"intensity_sigma": 2.0, "ssim_form": "max_variance"}):  # blur windows shrink like SSIM's
        fused = make((batch, 1, h, w)).requires_grad_()
        loss = FusionLoss(**options)(fused, sources)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(fused.grad).all()


# -- metrics ------------------------------------------------------------------------------------------------------
@st.composite
def gray_triples(draw, min_side: int, max_side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h, w = draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))

    def one() -> np.ndarray:
        kind = draw(st.sampled_from(["rand", "const", "zeros", "full", "binary", "narrow"]))
        return {"rand": lambda: rng.random((h, w)) * 255, "const": lambda: np.full((h, w), 97.0),
                "zeros": lambda: np.zeros((h, w)), "full": lambda: np.full((h, w), 255.0),
                "binary": lambda: (rng.random((h, w)) > 0.5) * 255.0,
                "narrow": lambda: 100.0 + rng.random((h, w))}[kind]()

    return one(), one(), one()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gray_triples(41, 48))
def test_metrics_never_nan(triple):
    """Every default metric is a number for flat, empty, saturated, binary and noisy images. PSNR follows its
    definition 10 log10(max(F)^2 / MSE): +inf when F equals both sources, -inf for an all-black F."""
    values = compute_fusion_metrics(*triple)
    assert list(values) == list(DEFAULT_METRICS)
    for name, value in values.items():
        assert not math.isnan(value), (name, value)
        assert math.isfinite(value) or name == "PSNR", (name, value)


@settings(max_examples=15, deadline=None)
@given(gray_triples(1, 8))
def test_metrics_refuse_tiny_images_cleanly(triple):
    """Images smaller than a metric's window get a FusionInputError naming the size, never another exception."""
    for name in ("AG", "SSIM", "Nabf", "FMI_pixel", "VIF", "MS_SSIM", "EN", "SD", "SF", "MI", "SCD", "Qabf", "CC",
                 "MSE", "PSNR"):
        try:
            value = compute_fusion_metrics(*triple, names=[name])[name]
        except FusionInputError as err:
            assert "need" in str(err) and "pixels" in str(err), (name, err)
            continue
        assert not math.isnan(value), name


# -- corrupted files ----------------------------------------------------------------------------------------------
def _png_bytes(colour: bool) -> bytes:
    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    Image.fromarray((rng.random((12, 10, 3) if colour else (12, 10)) * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _volume_bytes(suffix: str, tmp: Path) -> bytes:
    path = tmp / f"seed{suffix}"
    voxels = np.random.default_rng(2).random((6, 5, 4)).astype(np.float32)
    if suffix == ".mha":
        import SimpleITK as sitk

        sitk.WriteImage(sitk.GetImageFromArray(voxels), str(path))
    else:
        nib.save(nib.Nifti1Image(voxels, np.eye(4)), str(path))
    return path.read_bytes()


@st.composite
def corruptions(draw, size: int) -> tuple[int, list[tuple[int, int]]]:
    """A length to cut the file to and a few bit flips at positions before it."""
    keep = draw(st.one_of(st.just(size), st.integers(1, size)))
    flips = draw(st.lists(st.tuples(st.integers(0, keep - 1), st.integers(0, 7)), max_size=6))
    return keep, flips


def _corrupt(data: bytes, keep: int, flips: list[tuple[int, int]]) -> bytes:
    damaged = bytearray(data[:keep])
    for position, bit in flips:
        damaged[position] ^= 1 << bit
    return bytes(damaged)


@pytest.mark.parametrize("kind", ["gray.png", "rgb.png", "vol.nii", "vol.nii.gz", "vol.mha"])
def test_readers_on_corrupted_bytes(kind, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    seed = _png_bytes(kind == "rgb.png") if kind.endswith(".png") else _volume_bytes(kind[3:], folder)
    target = folder / kind

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(corruptions(len(seed)))
    def check(corruption):
        target.write_bytes(_corrupt(seed, *corruption))
        try:
            img = read_image(target)
        except FusionInputError as err:
            assert str(target) in str(err) and "\n" not in str(err)
            return
        assert isinstance(img, MetaTensor) and img.ndim in (3, 4) and img.shape[0] in (1, 3)
        try:
            scaled, _ = scale_to_unit(img.as_tensor(), display_max=img.meta.get("display_max"))
        except FusionInputError as err:
            assert "no finite voxel" in str(err)
            return
        assert _finite_unit(scaled)

    check()


def test_header_data_file_name_with_nul_byte_is_one_line_error(tmp_path):
    """A damaged MetaImage header whose data-file field holds binary junk with a NUL byte: refused in one line."""
    header = tmp_path / "vol.mhd"
    header.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_FLOAT\n"
                       b"ElementDataFile = LOCAL\x0b\x07\x00junk\n")
    with pytest.raises(FusionInputError, match="NUL byte") as err:
        read_image(header)
    assert str(header) in str(err.value) and "\n" not in str(err.value)


def test_scale_to_unit_of_a_span_past_float32() -> None:
    """Found by the property test above: -3.39e38 and 1.28e36 span more than float32 holds, which gave NaN."""
    array = np.array([[1.28056035e36, -3.39001796e38]], dtype=np.float32)
    scaled, _ = scale_to_unit(torch.as_tensor(array.astype(np.float64))[None])
    assert _finite_unit(scaled) and scaled.dtype == torch.float32
    assert scaled[0, 0, 0] == 1.0 and scaled[0, 0, 1] == 0.0
    ramp = np.linspace(-3e38, 3e38, 201, dtype=np.float32).reshape(1, 201)  # percentiles 0.5-99.5 apart by 6e38
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither NumPy's overflow nor "percentiles are equal"
        scaled, record = scale_to_unit(torch.as_tensor(ramp)[None])
    assert _finite_unit(scaled) and "percentiles 0.5-99.5" in record["intensity_scaling"]
    assert abs(float(scaled[0, 0, 100]) - 0.5) < 1e-6 and scaled[0, 0, 0] == 0.0 and scaled[0, 0, -1] == 1.0
