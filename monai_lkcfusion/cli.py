"""The ``lkcfusion`` command line.

Each subcommand is a pair of functions in this module: ``_add_<name>(subparsers)``, decorated with
``@_subcommand``, declares its arguments and sets ``func=_run_<name>``; ``_run_<name>(args) -> int`` runs it.
Errors a user can cause (:class:`~monai_lkcfusion.errors.FusionInputError`, missing files) are printed as one line on stderr with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .errors import FusionInputError

__all__ = ["build_parser", "main"]

_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []

_HELP_ORDER = ("fuse", "demo", "evaluate", "metrics", "train", "export", "label_app")
"""Order of the subcommands in ``lkcfusion --help`` (by the name after ``_add_``): the everyday ones first."""


def _subcommand(add: Callable[[argparse._SubParsersAction], None]) -> Callable[[argparse._SubParsersAction], None]:
    """Register ``add`` (which declares one subcommand and sets its ``func``) with the parser."""
    _SUBCOMMANDS.append(add)
    return add

_DESCRIPTION = """\
LKC-FUNet multimodal medical image fusion: one fused image from an anatomical MRI and a second modality
(CT, PET or SPECT), 2D slices or 3D volumes, on the MRI's grid.
"""

_EPILOG = """\
examples:
  lkcfusion demo -o outputs/demo                     fuse the shipped demo data
  lkcfusion fuse mri.nii.gz pet.nii.gz -o fused.nii.gz
  lkcfusion fuse --mri-dir MRI/ --other-dir PET/ -o fused/
  lkcfusion evaluate --mri-dir MRI/ --other-dir PET/ -o eval/
  lkcfusion <command> --help                         options of one command
"""


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every registered subcommand.

    Returns:
        The top-level parser; each subparser carries its runner as the ``func`` default.
    """
    parser = argparse.ArgumentParser(
        prog="lkcfusion",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="<command>")
    for add in sorted(_SUBCOMMANDS, key=lambda add: _HELP_ORDER.index(add.__name__.removeprefix("_add_"))):
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lkcfusion`` command line.

    Args:
        argv: arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The exit code: 0 on success, 2 for a problem with the user's input, 1 for a failed batch.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (FusionInputError, OSError) as err:  # OSError: missing, unwritable or full paths, as one line too
        print(f"lkcfusion: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lkcfusion: interrupted", file=sys.stderr)
        return 130


@_subcommand
def _add_export(subparsers: argparse._SubParsersAction) -> None:
    """``lkcfusion export``: the network as TorchScript or ONNX."""
    p = subparsers.add_parser(
        "export",
        help="export the network as TorchScript or ONNX",
        description="Export the fusion network: input (B, 2, H, W) [ch0 MRI, ch1 other, in [0, 1]], output "
        "(B, 1, H, W) raw (clamp to [0, 1]); any H, W. Weights: --weights, else the bundle's model, "
        "else (with --preset) an untrained network of that preset.",
    )
    p.add_argument("--format", choices=("torchscript", "onnx"), default="torchscript", help="export format")
    p.add_argument("-o", "--output", required=True, help="file to write (e.g. model.ts or model.onnx)")
    p.add_argument("--weights", help="weights file (.pt/.pth/.safetensors, ours or official); default: the bundle's")
    p.add_argument("--preset", help="network preset; with --weights it must match them, alone it exports untrained")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from .export import export_network
    from .networks import LKCFUNet, default_weights_path, load_network

    weights = args.weights or (default_weights_path() if default_weights_path().is_file() else None)
    if weights is not None:
        net = load_network(weights, expected=args.preset)
        source = str(weights)
    elif args.preset:
        net = LKCFUNet.from_preset(args.preset)
        source = f"untrained preset {args.preset!r}"
    else:
        raise FusionInputError(
            f"no trained weights at {default_weights_path()}: pass --weights FILE, or --preset NAME for an untrained net"
        )
    path = export_network(net, args.output, args.format)
    print(f"wrote {args.format} model to {path} ({source})")
    return 0


@_subcommand
def _add_label_app(subparsers: argparse._SubParsersAction) -> None:
    """``lkcfusion label-app``: write a MONAI Label app serving the fusion model."""
    p = subparsers.add_parser(
        "label-app",
        help="write a MONAI Label app (model 'lkcfusion') to a folder",
        description="Write a ready MONAI Label app whose model 'lkcfusion' takes a co-registered 2-channel volume "
        "(ch0 MRI, ch1 CT/PET/SPECT) and returns the fused float volume on the input grid. Serve it with "
        "'monailabel start_server --app DEST --studies DIR --conf models lkcfusion' (see docs/monailabel.md).",
    )
    p.add_argument("dest", help="app folder to create")
    p.add_argument("--weights", help="weights to copy into the app (default: the bundle's model)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an existing app in DEST")
    p.set_defaults(func=_run_label_app)


