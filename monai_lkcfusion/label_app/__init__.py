"""A MONAI Label app serving LKC-FUNet fusion: :func:`write_label_app` writes it to a folder."""

from __future__ import annotations

from .writer import LABEL_APP_MODEL, write_label_app

__all__ = ["LABEL_APP_MODEL", "write_label_app"]
