"""A straightforward per-image NumPy/SciPy fusion evaluator, after the literature's (CDDFuse ``utils/Evaluator.py``).

One image triple at a time, float32 images, ``scipy.signal.convolve2d`` with full 2D windows, scikit-learn's mutual
information, a ``scipy.ndimage.uniform_filter`` SSIM (scikit-image's defaults). It is slow on purpose: the batched
metrics of ``monai_lkcfusion.metrics`` are checked against it (tests/test_metrics_reference.py) and timed against
it (benchmarks/bench_metrics.py).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import uniform_filter
from scipy.signal import convolve2d
from sklearn.metrics import mutual_info_score

__all__ = ["reference_metrics", "ssim", "vif"]


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(), y - y.mean()
    return float(np.sum(xc * yc) / np.sqrt(np.sum(xc * xc) * np.sum(yc * yc)))


def vif(ref: np.ndarray, dist: np.ndarray) -> float:
    """``vifp_mscale``: four scales, Gaussian windows, ``convolve2d`` in "valid" mode."""
    num = den = 0.0
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        half = (n - 1) / 2
        yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
        win = np.exp(-(xx * xx + yy * yy) / (2 * (n / 5.0) ** 2))
        win /= win.sum()
        if scale > 1:
            ref = convolve2d(ref, win, mode="valid")[::2, ::2]
            dist = convolve2d(dist, win, mode="valid")[::2, ::2]
        mu1, mu2 = convolve2d(ref, win, mode="valid"), convolve2d(dist, win, mode="valid")
        s1 = np.maximum(convolve2d(ref * ref, win, mode="valid") - mu1 * mu1, 0)
        s2 = np.maximum(convolve2d(dist * dist, win, mode="valid") - mu2 * mu2, 0)
        s12 = convolve2d(ref * dist, win, mode="valid") - mu1 * mu2
        g = s12 / (s1 + 1e-10)
        sv = s2 - g * s12
        flat = s1 < 1e-10
        g[flat], sv[flat], s1[flat] = 0, s2[flat], 0
        g[s2 < 1e-10], sv[s2 < 1e-10] = 0, 0
        sv[g < 0] = s2[g < 0]
        g[g < 0] = 0
        sv[sv <= 1e-10] = 1e-10
        num += np.sum(np.log10(1 + g * g * s1 / (sv + 2)))
        den += np.sum(np.log10(1 + s1 / 2))
    return 1.0 if den == 0 else num / den


def _sobel(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
    ky = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], np.float32)
    gx, gy = convolve2d(img, kx, mode="same"), convolve2d(img, ky, mode="same")
    g = np.sqrt(gx * gx + gy * gy)
    a = np.full_like(img, math.pi / 2)
    a[gx != 0] = np.arctan(gy[gx != 0] / gx[gx != 0])
    return g, a


def _qabf(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    gf, af = _sobel(f)
    num = den = 0.0
    for s in (a, b):
        gs, as_ = _sobel(s)
        ratio = np.where(gs > gf, gf / np.where(gs > 0, gs, 1), gs / np.where(gf > 0, gf, 1))
        ratio = np.where(gs == gf, gf, ratio)
        alignment = 1 - np.abs(as_ - af) / (math.pi / 2)
        q = 0.9994 / (1 + np.exp(-15 * (ratio - 0.5))) * 0.9879 / (1 + np.exp(-22 * (alignment - 0.8)))
        num += np.sum(q * gs)
        den += np.sum(gs)
    return num / den


def ssim(x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> float:
    """scikit-image's SSIM defaults (7x7 ``uniform_filter``, sample covariance) in float32, the mean over the inner
    pixels."""
    x, y = x.astype(np.float32), y.astype(np.float32)
    ux, uy = uniform_filter(x, 7), uniform_filter(y, 7)
    uxx, uyy, uxy = uniform_filter(x * x, 7), uniform_filter(y * y, 7), uniform_filter(x * y, 7)
    c = 49 / 48
    vx, vy, vxy = c * (uxx - ux * ux), c * (uyy - uy * uy), c * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s[3:-3, 3:-3].mean(dtype=np.float64))


def reference_metrics(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """The 9 main metrics of one float32 (H, W) triple, computed the straightforward way."""
    h = np.bincount(np.uint8(np.round(f)).ravel(), minlength=256) / f.size
    gx, gy = np.gradient(f, axis=1), np.gradient(f, axis=0)
    return {
        "EN": float(-np.sum(h * np.log2(h + (h == 0)))),
        "SD": float(np.std(f)),
        "SF": float(np.sqrt(np.mean(np.diff(f, axis=1) ** 2) + np.mean(np.diff(f, axis=0) ** 2))),
        "AG": float(np.mean(np.sqrt((gx**2 + gy**2) / 2))),
        "MI": mutual_info_score(f.ravel(), a.ravel()) + mutual_info_score(f.ravel(), b.ravel()),
        "SCD": _corr(a, f - b) + _corr(b, f - a),
        "VIF": vif(a, f) + vif(b, f),
        "Qabf": float(_qabf(f, a, b)),
        "SSIM": ssim(f, a) + ssim(f, b),
    }
