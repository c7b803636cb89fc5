"""Fusion metrics: equality with the literature's evaluator (golden values) and properties on made-up images."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.metrics import (
    ALL_METRICS,
    DEFAULT_METRICS,
    compute_fusion_metrics,
    entropy,
    feature_mutual_information,
    luma_bt601,
    mutual_information,
    nabf,
    peak_signal_to_noise_ratio,
    qabf,
    structural_similarity,
    visual_information_fidelity,
)

SMALL_METRICS = tuple(n for n in ALL_METRICS if n != "MS_SSIM")  # MS-SSIM needs images of 176 pixels or more


def _gray(image: np.ndarray) -> np.ndarray:
    return np.round(image * 255).astype(np.float64)


@pytest.fixture
def triple(synthetic_pair) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mri, other = (_gray(x) for x in synthetic_pair)
    return np.round(0.6 * mri + 0.4 * other), mri, other


def _texture(seed: int, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    smooth = 120 + 100 * np.sin(xx / (3 + seed)) * np.cos(yy / 5)
    return np.clip(np.round(smooth + rng.normal(0, 12, smooth.shape)), 0, 255)


@pytest.mark.shared
def test_golden_values(golden_path):
    """Every metric of every golden record within 1e-3 relative of the reference evaluator."""
    golden = json.loads(golden_path.read_text())
    shared = golden_path.parents[1]
    fused, mri, other = [], [], []
    for record in golden["records"]:
        a = luma_bt601(np.array(Image.open(shared / record["mri"]).convert("RGB")))
        b = luma_bt601(np.array(Image.open(shared / record["other"]).convert("RGB")))
        fusions = {"max": np.maximum(a, b), "mean": np.round((a + b) / 2), "w73": np.round(0.7 * a + 0.3 * b)}
        fused.append(fusions[record["fused"]])
        mri.append(a)
        other.append(b)
    f, a, b = (torch.from_numpy(np.stack(x)[:, None].astype(np.float64)) for x in (fused, mri, other))
    values = compute_fusion_metrics(f, a, b, ssim_data_range=2)
    values["SSIM_255"] = compute_fusion_metrics(f, a, b, names=["SSIM"], ssim_data_range=255)["SSIM"]
    mismatches = []
    for i, record in enumerate(golden["records"]):
        for name, ours in values.items():
            if abs(float(ours[i]) - record[name]) > 1e-3 * abs(record[name]):
                where = f"{record['task']}/{record['pair']}/{record['fused']}"
                mismatches.append(f"{where} {name}: {float(ours[i])} vs {record[name]}")
    assert not mismatches, "\n".join(mismatches)


def test_luma_matches_bt601_rounding():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    assert luma_bt601(rgb).tolist() == [[76.0, 150.0, 29.0, 18.0]]
    # pure red is a rounding tie (76.245 is far from one, but 0.3 * 255 = 76.5 rounds to even 76 too): colours whose
    # BT.601 sum is not within 0.05 of a half must each give round(0.299 R + 0.587 G + 0.114 B) exactly
    colours = np.random.default_rng(0).integers(0, 256, (4000, 3))
    exact = colours @ np.array([0.299, 0.587, 0.114])
    colours, exact = colours[np.abs(exact % 1 - 0.5) > 0.05], exact[np.abs(exact % 1 - 0.5) > 0.05]
    assert np.array_equal(luma_bt601(colours[None].astype(np.uint8))[0], np.round(exact))
    assert luma_bt601(np.array([[[200, 1, 0], [120, 200, 40]]], dtype=np.uint8)).tolist() == [[60.0, 158.0]]


def test_single_image_floats_and_batch_equals_per_image():
    fused, mri, other = (np.stack([_texture(s + k) for k in range(3)]) for s in (0, 10, 20))
    batch = compute_fusion_metrics(*(torch.from_numpy(x[:, None]) for x in (fused, mri, other)), names=SMALL_METRICS)
    for i in range(3):
        single = compute_fusion_metrics(fused[i], mri[i], other[i], names=SMALL_METRICS)
        assert all(isinstance(v, float) for v in single.values())
        for name in SMALL_METRICS:
            assert single[name] == pytest.approx(float(batch[name][i]), rel=1e-9, abs=1e-12), name


def test_numpy_and_torch_inputs_agree(triple):
    from_numpy = compute_fusion_metrics(*triple, names=SMALL_METRICS)
    from_torch = compute_fusion_metrics(*(torch.from_numpy(x).float() for x in triple), names=SMALL_METRICS)
    assert from_numpy == pytest.approx(from_torch, rel=1e-9)


def test_statistics_match_numpy_definitions(triple):
    f, a, b = triple
    values = compute_fusion_metrics(f, a, b, names=["EN", "SD", "SF", "AG", "CC", "MSE", "PSNR"])
    hist = np.bincount(f.astype(int).ravel(), minlength=256) / f.size
    assert values["EN"] == pytest.approx(-np.sum(hist[hist > 0] * np.log2(hist[hist > 0])))
    assert values["SD"] == pytest.approx(np.std(f))
    assert values["SF"] == pytest.approx(np.sqrt(np.mean(np.diff(f, axis=1) ** 2) + np.mean(np.diff(f, axis=0) ** 2)))
    gy, gx = np.gradient(f)
    assert values["AG"] == pytest.approx(np.mean(np.sqrt((gx**2 + gy**2) / 2)))
    cc = (np.corrcoef(a.ravel(), f.ravel())[0, 1] + np.corrcoef(b.ravel(), f.ravel())[0, 1]) / 2
    assert values["CC"] == pytest.approx(cc)
    mse = (np.mean((f - a) ** 2) + np.mean((f - b) ** 2)) / 2
    assert values["MSE"] == pytest.approx(mse)
    assert values["PSNR"] == pytest.approx(10 * np.log10(f.max() ** 2 / mse))


def test_psnr_peak_options(triple):
    f = triple[0]
    by_max = peak_signal_to_noise_ratio(*triple, peak="max")
    by_255 = peak_signal_to_noise_ratio(*triple, peak="255")
    assert by_255 - by_max == pytest.approx(20 * math.log10(255 / f.max()))
    assert peak_signal_to_noise_ratio(f, f, f) == math.inf
    with pytest.raises(FusionInputError, match="psnr_peak"):
        peak_signal_to_noise_ratio(*triple, peak="1")


def test_identical_images(triple):
    x = triple[1]
    counts = np.unique(x, return_counts=True)[1] / x.size
    h_nats = -np.sum(counts * np.log(counts))
    assert mutual_information(x, x, x) == pytest.approx(2 * h_nats)
    assert mutual_information(x, x, x, reduction="mean", base=2) == pytest.approx(h_nats / math.log(2))
    assert structural_similarity(x, x, x) == pytest.approx(2.0)
    assert structural_similarity(x, x, x, data_range=2, reduction="mean") == pytest.approx(1.0)
    assert visual_information_fidelity(x, x, x) == pytest.approx(2.0, rel=1e-6)
    assert feature_mutual_information(x, x, x) == 1.0
    assert nabf(x, x, x) == 0.0
    assert 0.9 < qabf(x, x, x) <= 1.0
    assert compute_fusion_metrics(x, x, x, names=["CC", "SCD"]) == {"CC": pytest.approx(1.0), "SCD": 0.0}


def test_mutual_information_uses_distinct_values():
    """Shifting values off the 8-bit grid relabels the bins but keeps MI; many distinct values take the sparse path."""
    a, b, f = _texture(1), _texture(2), _texture(3)
    assert mutual_information(f + 0.25, a - 0.5, b * 1.001) == pytest.approx(mutual_information(f, a, b), rel=1e-12)
    rng = np.random.default_rng(0)
    x, y = rng.random((96, 96)), rng.random((96, 96))
    y[:48] = x[:48]  # half the pixels shared: a known joint structure with ~9000 distinct values
    _, ix = np.unique(x, return_inverse=True)
    _, iy = np.unique(y, return_inverse=True)
    joint = np.unique(ix.ravel() * (iy.max() + 1) + iy.ravel(), return_counts=True)[1] / x.size
    px, py = np.bincount(ix.ravel()) / x.size, np.bincount(iy.ravel()) / x.size
    expected = np.sum(joint * np.log(joint)) - np.sum(px * np.log(px)) - np.sum(py * np.log(py))
    assert mutual_information(x, y, y, reduction="mean") == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("value", [0.0, 255.0, 97.0])
def test_constant_images_give_no_nan(value):
    const = np.full((176, 176), value)
    texture = np.tile(_texture(4, 44), (4, 4))
    for fused, mri, other in [(const, const, const), (texture, const, const), (const, texture, const)]:
        values = compute_fusion_metrics(fused, mri, other, names=ALL_METRICS)
        assert not any(math.isnan(v) for v in values.values()), values
    flat = compute_fusion_metrics(const, const, const, names=["VIF", "CC", "SCD", "MI", "PSNR", "FMI_pixel", "Nabf"])
    assert flat == {"VIF": 2.0, "CC": 0.0, "SCD": 0.0, "MI": 0.0, "PSNR": math.inf, "FMI_pixel": 1.0, "Nabf": 0.0}
    assert math.copysign(1.0, compute_fusion_metrics(const, const, const, names=["EN"])["EN"]) == 1.0  # not -0.0
    assert visual_information_fidelity(texture, const, const) == 2.0  # references without variance: 0/0 -> 1 each
    assert visual_information_fidelity(const, texture, texture) == 0.0  # nothing of the texture kept
    # zero padding gives a non-zero image edges at its border; an all-zero triple has no edges at all: 0/0 -> 1
    assert qabf(const, const, const) == (1.0 if value == 0 else pytest.approx(0.975, abs=0.01))


def test_entropy_clamps_out_of_range_values():
    image = np.array([[-3.0, 0.0], [255.0, 300.0]])
    assert entropy(image) == pytest.approx(1.0)


def test_chunking_and_threads_do_not_change_values(triple):
    batch = [torch.from_numpy(np.stack([x, np.flipud(x).copy(), np.fliplr(x).copy()])[:, None]) for x in triple]
    before = torch.get_num_threads()
    one = compute_fusion_metrics(*batch, names=SMALL_METRICS)
    assert torch.get_num_threads() == before  # cpu_threads is restored
    three = compute_fusion_metrics(*batch, names=SMALL_METRICS, chunk_size=3, cpu_threads=None)
    for name in SMALL_METRICS:
        torch.testing.assert_close(one[name], three[name], rtol=1e-9, atol=1e-12)
    with pytest.raises(FusionInputError, match="chunk_size"):
        compute_fusion_metrics(*triple, chunk_size=0)


def test_default_names_and_errors(triple):
    assert tuple(compute_fusion_metrics(*triple)) == DEFAULT_METRICS
    with pytest.raises(FusionInputError, match="unknown metric"):
        compute_fusion_metrics(*triple, names=["SSIM", "QAB"])
    with pytest.raises(FusionInputError, match="one shape"):
        compute_fusion_metrics(triple[0], triple[1][:-1], triple[2])
    with pytest.raises(FusionInputError, match="expected shape"):
        entropy(np.zeros((2, 3, 8, 8)))
    with pytest.raises(FusionInputError, match="reduction"):
        structural_similarity(*triple, reduction="max")
    with pytest.raises(FusionInputError, match="MS_SSIM needs"):
        compute_fusion_metrics(*triple, names=["MS_SSIM"])
    with pytest.raises(FusionInputError, match="VIF needs"):
        visual_information_fidelity(*(x[:40, :40] for x in triple))


# -- input scale and layout ---------------------------------------------------------------------------------------
SCALE_METRICS = ["EN", "SD", "SF", "MI", "Qabf", "SSIM"]


def test_fuse_output_is_scored_as_its_saved_picture():
    """A (3, H, W) MetaTensor in [0, 1] from fuse() is scored like the 8-bit RGB picture it saves as, read as luma."""
    from monai.data import MetaTensor

    rng = np.random.default_rng(5)
    rgb = rng.random((3, 48, 48)).astype(np.float32)
    fused = MetaTensor(torch.from_numpy(rgb), meta={"fusion_method": "lkcfunet"})
    mri, other = _texture(6), _texture(7)
    picture = np.round(np.clip(rgb * 255, 0, 255)).astype(np.uint8)  # what writing the PNG keeps
    expected = compute_fusion_metrics(luma_bt601(np.moveaxis(picture, 0, -1)), mri, other, names=SCALE_METRICS)
    assert compute_fusion_metrics(fused, mri, other, names=SCALE_METRICS) == expected
    # the same for a gray (1, H, W) output and for 8-bit channel-first sources such as read_image gives
    gray = MetaTensor(torch.from_numpy(rgb[:1]), meta={"fusion_method": "max"})
    expected = compute_fusion_metrics(picture[0].astype(np.float64), mri, other, names=SCALE_METRICS)
    assert compute_fusion_metrics(gray, mri[None], torch.from_numpy(other)[None], names=SCALE_METRICS) == expected


def test_unit_range_needs_input_scale():
    unit = [torch.from_numpy(_texture(s) / 255.0) for s in (1, 2, 3)]
    with pytest.raises(FusionInputError, match=r"fused: values lie in \[0, 1\].*input_scale=255"):
        compute_fusion_metrics(*unit, names=SCALE_METRICS)
    with pytest.raises(FusionInputError, match="mri: values lie in"):
        compute_fusion_metrics(_texture(1), unit[1], _texture(3), names=SCALE_METRICS)
    scaled = compute_fusion_metrics(*unit, names=SCALE_METRICS, input_scale=255)
    assert scaled == compute_fusion_metrics(*(np.round(u.numpy() * 255) for u in unit), names=SCALE_METRICS)
    binary = (_texture(4) > 128).astype(np.float64)  # integer values 0 and 1 are 8-bit values, not a unit range
    assert math.isfinite(compute_fusion_metrics(binary, _texture(2), _texture(3), names=["EN"])["EN"])


def test_fuse_array_output_and_bad_values_are_handled(tmp_path):
    """fuse()'s NumPy output (gray (H, W) or colour (H, W, 3), in [0, 1]) is refused with a fix that works, never
    scored after scaling the 8-bit sources too; NaN, a zero SSIM range or a negative scale are refused."""
    from monai_lkcfusion import fuse

    mri, other = _texture(1).astype(np.uint8), _texture(2).astype(np.uint8)
    fused = fuse(mri, other, method="max")  # (H, W) float32 in [0, 1]
    with pytest.raises(FusionInputError, match=r"fused: values lie in \[0, 1\].*multiply it by 255"):
        compute_fusion_metrics(fused, mri, other, names=SCALE_METRICS)
    with pytest.raises(FusionInputError, match="mri: values up to .* far beyond 255"):
        compute_fusion_metrics(fused, mri, other, names=SCALE_METRICS, input_scale=255)
    tensor = fuse(torch.as_tensor(mri)[None].float(), torch.as_tensor(other)[None].float(), method="max")
    with pytest.raises(FusionInputError, match=r"^fused: fuse\(\)'s output is in \[0, 1\] and is put on \[0, 255\] "
                                               r"here, but this one reaches .*: pass fuse\(\)'s output unscaled"):
        compute_fusion_metrics(tensor * 255, mri, other, names=SCALE_METRICS)  # it named an input_scale not given
    expected = compute_fusion_metrics(np.round(fused * 255), mri, other, names=SCALE_METRICS)
    assert compute_fusion_metrics(fused * 255, mri, other, names=SCALE_METRICS) == expected
    colour = np.stack([fused * 255] * 3, axis=-1)  # a channel-last picture whose luma is the gray image
    assert compute_fusion_metrics(colour, mri, other, names=SCALE_METRICS) == expected
    holed = (fused * 255).copy()
    holed[3, 4] = np.nan
    for kwargs, needle in (({}, "fused: 1 NaN/Inf values"), ({"ssim_data_range": 0}, "ssim_data_range 0: give a"),
                           ({"input_scale": -1}, "input_scale -1: give a positive")):
        with pytest.raises(FusionInputError, match=needle):
            compute_fusion_metrics(holed if not kwargs else fused * 255, mri, other, names=["EN", "SSIM"], **kwargs)


def test_layouts_that_are_not_images_are_refused():
    image = _texture(1)
    for shape in [(1, 8, 48, 48), (2, 48, 48), (2, 2, 48, 48)]:
        with pytest.raises(FusionInputError, match=r"fused: expected a \(H, W\) or \(1\|3, H, W\) image"):
            compute_fusion_metrics(np.zeros(shape), image, image, names=["EN"])
