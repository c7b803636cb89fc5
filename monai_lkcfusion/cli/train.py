"""``lkcfusion train``: the bundle's train.json with presets and overrides (a front over the same config)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import FusionInputError, as_count

HELP = "train LKC-FUNet on Harvard-layout pairs (the bundle's train.json)"
DESCRIPTION = (
    "Train with bundle/configs/train.json on MONAI engines: FusionLoss, random crops + flips, "
    "Adam with a cosine LR schedule, validation on a held-out 10% of the pairs, best + last checkpoints and "
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
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="train in N processes on this machine with torchrun and DDP (one per GPU with CUDA, "
                        "else CPU processes); batch size is per process")


def _command_argv(args: argparse.Namespace) -> list[str]:
    """``train`` and the options of ``args`` as command-line arguments, without ``--nproc``."""
    argv = ["train"]
    for config in args.config:
        argv += ["--config", config]
    for option, value in (("--preset", args.preset), ("--epochs", args.epochs), ("--dataset-dir", args.dataset_dir),
                          ("--output", args.output), ("--device", args.device)):
        if value is not None:
            argv += [option, str(value)]
    if args.tasks:
        argv += ["--tasks", *args.tasks]
    return argv + (["--resume"] if args.resume else [])


def run(args: argparse.Namespace) -> int:
    """Run the bundle's training workflow (see :func:`monai_lkcfusion.engines.run_bundle_workflow`).

    With ``--nproc N`` (N > 1) the command starts itself in N processes with ``torchrun``; a process started by
    ``torchrun`` (this way, or ``torchrun ... -m monai_lkcfusion train`` on several nodes) merges the bundle's
    ``multi_gpu_train.json`` last and runs on ``cuda:<LOCAL_RANK>`` or the CPU.
    """
    from ..engines import (
        bundle_config,
        check_bundle_workflow,
        check_run_record,
        distributed_device,
        is_distributed_launch,
        is_main_process,
        run_bundle_workflow,
    )
    from ..engines.workflow import check_literal_overrides
    from ..inferers import resolve_device

    if args.epochs is not None:
        as_count(args.epochs, "--epochs", unit="epochs")
    as_count(args.nproc, "--nproc", unit="processes")  # before the config is read: nothing to read for a bad count
    # paths and names are data: a leading '$', '@' or '%' would make the bundle config run or resolve them
    check_literal_overrides({"preset": args.preset, "dataset_dir": args.dataset_dir, "output_dir": args.output})
    configs = list(args.config)
    device = resolve_device(args.device) if args.device else None  # an unusable device: one line, before anything
    if is_distributed_launch():
        configs.append(str(bundle_config("multi_gpu_train.json")))
        device = distributed_device(args.device) if args.device else None
    overrides = {
        "preset": args.preset,
        "tasks": args.tasks,
        "max_epochs": args.epochs,
        "dataset_dir": args.dataset_dir,
        "output_dir": args.output,
        "resume": True if args.resume else None,
        "device": device,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.nproc != 1 and not is_distributed_launch():
        from ..data import check_split
        from .launch import run_processes

        # every process would refuse the same settings, data or resume: one line here instead of N and torchrun's
        checked = check_bundle_workflow("train.json", configs, allow_expressions=False, **overrides,
                                        ids=("initialize#0", "split", "network_def", "output_dir", "resume",
                                             "key_metric", "early_stop_patience", "max_epochs", "loss"))
        check_split(checked["split"])
        check_run_record(*(checked[key] for key in ("output_dir", "resume", "network_def", "split", "key_metric")),
                         write=False, loss=checked["loss"], early_stop_patience=checked["early_stop_patience"],
                         max_epochs=checked["max_epochs"])
        validation = checked["split"][1]
        if len(validation) < args.nproc:  # each process validates its own share (multi_gpu_train.json)
            raise FusionInputError(f"{len(validation)} validation pair(s) for {args.nproc} processes: each process "
                                   "validates its share; use fewer processes or a larger val_fraction")
        return run_processes(_command_argv(args), args.nproc)
    workflow = run_bundle_workflow("train.json", configs, "train", allow_expressions=False, **overrides)
    if is_main_process():  # the log names neither the folder (default runs/train) nor what is in it
        output_dir, key_metric = (workflow.parser.get_parsed_content(key) for key in ("output_dir", "key_metric"))
        print(f"wrote {Path(output_dir) / 'model.pt'} (the best epoch by {key_metric}; checkpoints, run.json and "
              f"TensorBoard logs in {output_dir})")
    return 0
