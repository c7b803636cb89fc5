"""Datalists for the Harvard Whole Brain Atlas fusion pairs (``harvard_xg`` folder layout)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import FusionInputError
from .pairing import pair_files_by_name

__all__ = ["HARVARD_TASKS", "harvard_datalist"]

#: task name -> folder of the second modality inside ``<root>/<split>/<task>/``
HARVARD_TASKS: dict[str, str] = {"MRI-CT": "CT", "MRI-PET": "PET", "MRI-SPECT": "SPECT"}


def harvard_datalist(
    root: str | Path, split: str = "train", tasks: Sequence[str] | str | None = None
) -> list[dict[str, str]]:
    """List the registered pairs of a Harvard fusion folder tree.

    The layout is ``<root>/<split>/<task>/{MRI,<other>}/<name>`` with ``task`` in :data:`HARVARD_TASKS`;
    pairs are matched by name as :func:`~monai_lkcfusion.data.pair_files_by_name` does. Missing task folders are
    skipped unless ``tasks`` names them; an image without its partner is an error (registered pair folders hold
    pairs only).

    Args:
        root: folder holding ``train/`` and ``test/``.
        split: sub-folder to list, ``"train"`` or ``"test"`` (any existing sub-folder works).
        tasks: task names to include (``"MRI-CT"``, ``"MRI-PET"``, ``"MRI-SPECT"``); ``None`` takes all.

    Returns:
        One dict per pair, sorted by task then name, with keys ``"mri"`` and ``"other"`` (file paths as strings),
        ``"task"`` and ``"name"`` (the MRI's file name).

    Raises:
        FusionInputError: ``root/split`` does not exist, a task name is unknown, a task named in ``tasks`` has no
            folder, ``tasks`` is ``None`` and ``root/split`` holds a folder that is not a task's (``MRI-FDG``,
            ``mri-pet``: its pairs were left out without a word), or an image has no partner.
    """
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        flat = [task for task, other in HARVARD_TASKS.items() if (Path(root) / other).is_dir()]
        hint = (f"; {root} holds MRI/ beside {HARVARD_TASKS[flat[0]]}/: move both into {split_dir / flat[0]}, or list "
                "the pairs in a datalist (load_fusion_datalist)" if flat and (Path(root) / "MRI").is_dir() else "")
        raise FusionInputError(f"{split_dir}: no such folder; expected <root>/{split}/<task>/MRI/<name>{hint}")
    selected = list(HARVARD_TASKS) if tasks is None else [tasks] if isinstance(tasks, str) else list(tasks)
    unknown = [t for t in selected if t not in HARVARD_TASKS]
    if unknown:
        raise FusionInputError(f"unknown Harvard task(s) {unknown}; choose from {list(HARVARD_TASKS)}")
    if tasks is None:  # all tasks: a folder under another name would be left out without a word
        others = sorted(path.name for path in split_dir.iterdir() if path.is_dir() and path.name not in HARVARD_TASKS
                        and not path.name.startswith((".", "_")))
        if others:
            raise FusionInputError(
                f"{split_dir}: {', '.join(others)}: not task folder(s) (the tasks are {', '.join(HARVARD_TASKS)}), so "
                "their pairs would be left out; rename or move them, or choose tasks with --tasks"
            )
    items: list[dict[str, str]] = []
    for task in selected:
        mri_dir, other_dir = split_dir / task / "MRI", split_dir / task / HARVARD_TASKS[task]
        if not mri_dir.is_dir():
            if tasks is not None:  # asked for by name: training on the others alone would pass without a word
                raise FusionInputError(f"{mri_dir}: no such folder; the task {task} was asked for (--tasks)")
            continue
        pairs, unpaired = pair_files_by_name(mri_dir, other_dir)
        if unpaired:
            raise FusionInputError(f"{len(unpaired)} unpaired image(s): {'; '.join(unpaired)}")
        items += [{"mri": str(mri), "other": str(other), "task": task, "name": mri.name} for mri, other in pairs]
    return items
