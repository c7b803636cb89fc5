"""``lkcfusion metrics``: the literature's fusion metrics for folders of fused images and their sources."""

from __future__ import annotations

import argparse
import warnings

from ..errors import FusionInputError
from . import add_names_argument, names_given, print_warnings

HELP = "score fused images against their MRI / other sources (EN, SD, SF, AG, MI, SCD, VIF, Qabf, SSIM, ...)"
DESCRIPTION = (
    "Pair images by name (extension ignored) across the three folders (or score three files), read them as 8-bit gray "
    "(colour as rounded BT.601 luma), print one row per pair and the mean, std and number of pairs per metric. "
    "Conventions: see docs/metrics.md."
)
EPILOG = (
    "example: lkcfusion metrics --fused out/ --mri test/MRI-PET/MRI --other test/MRI-PET/PET "
    "--ssim-data-range 2 --csv metrics.csv --summary-csv summary.csv"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lkcfusion metrics``."""
    parser.add_argument("--fused", required=True, help="folder of fused images, or one fused image")
    parser.add_argument("--mri", required=True, help="folder of MRI images (same names), or one MRI image")
    parser.add_argument("--other", required=True, help="folder of CT/PET/SPECT images (same names), or one such image")
    add_names_argument(parser, "--metrics", "metrics to compute, separated by spaces or commas (default: EN SD SF AG "
                       "MI SCD VIF Qabf SSIM CC PSNR MSE; extras: MS_SSIM Nabf FMI_pixel)")
    parser.add_argument("--ssim-data-range", type=float, default=255.0,
                        help="SSIM constant range: 255 (LKC-FUNet, default) or 2 (published CDDFuse/EMMA tables)")
    parser.add_argument("--reduction", choices=["sum", "mean"], default="sum",
                        help="combine MI/SSIM/VIF over the two sources (default sum, as the literature)")
    parser.add_argument("--mi-base", choices=["e", "2"], default="e", help="MI in nats (e, default) or bits (2)")
    parser.add_argument("--psnr-peak", choices=["max", "255"], default="max", help="PSNR peak: max(F) (default) or 255")
    parser.add_argument("--csv", metavar="FILE", help="write one row per pair (columns pair, <metric>...) as CSV")
    parser.add_argument("--summary-csv", metavar="FILE", help="write metric, n, mean, std per metric as CSV")
    parser.add_argument("--json", metavar="FILE", help="write options, mean/std/n and per-pair values as JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --csv/--summary-csv/--json files")


def run(args: argparse.Namespace) -> int:
    """Score the folders (see :func:`monai_lkcfusion.metrics.folders.score_folders`) and write the tables."""
    import math
    from pathlib import Path

    from ..data import PICTURE_SUFFIXES, VOLUME_SUFFIXES, check_output_file, write_text
    from ..data.atomic import check_not_input
    from ..data.io import image_suffix
    from ..metrics.folders import score_folders
    from ..metrics.tables import format_table, json_text, pivot, summarize, write_table

    options = {
        "ssim_data_range": args.ssim_data_range,
        "reduction": args.reduction,
        "mi_base": math.e if args.mi_base == "e" else 2.0,
        "psnr_peak": args.psnr_peak,
    }
    inputs = [p for p in (args.fused, args.mri, args.other) if Path(p).is_file()]  # tables beside images are fine
    written: list[str] = []
    for path, example in ((args.csv, "metrics.csv"), (args.summary_csv, "summary.csv"), (args.json, "metrics.json")):
        if path:  # before the scoring, not after it
            if image_suffix(path) in PICTURE_SUFFIXES + VOLUME_SUFFIXES:  # e.g. an image of the input folders
                raise FusionInputError(f"{path}: a table is written to a {Path(example).suffix} file, not an image "
                                       "file")
            check_output_file(path, example, inputs=inputs, overwrite=args.overwrite)
            check_not_input(path, written, kind="output")
            written.append(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = names_given(args.metrics, "--metrics")
        results = score_folders(args.fused, args.mri, args.other, names=names, **options)
    print_warnings(caught)
    rows = [{"pair": name, **values} for name, values in results.items()]
    metric_names = list(next(iter(results.values())))
    summary = summarize(rows, metric_names, by=())
    stats = {stat: pivot(summary, stat, by=()) for stat in ("mean", "std", "n")}
    if "SSIM" in metric_names:  # the two commands' defaults differ: say which one this table used
        print(f"SSIM data range {args.ssim_data_range:g} (--ssim-data-range; `lkcfusion evaluate` and the published "
              "tables use 2)")
    print(format_table([*rows, *({"pair": stat, **stats[stat]} for stat in ("n", "std", "mean"))]))
    if args.csv:
        write_table(rows, args.csv)
    if args.summary_csv:
        write_table(summary, args.summary_csv)
    if args.json:
        document = {"options": {**options, "mi_base": args.mi_base}, **stats, "pairs": results}
        write_text(args.json, json_text(document), overwrite=True)
    return 0