def _run_label_app(args: argparse.Namespace) -> int:
    from .label_app import write_label_app

    dest = write_label_app(args.dest, weights=args.weights, overwrite=args.overwrite)
    print(f"wrote MONAI Label app to {dest}; serve it with:")
    print(f"  monailabel start_server --app {dest} --studies STUDIES_DIR --conf models lkcfusion")
    return 0


@_subcommand
def _add_fuse(subparsers: argparse._SubParsersAction) -> None:
    """``lkcfusion fuse``: one pair, or every pair of two folders matched by name."""
    p = subparsers.add_parser(
        "fuse",
        help="fuse an MRI with CT/PET/SPECT (a pair of files, or two folders paired by name)",
        description="Fuse an MRI with a second modality. MRI and OTHER are image files (PNG/JPG/BMP/TIFF, NIfTI, "
        "NRRD, MHA) or DICOM series folders; OUT's extension picks the format (png/jpg, nii/nii.gz, nrrd, mha). "
        "Colour PET/SPECT gives an RGB output, gray a gray one; volumes are resampled onto the MRI grid and the "
        "output keeps the MRI's shape and affine. Batch mode: --mri-dir D1 --other-dir D2 -o OUTDIR writes one "
        "output per pair with the MRI's name, continues past bad pairs and exits 1 if any failed.",
    )
    p.add_argument("mri", nargs="?", help="MRI file or DICOM series folder")
    p.add_argument("other", nargs="?", help="CT/PET/SPECT file or DICOM series folder")
    p.add_argument("-o", "--output", required=True, help="output file (single pair) or folder (batch mode)")
    p.add_argument("--mri-dir", help="batch mode: folder of MRIs")
    p.add_argument("--other-dir", help="batch mode: folder of the second modality, same names as in --mri-dir")
    p.add_argument("--method", default="lkcfunet", help="lkcfunet (default), max, mean, dwt or laplacian")
    p.add_argument("--weights", help="LKC-FUNet weights (.pt/.pth/.safetensors); default: the bundle's model")
    p.add_argument("--axis", type=int, help="voxel axis to slice volumes along (default: the MRI's axial axis)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda when available)")
    p.add_argument("--modality", help="modality of OTHER (CT, PET, SPECT, MR); default: from the file or data")
    p.add_argument("--resample", action="store_true", help="resize a 2D OTHER of another size to the MRI's size")
    p.add_argument("--mri-series", help="SeriesInstanceUID to use when the MRI folder holds several series")
    p.add_argument("--other-series", help="SeriesInstanceUID to use when the OTHER folder holds several series")
    p.add_argument("--batch-size", type=int, default=8, help="slices per network call for volumes (default 8)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: keep them, fail)")
    p.add_argument("--no-optimize", action="store_true", help="skip optimize_for_inference on the network")
    p.set_defaults(func=_run_fuse)


def _run_fuse(args: argparse.Namespace) -> int:
    import warnings
    from pathlib import Path

    from .data import image_stem, pair_files_by_name
    from .data.io import PICTURE_SUFFIXES
    from .inference import build_predictor, fuse_files

    batch = args.mri_dir is not None or args.other_dir is not None
    if batch == (args.mri is not None or args.other is not None) or batch and not (args.mri_dir and args.other_dir):
        raise FusionInputError("give either MRI OTHER -o OUT, or --mri-dir D1 --other-dir D2 -o OUTDIR")
    if not batch and args.other is None:
        raise FusionInputError("missing OTHER: lkcfusion fuse MRI OTHER -o OUT")
    # load the network once (and fail early without weights), then fuse every pair with it
    predictor = build_predictor(None, args.method, args.weights, args.device, not args.no_optimize)
    options = {"model": predictor, "axis": args.axis, "device": args.device, "optimize": False,
               "batch_size": args.batch_size, "modality": args.modality, "resample": args.resample,
               "progress": sys.stderr.isatty()}
    if not batch:
        pairs, failures = [(Path(args.mri), Path(args.other), Path(args.output))], []
    else:
        found, failures = pair_files_by_name(args.mri_dir, args.other_dir)
        pairs = []
        for mri, other in found:
            # same name as the MRI; a DICOM folder or a format we cannot write becomes NIfTI
            writable = mri.is_file() and mri.name.lower().endswith((*PICTURE_SUFFIXES, ".nii", ".nii.gz", ".nrrd", ".mha"))
            pairs.append((mri, other, Path(args.output) / (mri.name if writable else f"{image_stem(mri)}.nii.gz")))
    for message in failures:
        print(f"lkcfusion: error: {message}", file=sys.stderr)
    written = 0
    for mri, other, out in pairs:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fuse_files(mri, other, out, overwrite=args.overwrite, mri_series=args.mri_series,
                           other_series=args.other_series, **options)
            for w in caught:
                print(f"lkcfusion: warning: {_one_line(Exception(str(w.message)))}", file=sys.stderr)
            print(f"wrote {out} ({args.method})")
            written += 1
        except (FusionInputError, OSError) as err:
            if not batch:
                raise
            failures.append(str(err))
            print(f"lkcfusion: error: {_one_line(err)}", file=sys.stderr)
    if batch:
        print(f"fused {written} pair(s); {len(failures)} failed or unpaired")
    return 1 if failures else 0


