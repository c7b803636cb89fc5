"""Patient-disjoint splits: no subject on both sides, the Harvard naming rules, and typos refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from monai_lkcfusion.data import harvard_datalist
from monai_lkcfusion.data.splits import GLIOMA_SUBJECT, HARVARD_PET_SUBJECT, harvard_subject, split_by_subject
from monai_lkcfusion.errors import FusionInputError


def _item(task: str, name: str, **extra: str) -> dict[str, str]:
    return {"mri": f"/d/{task}/MRI/{name}", "other": f"/d/{task}/X/{name}", "task": task, **extra}


def test_subject_rules() -> None:
    assert harvard_subject(_item("MRI-SPECT", "16009.png")) == "MRI-SPECT/16"
    assert harvard_subject(_item("MRI-CT", "2005.png")) == "MRI-CT/2"
    # the three orientations of the one normal FDG subject are one subject
    assert {harvard_subject(_item("MRI-PET", n)) for n in ("25016.png", "30025.png", "41022.png")} == {
        f"MRI-PET/{HARVARD_PET_SUBJECT}"
    }
    assert harvard_subject(_item("MRI-PET", "safusion_21.png")) == f"MRI-PET/{GLIOMA_SUBJECT}"
    assert harvard_subject(_item("MRI-PET", "zlf_012.png")) == f"MRI-PET/{GLIOMA_SUBJECT}"
    assert harvard_subject(_item("MRI-CT", "ifcnn_c01.png")) == "MRI-CT/ifcnn_c01"
    assert harvard_subject(_item("MRI-CT", "16009.png", subject="p7")) == "p7"  # an explicit field wins


def test_split_is_disjoint_and_complete() -> None:
    items = [_item("MRI-SPECT", f"{case}{s:03d}.png") for case in (3, 9, 18) for s in range(5, 9)]
    train, val = split_by_subject(items, ["MRI-SPECT/18"])
    assert len(train) + len(val) == len(items) and len(val) == 4
    assert {i["subject"] for i in train}.isdisjoint({i["subject"] for i in val})


def test_unknown_validation_subject_is_refused() -> None:
    with pytest.raises(FusionInputError, match="MRI-SPECT/99"):
        split_by_subject([_item("MRI-SPECT", "3005.png")], ["MRI-SPECT/99"])


@pytest.mark.shared
def test_harvard_folders_split_by_patient(harvard_root: Path) -> None:
    """On the real folders: held-out cases never appear in training, and xg test/train share cases (why we split)."""
    shared = harvard_root.parent
    items = harvard_datalist(shared, "harvard_xg/train") + harvard_datalist(shared, "harvard_xg/test")
    extra = shared / "harvard_extra"
    if extra.is_dir():
        items += harvard_datalist(shared, "harvard_extra")
    test_cases = {harvard_subject(i) for i in harvard_datalist(harvard_root, "test")}
    train_cases = {harvard_subject(i) for i in harvard_datalist(harvard_root, "train")}
    assert test_cases <= train_cases  # harvard_xg/test shares every patient with train
    held = ["MRI-SPECT/18", "MRI-CT/16"] + ([f"MRI-PET/{GLIOMA_SUBJECT}"] if extra.is_dir() else [])
    train, val = split_by_subject(items, held)
    assert {i["subject"] for i in val} == set(held)
    assert not {i["subject"] for i in train} & set(held)
    assert {Path(i["mri"]).name for i in val if i["subject"] == "MRI-SPECT/18"} >= {"18017.png", "18028.png"}


def test_split_by_fraction_of_a_datalist_without_tasks() -> None:
    """A datalist written without ``task`` fields (``write_fusion_datalist`` does not need them) failed in the
    training split with a ``KeyError: 'task'`` traceback (found by a hand-check helper): one group now."""
    from monai_lkcfusion.data.splits import split_by_fraction

    items = [{"mri": f"m{i}.png", "other": f"o{i}.png"} for i in range(10)]
    train, val = split_by_fraction(items, 0.2, seed=0)
    assert len(train) == 8 and len(val) == 2 and not {i["mri"] for i in train} & {i["mri"] for i in val}
    assert train == split_by_fraction(items, 0.2, seed=0)[0]  # the same seed, the same split


@pytest.mark.parametrize("split, message", [
    (([_item("MRI-CT", "1001.png")], []), "split: no validation pairs (its second list is empty); a run validates"),
    (([], [_item("MRI-CT", "1001.png")]), "split: no training pairs (its first list is empty)"),
    ([_item("MRI-CT", "1001.png")], "split: give two lists, (training pairs, validation pairs)"),
    ("train", "split: give two lists"),
    (([{"mri": "a.png"}], [_item("MRI-CT", "1001.png")]), "split: a training item without \"mri\" and \"other\""),
    # a pair of one file with itself, and validation pairs that are also trained on (hand-check helper: both trained
    # without a word; inference refuses the first)
    (([{"mri": "/d/a.png", "other": "/d/a.png"}], [_item("MRI-CT", "1001.png")]),
     "split: a training pair of one file with itself (/d/a.png)"),
    (([_item("MRI-CT", "1001.png"), _item("MRI-CT", "1002.png")], [_item("MRI-CT", "1002.png", subject="x")]),
     "split: 1 validation pair(s) are also training pairs (e.g. /d/MRI-CT/MRI/1002.png)"),
])
def test_a_split_a_run_cannot_use_is_refused(split, message) -> None:
    """A config's own split (or split_by_subject holding every subject out) bypassed split_by_fraction's checks: an
    empty validation list trained every epoch, then failed with "best_model.pt: checkpoint not found" (hand-check
    helper); an empty training list ended in the data loader's traceback."""
    from monai_lkcfusion.data import check_split

    with pytest.raises(FusionInputError) as raised:
        check_split(split)
    assert message in str(raised.value)
    check_split(([_item("MRI-CT", "1001.png")], (_item("MRI-CT", "2001.png"),)))  # lists or tuples of pairs


def test_train_json_refuses_its_own_split_without_validation_before_writing(tmp_path: Path) -> None:
    """The bundle's train.json with an own split that holds no validation pairs: one error, nothing written."""
    import numpy as np
    from PIL import Image

    from monai_lkcfusion.engines import run_bundle_workflow

    for folder in ("MRI", "CT"):
        (tmp_path / "data" / "train" / "MRI-CT" / folder).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((32, 32), 40 * i, np.uint8)).save(tmp_path / "data" / "train" / "MRI-CT" / folder
                                                                      / f"{i}.png")
    own = "$(monai_lkcfusion.data.harvard_datalist(@dataset_dir, 'train', @tasks), [])"
    with pytest.raises(FusionInputError, match="split: no validation pairs"):
        run_bundle_workflow("train.json", (), "train", preset="tiny", dataset_dir=str(tmp_path / "data"), split=own,
                            roi_size=16, output_dir=str(tmp_path / "run"), device="cpu")
    assert not (tmp_path / "run").exists()
