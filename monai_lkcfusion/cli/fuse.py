"""``lkcfusion fuse``: one pair, or every pair of two folders matched by name."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from ..errors import FusionInputError
from . import print_warnings

HELP = "fuse an MRI with CT/PET/SPECT (a pair of files, or two folders paired by name)"
DESCRIPTION = (
    "Fuse an MRI with a second modality. MRI and OTHER are image files (PNG/JPG/BMP/TIFF, NIfTI, "
    "NRRD, MHA) or DICOM series folders; OUT's extension picks the format (png/jpg/bmp/tif, nii/nii.gz, nrrd, mha). "
    "Colour PET/SPECT gives an RGB output, gray a gray one; volumes are resampled onto the MRI grid and the "
    "output keeps the MRI's shape and affine. Batch mode: --mri-dir D1 --other-dir D2 -o OUTDIR writes one "
    "output per pair with the MRI's name, continues past bad pairs and exits 1 if any failed."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lkcfusion fuse``."""
    parser.add_argument("-o", "--output", required=True, help="output file (single pair) or folder (batch mode)")
    parser.add_argument("mri", nargs="?", help="MRI file or DICOM series folder")
    parser.add_argument("other", nargs="?", help="CT/PET/SPECT file or DICOM series folder")
    parser.add_argument("--mri-dir", help="batch mode: folder of MRIs")
    parser.add_argument("--other-dir", help="batch mode: folder of the second modality, same names as in --mri-dir")
    parser.add_argument("--method", default="lkcfunet", help="lkcfunet (default), max, mean, dwt or laplacian")
    parser.add_argument("--weights", help="LKC-FUNet weights (.pt/.pth/.safetensors); default: the bundle's model")
    parser.add_argument("--axis", type=int, help="voxel axis to slice volumes along (default: the MRI's axial axis)")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda when available)")
    parser.add_argument("--modality", help="modality of OTHER (CT, PET, SPECT, MR); default: from the file or data")
    parser.add_argument("--resample", action="store_true", help="resize a 2D OTHER of another size to the MRI's size")
    parser.add_argument("--mri-series", help="SeriesInstanceUID to use when the MRI folder holds several series")
    parser.add_argument("--other-series", help="SeriesInstanceUID to use when the OTHER folder holds several series")
    parser.add_argument("--batch-size", type=int, default=8, help="slices per network call for volumes (default 8)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: keep them, fail)")
    parser.add_argument("--no-optimize", action="store_true",
                        help="the plain reference path: the network as trained (no optimize_for_inference), one "
                             "worker with PyTorch's own thread count unless --workers/--threads say otherwise")
    parser.add_argument("--workers", type=int,
                        help="slices fused at once on the CPU (default: one per available core)")
    parser.add_argument("--threads", type=int,
                        help="PyTorch threads per worker (default 1: measured fastest, and steady on a busy CPU)")
    parser.add_argument("--gray", action="store_true", help="write the fused luma only (no PET/SPECT colour)")
    parser.add_argument("--no-mask-background", action="store_true",
                        help="keep the network's output where both inputs are 0 (default: exactly 0 there)")
    parser.add_argument("--tta", action="store_true", help="average the network over image flips (4x slower)")
    parser.add_argument("--register", choices=("none", "rigid", "affine"), default="none",
                        help="register OTHER to the MRI first (SimpleITK, mutual information); default none: trust "
                             "the files' world coordinates")
    parser.add_argument("--transform", metavar="PATH",
                        help="apply this ITK transform file (.tfm/.txt, e.g. from --save-transform) instead")
    parser.add_argument("--save-transform", metavar="PATH",
                        help="write the transform found as an ITK transform file, .tfm or .txt (batch mode: a "
                        "folder, one per pair)")
    parser.add_argument("--preview", metavar="PNG",
                        help="write a checkerboard / edge-overlay picture of the alignment (one pair only)")
    parser.add_argument("--mri-modality",
                        help="modality of MRI for its intensity scaling (default: from the file, else MR; an MRI is "
                             "never CT-windowed unless you say --mri-modality CT)")
    parser.add_argument("--allow-irregular-slices", action="store_true",
                        help="fuse DICOM series with missing, duplicated or unevenly spaced slices (reported; "
                             "default: refused)")
    parser.add_argument("--allow-external-data", action="store_true",
                        help="let a detached header (.nhdr/.mhd) read a data file outside its own folder")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress display during long fusions")


