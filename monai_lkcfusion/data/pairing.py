"""Pairing images of several folders by name, and naming results after their inputs.

One rule everywhere (CLI, bundle, metrics folders, evaluation, Harvard datalists): two entries belong together when
their names without the image extension are equal (:func:`~monai_lkcfusion.data.io.image_stem`, in Unicode NFC form:
a name copied from macOS, decomposed, pairs with its composed twin), so ``a.nii.gz`` pairs with ``a.nii`` and ``a.png``
with ``a.PNG``; names that differ in letter case do not pair (they may be two cases), and are reported as such. Hidden
entries and documents (:data:`NOT_IMAGE_SUFFIXES`: a README, a CSV of results, a transform file) are skipped;
sub-folders are entries too (a DICOM series per folder). A file of any other extension is an entry, so an image in a
format that cannot be read is reported, never passed over.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import FusionInputError
from .atomic import same_file
from .io import NOT_IMAGE_SUFFIXES, WRITABLE_SUFFIXES, image_stem, image_suffix, unsupported_format

__all__ = [
    "check_distinct_pair", "files_by_name", "match_files_by_name", "name_key", "output_name", "pair_files_by_name"
]


_DETACHED_DATA = (".raw", ".zraw", ".raw.gz")
"""Extensions of the data files that a detached header (``.mhd``, ``.nhdr``) beside them names."""


def _is_header_data(name: str, names: set[str]) -> bool:
    """Whether the lower-case file ``name`` is the data file of a ``.mhd``/``.nhdr`` header of the same stem in a
    folder holding ``names`` (then it is part of that image, not an entry of its own)."""
    for extension in _DETACHED_DATA:
        if name.endswith(extension):
            stem = name[: -len(extension)]
            return f"{stem}.mhd" in names or f"{stem}.nhdr" in names
    return False


def name_key(path: str | Path) -> str:
    """The name two entries are paired by: the name without image extension, in Unicode NFC form.

    Args:
        path: a file or folder path.

    Returns:
        :func:`~monai_lkcfusion.data.io.image_stem` of ``path``, NFC-normalised (so a macOS NFD name matches).
    """
    return unicodedata.normalize("NFC", image_stem(path))


def files_by_name(folder: str | Path, suffixes: Sequence[str] | None = None) -> dict[str, Path]:
    """The entries of one folder keyed by their name without image extension, sorted by that name.

    Args:
        folder: the folder.
        suffixes: keep only files with one of these lower-case extensions (e.g. ``PICTURE_SUFFIXES``); ``None``
            keeps every file and sub-folder except documents (:data:`NOT_IMAGE_SUFFIXES`).

    Returns:
        ``{stem: path}`` sorted by stem; the data file of a detached header (``a.raw`` beside ``a.mhd``) is part
        of that image, not an entry.

    Raises:
        FusionInputError: ``folder`` is not a folder, or two of its entries share a name (``a.png`` and ``a.jpg``).
    """
    folder = Path(folder)
    if folder.is_file():
        raise FusionInputError(f"{folder}: is a file, not a folder of images")
    if not folder.is_dir():
        raise FusionInputError(f"{folder}: no such folder")
    entries: dict[str, Path] = {}
    paths = sorted(folder.iterdir())
    names = {path.name.lower() for path in paths}
    for path in paths:
        suffix = image_suffix(path)
        if path.name.startswith(".") or suffixes is not None and suffix not in suffixes:
            continue
        if path.is_file() and suffix in NOT_IMAGE_SUFFIXES:
            continue
        if _is_header_data(path.name.lower(), names):
            continue
        stem = name_key(path)
        if stem in entries:
            raise FusionInputError(f"{folder}: '{entries[stem].name}' and '{path.name}' have one name; keep one")
        entries[stem] = path
    return dict(sorted(entries.items()))


def match_files_by_name(
    folders: Mapping[str, str | Path], suffixes: Sequence[str] | None = None
) -> tuple[list[dict[str, Path | str]], dict[str, list[Path]]]:
    """Group the entries of several folders by name (see the module docstring for the rule).

    Args:
        folders: key (e.g. ``"mri"``, ``"other"``, ``"fused"``) -> folder.
        suffixes: see :func:`files_by_name`.

    Returns:
        ``(matched, unmatched)``: one dict per name found in every folder, ``{"name": stem, key: path, ...}``,
        sorted by name; and, per key, the entries of that folder missing from at least one other folder.

    Raises:
        FusionInputError: a folder is missing, holds two entries of one name, or is given for two keys (every
            entry would be matched with itself).
    """
    entries = {key: files_by_name(folder, suffixes) for key, folder in folders.items()}
    seen: dict[Path, str] = {}
    for key, folder in folders.items():
        first = seen.setdefault(Path(folder).resolve(), key)
        if first != key:
            raise FusionInputError(f"{folder}: given as both the {first} and the {key} folder; every image would be "
                                   "matched with itself")
    common = set.intersection(*(set(found) for found in entries.values()))
    matched: list[dict[str, Path | str]] = [
        {"name": stem, **{key: found[stem] for key, found in entries.items()}} for stem in sorted(common)
    ]
    unmatched = {key: [path for stem, path in found.items() if stem not in common] for key, found in entries.items()}
    return matched, unmatched


def pair_files_by_name(mri_dir: str | Path, other_dir: str | Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Pair the images of an MRI folder and a second-modality folder by name.

    Args:
        mri_dir: folder of MRIs.
        other_dir: folder of the second modality.

    Returns:
        ``(pairs, unpaired)``: the matched ``(mri, other)`` paths sorted by name, and one message per entry of
        either folder that has no partner.

    Raises:
        FusionInputError: either folder is missing, or holds two entries of one name.
    """
    matched, unmatched = match_files_by_name({"mri": mri_dir, "other": other_dir})
    pairs = [(Path(m["mri"]), Path(m["other"])) for m in matched]

    # why each unpaired entry cannot be read, if it cannot (a file of an unknown extension is opened once, for DICOM)
    unreadable = {path: unsupported_format(path) for paths in unmatched.values() for path in paths}

    def message(path: Path, folder: str | Path, others: list[Path]) -> str:
        if unreadable[path] is not None:  # it pairs with nothing, yet its partner may be there
            return unreadable[path]
        key = name_key(path)
        unread = [o.name for o in others if unreadable[o] is not None
                  and unicodedata.normalize("NFC", o.name).casefold().startswith(f"{key.casefold()}.")]
        if unread:
            return f"{path}: no partner in {folder} ({unread[0]} there is in a format that is not read)"
        twins = [o.name for o in others if name_key(o).casefold() == key.casefold()]
        hint = f" ({twins[0]} there differs only in letter case; rename one to pair them)" if twins else ""
        return f"{path}: no partner in {folder}{hint}"

    unpaired = [message(p, other_dir, unmatched["other"]) for p in unmatched["mri"]]
    unpaired += [message(p, mri_dir, unmatched["mri"]) for p in unmatched["other"]]
    return pairs, unpaired


