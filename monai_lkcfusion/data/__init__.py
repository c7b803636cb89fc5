"""Datalists (Harvard folder layout, decathlon-style JSON), pairing by name, image reading/writing and demo data."""

from __future__ import annotations

from .atomic import atomic_path, check_output_file, check_writable, write_text
from .collate import collate_same_size
from .datalist import load_fusion_datalist, write_fusion_datalist
from .harvard import HARVARD_TASKS, harvard_datalist
from .io import (
    NOT_IMAGE_SUFFIXES,
    PICTURE_SUFFIXES,
    ROWS_COLUMNS_SWAPPED,
    VOLUME_SUFFIXES,
    WRITABLE_SUFFIXES,
    image_stem,
    read_image,
    write_image,
)
from .pairing import check_distinct_pair, files_by_name, match_files_by_name, name_key, output_name, pair_files_by_name
from .samples import DEMO_DIR, demo_files
from .splits import (
    GLIOMA_SUBJECT,
    HARVARD_PET_SUBJECT,
    check_split,
    harvard_subject,
    split_by_fraction,
    split_by_subject,
)

__all__ = [
    "DEMO_DIR",
    "GLIOMA_SUBJECT",
    "HARVARD_PET_SUBJECT",
    "HARVARD_TASKS",
    "NOT_IMAGE_SUFFIXES",
    "PICTURE_SUFFIXES",
    "ROWS_COLUMNS_SWAPPED",
    "VOLUME_SUFFIXES",
    "WRITABLE_SUFFIXES",
    "atomic_path",
    "check_distinct_pair",
    "check_output_file",
    "check_writable",
    "collate_same_size",
    "demo_files",
    "files_by_name",
    "harvard_datalist",
    "harvard_subject",
    "image_stem",
    "load_fusion_datalist",
    "match_files_by_name",
    "name_key",
    "output_name",
    "pair_files_by_name",
    "read_image",
    "check_split",
    "split_by_fraction",
    "split_by_subject",
    "write_fusion_datalist",
    "write_image",
    "write_text",
]
