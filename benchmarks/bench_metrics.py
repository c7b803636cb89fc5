"""Speed of the batched fusion metrics against a straightforward per-image NumPy/SciPy evaluator.

The per-image reference below follows the literature's evaluator (CDDFuse ``utils/Evaluator.py``): one image
triple at a time, float32 images, ``scipy.signal.convolve2d`` with full 2D windows, ``sklearn`` MI, a
``scipy.ndimage.uniform_filter`` SSIM. It scores the 9 main metrics (EN, SD, SF, AG, MI, SCD, VIF, Qabf, SSIM);
the batched implementation scores the same 9 on the whole batch in one call. Both results are compared.

Usage::

    python benchmarks/bench_metrics.py [--pairs 48] [--repeats 3] [--threads 1] [--chunk-size 1]
        [--data ../shared/data/harvard_xg]

The Harvard test pairs (pixel-max fusion) are used when the data folder exists, synthetic 256x256 images otherwise.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import uniform_filter
from scipy.signal import convolve2d
from sklearn.metrics import mutual_info_score

from monai_lkcfusion.machine import machine_summary
from monai_lkcfusion.metrics import compute_fusion_metrics
from monai_lkcfusion.metrics.folders import read_gray

NAMES = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM")


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(), y - y.mean()
    return float(np.sum(xc * yc) / np.sqrt(np.sum(xc * xc) * np.sum(yc * yc)))


def _vif_one(ref: np.ndarray, dist: np.ndarray) -> float:
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


def _ssim(x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> float:
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
        "VIF": _vif_one(a, f) + _vif_one(b, f),
        "Qabf": float(_qabf(f, a, b)),
        "SSIM": _ssim(f, a) + _ssim(f, b),
    }


def load_triples(data: Path, pairs: int) -> tuple[np.ndarray, str]:
    """(pairs, 3, 256, 256) float32 gray triples (fused = pixel max, MRI, other) and where they came from."""
    files = sorted((data / "test").glob("*/MRI/*.png"))
    if not files:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:256, 0:256]
        blobs = [np.round(127 + 120 * np.sin(xx / (5 + i % 7)) * np.cos(yy / (3 + i % 5))) for i in range(pairs)]
        a = np.stack(blobs).astype(np.float32)
        b = np.clip(np.round(a[::-1] * 0.5 + rng.normal(0, 20, a.shape)), 0, 255).astype(np.float32)
        return np.stack([np.maximum(a, b), a, b], axis=1), "synthetic"
    triples = []
    for i in range(pairs):
        mri = files[i % len(files)]
        other = next(p for p in mri.parent.parent.iterdir() if p.name != "MRI") / mri.name
        a, b = read_gray(mri), read_gray(other)
        triples.append(np.stack([np.maximum(a, b), a, b]))
    return np.stack(triples), f"Harvard test ({len(files)} pairs, cycled)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads while scoring (default 1: one core, like the NumPy/SciPy reference)")
    parser.add_argument("--chunk-size", type=int, default=1, help="images per vectorised step")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/harvard_xg")
    args = parser.parse_args()
    print(f"machine: {machine_summary()}")
    triples, source = load_triples(args.data, args.pairs)
    batch = torch.from_numpy(triples.astype(np.float64))
    f, a, b = batch[:, :1], batch[:, 1:2], batch[:, 2:3]
    compute_fusion_metrics(f[:2], a[:2], b[:2], names=NAMES)  # warm-up

    ref_times, ours_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ref = [reference_metrics(*t) for t in triples]
        ref_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        ours = compute_fusion_metrics(f, a, b, names=NAMES, chunk_size=args.chunk_size, cpu_threads=args.threads)
        ours_times.append(time.perf_counter() - start)
    worst = max(
        abs(float(ours[n][i]) - r[n]) / max(abs(r[n]), 1e-12) for i, r in enumerate(ref) for n in NAMES
    )
    t_ref, t_ours = min(ref_times), min(ours_times)
    size = f"{triples.shape[-2]}x{triples.shape[-1]}"
    print(f"data: {source}; {args.pairs} triples of {size}; torch threads {args.threads}, "
          f"chunk size {args.chunk_size}")
    print(f"reference (per image, NumPy/SciPy): {t_ref:.2f} s ({t_ref / args.pairs * 1000:.0f} ms/pair)")
    print(f"batched (monai_lkcfusion.metrics):  {t_ours:.2f} s ({t_ours / args.pairs * 1000:.1f} ms/pair)")
    print(f"speed-up: {t_ref / t_ours:.1f}x (best of {args.repeats}); max relative difference {worst:.1e}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min)")


if __name__ == "__main__":
    main()
