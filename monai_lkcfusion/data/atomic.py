"""Atomic, no-clobber writing: a file appears whole or not at all, and an existing one is kept unless asked.

Every output is first written to a hidden temporary file beside the target, named
``.lkcfusion-<pid>-<random>.tmp<ext>`` (``<ext>`` the target's extension, so writers that pick the format from it
see the right one, and the name stays short whatever the target's length). When the write is complete the file is
moved onto the target: with ``overwrite`` by :func:`os.replace`, otherwise by :func:`os.link`, which fails when the
target exists, so two processes writing one target never both succeed (no check-then-replace race). A process
killed mid-write (SIGKILL, power loss) leaves its temporary file behind; the next write into that folder removes
the temporary files of processes that no longer run (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import FusionInputError

__all__ = [
    "TEMP_PREFIX", "atomic_path", "check_not_input", "check_output_file", "check_writable", "remove_stale_temporaries",
    "same_file", "temporary_folder", "write_text",
]

TEMP_PREFIX = ".lkcfusion-"
"""Name prefix of the temporary files (``.lkcfusion-<pid>-<random>.tmp<ext>``)."""
_KEPT = ".tmp-replaced"
"""Name end of a folder of earlier results moved aside to be replaced (never removed as stale)."""
_TEMP_NAME = re.compile(r"^\.lkcfusion-(\d+)-[0-9a-f]+\.tmp")
_NAME_MAX = 255


def _extension(name: str) -> str:
    """The extension writers need, in lower case (``.nii.gz`` kept whole), at most 16 characters.

    Lower case because writers choose the format from it and some only know the lower-case names (ITK writes a
    ``.MHA`` as a ``.mhd`` header with a ``.raw`` file beside it, nibabel refuses ``.Nii.Gz``).
    """
    lower = name.lower()
    for double in (".nii.gz", ".tar.gz"):
        if lower.endswith(double):
            return double
    suffix = os.path.splitext(lower)[1]
    return suffix if len(suffix) <= 16 else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files and folders (:func:`temporary_folder`) that killed writers left in ``folder``
    (their process no longer runs); folders of the purpose ``"replaced"`` hold earlier results a killed run had
    moved aside to replace them, and are kept.

    Args:
        folder: the folder to clean.

    Returns:
        The removed files and folders.
    """
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if entry.name.endswith(_KEPT):  # what a killed run had moved aside to replace it: the user's, kept
            continue
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
            except OSError:
                pass
    return removed