def run(args: argparse.Namespace) -> int:
    """Fuse one pair with :func:`~monai_lkcfusion.inference.fuse_files`, or two folders with the bundle's engine."""
    from ..data.io import check_input_exists
    from ..inference import build_predictor
    from ..inferers import FusionInferer, check_tta

    batch = args.mri_dir is not None or args.other_dir is not None
    if batch == (args.mri is not None or args.other is not None) or batch and not (args.mri_dir and args.other_dir):
        raise FusionInputError("give either MRI OTHER -o OUT, or --mri-dir D1 --other-dir D2 -o OUTDIR")
    if not batch and args.other is None:
        raise FusionInputError("missing OTHER: lkcfusion fuse MRI OTHER -o OUT")
    for path in () if batch else (args.mri, args.other):  # before anything is announced ("registration: on")
        check_input_exists(path)
    # load the network once (and fail early without weights), then fuse every pair with it
    predictor = build_predictor(None, args.method, args.weights, args.device, not args.no_optimize)
    check_tta(args.tta, predictor)
    plain = args.no_optimize and args.workers is None and args.threads is None
    options = {"axis": args.axis, "device": args.device, "optimize": False, "batch_size": args.batch_size,
               "workers": 1 if plain else args.workers, "threads": args.threads,
               "modality": args.modality, "resample": args.resample, "mri_series": args.mri_series,
               "other_series": args.other_series, "color": not args.gray,
               "mask_background": not args.no_mask_background, "tta": args.tta, "mri_modality": args.mri_modality,
               "allow_irregular_slices": args.allow_irregular_slices,
               "allow_external_data": args.allow_external_data, "progress": not args.quiet}
    options.update(_registration_options(args, batch))
    # the options every pair shares are refused once here, not once per pair of a folder (exit 1, N lines)
    FusionInferer(batch_size=args.batch_size, device=args.device, workers=options["workers"], threads=args.threads)
    return _fuse_folders(args, predictor, options) if batch else _fuse_pair(args, predictor, options)


