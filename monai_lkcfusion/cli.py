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
    for add in _SUBCOMMANDS:
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
    except (FusionInputError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
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


def _one_line(err: BaseException) -> str:
    """Collapse an exception message into a single line."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or err}"
    return " ".join(str(err).split())


if __name__ == "__main__":
    sys.exit(main())
