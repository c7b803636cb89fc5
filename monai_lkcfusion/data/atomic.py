"""Atomic, no-clobber writing: a file appears whole or not at all, and an existing one is kept unless asked."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import FusionInputError

__all__ = ["atomic_path", "write_text"]


@contextmanager
def atomic_path(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` and move it onto ``path`` only when the block succeeds.

    The temporary file is hidden and ends with ``path``'s name, so writers that pick the format from the extension
    (``.nii.gz``, ``.png``, ...) see the right one.

    Args:
        path: the final file; missing parent folders are created.
        overwrite: replace an existing ``path``; otherwise an existing file is an error and is kept.

    Raises:
        FusionInputError: ``path`` exists and ``overwrite`` is False, or it cannot be written (a parent that is a
            file, a read-only file system, a full disk); a partial file is never left behind.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FusionInputError(f"{path}: output exists; pass --overwrite (overwrite=True) to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".", suffix=f".tmp.{path.name}", dir=path.parent)
    except OSError as err:  # a parent that is a file, a read-only or virtual file system
        raise FusionInputError(f"{path}: cannot write here ({err.strerror or err})") from None
    os.close(handle)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as err:  # disk full, quota: the partial temporary file is removed below
        raise FusionInputError(f"{path}: cannot write output ({err.strerror or err}); nothing was written") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, overwrite: bool = False) -> Path:
    """Write a text file (CSV, JSON) atomically with :func:`atomic_path`.

    Args:
        path: the file.
        text: its content.
        overwrite: replace an existing file.

    Returns:
        The written path.

    Raises:
        FusionInputError: as :func:`atomic_path`.
    """
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(text)
    return Path(path)