@_subcommand
def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    """``lkcfusion demo``: fuse the shipped demo pairs (a 2D PET slice and a 3D MRI/PET volume pair)."""
    p = subparsers.add_parser(
        "demo",
        help="fuse the shipped demo data (2D and 3D) with the default model",
        description="Fuse the demo data shipped with the package (derived from the MNI ICBM152 template: a 2D "
        "MRI/PET-colour slice pair and a 1 mm MRI with a simulated 2 mm PET on a shifted grid) with the default "
        "model; until the bundle's model exists it uses pixel-wise max and says so. Writes fused_2d.png and "
        "fused_3d.nii.gz into the output folder, replacing earlier demo outputs there.",
    )
    p.add_argument("-o", "--output", default="outputs/demo", help="output folder (default outputs/demo)")
    p.add_argument("--device", help="torch device (default: cuda when available)")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .data import demo_files
    from .inference import fuse_files
    from .networks import default_weights_path

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


@_subcommand
def _add_train(subparsers: argparse._SubParsersAction) -> None:
    """``lkcfusion train``: the bundle's train.json with presets and overrides (a front over the same config)."""
    p = subparsers.add_parser(
        "train",
        help="train LKC-FUNet on Harvard-layout pairs (the bundle's train.json)",
        description="Train with bundle/configs/train.json on MONAI engines: FusionLoss, random crops + flips, "
        "Adam with a cosine LR schedule, validation on a held-out 10%% of the pairs, best + last checkpoints and "
        "TensorBoard logs in the output folder, the best weights exported as OUTPUT/model.pt.",
        epilog="example: lkcfusion train --config configs/mri_pet.json --epochs 50 --output runs/mri_pet",
    )
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="override file(s) merged over train.json in order, e.g. configs/small.json")
    p.add_argument("--preset", help="network preset (small, official, tiny, ...)")
    p.add_argument("--tasks", nargs="+", choices=["MRI-CT", "MRI-PET", "MRI-SPECT"], help="tasks to train on")
    p.add_argument("--epochs", type=int, help="final epoch count (a resumed run continues up to it)")
    p.add_argument("--dataset-dir", help="folder with train/<task>/{MRI,CT|PET|SPECT}/*.png")
    p.add_argument("-o", "--output", help="checkpoints, logs and model.pt (default runs/train)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output folder")
    p.add_argument("--device", help="torch device (default: cuda when available)")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import torch

    from .engines import run_bundle_workflow

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


