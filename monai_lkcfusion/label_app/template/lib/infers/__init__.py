"""Inference tasks of the LKC-FUNet fusion MONAI Label app."""

from .fusion import FusionInferTask

__all__ = ["FusionInferTask"]
