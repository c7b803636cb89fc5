"""Speed of the batched fusion metrics against a straightforward per-image NumPy/SciPy evaluator.

The per-image reference (``reference_evaluator.py`` beside this script) follows the literature's evaluator
(CDDFuse ``utils/Evaluator.py``): one image triple at a time, float32 images, ``scipy.signal.convolve2d`` with full
2D windows, ``sklearn`` MI, a ``scipy.ndimage.uniform_filter`` SSIM. It scores the 9 main metrics (EN, SD, SF, AG,
MI, SCD, VIF, Qabf, SSIM); the batched implementation scores the same 9 on the whole batch in one call. Both results
are compared.

Usage::

    python benchmarks/bench_metrics.py [--pairs 48] [--repeats 3] [--threads 1] [--chunk-size 1]
        [--data ../shared/data/harvard_xg]

The Harvard test pairs (pixel-max fusion) are used when the data folder exists, synthetic 256x256 images otherwise.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from reference_evaluator import reference_metrics

from monai_lkcfusion.data import harvard_datalist
from monai_lkcfusion.machine import machine_summary
from monai_lkcfusion.metrics import compute_fusion_metrics
from monai_lkcfusion.metrics.folders import read_gray

NAMES = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM")


def load_triples(data: Path, pairs: int) -> tuple[np.ndarray, str]:
    """(pairs, 3, 256, 256) float32 gray triples (fused = pixel max, MRI, other) and where they came from."""
    items = harvard_datalist(data, "test") if (data / "test").is_dir() else []
    if not items:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:256, 0:256]
        blobs = [np.round(127 + 120 * np.sin(xx / (5 + i % 7)) * np.cos(yy / (3 + i % 5))) for i in range(pairs)]
        a = np.stack(blobs).astype(np.float32)
        b = np.clip(np.round(a[::-1] * 0.5 + rng.normal(0, 20, a.shape)), 0, 255).astype(np.float32)
        return np.stack([np.maximum(a, b), a, b], axis=1), "synthetic"
    triples = []
    for i in range(pairs):
        item = items[i % len(items)]
        a, b = read_gray(item["mri"]), read_gray(item["other"])
        triples.append(np.stack([np.maximum(a, b), a, b]))
    return np.stack(triples), f"Harvard test ({len(items)} pairs, cycled)"


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
