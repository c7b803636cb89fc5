"""Time 3D fusion of a 256x256x100 MRI/PET volume pair on this machine's CPU.

Wall time depends on what else runs on the machine, so the process CPU time (all threads) is reported too;
on an idle machine the wall time is about ``cpu_seconds / torch_threads``. The "small" LKC-FUNet preset fuses the 100 axial slices through ``monai_lkcfusion.inference.fuse`` (NIfTI files
in, the PET on a coarser shifted grid so the resampling is timed too). Trained weights are used when
``--weights`` (or the bundle's model) exists, otherwise random weights (the speed is the same).

    .venv/bin/python benchmarks/bench_volume.py [--preset small] [--batch-size 8] [--repeats 2] [--no-optimize]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from monai_lkcfusion.inference import fuse_files
from monai_lkcfusion.networks import LKCFUNet, default_weights_path, load_network


def _write_pair(folder: Path, shape: tuple[int, int, int]) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    grid = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grid))
    mri = (radius < 0.8) * (600 + 200 * np.sin(8 * grid[0]) * np.cos(6 * grid[1])) + rng.normal(0, 20, shape)
    mri_affine = np.diag([1.0, 1.0, 1.5, 1.0])
    mri_affine[:3, 3] = [-128.0, -128.0, -75.0]
    pet_shape = tuple(s // 2 + 2 for s in shape)
    pet_grid = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in pet_shape], indexing="ij")
    pet = np.exp(-3 * sum(g**2 for g in pet_grid)) * 5000
    pet_affine = np.diag([2.0, 2.0, 3.0, 1.0])
    pet_affine[:3, 3] = [-130.3, -126.9, -77.1]
    paths = folder / "mri.nii.gz", folder / "pet.nii.gz"
    nib.save(nib.Nifti1Image(mri.astype(np.float32), mri_affine), str(paths[0]))
    nib.save(nib.Nifti1Image(pet.astype(np.float32), pet_affine), str(paths[1]))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--weights", help="weights file (default: the bundle's model if present, else random)")
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 100))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-optimize", action="store_true")
    args = parser.parse_args()

    weights = Path(args.weights) if args.weights else default_weights_path()
    if weights.is_file():
        net, source = load_network(weights), str(weights)
    else:
        torch.manual_seed(0)
        net, source = LKCFUNet.from_preset(args.preset).eval(), f"random weights, preset {args.preset!r}"
    times, cpu_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        mri, pet = _write_pair(Path(tmp), tuple(args.shape))
        for i in range(args.repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            fuse_files(mri, pet, Path(tmp) / f"fused{i}.nii.gz", model=net, optimize=not args.no_optimize,
                       device="cpu", batch_size=args.batch_size, progress=False)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        shape = nib.load(str(Path(tmp) / "fused0.nii.gz")).shape
    print(json.dumps({
        "volume": list(args.shape), "output_shape": list(shape), "model": source,
        "parameters": sum(p.numel() for p in net.parameters()), "optimize": not args.no_optimize,
        "batch_size": args.batch_size, "seconds": [round(t, 2) for t in times], "best_s": round(min(times), 2),
        "cpu_seconds": [round(t, 2) for t in cpu_times],
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
    }, indent=2))


if __name__ == "__main__":
    main()
