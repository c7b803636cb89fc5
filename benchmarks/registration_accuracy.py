"""Registration accuracy on real pairs: move the other image by a known rigid motion, register it back, fuse.

For each Harvard test pair (../shared/data/harvard_xg/test, ``--split train`` for the training pairs;
MRI-CT/PET/SPECT, 256 x 256) and the 3D demo pair, the other image is moved by a random rigid transform
(rotation up to 10 degrees, shift up to 10% of the field of view; volumes: up to 10 degrees about each axis and
10 mm), registered back to the MRI with
``monai_lkcfusion.registration.register(kind="rigid")``, and fused with ``fuse(..., register="rigid")``.
Reported per pair:

- ``err``: mean displacement (pixels/voxels over the MRI's foreground) between the found transform and the known
  one (which assumes the dataset's pair is exactly aligned);
- ``self``: how far registration moves the *unmoved* pair (the same measure against the identity): the
  disagreement between mutual information and the dataset's own alignment;
- ``recover``: the found transform against the known motion composed with the unmoved pair's registration (does
  registration come back to where it puts the aligned pair, whatever the start);
- ``corr``: Pearson correlation, over the MRI's foreground, of the fused luma with ``register="rigid"`` on the moved
  pair and the fused luma of the aligned pair (LKC-FUNet with the bundle's weights, else pixel max);
- ``cover``: fraction of the MRI's foreground where the other image is above 10% of its maximum (small for
  functional images that cover only a small region).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/registration_accuracy.py [--tasks MRI-PET ...] [--limit N]
[--split train]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from monai_lkcfusion.data import demo_files, harvard_datalist
from monai_lkcfusion.inference import fuse
from monai_lkcfusion.machine import machine_summary
from monai_lkcfusion.networks import default_weights_path
from monai_lkcfusion.registration import (
    foreground_mask,
    itk_image,
    mean_displacement,
    moved_affine,
    register,
    resample_image,
    transform_matrix,
)
from monai_lkcfusion.transforms import LoadFusionImage, ResampleToReference, ScaleModality

HARVARD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "harvard_xg"


def random_rigid(fixed: torch.Tensor, rng: np.random.Generator, max_angle: float, max_shift: float) -> np.ndarray:
    """A rigid ITK matrix about the centre of ``fixed``'s field of view: angles up to ``max_angle`` degrees."""
    image = itk_image(fixed)
    ndim = image.GetDimension()
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    if ndim == 2:
        motion = sitk.Euler2DTransform(centre, np.deg2rad(rng.uniform(-max_angle, max_angle)))
    else:
        motion = sitk.Euler3DTransform()
        motion.SetCenter(centre)
        motion.SetRotation(*np.deg2rad(rng.uniform(-max_angle, max_angle, 3)))
    motion.SetTranslation(rng.uniform(-max_shift, max_shift, ndim).tolist())
    return transform_matrix(motion, ndim)


def correlation(a: torch.Tensor, b: torch.Tensor, mri: torch.Tensor) -> float:
    """Pearson correlation of two images over the MRI's foreground."""
    mask = foreground_mask(itk_image(mri)).T  # back to the tensor's axis order
    x, y = np.asarray(a[0])[mask], np.asarray(b[0])[mask]
    return float(np.corrcoef(x, y)[0, 1])


def evaluate_pair(mri: torch.Tensor, other: torch.Tensor, motion: np.ndarray, volume: bool, method: str) -> dict:
    """Register and fuse one moved pair; the numbers described in the module docstring."""
    if volume:  # move the volume in the world (its affine), as a head that moved between scans
        moved = other.clone()
        moved.affine = torch.as_tensor(moved_affine(other.affine, np.linalg.inv(motion)))
        truth = motion
    else:  # move the picture's pixels: moved(p) = other(motion p), found back as motion^-1
        moved = resample_image(other, motion)
        truth = np.linalg.inv(motion)
    start = time.perf_counter()
    found = register(mri, moved, "rigid")
    seconds = time.perf_counter() - start
    aligned = register(mri, other, "rigid")
    recover_reference = truth @ aligned.matrix  # the motion after the correspondence found for the aligned pair
    kwargs = {"method": method, "color": False, "progress": False}
    fused_aligned = fuse(mri, other, **kwargs)
    fused_registered = fuse(mri, moved, register="rigid", **kwargs)
    array = np.asarray((ResampleToReference()(other, mri) if volume else other).max(0).values)
    cover_mask = foreground_mask(itk_image(mri)).T
    return {
        "err": mean_displacement(found.matrix, truth, mri),
        "self": mean_displacement(aligned.matrix, np.eye(len(truth)), mri),
        "recover": mean_displacement(found.matrix, recover_reference, mri),
        "corr": correlation(fused_registered, fused_aligned, mri),
        "cover": float((array[cover_mask] > 0.1 * array.max()).mean()),
        "seconds": seconds, "converged": found.converged, "warnings": found.warnings,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="*", default=["MRI-CT", "MRI-PET", "MRI-SPECT", "demo-3d"])
    parser.add_argument("--limit", type=int, default=None, help="pairs per task")
    parser.add_argument("--split", default="test", choices=("test", "train"), help="Harvard folder")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--json", help="write the per-pair results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {machine_summary()}")
    method = "lkcfunet" if default_weights_path().is_file() else "max"
    load, scale = LoadFusionImage(), ScaleModality()
    rng = np.random.default_rng(args.seed)
    rows = []
    for task in args.tasks:
        if task == "demo-3d":
            files = demo_files()
            pairs = [(files["mri_3d"], files["pet_3d"])] * (args.limit or 3)
        else:
            items = harvard_datalist(HARVARD, args.split, [task])[:args.limit]
            pairs = [(item["mri"], item["other"]) for item in items]
        for mri_path, other_path in pairs:
            mri, other = scale(load(str(mri_path))), scale(load(str(other_path)))
            volume = mri.ndim == 4
            motion = random_rigid(mri, rng, 10.0, 10.0 if volume else 0.1 * 256)
            row = {"task": task, "pair": Path(mri_path).name, **evaluate_pair(mri, other, motion, volume, method)}
            rows.append(row)
            print(f"{task:9s} {row['pair']:14s} err {row['err']:.2f} self {row['self']:.2f} recover "
                  f"{row['recover']:.2f} corr {row['corr']:.4f} cover {row['cover']:.2f} {row['seconds']:.1f} s"
                  f"{'' if row['converged'] else ' NOT converged'}", flush=True)
    print(f"fusion: {method}")
    for task in args.tasks:
        sub = [r for r in rows if r["task"] == task]
        if sub:
            print(f"{task:9s} n={len(sub)} " + " ".join(
                f"{k} mean {np.mean([r[k] for r in sub]):.3f} max {np.max([r[k] for r in sub]):.3f}"
                for k in ("err", "self", "recover")) + f" corr mean {np.mean([r['corr'] for r in sub]):.4f} "
                f"min {np.min([r['corr'] for r in sub]):.4f} pairs with corr >= 0.97: "
                f"{sum(r['corr'] >= 0.97 for r in sub)}/{len(sub)}")
    small = [r for r in rows if r["cover"] < 0.5]
    if small:
        print(f"small functional region (cover < 0.5): n={len(small)} corr min {min(r['corr'] for r in small):.4f} "
              f"recover max {max(r['recover'] for r in small):.3f}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
