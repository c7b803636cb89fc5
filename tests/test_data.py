"""Datalists: Harvard layout (shared data and a tree made here), decathlon JSON round trip, pairing by name."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from PIL import Image

from monai_lkcfusion.data import (
    demo_files,
    harvard_datalist,
    load_fusion_datalist,
    match_files_by_name,
    output_name,
    pair_files_by_name,
    write_fusion_datalist,
)
from monai_lkcfusion.errors import FusionInputError


def _make_tree(root: Path, counts: dict[str, int]) -> None:
    other = {"MRI-CT": "CT", "MRI-PET": "PET", "MRI-SPECT": "SPECT"}
    for task, n in counts.items():
        for sub in ("MRI", other[task]):
            (root / "train" / task / sub).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8), i, np.uint8)).save(root / "train" / task / sub / f"{i:03d}.png")


@pytest.mark.shared
def test_harvard_counts_on_shared_data(harvard_root):
    train = Counter(item["task"] for item in harvard_datalist(harvard_root, "train"))
    test = Counter(item["task"] for item in harvard_datalist(harvard_root, "test"))
    assert train == {"MRI-CT": 160, "MRI-PET": 245, "MRI-SPECT": 333}
    assert test == {"MRI-CT": 24, "MRI-PET": 24, "MRI-SPECT": 24}
    pet = harvard_datalist(harvard_root, "test", tasks="MRI-PET")
    assert all(Path(i["mri"]).name == Path(i["other"]).name == i["name"] for i in pet)
    assert all("/PET/" in i["other"] for i in pet)


def test_harvard_counts_on_temp_tree(tmp_path):
    _make_tree(tmp_path, {"MRI-CT": 3, "MRI-SPECT": 2})
    items = harvard_datalist(tmp_path)
    assert Counter(i["task"] for i in items) == {"MRI-CT": 3, "MRI-SPECT": 2}
    assert set(items[0]) == {"mri", "other", "task", "name"}
    assert len(harvard_datalist(tmp_path, tasks=["MRI-SPECT"])) == 2
    (tmp_path / "train" / "MRI-CT" / "CT" / "001.png").unlink()
    with pytest.raises(FusionInputError, match="no partner"):
        harvard_datalist(tmp_path)
    with pytest.raises(FusionInputError, match="unknown Harvard task"):
        harvard_datalist(tmp_path, tasks="MRI-XR")
    with pytest.raises(FusionInputError, match="no such folder"):
        harvard_datalist(tmp_path, split="test")
    # a task asked for by name but absent: training went on with the others without a word (hand-check helper)
    with pytest.raises(FusionInputError, match=r"MRI-PET/MRI: no such folder; the task MRI-PET was asked for"):
        harvard_datalist(tmp_path, tasks=["MRI-SPECT", "MRI-PET"])


def test_folders_that_are_not_tasks_are_not_left_out_silently(tmp_path):
    """Pairs under train/MRI-FDG or train/mri-pet were left out of training without a word (it trained on the
    task folders only; hand-check helper). All tasks: refused, naming them; tasks chosen by name: the others are
    left out as asked. Hidden folders are not tasks."""
    _make_tree(tmp_path, {"MRI-CT": 2, "MRI-PET": 1})
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    assert len(harvard_datalist(tmp_path)) == 3
    for name in ("MRI-FDG", "mri-pet"):
        (tmp_path / "train" / name / "MRI").mkdir(parents=True)
        with pytest.raises(FusionInputError, match=rf"train: {name}: not task folder\(s\) \(the tasks are MRI-CT, "):
            harvard_datalist(tmp_path)
        assert len(harvard_datalist(tmp_path, tasks=["MRI-CT", "MRI-PET"])) == 3
        (tmp_path / "train" / name / "MRI").rmdir()
        (tmp_path / "train" / name).rmdir()


def test_decathlon_datalist_round_trip(tmp_path):
    _make_tree(tmp_path / "data", {"MRI-CT": 2, "MRI-PET": 1})
    (tmp_path / "vol").mkdir()
    volumes = [{"mri": str(tmp_path / "vol" / "a_t1.nii.gz"), "other": str(tmp_path / "vol" / "a_pet.nii.gz")}]
    items = harvard_datalist(tmp_path / "data")
    path = write_fusion_datalist(tmp_path / "list.json", {"training": items[:2], "test": items[2:] + volumes},
                                 name="toy")
    raw = json.loads(path.read_text())
    assert raw["name"] == "toy" and not Path(raw["training"][0]["mri"]).is_absolute()
    assert load_fusion_datalist(path, "training") == items[:2]
    assert load_fusion_datalist(path, "test")[1]["mri"] == volumes[0]["mri"]
    monai_items = load_decathlon_datalist(path, is_segmentation=False, data_list_key="training")
    assert [i["mri"] for i in monai_items] == [i["mri"] for i in items[:2]]
    with pytest.raises(FusionInputError):
        load_fusion_datalist(path, "validation")
    with pytest.raises(FusionInputError, match="needs keys"):
        write_fusion_datalist(tmp_path / "bad.json", {"training": [{"mri": "x"}]})



def test_datalist_of_paths_relative_to_the_current_folder(tmp_path, monkeypatch):
    """``harvard_datalist("HARVARD")`` gives paths relative to the current folder; written beside them in another
    folder they were read back joined to the JSON's folder (files that do not exist). Read back, they are absolute
    and name the same files, also with a relative ``base_dir``."""
    _make_tree(tmp_path / "HARVARD", {"MRI-PET": 2})
    monkeypatch.chdir(tmp_path)
    items = harvard_datalist("HARVARD")
    assert not Path(items[0]["mri"]).is_absolute()
    for json_path, base_dir in (("lists/datalist.json", None), ("datalist.json", None), ("lists/b.json", "HARVARD")):
        path = write_fusion_datalist(json_path, {"training": items}, base_dir=base_dir)
        read = load_fusion_datalist(path, base_dir=base_dir)
        assert all(Path(i[k]).is_absolute() and Path(i[k]).is_file() for i in read for k in ("mri", "other"))
        assert [Path(i["mri"]).resolve() for i in read] == [Path(i["mri"]).resolve() for i in items]


def test_a_datalist_is_not_replaced_unasked(tmp_path):
    """``write_fusion_datalist`` replaced an existing JSON without a word, unlike every other writer of the package
    (docs helper): it is kept unless ``overwrite=True``."""
    _make_tree(tmp_path / "HARVARD", {"MRI-PET": 2})
    items = harvard_datalist(tmp_path / "HARVARD")
    path = write_fusion_datalist(tmp_path / "list.json", {"training": items})
    first = path.read_text()
    with pytest.raises(FusionInputError, match="list.json"):
        write_fusion_datalist(path, {"training": items[:1]})
    assert path.read_text() == first
    write_fusion_datalist(path, {"training": items[:1]}, overwrite=True)
    assert len(load_fusion_datalist(path)) == 1


def test_pair_files_by_name(tmp_path):
    for folder, names in {"a": ["x.nii.gz", "y.png", "z.png"], "b": ["x.nii", "y.png", "w.png"]}.items():
        (tmp_path / folder).mkdir()
        for n in names:
            (tmp_path / folder / n).write_bytes(b"1")
    pairs, unpaired = pair_files_by_name(tmp_path / "a", tmp_path / "b")
    assert [(m.name, o.name) for m, o in pairs] == [("x.nii.gz", "x.nii"), ("y.png", "y.png")]
    assert len(unpaired) == 2 and any("z.png" in u for u in unpaired) and any("w.png" in u for u in unpaired)


def test_names_pair_in_either_unicode_form_and_case_twins_are_named(tmp_path):
    """A name copied from macOS (decomposed, NFD) did not pair with its composed (NFC) twin, which looks the same; a
    name differing only in letter case was reported as "no partner" without a word on why."""
    import unicodedata

    for folder, names in {"a": [unicodedata.normalize("NFC", "pätient.png"), "Case.png"],
                          "b": [unicodedata.normalize("NFD", "pätient.png"), "case.png"]}.items():
        (tmp_path / folder).mkdir()
        for n in names:
            (tmp_path / folder / n).write_bytes(b"1")
    pairs, unpaired = pair_files_by_name(tmp_path / "a", tmp_path / "b")
    assert [unicodedata.normalize("NFC", m.name) for m, _ in pairs] == [unicodedata.normalize("NFC", "pätient.png")]
    assert len(unpaired) == 2 and all("differs only in letter case" in u for u in unpaired), unpaired
    assert "case.png there differs only in letter case" in unpaired[0]


def test_an_entry_in_an_unread_format_is_named_as_such_not_as_unpaired(tmp_path):
    """MRI/e.webp beside PET/e.png was reported as two entries without a partner, exit 1: the user was told the
    partner was missing while it lay there (hand-check helper). Both lines now say that the format is not read."""
    for folder, names in {"a": ["e.webp", "k.png", "s.tiff"], "b": ["e.png", "k.png", "s.TGA"]}.items():
        (tmp_path / folder).mkdir()
        for n in names:
            (tmp_path / folder / n).write_bytes(b"1")
    pairs, unpaired = pair_files_by_name(tmp_path / "a", tmp_path / "b")
    assert [m.name for m, _ in pairs] == ["k.png"]
    messages = dict(zip((Path(u.split(": ")[0]).name for u in unpaired), unpaired))
    assert set(messages) == {"e.webp", "e.png", "s.tiff", "s.TGA"}, unpaired
    assert "unsupported format '.webp'; use .png" in messages["e.webp"]
    assert "no partner in" in messages["e.png"]
    assert "(e.webp there is in a format that is not read)" in messages["e.png"]
    assert "(s.TGA there is in a format that is not read)" in messages["s.tiff"]
    assert "unsupported format '.tga'" in messages["s.TGA"]


def test_match_files_by_name_across_three_folders(tmp_path):
    folders = {"f": ["a.png", "b.png", ".hidden.png"], "m": ["a.PNG", "b.png", "c.png"], "o": ["a.jpg"]}
    for folder, names in folders.items():
        (tmp_path / folder).mkdir()
        for n in names:
            (tmp_path / folder / n).write_bytes(b"1")
    (tmp_path / "m" / "notes.txt").write_bytes(b"1")
    matched, unmatched = match_files_by_name({k: tmp_path / k for k in "fmo"}, suffixes=(".png", ".jpg"))
    assert [(m["name"], m["f"].name, m["m"].name, m["o"].name) for m in matched] == [("a", "a.png", "a.PNG", "a.jpg")]
    assert {k: [p.name for p in v] for k, v in unmatched.items()} == {"f": ["b.png"], "m": ["b.png", "c.png"], "o": []}
    (tmp_path / "f" / "a.jpg").write_bytes(b"1")
    with pytest.raises(FusionInputError, match="have one name"):
        match_files_by_name({k: tmp_path / k for k in "fmo"})
    with pytest.raises(FusionInputError, match="no such folder"):
        pair_files_by_name(tmp_path / "m", tmp_path / "missing")


@pytest.mark.parametrize(
    "source, prefix, suffix, expected",
    [
        ("a.png", "", None, "a.png"),
        ("A.PNG", "fused_", None, "fused_A.PNG"),
        ("t1.nii.gz", "fused_", None, "fused_t1.nii.gz"),
        ("t1.nii.gz", "", ".png", "t1.png"),
        ("x.dcm", "", None, "x.nii.gz"),  # a format write_image cannot write becomes NIfTI
        ("series_folder", "fused_", None, "fused_series_folder.nii.gz"),
    ],
)
def test_output_name_is_one_rule_for_cli_and_bundle(source, prefix, suffix, expected):
    assert output_name(source, prefix, suffix) == expected


def test_make_demo_takes_an_output_folder_and_help_writes_nothing(tmp_path, capsys, monkeypatch):
    """``--help`` rewrote the package's demo files (the module had no argument parsing)."""
    from monai_lkcfusion.data import make_demo

    monkeypatch.setattr(make_demo, "make_demo", lambda *a, **k: pytest.fail("--help made the demo"))
    with pytest.raises(SystemExit) as exit_:
        make_demo.main(["--help"])
    assert exit_.value.code == 0 and "OUT_DIR" in capsys.readouterr().out.upper()
    monkeypatch.undo()
    pytest.importorskip("nilearn")
    assert make_demo.main([str(tmp_path / "demo")]) == 0
    shipped = demo_files()
    assert (tmp_path / "demo" / shipped["mri_2d"].name).read_bytes() == shipped["mri_2d"].read_bytes()


def test_a_folder_of_pairs_in_the_inference_layout_gets_a_training_hint(tmp_path: Path) -> None:
    """``lkcfusion train --dataset-dir D`` with ``D/MRI`` beside ``D/PET`` (the layout of ``lkcfusion fuse --mri-dir``
    and bundle inference) said only ``D/train: no such folder`` (own-data training helper): the message now says
    where to move the folders, or to list the pairs in a datalist."""
    for folder in ("MRI", "PET"):
        (tmp_path / folder).mkdir()
    with pytest.raises(FusionInputError, match=rf"holds MRI/ beside PET/: move both into {tmp_path}/train/MRI-PET, or "
                                               r"list the pairs in a datalist \(load_fusion_datalist\)"):
        harvard_datalist(tmp_path)
