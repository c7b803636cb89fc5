"""FusionLoss: shapes, gradients, and that pixel-max fusion scores better than either source alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_lkcfusion.losses import FusionLoss, gaussian_ssim, sobel_magnitude


def _gray(path: Path) -> np.ndarray:
    """8-bit gray (BT.601 luma for colour) scaled to [0, 1]."""
    image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return (image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)) / 255.0


def _losses_of_candidates(sources: torch.Tensor) -> dict[str, float]:
    loss = FusionLoss()
    candidates = {
        "max": sources.amax(dim=1, keepdim=True),
        "mri": sources[:, :1],
        "other": sources[:, 1:],
    }
    return {name: float(loss(fused, sources)) for name, fused in candidates.items()}


def test_gradients_flow_and_batch_vectorised() -> None:
    torch.manual_seed(0)
    sources = torch.rand(3, 2, 32, 40)
    fused = torch.rand(3, 1, 32, 40, requires_grad=True)
    loss = FusionLoss()
    value = loss(fused, sources)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)
    assert fused.grad is not None and fused.grad.abs().sum() > 0
    # the batch loss is the mean of the per-sample losses (equal sizes)
    per_sample = torch.stack([loss(fused[i : i + 1], sources[i : i + 1]) for i in range(3)])
    assert torch.allclose(value, per_sample.mean(), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("form", ["mean", "max_variance"])
def test_loss_is_float32_under_mixed_precision(dtype: torch.dtype, form: str) -> None:
    """Inside autocast (AMP training) the loss and its gradient are the float32 ones, also on black background,
    where a float16 SSIM denominator underflows and gave inf/NaN gradients."""
    torch.manual_seed(0)
    sources = torch.zeros(2, 2, 64, 64)
    sources[:, :, 16:48, 16:48] = torch.rand(2, 2, 32, 32)  # a body on a black background
    start = (sources.amax(dim=1, keepdim=True) + 0.05 * torch.randn(2, 1, 64, 64)).clamp(0, 1)
    loss = FusionLoss(intensity_sigma=2.0, ssim_form=form)
    reference = start.clone().requires_grad_()
    loss(reference, sources).backward()
    mixed = start.clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        value = loss(mixed.to(dtype), sources.to(dtype))  # a network's output under autocast is half precision
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(mixed.grad).all()
    assert torch.allclose(value, loss(start, sources), rtol=1e-2)
    assert torch.nn.functional.cosine_similarity(mixed.grad.flatten(), reference.grad.flatten(), dim=0) > 0.99
    assert loss(start.double(), sources.double()).dtype == torch.float64  # wider inputs keep their precision


def test_weights_are_configurable() -> None:
    torch.manual_seed(1)
    sources, fused = torch.rand(2, 2, 24, 24), torch.rand(2, 1, 24, 24)
    terms = FusionLoss().components(fused, sources)  # 24 px: every term but VIF (41 px at least)
    assert sorted(terms) == ["edge", "gradient", "intensity", "ssim"]
    weighted = FusionLoss(intensity_weight=2.0, ssim_weight=0.0, gradient_weight=0.5)(fused, sources)
    assert torch.allclose(weighted, 2.0 * terms["intensity"] + 0.5 * terms["gradient"])
    assert all(float(v) > 0 for v in terms.values())


def test_ssim_and_sobel_basics() -> None:
    x = torch.rand(2, 1, 20, 20)
    assert torch.allclose(gaussian_ssim(x, x), torch.ones(2, 1), atol=1e-5)
    assert float(gaussian_ssim(x, 1 - x).mean()) < 0.5
    ramp = torch.arange(10.0).repeat(10, 1)[None, None]  # d/dx = 1 -> Sobel response 8 inside
    assert torch.allclose(sobel_magnitude(ramp)[..., 1:-1, 1:-1], torch.full((1, 1, 8, 8), 8.0))


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="sources"):
        FusionLoss()(torch.rand(1, 1, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="fused"):
        FusionLoss()(torch.rand(1, 2, 8, 8), torch.rand(1, 2, 8, 8))


def test_batches_of_two_sizes_are_refused_not_broadcast() -> None:
    """A fused batch of 2 against sources of 1 (or 2 against 3): refused, as a size mismatch is; PyTorch broadcast
    the single source pair over the batch (only its own UserWarning) and the SSIM term paired items by position."""
    for fused, sources in ((2, 1), (1, 2), (2, 3)):
        with pytest.raises(ValueError, match="batch"):
            FusionLoss()(torch.rand(fused, 1, 16, 16), torch.rand(sources, 2, 16, 16))


def test_max_fusion_beats_sources_on_synthetic_pair(synthetic_pair: tuple[np.ndarray, np.ndarray]) -> None:
    mri, other = synthetic_pair
    sources = torch.from_numpy(np.stack([mri, other]))[None]
    losses = _losses_of_candidates(sources)
    assert losses["max"] < losses["mri"] and losses["max"] < losses["other"]


@pytest.mark.shared
def test_max_fusion_on_harvard(harvard_root: Path) -> None:
    """Pixel max beats the other modality alone and the pixel mean on every task, and both sources on MRI-CT.

    On MRI-PET/SPECT the MRI alone can score lower than the pixel max: where the max switches from one source to
    the other it creates edges that neither source has, which the gradient term penalises. The loss's optimum is
    therefore not the pixel max, which is what lets a trained network do better than it.
    """
    for task, other_dir in (("MRI-CT", "CT"), ("MRI-PET", "PET"), ("MRI-SPECT", "SPECT")):
        names = sorted((harvard_root / "test" / task / "MRI").glob("*.png"))[:4]
        sources = torch.stack(
            [torch.from_numpy(np.stack([_gray(p), _gray(p.parent.parent / other_dir / p.name)])) for p in names]
        )
        losses = _losses_of_candidates(sources)
        mean_loss = float(FusionLoss()(sources.mean(dim=1, keepdim=True), sources))
        assert losses["max"] < losses["other"] and losses["max"] < mean_loss, (task, losses)
        if task == "MRI-CT":
            assert losses["max"] < losses["mri"], losses


def test_loss_options_follow_their_definitions() -> None:
    """value_range doubles the L1 terms; zero padding keeps full-size maps; max_variance picks one source per window."""
    torch.manual_seed(0)
    sources = torch.rand(2, 2, 48, 48)
    fused = torch.rand(2, 1, 48, 48)
    unit = FusionLoss().components(fused, sources)
    sym = FusionLoss(value_range="symmetric").components(fused, sources)
    assert torch.allclose(sym["intensity"], 2 * unit["intensity"])
    # the Sobel's zero padding sits at -1 after the mapping, so only the border rows differ from exactly 2x
    assert torch.allclose(sym["gradient"], 2 * unit["gradient"], rtol=0.05)
    assert not torch.allclose(sym["ssim"], unit["ssim"])  # the SSIM constants stay those of range 1
    from monai_lkcfusion.losses import ssim_maps

    valid, _ = ssim_maps(sources, fused)
    zeros, _ = ssim_maps(sources, fused, padding="zeros")
    assert valid.shape[-1] == 38 and zeros.shape[-1] == 48
    assert torch.allclose(zeros[..., 5:-5, 5:-5], valid, atol=1e-5)  # interior windows are the same
    # max_variance: a flat source never counts where the other has texture
    flat_other = torch.cat([sources[:, :1], torch.full_like(sources[:, 1:], 0.5)], dim=1)
    picked = FusionLoss(ssim_form="max_variance").components(sources[:, :1], flat_other)["ssim"]
    assert float(picked) < 1e-4  # F equals the textured source exactly
    assert float(FusionLoss().components(sources[:, :1], flat_other)["ssim"]) > 0.1


def test_loss_option_names_are_checked() -> None:
    with pytest.raises(ValueError, match="value_range"):
        FusionLoss(value_range="minus-one")


def test_intensity_sigma_compares_base_layers_only() -> None:
    """intensity_sigma: fine detail added to pixel max costs (almost) nothing; a shift of the base layer costs."""
    from monai_lkcfusion.losses import gaussian_blur

    torch.manual_seed(0)
    sources = torch.rand(2, 2, 48, 48)
    top = sources.amax(dim=1, keepdim=True)
    checker = (torch.arange(48).view(-1, 1) + torch.arange(48)).remainder(2).float() * 0.2 - 0.1  # +-0.1, finest
    base, pixel = FusionLoss(intensity_sigma=2.0), FusionLoss()

    def cost(loss: FusionLoss, fused: torch.Tensor) -> float:  # what the change adds to the intensity term
        return float(loss.components(fused, sources)["intensity"] - loss.components(top, sources)["intensity"])

    assert cost(pixel, top + checker) == pytest.approx(0.1, rel=1e-4)
    assert abs(cost(base, top + checker)) < 0.002
    assert cost(base, top + 0.1) > 0.05
    # the blur is a normalised Gaussian over complete windows (sigma 2: 13x13)
    flat = torch.full((1, 1, 20, 30), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), torch.full((1, 1, 8, 18), 0.3))
    with pytest.raises(ValueError, match="intensity_sigma"):
        FusionLoss(intensity_sigma=-1.0)


def _edge_candidates(mri: np.ndarray, other: np.ndarray) -> dict[str, np.ndarray]:
    """8-bit fusions of one pair whose Qabf spans the range: pixel max, mean, a blurred max."""
    from scipy.ndimage import gaussian_filter

    best = np.maximum(mri, other)
    return {"max": best, "mean": np.round((mri + other) / 2), "blurred": np.round(gaussian_filter(best, 1.0))}


def _check_edge_preservation_tracks_qabf(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    from monai_lkcfusion.metrics import edge_preservation, qabf

    for mri, other in pairs:  # 8-bit gray (H, W)
        scores = {}
        for name, fused in _edge_candidates(mri, other).items():
            exact = qabf(torch.tensor(fused), torch.tensor(mri), torch.tensor(other))
            smooth = edge_preservation(torch.tensor(fused / 255.0, dtype=torch.float32)[None, None],
                                       torch.tensor(np.stack([mri, other]) / 255.0, dtype=torch.float32)[None])
            assert abs(float(smooth) - exact) < 0.025, (name, float(smooth), exact)
            scores[name] = float(smooth)
        assert scores["max"] > scores["blurred"] and scores["max"] > scores["mean"], scores


def test_edge_term_is_weighted_and_pulls_toward_the_sources_edges(synthetic_pair: tuple[np.ndarray, ...]) -> None:
    """edge_weight adds 1 - Qabf; its gradient is finite (also where F or a source is flat) and a step along it
    raises the edge preservation of a blurred fusion."""
    from scipy.ndimage import gaussian_filter

    from monai_lkcfusion.metrics import edge_preservation

    mri, other = synthetic_pair
    sources = torch.from_numpy(np.stack([mri, other])).float()[None]  # (1, 2, H, W)
    blurred = torch.from_numpy(gaussian_filter(np.maximum(mri, other), 1.5)).float()[None, None]
    blurred[..., :8, :] = 0.0  # a flat band: zero strength in F
    terms = FusionLoss().components(blurred, sources)
    weighted = FusionLoss(edge_weight=3.0)(blurred, sources)
    assert torch.allclose(weighted, FusionLoss()(blurred, sources) + 3.0 * terms["edge"])
    fused = blurred.clone().requires_grad_()
    (1.0 - edge_preservation(fused, sources).mean()).backward()
    assert torch.isfinite(fused.grad).all() and fused.grad.abs().sum() > 0
    stepped = blurred - 0.01 * fused.grad / fused.grad.abs().max()  # a small step down the gradient
    assert float(edge_preservation(stepped, sources)) > float(edge_preservation(blurred, sources))
    with pytest.raises(Exception, match="edge_weight"):
        FusionLoss(edge_weight=-1.0)


def test_edge_term_is_computed_only_when_it_is_weighted(monkeypatch: pytest.MonkeyPatch) -> None:
    """At edge_weight 0 (the released loss) the edge term, a third of the loss's time on whole slices, is not
    computed; the value is the weighted sum of the other terms, exactly."""
    import monai_lkcfusion.losses.fusion_loss as module

    torch.manual_seed(2)
    sources, fused = torch.rand(2, 2, 48, 48), torch.rand(2, 1, 48, 48)
    terms = FusionLoss().components(fused, sources)
    monkeypatch.setattr(module, "edge_preservation", lambda *a: pytest.fail("edge term computed at weight 0"))
    value = FusionLoss(intensity_weight=2.0, gradient_weight=0.5)(fused, sources)
    assert torch.equal(value, 2.0 * terms["intensity"] + terms["ssim"] + 0.5 * terms["gradient"])


def _check_information_fidelity_tracks_vif(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    from monai_lkcfusion.metrics import information_fidelity, visual_information_fidelity

    for mri, other in pairs:  # 8-bit gray (H, W)
        scores = {}
        for name, fused in _edge_candidates(mri, other).items():
            exact = visual_information_fidelity(*(torch.tensor(x, dtype=torch.float64) for x in (fused, mri, other)),
                                                reduction="mean")
            smooth = information_fidelity(torch.tensor(fused, dtype=torch.float32)[None, None],
                                          torch.tensor(np.stack([mri, other]), dtype=torch.float32)[None])
            assert smooth.shape == (1, 2)
            assert abs(float(smooth.mean()) - exact) < 0.01, (name, float(smooth.mean()), exact)
            scores[name] = float(smooth.mean())
        assert scores["max"] > scores["blurred"], scores  # blurring loses information


@pytest.mark.parametrize("check", [_check_edge_preservation_tracks_qabf, _check_information_fidelity_tracks_vif])
def test_differentiable_forms_track_the_evaluator(synthetic_pair: tuple[np.ndarray, np.ndarray], check) -> None:
    """The loss's differentiable Qabf (within 0.025) and VIF (within 0.01) follow the evaluator's on 8-bit fusions of
    a made pair."""
    check([tuple(np.round(x * 255.0).astype(np.float32) for x in synthetic_pair)])


@pytest.mark.shared
@pytest.mark.parametrize("check", [_check_edge_preservation_tracks_qabf, _check_information_fidelity_tracks_vif])
def test_differentiable_forms_track_the_evaluator_on_harvard(harvard_root: Path, check) -> None:
    pairs = []
    for task, other_dir in (("MRI-CT", "CT"), ("MRI-PET", "PET"), ("MRI-SPECT", "SPECT")):
        for path in sorted((harvard_root / "test" / task / "MRI").glob("*.png"))[:2]:
            other = path.parent.parent / other_dir / path.name
            pairs.append((np.round(_gray(path) * 255.0), np.round(_gray(other) * 255.0)))
    check(pairs)


def test_vif_term_is_weighted_on_the_8bit_scale_and_raises_vif(synthetic_pair: tuple[np.ndarray, ...]) -> None:
    """vif_weight adds 1 - mean VIF of the two sources, computed on [0, 255] also for value_range "symmetric"; its
    gradient is finite where F or a source is flat and a step along it raises the VIF of a blurred fusion; it is
    computed only when weighted; images under 41 pixels are refused with the reason."""
    from scipy.ndimage import gaussian_filter

    import monai_lkcfusion.losses.fusion_loss as module
    from monai_lkcfusion.errors import FusionInputError
    from monai_lkcfusion.metrics import information_fidelity

    mri, other = synthetic_pair
    sources = torch.from_numpy(np.stack([mri, other])).float()[None]  # (1, 2, H, W) on [0, 1]
    blurred = torch.from_numpy(gaussian_filter(np.maximum(mri, other), 1.5)).float()[None, None]
    blurred[..., :8, :] = 0.0  # a flat band in F
    expected = 1.0 - information_fidelity(255.0 * blurred, 255.0 * sources).mean()
    for value_range in ("unit", "symmetric"):
        terms = FusionLoss(value_range=value_range).components(blurred, sources)
        assert torch.allclose(terms["vif"], expected)
        weighted = FusionLoss(vif_weight=2.0, value_range=value_range)(blurred, sources)
        assert torch.allclose(weighted, FusionLoss(value_range=value_range)(blurred, sources) + 2.0 * expected)
    fused = blurred.clone().requires_grad_()
    FusionLoss(intensity_weight=0.0, ssim_weight=0.0, gradient_weight=0.0, vif_weight=1.0)(fused, sources).backward()
    assert torch.isfinite(fused.grad).all() and fused.grad.abs().sum() > 0
    stepped = blurred - 0.01 * fused.grad / fused.grad.abs().max()
    assert float(information_fidelity(255 * stepped, 255 * sources).mean()) > float(1.0 - expected)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "information_fidelity", lambda *a: pytest.fail("VIF term computed at weight 0"))
        FusionLoss(edge_weight=1.0)(blurred, sources)
    scaled = (255.0 * blurred, 255.0 * sources)
    half = information_fidelity(*(x.to(torch.bfloat16) for x in scaled))  # computed in float32 all the same
    assert half.dtype == torch.float32 and torch.allclose(half, information_fidelity(*scaled), atol=0.01)
    with pytest.raises(FusionInputError, match="flat must be positive"):
        information_fidelity(*scaled, flat=0.0)
    with pytest.raises(FusionInputError, match="^vif_weight: the VIF term needs images of at least 41x41 pixels .* got "
                       "\\(32, 40\\): train on larger crops \\(roi_size\\) or set vif_weight to 0$"):
        FusionLoss(vif_weight=1.0)(torch.rand(1, 1, 32, 40), torch.rand(1, 2, 32, 40))


@pytest.mark.parametrize("option", ["intensity_weight", "ssim_weight", "gradient_weight", "edge_weight",
                                    "vif_weight",
                                    "intensity_sigma"])
@pytest.mark.parametrize("value", [-1.0, "abc", float("nan"), True])
def test_numeric_options_that_are_not_numbers_of_0_or_more_are_refused(option, value) -> None:
    """A string from a config (`"loss#edge_weight": "abc"`) ended in a TypeError traceback; a negative or NaN
    weight was taken."""
    from monai_lkcfusion.errors import FusionInputError

    with pytest.raises(FusionInputError, match=f"^{option} must be 0 or positive, got "):
        FusionLoss(**{option: value})
