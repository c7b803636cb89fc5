"""Patient-disjoint splits of fusion pairs: generalisation is only measured on subjects a model did not train on.

A pair's *subject* is the patient (or AANLIB case) it was imaged from. In the Harvard Whole Brain Atlas folders
(``../shared/data``, see its README) the file name tells it:

- ``harvard_xg`` MRI-CT / MRI-SPECT: ``<case><3-digit slice>.png``, e.g. ``16009.png`` is slice 009 of case 16;
- ``harvard_xg`` MRI-PET: prefixes 25, 30 and 41 are the coronal, sagittal and axial series of ONE normal FDG
  subject, so every MRI-PET pair of that folder is one subject;
- ``harvard_extra``: ``safusion_*`` and ``zlf_*`` pairs are one glioma patient; every other stem
  (``ifcnn_c01`` ...) is its own case.

Other folders: a datalist item may carry its own ``"subject"`` field, which always wins.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..errors import FusionInputError
from .atomic import same_file

__all__ = [
    "HARVARD_PET_SUBJECT",
    "GLIOMA_SUBJECT",
    "check_split",
    "harvard_subject",
    "split_by_fraction",
    "split_by_subject",
]

HARVARD_PET_SUBJECT = "harvard-fdg-normal"
"""The one subject of every ``harvard_xg`` MRI-PET pair (prefixes 25/30/41: three orientations)."""

GLIOMA_SUBJECT = "glioma"
"""The glioma patient of ``harvard_extra`` MRI-PET (``safusion_*``, ``zlf_*``)."""

_AANLIB_NAME = re.compile(r"^(\d+)(\d{3})$")


def harvard_subject(item: Mapping[str, object]) -> str:
    """The subject (patient / AANLIB case) of one Harvard pair, prefixed by its task.

    Args:
        item: a datalist item with ``"mri"`` (path) and ``"task"`` (``"MRI-CT"``, ``"MRI-PET"``, ``"MRI-SPECT"``);
            an explicit ``"subject"`` field is returned as it is.

    Returns:
        e.g. ``"MRI-SPECT/16"``, ``"MRI-PET/harvard-fdg-normal"``, ``"MRI-PET/glioma"``, ``"MRI-CT/ifcnn_c01"``.
    """
    if "subject" in item:
        return str(item["subject"])
    task = str(item.get("task", "pair"))
    stem = Path(str(item["mri"])).name.split(".")[0]
    match = _AANLIB_NAME.match(stem)
    if match and task == "MRI-PET":
        return f"{task}/{HARVARD_PET_SUBJECT}"
    if match:
        return f"{task}/{match.group(1)}"
    if stem.startswith(("safusion_", "zlf_")):
        return f"{task}/{GLIOMA_SUBJECT}"
    return f"{task}/{stem}"


def split_by_subject(
    items: Sequence[Mapping[str, object]],
    val_subjects: Sequence[str],
    subject: Callable[[Mapping[str, object]], str] = harvard_subject,
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Split pairs so that no subject is on both sides: ``val_subjects`` validate, every other subject trains.

    Args:
        items: datalist items (see :func:`~monai_lkcfusion.data.harvard_datalist`).
        val_subjects: subjects held out, as :func:`harvard_subject` names them (e.g. ``"MRI-PET/glioma"``).
        subject: the rule that names an item's subject.

    Returns:
        ``(train, validation)``; each item gains a ``"subject"`` field.

    Raises:
        FusionInputError: a named validation subject has no pair in ``items`` (a typo would silently validate
            on nothing).
    """
    tagged = [{**item, "subject": subject(item)} for item in items]
    known = {item["subject"] for item in tagged}
    missing = sorted(set(val_subjects) - known)
    if missing:
        raise FusionInputError(f"validation subject(s) {missing} have no pair; known subjects: {sorted(known)}")
    held = set(val_subjects)
    train = [item for item in tagged if item["subject"] not in held]
    val = [item for item in tagged if item["subject"] in held]
    return train, val


