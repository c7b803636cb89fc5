"""``lkcfusion export``: the network as TorchScript or ONNX."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import FusionInputError

HELP = "export the network as TorchScript or ONNX"
DESCRIPTION = (
    "Export the fusion network: input (B, 2, H, W) [ch0 MRI, ch1 other, in [0, 1]], output "
    "(B, 1, H, W) raw (clamp to [0, 1]); any H, W. Weights: --weights (checked against --preset if given); "
    "--preset alone: an untrained network of that preset; neither: the bundle's model."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lkcfusion export``."""
    parser.add_argument("--format", choices=("torchscript", "onnx"),
                        help="export format (default: from the output's extension: .ts/.pt/.pth TorchScript, "
                        ".onnx ONNX)")
    parser.add_argument("-o", "--output", required=True, help="file to write (e.g. model.ts or model.onnx)")
    parser.add_argument("--weights",
                        help="weights file (.pt/.pth/.safetensors, ours or official); default: the bundle's")
    parser.add_argument("--preset",
                        help="network preset; with --weights it must match them, alone it exports untrained")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args: argparse.Namespace) -> int:
    """Export the network (see :func:`monai_lkcfusion.export.export_network`)."""
    from ..data import check_output_file
    from ..export import export_format, export_network
    from ..networks import LKCFUNet, default_weights_path, load_network

    format = export_format(args.output, args.format)  # before loading anything
    weights_files = [w for w in (args.weights, default_weights_path()) if w and Path(w).exists()]
    check_output_file(args.output, f"model.{'onnx' if format == 'onnx' else 'ts'}", inputs=weights_files,
                      overwrite=args.overwrite)
    if args.preset and not args.weights:  # a preset alone: its untrained network, never the bundle's weights
        net = LKCFUNet.from_preset(args.preset)
        source = f"untrained preset {args.preset!r}"
    elif args.weights or default_weights_path().is_file():
        weights = args.weights or default_weights_path()
        net = load_network(weights, expected=args.preset)
        source = str(weights)
    else:
        raise FusionInputError(f"no trained weights at {default_weights_path()}: pass --weights FILE, "
                               "or --preset NAME for an untrained net")
    path = export_network(net, args.output, format)
    print(f"wrote {format} model to {path} ({source})")
    return 0
