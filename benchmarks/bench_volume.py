"""Fuse a 256x256x100 MRI/PET volume pair through ``lkcfusion fuse``: the fast path against the plain one, on a quiet
CPU and with other CPU-bound jobs competing for it.

Each run is a fresh ``lkcfusion fuse`` process (start-up, NIfTI reading, resampling onto the MRI grid, the network,
writing), with the shipped default model unless ``--weights`` says otherwise:

- ``plain``: ``--no-optimize``: the network as trained, one worker, PyTorch's default thread count;
- ``fast``: the default: ``optimize_for_inference`` (choices measured once per machine and cached; a first run fills
  the cache and is reported apart) and one single-thread worker per core.

With ``--load N`` (default 2) both are run again while N other processes, two PyTorch threads each, multiply
matrices in a loop. The fast outputs are compared with the plain ones (maximum difference over the output range).
The start-up both share (interpreter, ``import monai_lkcfusion.inference``, which imports MONAI) is timed apart.

    .venv/bin/python benchmarks/bench_volume.py [--shape 256 256 100] [--repeats 2] [--load 2] [--weights FILE]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_lkcfusion.machine import machine_summary

LOAD_JOB = (
    "import torch\ntorch.set_num_threads(2)\na = torch.randn(1024, 1024)\nwhile True:\n    b = a @ a\n"
)


def write_pair(folder: Path, shape: tuple[int, int, int]) -> tuple[Path, Path]:
    """A synthetic head-like MRI and a coarser, shifted PET volume (so that resampling is timed too)."""
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


def fuse_seconds(pair: tuple[Path, Path], out: Path, options: list[str], weights: str | None) -> float:
    """Wall seconds of one ``lkcfusion fuse`` process."""
    command = [sys.executable, "-m", "monai_lkcfusion", "fuse", str(pair[0]), str(pair[1]), "-o", str(out),
               "--overwrite", "--quiet", "--device", "cpu", *options, *(["--weights", weights] if weights else [])]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def startup_seconds() -> float:
    """Wall seconds of a process that only imports what ``lkcfusion fuse`` imports (both paths pay it)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import monai_lkcfusion.inference, monai_lkcfusion.cli.fuse"], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 100))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--load", type=int, default=2, help="competing processes (2 threads each); 0: none")
    parser.add_argument("--weights", help="weights file (default: the bundle's model)")
    args = parser.parse_args()

    print(f"before: {machine_summary()}")
    paths = {"plain": ["--no-optimize"], "fast": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pair = write_pair(folder, tuple(args.shape))
        first = fuse_seconds(pair, folder / "first.nii.gz", paths["fast"], args.weights)
        print(f"fast path, first run (fills the measured-choice cache if it was empty): {first:.1f} s")
        quiet: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.repeats):
            for name, options in paths.items():
                quiet[name].append(fuse_seconds(pair, folder / f"{name}.nii.gz", options, args.weights))
        plain = nib.load(str(folder / "plain.nii.gz")).get_fdata()
        fast = nib.load(str(folder / "fast.nii.gz")).get_fdata()
        diff = np.abs(fast - plain).max() / max(plain.max() - plain.min(), 1e-12)
        best = {name: min(times) for name, times in quiet.items()}
        start = min(startup_seconds() for _ in range(args.repeats))
        print(f"quiet, {args.shape[0]}x{args.shape[1]}x{args.shape[2]} volume, best of {args.repeats}: "
              f"plain {best['plain']:.1f} s, fast {best['fast']:.1f} s: {best['plain'] / best['fast']:.2f}x; "
              f"max difference {diff:.1e} of the range; of which start-up (imports) {start:.1f} s, so after it "
              f"{best['plain'] - start:.1f} s vs {best['fast'] - start:.1f} s: "
              f"{(best['plain'] - start) / (best['fast'] - start):.2f}x")
        if args.load:
            jobs = [subprocess.Popen([sys.executable, "-c", LOAD_JOB], env={**os.environ, "OMP_NUM_THREADS": "2"})
                    for _ in range(args.load)]
            try:
                time.sleep(3)
                loaded = {name: fuse_seconds(pair, folder / f"{name}_loaded.nii.gz", options, args.weights)
                          for name, options in paths.items()}
                print(f"during: {machine_summary()}")
            finally:
                for job in jobs:
                    job.kill()
            print(f"with {args.load} competing processes (2 threads each): "
                  + ", ".join(f"{name} {t:.1f} s ({t / best[name]:.1f}x its quiet time)" for name, t in loaded.items()))
    print(f"after: {machine_summary()}")


if __name__ == "__main__":
    main()
