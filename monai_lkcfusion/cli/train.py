"""``lkcfusion train``: the bundle's train.json with presets and overrides (a front over the same config)."""

from __future__ import annotations

import argparse

HELP = "train LKC-FUNet on Harvard-layout pairs (the bundle's train.json)"
DESCRIPTION = (
    "Train with bundle/configs/train.json on MONAI engines: FusionLoss, random crops + flips, "
    "Adam with a cosine LR schedule, validation on a held-out 10%% of the pairs, best + last checkpoints and "
    "TensorBoard logs in the output folder, the best weights exported as OUTPUT/model.pt."
)
EPILOG = "example: lkcfusion train --config configs/mri_pet.json --epochs 50 --output runs/mri_pet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lkcfusion train``."""
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="override file(s) merged over train.json in order, e.g. configs/small.json")
    parser.add_argument("--preset", help="network preset (small, official, tiny, ...)")
    parser.add_argument("--tasks", nargs="+", choices=["MRI-CT", "MRI-PET", "MRI-SPECT"], help="tasks to train on")
    parser.add_argument("--epochs", type=int, help="final epoch count (a resumed run continues up to it)")
    parser.add_argument("--dataset-dir", help="folder with train/<task>/{MRI,CT|PET|SPECT}/*.png")
    parser.add_argument("-o", "--output", help="checkpoints, logs and model.pt (default runs/train)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output folder")
    parser.add_argument("--device", help="torch device (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    """Run the bundle's training workflow (see :func:`monai_lkcfusion.engines.run_bundle_workflow`)."""
    import torch

    from ..engines import run_bundle_workflow

    overrides = {
        "preset": args.preset,
        "tasks": args.tasks,
        "max_epochs": args.epochs,
        "dataset_dir": args.dataset_dir,
        "output_dir": args.output,
        "resume": True if args.resume else None,
        "device": torch.device(args.device) if args.device else None,
    }
    run_bundle_workflow("train.json", args.config, "train", **{k: v for k, v in overrides.items() if v is not None})
    return 0
