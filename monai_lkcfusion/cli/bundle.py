"""``lkcfusion bundle``: write the MONAI Bundle that ships with the package as a standalone folder."""

from __future__ import annotations

import argparse

HELP = "write the MONAI Bundle (configs, default weights, model card) to a folder"
DESCRIPTION = (
    "Write the bundle that ships with the package to DEST: configs/, models/model.pt, docs/README.md, LICENSE. "
    "Its configs use DEST/models/model.pt wherever DEST is run from, and inference writes to DEST/eval "
    "(see docs/bundle.md)."
)
EPILOG = (
    "example: lkcfusion bundle lkcfusion_bundle && python -m monai.bundle run --config_file "
    "lkcfusion_bundle/configs/inference.json --meta_file lkcfusion_bundle/configs/metadata.json "
    "--logging_file lkcfusion_bundle/configs/logging.conf"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lkcfusion bundle``."""
    parser.add_argument("dest", metavar="DEST", help="folder to write (created; must be empty unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty DEST, replacing bundle files")


def run(args: argparse.Namespace) -> int:
    """Write the bundle with :func:`monai_lkcfusion.bundle_files.write_bundle` and print how to run it."""
    from ..bundle_files import write_bundle

    configs = write_bundle(args.dest, overwrite=args.overwrite) / "configs"
    print(f"wrote a MONAI bundle to {configs.parent}; run it with:\n  python -m monai.bundle run "
          f"--config_file {configs / 'inference.json'} --meta_file {configs / 'metadata.json'} "
          f"--logging_file {configs / 'logging.conf'}")
    return 0