def check_distinct_pair(
    mri: object, other: object, mri_series: str | None = None, other_series: str | None = None
) -> None:
    """Refuse one file (or one series of a DICOM folder) given as both images of a pair.

    Args:
        mri: the MRI (a path; arrays and tensors are not compared).
        other: the second modality.
        mri_series: SeriesInstanceUID chosen in the MRI's DICOM folder.
        other_series: the same for ``other``.

    Raises:
        FusionInputError: both name the same image: fusing an image with itself gives it back.
    """
    if not all(isinstance(image, (str, Path)) for image in (mri, other)):
        return
    if same_file(mri, other) and mri_series == other_series:
        raise FusionInputError(f"{other}: given as both the MRI and the other image; fusing an image with itself "
                               "gives it back: give the second modality's image")


def output_name(source: str | Path, prefix: str = "", suffix: str | None = None) -> str:
    """The file name of a result written for ``source`` (the bundle writes ``fused_<name>``, the CLI ``<name>``).

    Args:
        source: the input the result belongs to (the MRI file or DICOM series folder).
        prefix: put before the name, e.g. ``"fused_"``.
        suffix: the output extension (e.g. ``".nii.gz"``); default: the source's own when
            :func:`~monai_lkcfusion.data.io.write_image` writes that format, else ``.nii.gz`` (DICOM, ``.mhd``).

    Returns:
        ``prefix + stem + extension``, e.g. ``output_name("t1.nii", "fused_") == "fused_t1.nii"``.
    """
    stem = image_stem(source)
    own = Path(source).name[len(stem) :]  # as written, e.g. ".PNG"
    extension = suffix if suffix is not None else own if own.lower() in WRITABLE_SUFFIXES else ".nii.gz"
    return f"{prefix}{stem}{extension}"
