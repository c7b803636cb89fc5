"""Slicer-independent logic of the LKCFusion module (importable and testable without 3D Slicer)."""

from .logic import fuse_volume_arrays

__all__ = ["fuse_volume_arrays"]