def temporary_folder(parent: str | Path, purpose: str) -> Path:
    """Create a hidden folder in ``parent`` for this process's partial results, named like the temporary files
    (``.lkcfusion-<pid>-<random>.tmp-<purpose>``), so a later run removes it if this one is killed.

    Args:
        parent: an existing folder (results moved out of the new one stay on its file system).
        purpose: a word for the name, e.g. ``"evaluation"``.

    Returns:
        The new, empty folder.
    """
    while True:
        folder = Path(parent) / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.tmp-{purpose}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def check_writable(path: str | Path) -> None:
    """Fail before any long work when ``path`` could not be written, with the message the writer would give.

    A hidden temporary file is created and deleted in the folder ``path`` would be written to: ``path`` itself when
    it is an existing folder, else the nearest existing folder above it (missing folders are created only when
    the result is written). This finds what permission bits cannot tell: read-only and virtual file systems, and a
    path through a file.

    Args:
        path: the file (or folder of files) to be written.

    Raises:
        FusionInputError: ``<path>: cannot write here (<reason>)``.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:  # stops at an existing folder or the root
        folder = folder.parent
    probe = folder / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        probe.unlink()
    except OSError as err:
        raise FusionInputError(f"{path}: cannot write here ({err.strerror or err})") from None


def same_file(first: str | Path, second: str | Path) -> bool:
    """Whether two paths name one file or folder: the same resolved path, or (both existing) one file under two names
    (a hard link; a bind mount).

    Args:
        first: a path.
        second: another path.

    Returns:
        ``True`` when writing or reading one is writing or reading the other.
    """
    first, second = Path(first), Path(second)
    return first.resolve() == second.resolve() or first.exists() and second.exists() and os.path.samefile(first, second)


def check_not_input(path: str | Path, inputs: Sequence[str | Path], kind: str = "input") -> None:
    """Refuse an output that would replace one of the command's inputs (or its other outputs), or lie inside an input
    folder.

    Args:
        path: the file to be written.
        inputs: input files or folders (or other outputs) that must not be replaced.
        kind: what ``inputs`` are, for the message (``"input"``, ``"output"``).

    Raises:
        FusionInputError: ``<path>: is the <kind> <source>; ...`` or ``lies inside the input folder``.
    """
    path = Path(path)
    for source in map(Path, inputs):
        if same_file(path, source):
            raise FusionInputError(
                f"{path}: is the {kind} {source}; an {kind} is never replaced, choose another output"
            )
        if source.is_dir() and source.resolve() in path.resolve().parents:
            raise FusionInputError(f"{path}: lies inside the input folder {source}; write the output elsewhere")


def check_output_file(
    path: str | Path, example: str, inputs: Sequence[str | Path] = (), overwrite: bool = True
) -> Path:
    """Fail before any long work when the file ``path`` could not be written: a folder, one of the inputs, an
    existing file without ``overwrite``, or a place that cannot be written (:func:`check_writable`).

    Args:
        path: the file to be written later (a table, a report, a picture).
        example: a file name of the right kind, suggested inside ``path`` when it is a folder (e.g. ``"metrics.csv"``).
        inputs: files (or folders) the command reads, never to be replaced (:func:`check_not_input`).
        overwrite: an existing file may be replaced.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        FusionInputError: ``<path>: is a folder; give a file name (e.g. <path>/<example>)``, ``is the input``,
            ``output exists`` or ``cannot write here``.
    """
    path = Path(path)
    if path.is_dir():
        raise FusionInputError(f"{path}: is a folder; give a file name (e.g. {path / example})")
    check_not_input(path, inputs)
    if path.exists() and not overwrite:
        raise _exists_error(path)
    check_writable(path)
    return path


def _exists_error(path: Path) -> FusionInputError:
    return FusionInputError(f"{path}: output exists; pass --overwrite (overwrite=True) to replace it")


@contextmanager
def atomic_path(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` and move it onto ``path`` only when the block succeeds.

    Args:
        path: the final file; missing parent folders are created.
        overwrite: replace an existing ``path``; otherwise an existing file is an error and is kept, also when
            another process creates it while this one writes (the final step is an atomic :func:`os.link`).

    Yields:
        the temporary path to write to (in the same folder as ``path``).

    Raises:
        FusionInputError: ``path`` exists (or appears meanwhile) and ``overwrite`` is False, ``path`` is a folder,
            its name is too long, or it cannot be written (a parent that is a file, a read-only file system, a full
            disk); a partial file is never left behind.
    """
    path = Path(path)
    if path.is_dir():
        raise FusionInputError(f"{path}: is a folder; give an output file name")
    if len(os.fsencode(path.name)) > _NAME_MAX:
        raise FusionInputError(f"{path.name[:40]}...: output name of {len(os.fsencode(path.name))} bytes is longer "
                               f"than file systems allow ({_NAME_MAX}); choose a shorter name")
    if path.exists() and not overwrite:
        raise _exists_error(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)
        tmp = path.parent / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.tmp{_extension(path.name)}"
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as err:  # a parent that is a file, a read-only or virtual file system
        raise FusionInputError(f"{path}: cannot write here ({err.strerror or err})") from None
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask)  # created 0600; give the file the usual permissions
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_no_clobber(tmp, path)
    except FileExistsError:
        raise _exists_error(path) from None
    except OSError as err:  # disk full, quota: the partial temporary file is removed below
        raise FusionInputError(f"{path}: cannot write output ({err.strerror or err}); nothing was written") from None
    finally:
        tmp.unlink(missing_ok=True)


def _link_no_clobber(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` only if ``path`` does not exist, atomically.

    Raises:
        FileExistsError: ``path`` exists.
    """
    try:
        os.link(tmp, path)  # fails with EEXIST when the target exists, whoever created it
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # no hard links on this file system: claim the name exclusively, then replace the empty claim
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.replace(tmp, path)


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
