"""Datalists (Harvard folder layout, decathlon-style JSON), image reading/writing and the demo data."""

from __future__ import annotations

from .datalist import load_fusion_datalist, pair_files_by_name, write_fusion_datalist
from .harvard import HARVARD_TASKS, harvard_datalist
from .samples import DEMO_DIR, demo_files
from .io import PICTURE_SUFFIXES, VOLUME_SUFFIXES, atomic_path, image_stem, read_image, write_image

__all__ = [
    "DEMO_DIR",
    "HARVARD_TASKS",
    "PICTURE_SUFFIXES",
    "VOLUME_SUFFIXES",
    "atomic_path",
    "demo_files",
    "harvard_datalist",
    "image_stem",
    "load_fusion_datalist",
    "pair_files_by_name",
    "read_image",
    "write_fusion_datalist",
    "write_image",
]
