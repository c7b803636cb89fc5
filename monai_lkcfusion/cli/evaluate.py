"""``lkcfusion evaluate``: fuse a folder of pairs with the model and baselines, score and compare them."""

from __future__ import annotations

import argparse

from . import add_names_argument, names_given, print_warnings

HELP = "compare LKC-FUNet with baselines on a folder of pairs (CSV, JSON, figures)"
DESCRIPTION = (
    "Fuse every MRI in --mri-dir with the same-named image in --other-dir by each method, score "
    "the results with the fusion metrics on 8-bit gray (colour as BT.601 luma) and write metrics.csv (per "
    "pair and method), summary.csv and summary.json (n, mean and std per task, method and metric), "
    "overview.png, metrics.png and the fused images into OUT."
)
EPILOG = "example: lkcfusion evaluate --mri-dir data/test/MRI-PET/MRI --other-dir data/test/MRI-PET/PET -o eval/mri_pet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lkcfusion evaluate``."""
    parser.add_argument("--mri-dir", required=True, help="folder of MRIs")
    parser.add_argument("--other-dir", required=True, help="folder of the second modality, paired by name")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--weights", help="LKC-FUNet weights (default: the bundle's models/model.pt)")
    add_names_argument(parser, "--methods", "methods, separated by commas or spaces (default "
                       "lkcfunet,max,mean,dwt,laplacian)")
    add_names_argument(parser, "--metrics", "metric names, separated by commas or spaces (default: those of the "
                       "published tables, EN,SD,SF,MI,SCD,VIF,Qabf,SSIM)")
    parser.add_argument("--ssim-data-range", type=float, default=2.0,
                        help="SSIM data range: 2 as the published CDDFuse/EMMA tables (default), 255 as LKC-FUNet's")
    parser.add_argument("--device", help="torch device (default: cuda when available)")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of an earlier evaluation in OUT")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress display")


def run(args: argparse.Namespace) -> int:
    """Compare the methods (see :func:`monai_lkcfusion.apps.evaluation.compare_methods`) and print the summary."""
    import os
    from pathlib import Path

    from ..apps.evaluation import compare_methods
    from ..data import pair_files_by_name
    from ..data.atomic import check_not_input
    from ..metrics.tables import format_summary

    # results written into an input folder would pair with it later
    check_not_input(Path(args.output) / "metrics.csv", [args.mri_dir, args.other_dir])
    pairs, unpaired = pair_files_by_name(args.mri_dir, args.other_dir)
    print_warnings(unpaired)
    task = Path(os.path.abspath(args.other_dir)).name  # "." is a folder with a name too
    items = [{"mri": str(m), "other": str(o), "name": m.name, "task": task} for m, o in pairs]
    chosen = {"methods": names_given(args.methods, "--methods"), "metric_names": names_given(args.metrics, "--metrics")}
    summary = compare_methods(
        items, args.output, weights=args.weights, **{key: names for key, names in chosen.items() if names is not None},
        ssim_data_range=args.ssim_data_range, device=args.device, overwrite=args.overwrite, progress=not args.quiet,
    )
    print(format_summary(summary))
    if any(row["metric"] == "SSIM" for row in summary):  # the two commands' defaults differ
        print(f"SSIM data range {args.ssim_data_range:g} (--ssim-data-range; `lkcfusion metrics` defaults to 255)")
    print(f"wrote {Path(args.output) / 'metrics.csv'}, summary.csv, summary.json, overview.png, metrics.png "
          f"({len(items)} pair(s))")
    return 0
