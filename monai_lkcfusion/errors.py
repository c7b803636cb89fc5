"""Exceptions a user can cause; the CLI turns them into one line and exit code 2."""

from __future__ import annotations

__all__ = ["FusionInputError"]


class FusionInputError(ValueError):
    """An input (file, array, option or weights) that cannot be used, with a message saying what to do.

    The message names the offending file or option and the problem in one line, for example
    ``"mri.nii.gz: file not found"``.
    """