def split_by_fraction(
    items: Sequence[Mapping[str, object]], val_fraction: float, seed: int = 0
) -> tuple[list[Mapping[str, object]], list[Mapping[str, object]]]:
    """A random split stratified by task (MONAI's ``partition_dataset_classes``), refusing a side without pairs.

    Not patient-disjoint (see :func:`split_by_subject` for that): the bundle's quick default.

    Args:
        items: datalist items, stratified by their ``"task"`` field (items without one are one group: a datalist
            written without tasks failed with a ``KeyError``).
        val_fraction: share of the pairs that validate, in (0, 1).
        seed: shuffling seed.

    Returns:
        ``(train, validation)``.

    Raises:
        FusionInputError: no pairs at all (check the dataset folder and the tasks), a fraction outside (0, 1), or
            too few pairs for both sides (training would run every epoch and then fail for want of validation).
    """
    from monai.data import partition_dataset_classes

    if not items:
        raise FusionInputError("no training pairs found: check --dataset-dir (dataset_dir) and --tasks (tasks)")
    if not 0.0 < val_fraction < 1.0:
        raise FusionInputError(f"val_fraction {val_fraction}: give a share between 0 and 1")
    train, val = partition_dataset_classes(list(items), [str(item.get("task", "")) for item in items],
                                           ratios=[1.0 - val_fraction, val_fraction], shuffle=True, seed=seed)
    if not train or not val:
        raise FusionInputError(
            f"{len(items)} pair(s) leave {'no validation' if train else 'nothing to train on'} at val_fraction "
            f"{val_fraction:g}: add pairs or change val_fraction"
        )
    return train, val


def check_split(split: object) -> None:
    """Refuse a training split a run cannot use, before it starts: a config's own ``split`` (or one of
    :func:`split_by_subject` that holds every subject out) bypasses :func:`split_by_fraction`'s checks, and an empty
    side failed after training ("best_model.pt: checkpoint not found") or in the data loader with a traceback.

    Args:
        split: ``(training items, validation items)``, each a non-empty list of ``{"mri": path, "other": path}``.

    Raises:
        FusionInputError: not two lists, an empty list, an item without ``"mri"`` and ``"other"``, a pair of one file
            with itself, or a validation pair that is also a training pair.
    """
    def is_list(value: object) -> bool:
        return isinstance(value, Sequence) and not isinstance(value, (str, bytes))

    if not is_list(split) or len(split) != 2 or not all(is_list(part) for part in split):
        raise FusionInputError(f"split: give two lists, (training pairs, validation pairs); got {str(split)[:80]}")
    advice = {"training": "put pairs in it, or hold out fewer subjects",
              "validation": "a run validates to choose its best model; set val_fraction > 0, hold out a subject "
                            "(split_by_subject), or put pairs in it"}
    for (side, fix), order, part in zip(advice.items(), ("first", "second"), split):
        if not part:
            raise FusionInputError(f"split: no {side} pairs (its {order} list is empty); {fix}")
        bad = next((item for item in part if not isinstance(item, Mapping) or not {"mri", "other"} <= set(item)), None)
        if bad is not None:
            raise FusionInputError(f"split: a {side} item without \"mri\" and \"other\" ({str(bad)[:80]}); give each "
                                   "pair as {\"mri\": path, \"other\": path}")
        same = next((item for item in part if all(isinstance(item[key], (str, os.PathLike)) for key in ("mri", "other"))
                     and same_file(item["mri"], item["other"])), None)
        if same is not None:  # inference refuses it (check_distinct_pair); training learnt from it without a word
            raise FusionInputError(f"split: a {side} pair of one file with itself ({same['mri']}); give the MRI and "
                                   "the other modality")
    trained = {_pair_key(item) for item in split[0]}
    both = [item for item in split[1] if _pair_key(item) in trained]
    if both:  # validation then measures fitting and picks the best model on pairs it trained on
        raise FusionInputError(f"split: {len(both)} validation pair(s) are also training pairs (e.g. "
                               f"{both[0]['mri']}); keep each pair, better each patient, on one side")


def _pair_key(item: Mapping[str, object]) -> tuple[str, str]:
    """A pair's two files as absolute paths (a moved or relative spelling of one pair is one key)."""
    return tuple(os.path.abspath(str(item[key])) for key in ("mri", "other"))  # type: ignore[return-value]

