"""Time rigid registration of a 256x256x100 MRI/PET volume pair on this machine's CPU.

The demo T1 volume (``monai_lkcfusion/data/demo``) is resampled onto a 256 x 256 x 100 grid over the same field of
view (0.57 x 0.71 x 0.72 mm voxels); the demo's simulated PET (its own 2 mm grid) is moved in the world by a
known rigid motion (rotations (6, -4, 8) degrees, shift (7, -5, 6) mm), as a head that moved between the scans.
``monai_lkcfusion.registration.register(mri, pet, "rigid")`` is timed (wall and process CPU time), and the found
transform is compared with the known one (mean displacement over the MRI's foreground, in MRI voxels).

    .venv/bin/python benchmarks/bench_registration.py [--threads N (0: all cores)] [--repeats 3] [--kind rigid|affine]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.transforms import ResampleToMatch

from monai_lkcfusion.data import demo_files
from monai_lkcfusion.machine import machine_summary
from monai_lkcfusion.registration import mean_displacement, moved_affine, register, transform_matrix
from monai_lkcfusion.transforms import LoadFusionImage, ScaleModality


def make_pair(shape: tuple[int, int, int]) -> tuple[MetaTensor, MetaTensor, np.ndarray]:
    """The demo MRI on a ``shape`` grid, the demo PET moved by a known rigid motion, and that motion (ITK)."""
    files = demo_files()
    load, scale = LoadFusionImage(), ScaleModality()
    mri, pet = scale(load(str(files["mri_3d"]))), scale(load(str(files["pet_3d"])))
    extent = np.array(mri.shape[1:]) * np.linalg.norm(np.asarray(mri.affine)[:3, :3], axis=0)
    affine = np.asarray(mri.affine, dtype=np.float64).copy()
    spacing = extent / np.array(shape)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] -= 0.5 * (np.linalg.norm(np.asarray(mri.affine)[:3, :3], axis=0) - spacing)  # same field of view
    grid = MetaTensor(torch.zeros((1, *shape)), affine=torch.as_tensor(affine))
    big = ResampleToMatch(mode="bilinear", padding_mode="border")(mri, grid)
    motion = sitk.Euler3DTransform()
    motion.SetCenter((0.0, -20.0, 20.0))
    motion.SetRotation(*np.deg2rad([6.0, -4.0, 8.0]))
    motion.SetTranslation((7.0, -5.0, 6.0))
    matrix = transform_matrix(motion, 3)
    moved = pet.clone()
    moved.affine = torch.as_tensor(moved_affine(pet.affine, np.linalg.inv(matrix)))
    return big, moved, matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 100))
    parser.add_argument("--threads", type=int, default=1,
                        help="SimpleITK threads (default 1, as register(): bit-for-bit repeatable; 0: all cores)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kind", default="rigid")
    args = parser.parse_args()
    mri, pet, truth = make_pair(tuple(args.shape))
    threads = args.threads or sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    print(f"machine: {machine_summary()}; SimpleITK {sitk.Version.VersionString()} with {threads} thread(s)")
    print(f"MRI {tuple(mri.shape[1:])}, PET {tuple(pet.shape[1:])} (2 mm), {args.kind}")
    for repeat in range(args.repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = register(mri, pet, args.kind, num_threads=args.threads or None)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        error = mean_displacement(result.matrix, truth, mri)
        print(f"repeat {repeat + 1}: {wall:.2f} s wall, {cpu:.2f} s CPU; error {error:.3f} voxels; "
              f"{result.iterations} iterations at full resolution, converged {result.converged}, "
              f"metric {result.initial_metric:.3f} -> {result.metric:.3f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
