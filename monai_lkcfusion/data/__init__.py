"""Datalists (Harvard folder layout, decathlon-style JSON), image reading/writing and the demo data."""

from __future__ import annotations

from .datalist import load_fusion_datalist, pair_files_by_name, write_fusion_datalist
from .harvard import HARVARD_TASKS, harvard_datalist
from .io import PICTURE_SUFFIXES, VOLUME_SUFFIXES, atomic_path, image_stem, read_image, write_image

__all__ = [
    "HARVARD_TASKS",
    "PICTURE_SUFFIXES",
    "VOLUME_SUFFIXES",
    "atomic_path",
    "harvard_datalist",
    "image_stem",
    "load_fusion_datalist",
    "pair_files_by_name",
    "read_image",
    "write_fusion_datalist",
    "write_image",
]