@_subcommand
def _add_metrics(subparsers: argparse._SubParsersAction) -> None:
    """``lkcfusion metrics``: the literature's fusion metrics for folders of fused images and their sources."""
    p = subparsers.add_parser(
        "metrics",
        help="score fused images against their MRI / other sources (EN, SD, SF, AG, MI, SCD, VIF, Qabf, SSIM, ...)",
        description="Pair images by file name across the three folders, read them as 8-bit gray (colour as "
        "rounded BT.601 luma), print one row per pair and the means. Conventions: see docs/metrics.md.",
        epilog="example: lkcfusion metrics --fused out/ --mri test/MRI-PET/MRI --other test/MRI-PET/PET "
        "--ssim-data-range 2 --csv metrics.csv",
    )
    p.add_argument("--fused", required=True, help="folder of fused images")
    p.add_argument("--mri", required=True, help="folder of MRI images (same file names)")
    p.add_argument("--other", required=True, help="folder of CT/PET/SPECT images (same file names)")
    p.add_argument("--metrics", nargs="+", metavar="NAME",
                   help="metrics to compute (default: EN SD SF AG MI SCD VIF Qabf SSIM CC PSNR MSE; "
                   "extras: MS_SSIM Nabf FMI_pixel)")
    p.add_argument("--ssim-data-range", type=float, default=255.0,
                   help="SSIM constant range: 255 (LKC-FUNet, default) or 2 (published CDDFuse/EMMA tables)")
    p.add_argument("--reduction", choices=["sum", "mean"], default="sum",
                   help="combine MI/SSIM/VIF over the two sources (default sum, as the literature)")
    p.add_argument("--mi-base", choices=["e", "2"], default="e", help="MI in nats (e, default) or bits (2)")
    p.add_argument("--psnr-peak", choices=["max", "255"], default="max", help="PSNR peak: max(F) (default) or 255")
    p.add_argument("--csv", metavar="FILE", help="write per-pair values and the means as CSV")
    p.add_argument("--json", metavar="FILE", help="write options, means and per-pair values as JSON")
    p.set_defaults(func=_run_metrics)


def _run_metrics(args: argparse.Namespace) -> int:
    import math

    from .metrics.folders import format_table, score_folders, write_csv, write_json

    options = {
        "ssim_data_range": args.ssim_data_range,
        "reduction": args.reduction,
        "mi_base": math.e if args.mi_base == "e" else 2.0,
        "psnr_peak": args.psnr_peak,
    }
    results = score_folders(args.fused, args.mri, args.other, names=args.metrics, **options)
    print(format_table(results))
    if args.csv:
        write_csv(results, args.csv)
    if args.json:
        write_json(results, args.json, {**options, "mi_base": args.mi_base})
    return 0


@_subcommand
def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    """``lkcfusion evaluate``: fuse a folder of pairs with the model and baselines, score and compare them."""
    p = subparsers.add_parser(
        "evaluate",
        help="compare LKC-FUNet with baselines on a folder of pairs (CSV, JSON, figures)",
        description="Fuse every MRI in --mri-dir with the same-named image in --other-dir by each method, score "
        "the results with the fusion metrics on 8-bit gray (colour as BT.601 luma) and write metrics.csv (per "
        "pair and method), summary.json (means), overview.png, metrics.png and the fused images into OUT.",
        epilog="example: lkcfusion evaluate --mri-dir data/test/MRI-PET/MRI --other-dir data/test/MRI-PET/PET "
        "-o eval/mri_pet",
    )
    p.add_argument("--mri-dir", required=True, help="folder of MRIs")
    p.add_argument("--other-dir", required=True, help="folder of the second modality, paired by file name")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--weights", help="LKC-FUNet weights (default: the bundle's models/model.pt)")
    p.add_argument("--methods", default="lkcfunet,max,mean,dwt,laplacian",
                   help="comma-separated methods (default lkcfunet,max,mean,dwt,laplacian)")
    p.add_argument("--metrics", default="EN,SD,SF,MI,SCD,VIF,Qabf,SSIM", help="comma-separated metric names")
    p.add_argument("--ssim-data-range", type=float, default=2.0,
                   help="SSIM data range: 2 as the published CDDFuse/EMMA tables (default), 255 as LKC-FUNet's")
    p.add_argument("--device", help="torch device (default: cuda when available)")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .data import pair_files_by_name
    from .engines import compare_methods

    pairs, unpaired = pair_files_by_name(args.mri_dir, args.other_dir)
    for message in unpaired:
        print(f"warning: {message}", file=sys.stderr)
    group = Path(args.other_dir).name
    items = [{"mri": str(m), "other": str(o), "name": m.name, "task": group} for m, o in pairs]
    summary = compare_methods(
        items, args.output, methods=[m.strip() for m in args.methods.split(",") if m.strip()], weights=args.weights,
        metric_names=[m.strip() for m in args.metrics.split(",") if m.strip()],
        ssim_data_range=args.ssim_data_range, device=args.device,
    )
    for method, means in summary[group].items():
        print(f"{method:>10}: " + "  ".join(f"{k} {v:.3f}" for k, v in means.items()))
    print(f"wrote {args.output}/metrics.csv, summary.json, overview.png, metrics.png ({len(items)} pairs)")
    return 0


def _one_line(err: BaseException) -> str:
    """Collapse an exception message into a single line."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or err}"
    return " ".join(str(err).split())


if __name__ == "__main__":
    sys.exit(main())
