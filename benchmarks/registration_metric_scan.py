"""Where do multi-modal similarity metrics peak on the *unmoved* Harvard atlas pairs?

For every second harvard_xg test pair of a task, the other image is shifted over a grid of translations
(+-``--radius`` px in ``--step`` px steps, linear interpolation, no rotation) and each metric is evaluated against the
MRI; the distance of each metric's maximum from the atlas alignment (0, 0) is printed per pair, then the mean and
maximum per metric. If the atlas alignment were what the image content says, every metric would peak near 0.

Metrics: mutual information (32 bins, the registration's own metric family), normalised mutual information
(Studholme), the correlation ratio (FSL FLIRT's default cost) in both directions, and MI / correlation ratio over the
MRI foreground only (MRI > 10, dilated by 3 px).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/registration_metric_scan.py MRI-PET [--data ../shared/data/harvard_xg]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage

from monai_lkcfusion.data import harvard_datalist
from monai_lkcfusion.metrics.folders import read_gray


def mutual_information(a: np.ndarray, b: np.ndarray, bins: int = 32, normalised: bool = False) -> float:
    """MI (or NMI = (H(a) + H(b)) / H(a, b)) of two 8-bit images from their joint histogram."""
    joint, _, _ = np.histogram2d(a, b, bins=bins, range=[[0, 256], [0, 256]])
    p = joint / joint.sum()

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-np.sum(q * np.log(q)))

    h_a, h_b, h_ab = entropy(p.sum(1)), entropy(p.sum(0)), entropy(p)
    return (h_a + h_b) / h_ab if normalised else h_a + h_b - h_ab


def correlation_ratio(x: np.ndarray, y: np.ndarray, bins: int = 64) -> float:
    """eta^2(y | x) = 1 - E[Var(y | x)] / Var(y), with x (8-bit) in ``bins`` intensity bins."""
    index = np.minimum((x / 256 * bins).astype(int), bins - 1)
    n = np.bincount(index, minlength=bins)
    s = np.bincount(index, y, bins)
    s2 = np.bincount(index, y * y, bins)
    within = float((s2 - np.where(n > 0, s * s / np.maximum(n, 1), 0)).sum())
    total = float((y * y).sum() - y.sum() ** 2 / len(y))
    return 1 - within / total


METRICS = {
    "MI": lambda a, b, m: mutual_information(a, b),
    "NMI": lambda a, b, m: mutual_information(a, b, normalised=True),
    "CR(other|MRI)": lambda a, b, m: correlation_ratio(a, b),
    "CR(MRI|other)": lambda a, b, m: correlation_ratio(b, a),
    "MI in mask": lambda a, b, m: mutual_information(a[m], b[m]),
    "CR in mask": lambda a, b, m: correlation_ratio(a[m], b[m]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=("MRI-CT", "MRI-PET", "MRI-SPECT"))
    parser.add_argument("--data", default="../shared/data/harvard_xg")
    parser.add_argument("--radius", type=float, default=4.0)
    parser.add_argument("--step", type=float, default=0.5)
    args = parser.parse_args()
    offsets = np.arange(-args.radius, args.radius + args.step / 2, args.step)
    shifts = [(dy, dx) for dy in offsets for dx in offsets]
    pairs = [item for item in harvard_datalist(args.data, "test") if item["task"] == args.task][::2]
    found: dict[str, list[float]] = {name: [] for name in METRICS}
    for item in pairs:
        mri = read_gray(item["mri"]).astype(np.float64)
        other = read_gray(item["other"]).astype(np.float64)
        mask = ndimage.binary_dilation(mri > 10, iterations=3).ravel()
        scores = {name: [] for name in METRICS}
        for shift in shifts:
            moved = ndimage.shift(other, shift, order=1).ravel()
            for name, metric in METRICS.items():
                scores[name].append(metric(mri.ravel(), moved, mask))
        for name, values in scores.items():
            found[name].append(float(np.hypot(*shifts[int(np.argmax(values))])))
        print(item["other"].split("/")[-1], "  ".join(f"{name} {d[-1]:.1f}" for name, d in found.items()), flush=True)
    print(f"{args.task} ({len(pairs)} pairs), px from the atlas alignment, mean / max:")
    for name, distances in found.items():
        print(f"  {name}: {np.mean(distances):.2f} / {np.max(distances):.2f}")


if __name__ == "__main__":
    main()