class _StdoutHandler(logging.StreamHandler):
    """Log lines to the ``sys.stdout`` of the moment: a handler made once per process must not keep writing to the
    stream of its first call when ``main()`` runs again with stdout replaced (a notebook cell, a test's capture)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; the current sys.stdout is always used
        pass


def _registration_options(args: argparse.Namespace, batch: bool) -> dict:
    """``fuse()`` options of --register/--transform/--save-transform/--preview; registration reports on stdout."""
    from ..data.atomic import check_not_input
    from ..registration import TRANSFORM_SUFFIXES

    if args.register != "none" and args.transform:
        raise FusionInputError("give either --register or --transform, not both")
    single = [option for option, value in (("--transform", args.transform), ("--preview", args.preview)) if value]
    if batch and single:
        raise FusionInputError(f"{' and '.join(single)} {'is' if len(single) == 1 else 'are'} for one pair "
                               "(MRI OTHER -o OUT), not folders")
    save = args.save_transform
    if save and args.register == "none" and not args.transform:
        raise FusionInputError("--save-transform writes the transform that --register finds: add --register rigid "
                               "(or affine)")
    if save and not batch:  # a folder of transforms for a batch: checked and made with its output folder
        if Path(save).suffix.lower() not in TRANSFORM_SUFFIXES and not Path(save).is_dir():
            raise FusionInputError(f"{save}: name the transform file with {' or '.join(TRANSFORM_SUFFIXES[:2])} (or "
                                   "give an existing folder)")
        check_not_input(save, [p for p in (args.mri, args.other, args.transform) if p])  # e.g. a DICOM folder
    if args.register != "none" or args.transform:
        print(f"registration: on ({f'applying {args.transform}' if args.transform else args.register})")
        logger = logging.getLogger("monai_lkcfusion.registration")
        if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
            logger.addHandler(_StdoutHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False  # printed once, here: not again by handlers a bundle's logging.conf gave the root
    return {"register": args.register, "transform": args.transform, "save_transform": save, "preview": args.preview}


def _fuse_pair(args: argparse.Namespace, predictor, options: dict) -> int:
    """``lkcfusion fuse MRI OTHER -o OUT``: errors propagate (one line, exit 2)."""
    from ..inference import fuse_files

    record: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fuse_files(args.mri, args.other, args.output, overwrite=args.overwrite, model=predictor,
                   report=record.append, **options)
    print_warnings(caught)
    print(f"wrote {args.output} ({'; '.join([args.method, *record])})")
    for what, path in (("transform", args.save_transform), ("alignment preview", args.preview)):
        if path:  # written beside the result: named, as the result is
            print(f"wrote {path} ({what})")
    return 0


def _fuse_folders(args: argparse.Namespace, predictor, options: dict) -> int:
    """``lkcfusion fuse --mri-dir D1 --other-dir D2 -o OUTDIR``: every pair, past bad ones; exit 1 if any failed."""

    from ignite.engine import Events

    from ..data import check_writable, pair_files_by_name
    from ..data.atomic import check_not_input
    from ..engines import FileFusionEngine

    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise FusionInputError(f"{args.output}: is a file; with --mri-dir/--other-dir, -o names the output folder")
    # outputs are named after the MRIs: never in an input folder, where they would also be paired next time
    check_not_input(args.output, [args.mri_dir, args.other_dir], kind="input folder")
    check_writable(args.output)  # once, not once per pair
    if args.save_transform:  # in an input folder it was created first and paired as an entry ("no partner")
        if Path(args.save_transform).exists() and not Path(args.save_transform).is_dir():
            raise FusionInputError(f"{args.save_transform}: is a file; with --mri-dir/--other-dir, --save-transform "
                                   "names a folder for one transform per pair")
        check_not_input(args.save_transform, [args.mri_dir, args.other_dir], kind="input folder")
        check_writable(args.save_transform)
        Path(args.save_transform).mkdir(parents=True, exist_ok=True)
    pairs, unpaired = pair_files_by_name(args.mri_dir, args.other_dir)
    if not pairs and not unpaired:  # a mistyped folder must not look like a successful run
        raise FusionInputError(f"{args.mri_dir} and {args.other_dir}: no images to fuse (both folders are empty)")
    for message in unpaired:
        print(f"lkcfusion: error: {message}", file=sys.stderr)
    written: list[Path] = []
    engine = FileFusionEngine([{"mri": str(m), "other": str(o)} for m, o in pairs], predictor, args.output,
                              output_prefix="", overwrite=args.overwrite, fuse_kwargs=options)
    engine.logger = logging.getLogger("lkcfusion.fuse")  # this command prints its own lines, below
    engine.logger.disabled = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        @engine.on(Events.ITERATION_COMPLETED)
        def _report(engine: FileFusionEngine) -> None:
            print_warnings(caught)
            caught.clear()
            if engine.state.output is None:
                print(f"lkcfusion: error: {engine.failures[-1]}", file=sys.stderr)
            else:
                written.append(engine.state.output)
                print(f"wrote {engine.state.output} ({'; '.join([args.method, engine.last_record or ''])})")

        if pairs:
            try:
                engine.run()
            except FusionInputError:  # the failed pairs, already printed one by one
                if not engine.failures:
                    raise
    failed = len(pairs) - len(written) + len(unpaired)
    print(f"fused {len(written)} pair(s); {failed} failed or unpaired")
    return 1 if failed else 0
