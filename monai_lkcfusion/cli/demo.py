"""``lkcfusion demo``: fuse the shipped demo pairs (a 2D PET slice and a 3D MRI/PET volume pair)."""

from __future__ import annotations

import argparse
import sys

HELP = "fuse the shipped demo data (2D and 3D) with the default model"
DESCRIPTION = (
    "Fuse the demo data shipped with the package (derived from the MNI ICBM152 template: a 2D "
    "MRI/PET-colour slice pair and a 1 mm MRI with a simulated 2 mm PET on a shifted grid) with the default "
    "model; until the bundle's model exists it uses pixel-wise max and says so. Writes fused_2d.png and "
    "fused_3d.nii.gz into the output folder, replacing earlier demo outputs there."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lkcfusion demo``."""
    parser.add_argument("-o", "--output", default="outputs/demo", help="output folder (default outputs/demo)")
    parser.add_argument("--device", help="torch device (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    """Fuse the demo pairs with :func:`monai_lkcfusion.inference.fuse_files`."""
    from pathlib import Path

    from ..data import demo_files
    from ..inference import fuse_files
    from ..networks import default_weights_path

    files = demo_files()
    method = "lkcfunet" if default_weights_path().is_file() else "max"
    if method == "max":
        print(f"note: no trained model at {default_weights_path()} yet; the demo fuses with pixel-wise max")
    out = Path(args.output)
    jobs = [("mri_2d", "pet_2d", out / "fused_2d.png"), ("mri_3d", "pet_3d", out / "fused_3d.nii.gz")]
    for mri, other, target in jobs:
        fuse_files(files[mri], files[other], target, overwrite=True, method=method, device=args.device,
                   progress=sys.stderr.isatty())
        print(f"wrote {target} ({method}: {files[mri].name} + {files[other].name})")
    return 0
