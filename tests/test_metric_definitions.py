"""Metrics against their published definitions, written out here the straightforward way on made-up images.

Each reference below is an independent NumPy/SciPy implementation of the definition in docs/metrics.md (one window
or one pixel at a time where that is the plain reading), so the vectorised package code is checked against what the
docs promise, not against itself. No shared data is needed.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.signal import convolve2d, correlate2d

from monai_lkcfusion.metrics import compute_fusion_metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from reference_evaluator import reference_metrics  # noqa: E402


def _textured(seed: int, shape=(64, 64)) -> np.ndarray:
    """An 8-bit made-up scan: smooth blobs, a few sharp blocks and pixel noise, integer values in [0, 255]."""
    rng = np.random.default_rng(seed)
    smooth = gaussian_filter(rng.normal(0.0, 1.0, shape), 3.0)
    smooth = 128 + 100 * smooth / np.abs(smooth).max()
    coarse = rng.integers(0, 3, (shape[0] // 8 + 1, shape[1] // 8 + 1))
    blocks = np.kron(coarse, np.ones((8, 8)))[: shape[0], : shape[1]]
    return np.clip(np.round(smooth + 30 * blocks + rng.normal(0.0, 6.0, shape)), 0, 255)


def _triple(seed: int = 0, shape=(64, 64)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b = _textured(seed, shape), _textured(seed + 100, shape)
    f = np.clip(np.round(0.6 * np.maximum(a, b) + 0.4 * gaussian_filter(a, 1.0) + np.random.default_rng(seed + 7)
                         .normal(0, 4.0, shape)), 0, 255)
    return f, a, b


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x.ravel(), y.ravel())[0, 1])


# -- input_scale -----------------------------------------------------------------------------------------------------
def test_input_scale_scores_unit_images_as_their_8bit_pictures():
    """docs: input_scale multiplies all three inputs, clips to [0, 255] and rounds to 8 bits, so images in [0, 1]
    score exactly as the 8-bit pictures np.round(u * 255) they would be saved as."""
    rng = np.random.default_rng(5)
    units = [gaussian_filter(rng.random((48, 48)), 1.0) for _ in range(3)]
    units = [(u - u.min()) / (u.max() - u.min()) for u in units]  # floats in [0, 1], not on the 8-bit grid
    assert not any(np.array_equal(u * 255, np.round(u * 255)) for u in units)
    names = ["EN", "SD", "SF", "AG", "MI", "SCD", "CC", "MSE", "SSIM"]
    scaled = compute_fusion_metrics(*units, names=names, input_scale=255)
    pictures = compute_fusion_metrics(*(np.round(u * 255) for u in units), names=names)
    assert scaled == pytest.approx(pictures, rel=1e-12, abs=1e-12)


# -- SCD, Qabf -------------------------------------------------------------------------------------------------------
def test_scd_is_the_sum_of_correlations_of_differences():
    """SCD = corr(F - B, A) + corr(F - A, B) (Aslantas & Bendes 2015), Pearson correlations over the image."""
    f, a, b = _triple(1)
    expected = _corr(f - b, a) + _corr(f - a, b)
    assert compute_fusion_metrics(f, a, b, names=["SCD"])["SCD"] == pytest.approx(expected, rel=1e-9)
    # the two terms are not symmetric in A and B for a fused image that favours one source
    lopsided = np.clip(np.round(0.8 * a + 0.2 * b), 0, 255)
    expected = _corr(lopsided - b, a) + _corr(lopsided - a, b)
    assert compute_fusion_metrics(lopsided, a, b, names=["SCD"])["SCD"] == pytest.approx(expected, rel=1e-9)


def test_qabf_matches_the_reference_evaluator():
    """Qabf (Xydeas & Petrovic, the CDDFuse evaluator's constants) against benchmarks/reference_evaluator.py."""
    for seed in (2, 3):
        f, a, b = _triple(seed, (48, 56))
        expected = reference_metrics(*(x.astype(np.float32) for x in (f, a, b)))["Qabf"]
        assert compute_fusion_metrics(f, a, b, names=["Qabf"])["Qabf"] == pytest.approx(expected, rel=1e-5)


# -- Nabf ------------------------------------------------------------------------------------------------------------
def _nabf_reference(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Nabf after B. K. Shreyamsha Kumar's objective_fusion_perform_fn.m, pixel by pixel.

    Sobel / 8 (MATLAB imfilter correlation), g = sqrt(gh^2 + gv^2), orientation atan(gv / gh) (0 where both are 0),
    relative strength min/max (0 where either is 0), alignment | |a_S - a_F| - pi/2 | * 2 / pi,
    Q = sqrt(Qg * Qa) with (0.9999, 19, 0.5, 0.9995, 22, 0.5), weights g^1.5 where g >= 2 else 0.001, and
    Nabf = sum over g_F > max(g_A, g_B) of ((1 - Q_AF) w_A + (1 - Q_BF) w_B) / sum(w_A + w_B).
    The images given here have a black frame 2 pixels wide, so the border rule (mirrored) does not matter.
    """
    sobel = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], np.float64) / 8

    def edges(x):
        padded = np.pad(x.astype(np.float64), 1, mode="symmetric")
        gv, gh = correlate2d(padded, sobel, mode="valid"), correlate2d(padded, sobel.T, mode="valid")
        with np.errstate(divide="ignore", invalid="ignore"):
            angle = np.where((gv == 0) & (gh == 0), 0.0, np.arctan(gv / gh))
        return np.sqrt(gh**2 + gv**2), angle

    g_f, a_f = edges(f)
    total = weights = 0.0
    strengths = []
    for s in (a, b):
        g_s, a_s = edges(s)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(g_s > g_f, g_f / g_s, g_s / g_f)
        ratio = np.where((g_s == 0) | (g_f == 0), 0.0, ratio)
        alignment = np.abs(np.abs(a_s - a_f) - math.pi / 2) * 2 / math.pi
        q_g = 0.9999 / (1 + np.exp(-19 * (ratio - 0.5)))
        q_a = 0.9995 / (1 + np.exp(-22 * (alignment - 0.5)))
        q = np.sqrt(q_g * q_a)
        w = np.where(g_s >= 2, g_s**1.5, 0.001)
        strengths.append(g_s)
        total = total + (1 - q) * w
        weights += w.sum()
    artifact = (g_f > strengths[0]) & (g_f > strengths[1])
    return float((total * artifact).sum() / weights)


def _framed(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    out[2:-2, 2:-2] = x[2:-2, 2:-2]
    return out


def test_nabf_matches_its_published_definition():
    """Sources with steps of 4 gray levels (Sobel/8 strength exactly 2, the weight threshold) and noisy texture."""
    yy, xx = np.mgrid[0:40, 0:44]
    rng = np.random.default_rng(11)
    stairs = 4.0 * (xx // 3) + 4.0 * (yy // 5)  # every step is 4: g = 2 on the step edges
    a = _framed(stairs + 60)
    b = _framed(np.clip(np.round(_textured(12, (40, 44)) * 0.5), 0, 255))
    f = _framed(np.clip(np.round(0.5 * a + 0.5 * b + rng.normal(0, 3, a.shape) + 8 * (xx % 7 == 0)), 0, 255))
    for fused in (f, np.maximum(a, b), np.clip(2 * f - 80, 0, 255)):
        expected = _nabf_reference(fused, a, b)
        assert expected > 0
        assert compute_fusion_metrics(fused, a, b, names=["Nabf"])["Nabf"] == pytest.approx(expected, rel=1e-6)


# -- FMI_pixel -------------------------------------------------------------------------------------------------------
def _fmi_pair(src: np.ndarray, fus: np.ndarray) -> float:
    """Fast-FMI (Haghighat & Razian 2014) of two window PDFs, as written in fmi.m."""
    n = src.size
    cdf_s, cdf_f = np.cumsum(src), np.cumsum(fus)
    c = np.corrcoef(fus, src)[0, 1] if np.std(fus) > 0 and np.std(src) > 0 else 0.0
    idx = np.arange(1, n + 1)
    sd_s = math.sqrt(max(np.sum(idx**2 * src) - np.sum(idx * src) ** 2, 0.0))
    sd_f = math.sqrt(max(np.sum(idx**2 * fus) - np.sum(idx * fus) ** 2, 0.0))
    bound = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            bound[i, j] = min(cdf_f[i], cdf_s[j]) if c >= 0 else max(cdf_f[i] + cdf_s[j] - 1, 0.0)
    cov_bound = np.sum(bound - np.outer(cdf_f, cdf_s))
    theta = 0.0 if c == 0 or sd_s == 0 or sd_f == 0 else c / (cov_bound / (sd_f * sd_s))
    bound_pdf = np.diff(np.diff(np.pad(bound, ((1, 0), (1, 0))), axis=0), axis=1)
    joint = theta * bound_pdf + (1 - theta) * np.outer(fus, src)
    nz = joint != 0
    h_joint = -np.sum(joint[nz] * np.log2(np.abs(joint[nz])))
    h_s = -np.sum(src[src > 0] * np.log2(src[src > 0]))
    h_f = -np.sum(fus[fus > 0] * np.log2(fus[fus > 0]))
    mi = h_s + h_f - h_joint
    return 0.0 if mi == 0 or h_s + h_f == 0 else 2 * mi / (h_s + h_f)


def _fmi_reference(f: np.ndarray, a: np.ndarray, b: np.ndarray, w: int = 3) -> float:
    """FMI_pixel: 3x3 'valid' windows, each rescaled by its min and max and read in MATLAB's column-major order as
    a PDF; 1 where a source's window equals F's; the mean over windows of (FMI_AF + FMI_BF) / 2."""

    def pdf(window):
        v = window.flatten(order="F").astype(np.float64)  # MATLAB's x(:)
        lo, hi = v.min(), v.max()
        v = (v - lo) / (hi - lo) if hi > lo else np.ones_like(v)
        return v / v.sum()

    values = []
    for r in range(f.shape[0] - w + 1):
        for c in range(f.shape[1] - w + 1):
            fw = f[r:r + w, c:c + w]
            terms = []
            for s in (a, b):
                sw = s[r:r + w, c:c + w]
                terms.append(1.0 if np.array_equal(sw, fw) else _fmi_pair(pdf(sw), pdf(fw)))
            values.append(sum(terms) / 2)
    return float(np.mean(values))


def test_fmi_pixel_matches_its_published_definition():
    """Sources with structure along rows and along columns: the column-major order of a window matters."""
    rng = np.random.default_rng(21)
    yy, xx = np.mgrid[0:13, 0:15]
    a = np.round(100 + 60 * np.sin(xx / 1.7) + 10 * yy + rng.normal(0, 5, xx.shape))
    b = np.round(90 + 50 * np.cos(yy / 1.3) + 3 * xx + rng.normal(0, 5, xx.shape))
    f = np.round(np.clip(0.5 * a + 0.5 * b + 20 * np.sin((xx + 2 * yy) / 2.0) + rng.normal(0, 5, xx.shape), 0, 255))
    a, b = np.clip(a, 0, 255), np.clip(b, 0, 255)
    expected = _fmi_reference(f, a, b)
    assert compute_fusion_metrics(f, a, b, names=["FMI_pixel"])["FMI_pixel"] == pytest.approx(expected, rel=1e-9)


# -- MS-SSIM ---------------------------------------------------------------------------------------------------------
def _ms_ssim_reference(x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> float:
    """Wang et al. 2003 with the docs' conventions: 5 scales, an 11x11 Gaussian window (sigma 1.5, 'valid'),
    weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), 2x2 average pooling, negative scale terms clipped to 0."""
    taps = np.arange(11) - 5.0
    g = np.exp(-taps**2 / (2 * 1.5**2))
    window = np.outer(g / g.sum(), g / g.sum())
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    weights = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    x, y = x.astype(np.float64), y.astype(np.float64)
    value = 1.0
    for scale, weight in enumerate(weights):
        mx, my = convolve2d(x, window, mode="valid"), convolve2d(y, window, mode="valid")
        vx = convolve2d(x * x, window, mode="valid") - mx * mx
        vy = convolve2d(y * y, window, mode="valid") - my * my
        vxy = convolve2d(x * y, window, mode="valid") - mx * my
        cs = (2 * vxy + c2) / (vx + vy + c2)
        term = ((2 * mx * my + c1) / (mx * mx + my * my + c1) * cs).mean() if scale == 4 else cs.mean()
        value *= max(term, 0.0) ** weight
        h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
        x = x[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        y = y[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    return value


def test_ms_ssim_matches_its_published_definition():
    f, a, b = _triple(31, (180, 184))
    expected = _ms_ssim_reference(f, a) + _ms_ssim_reference(f, b)
    values = compute_fusion_metrics(torch.from_numpy(f), a, b, names=["MS_SSIM"])
    assert values["MS_SSIM"] == pytest.approx(expected, rel=1e-4)
    mean = compute_fusion_metrics(f, a, b, names=["MS_SSIM"], reduction="mean")["MS_SSIM"]
    assert mean == pytest.approx(expected / 2, rel=1e-4)
