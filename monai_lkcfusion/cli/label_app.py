"""``lkcfusion label-app``: write a MONAI Label app serving the fusion model."""

from __future__ import annotations

import argparse

HELP = "write a MONAI Label app (model 'lkcfusion') to a folder"
DESCRIPTION = (
    "Write a ready MONAI Label app whose model 'lkcfusion' takes two images per request (the MRI as 'image', the "
    "CT/PET/SPECT as params {\"other\": ID} or the 'label' upload; or one 2-channel volume) and returns the fused "
    "float volume on the MRI's grid. Serve it with 'monailabel start_server --app DEST --studies DIR --conf models "
    "lkcfusion' (see docs/monailabel.md)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lkcfusion label-app``."""
    parser.add_argument("dest", help="app folder to create")
    parser.add_argument("--weights", help="weights to copy into the app (default: the bundle's model)")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an existing app in DEST")


def run(args: argparse.Namespace) -> int:
    """Write the app (see :func:`monai_lkcfusion.label_app.write_label_app`)."""
    from ..label_app import write_label_app

    dest = write_label_app(args.dest, weights=args.weights, overwrite=args.overwrite)
    print(f"wrote MONAI Label app to {dest}; serve it with:")
    print(f"  monailabel start_server --app {dest} --studies STUDIES_DIR --conf models lkcfusion")
    return 0
