"""``lkcfusion evaluate`` and compare_methods: model vs baselines on pairs the test makes, CSV/JSON/figures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_lkcfusion.apps.evaluation import compare_methods
from monai_lkcfusion.cli import main
from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.networks import LKCFUNet


def _pairs(root: Path, n: int = 2) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:64, 0:72]
    for i in range(n):
        mri = 100 + 60 * np.sin(xx / (2 + i)) + 10 * rng.standard_normal(xx.shape)
        blob = 250 * np.exp(-((yy - 30) ** 2 + (xx - 20 - 10 * i) ** 2) / 120.0)
        for folder, array in (("MRI", mri), ("PET", np.stack([blob, 0.6 * blob, 0.1 * blob], -1))):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(root / folder / f"p{i}.png")
    return root / "MRI", root / "PET"


def test_evaluate_cli(tmp_path: Path) -> None:
    mri_dir, other_dir = _pairs(tmp_path / "data")
    weights = tmp_path / "tiny.pt"
    torch.save(LKCFUNet.from_preset("tiny").state_dict(), weights)
    out = tmp_path / "eval"
    code = main(["evaluate", "--mri-dir", str(mri_dir), "--other-dir", str(other_dir), "-o", str(out),
                 "--weights", str(weights), "--methods", "lkcfunet,max,mean"])
    assert code == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 2 * 3 and {r["method"] for r in rows} == {"lkcfunet", "max", "mean"}
    assert list(rows[0])[:3] == ["task", "pair", "method"] and rows[0]["task"] == "PET"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"]["ssim_data_range"] == 2.0
    means = summary["means"]["PET"]
    assert summary["n"]["PET"]["max"]["SD"] == 2
    # summary.csv: one row per task, method and metric with n, mean and std over the pairs
    table = list(csv.DictReader((out / "summary.csv").open()))
    assert list(table[0]) == ["task", "method", "metric", "n", "mean", "std"] and len(table) == 3 * 8
    sd = [float(r["SD"]) for r in rows if r["method"] == "max"]
    row = next(r for r in table if r["method"] == "max" and r["metric"] == "SD")
    assert int(row["n"]) == 2
    assert np.isclose(float(row["mean"]), np.mean(sd)) and np.isclose(float(row["std"]), np.std(sd))
    # pixel max keeps more source detail than pixel mean (higher SD and Qabf) on these pairs
    assert means["max"]["SD"] > means["mean"]["SD"] and means["max"]["Qabf"] > means["mean"]["Qabf"]
    first = [r for r in rows if r["method"] == "max"][0]
    assert np.isclose(float(first["SD"]), float(np.asarray(Image.open(out / "fused/max/PET/p0.png").convert("L"),
                                                          dtype=np.float64).std()), atol=1.0)
    assert (out / "overview.png").stat().st_size > 0 and (out / "metrics.png").stat().st_size > 0


def test_evaluate_cli_bad_folder(tmp_path: Path) -> None:
    assert main(["evaluate", "--mri-dir", str(tmp_path / "nope"), "--other-dir", str(tmp_path), "-o",
                 str(tmp_path / "out")]) == 2


def test_compare_methods_without_overview_figure(tmp_path: Path) -> None:
    mri_dir, other_dir = _pairs(tmp_path / "data")
    pairs = [
        {"mri": str(mri_dir / f"p{i}.png"), "other": str(other_dir / f"p{i}.png"), "task": "MRI-PET"} for i in range(2)
    ]
    summary = compare_methods(pairs, tmp_path / "out", methods=["max", "mean"], figure_rows=0, save_fused=False)
    assert {(r["task"], r["method"]) for r in summary} == {("MRI-PET", "max"), ("MRI-PET", "mean")}
    assert all(r["n"] == 2 for r in summary)
    assert not (tmp_path / "out" / "overview.png").exists() and (tmp_path / "out" / "metrics.png").is_file()


def test_pairs_of_two_sizes_are_refused_with_a_fix_evaluate_has(tmp_path: Path, capsys) -> None:
    """A pair of two sizes cannot be scored pixel by pixel: one line that does not suggest a --resample option
    `lkcfusion evaluate` does not have."""
    for folder, size in (("MRI", (40, 36)), ("CT", (30, 36))):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full(size, 90, np.uint8)).save(tmp_path / folder / "a.png")
    argv = ["evaluate", "--mri-dir", str(tmp_path / "MRI"), "--other-dir", str(tmp_path / "CT"), "-o",
            str(tmp_path / "out"), "--methods", "max", "--metrics", "EN"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "an evaluation scores pairs on one grid" in err and "--resample" not in err
    assert len(err.strip().splitlines()) == 1



def test_a_bad_pair_is_found_before_any_work(tmp_path: Path, capsys) -> None:
    """The size check ran pair by pair: the pairs before the bad one were fused and written, and the rerun was then
    refused as "results of an earlier evaluation" (found by a hand-check helper)."""
    mri_dir, other_dir = _pairs(tmp_path / "data", n=3)
    Image.open(other_dir / "p2.png").resize((50, 40)).save(other_dir / "p2.png")
    argv = ["evaluate", "--mri-dir", str(mri_dir), "--other-dir", str(other_dir), "-o", str(tmp_path / "out"),
            "--methods", "max", "--metrics", "EN"]
    for _ in range(2):  # the same refusal again: nothing was left behind
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "p2.png: size (40, 50) differs from the MRI's (64, 72)" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_evaluation_figures_say_what_they_show(tmp_path: Path, capsys, monkeypatch) -> None:
    """The bar chart names n and the SSIM convention; the overview heads the other image by its modality and says how
    many of the pairs it shows; the CLI prints the SSIM data range (its default differs from `metrics`')."""
    from monai_lkcfusion.apps import evaluation, figures

    mri_dir, other_dir = _pairs(tmp_path / "data", n=3)
    drawn: dict[str, dict] = {}
    monkeypatch.setattr(figures, "metrics_bar_chart", lambda *a, **k: drawn.setdefault("bars", k))
    monkeypatch.setattr(figures, "overview_figure",
                        lambda rows, *a, **k: drawn.setdefault("overview", {"rows": rows, **k}))
    pairs = [{"mri": str(mri_dir / f"p{i}.png"), "other": str(other_dir / f"p{i}.png"), "task": "MRI-PET"}
             for i in range(3)]
    evaluation.compare_methods(pairs, tmp_path / "out", methods=["max"], figure_rows=2, save_fused=False)
    assert drawn["bars"]["title"] == "mean ± std over the pairs (MRI-PET n=3); SSIM data range 2"
    assert drawn["overview"]["title"].endswith("(the first 2 of 3 pairs)")
    assert {row["other_label"] for row in drawn["overview"]["rows"]} == {"PET"}
    assert main(["evaluate", "--mri-dir", str(mri_dir), "--other-dir", str(other_dir), "-o", str(tmp_path / "cli"),
                 "--methods", "max"]) == 0
    assert "SSIM data range 2 (--ssim-data-range; `lkcfusion metrics` defaults to 255)" in capsys.readouterr().out

def test_flush_denormal_false_is_off_in_every_training_config() -> None:
    """`--flush_denormal false` from `python -m monai.bundle run` is the string "false": off in both configs."""
    from monai.bundle import ConfigParser

    from monai_lkcfusion.engines import bundle_config

    for files in (["train.json"], ["train.json", "multi_gpu_train.json"]):
        parser = ConfigParser()
        parser.read_config([bundle_config(name) for name in files])
        parser["flush_denormal"] = "false"
        steps = parser["initialize"]
        index = next(i for i, step in enumerate(steps) if "flush_denormal" in step)
        assert parser.get_parsed_content(f"initialize#{index}") is False, files


@pytest.mark.parametrize("value, expected", [(True, True), ("false", False), (False, False)])
def test_cudnn_benchmark_setting_in_every_training_config(value: object, expected: bool) -> None:
    """`cudnn_benchmark` (on in configs/default_model_gpu.json) sets cuDNN's algorithm search after set_determinism,
    which turns it off; "false" from the command line is off."""
    from monai.bundle import ConfigParser

    from monai_lkcfusion.engines import bundle_config

    before = torch.backends.cudnn.benchmark
    try:
        for files in (["train.json"], ["train.json", "multi_gpu_train.json"]):
            parser = ConfigParser()
            parser.read_config([bundle_config(name) for name in files])
            parser["cudnn_benchmark"] = value
            steps = parser["initialize"]
            determinism = next(i for i, step in enumerate(steps) if "set_determinism" in step)
            index = next(i for i, step in enumerate(steps) if "cudnn_benchmark" in step)
            assert index > determinism, files
            torch.backends.cudnn.benchmark = not expected
            parser.get_parsed_content(f"initialize#{index}")
            assert torch.backends.cudnn.benchmark is expected, files
    finally:
        torch.backends.cudnn.benchmark = before


@pytest.mark.parametrize("methods, metrics, problem", [
    ("", "EN", "--methods: an empty value"), (" , ", "EN", "--methods: give at least one name"),
    ("max", ",", "--metrics: give at least one name"), ("max,bogus", "EN", "unknown fusion method 'bogus'"),
])
def test_evaluate_without_methods_or_metrics_is_one_line_and_writes_nothing(tmp_path: Path, capsys, methods, metrics,
                                                                           problem) -> None:
    """``--methods ""`` wrote part of the results and ended in an internal message; now refused before any work."""
    mri_dir, other_dir = _pairs(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["evaluate", "--mri-dir", str(mri_dir), "--other-dir", str(other_dir), "-o", str(out),
            "--methods", methods, "--metrics", metrics]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"lkcfusion: error: {problem}" + err.split(problem, 1)[1].rstrip()], err
    assert not out.exists() or not any(out.iterdir())


def test_names_given_twice_count_once(tmp_path: Path, capsys) -> None:
    """``--metrics EN,EN`` gave two EN rows per method; ``metrics --metrics EN --metrics SD`` kept only SD."""
    mri_dir, other_dir = _pairs(tmp_path / "data")
    pairs = [{"mri": str(mri_dir / f"p{i}.png"), "other": str(other_dir / f"p{i}.png")} for i in range(2)]
    summary = compare_methods(pairs, tmp_path / "out", methods=["max", "max"], metric_names=["EN", "EN", "SD"],
                              figure_rows=0, save_fused=False)
    assert sorted((r["method"], r["metric"]) for r in summary) == [("max", "EN"), ("max", "SD")]
    assert main(["fuse", "--mri-dir", str(mri_dir), "--other-dir", str(other_dir), "-o", str(tmp_path / "f"),
                 "--method", "max", "-q"]) == 0
    table = tmp_path / "m.csv"
    assert main(["metrics", "--fused", str(tmp_path / "f"), "--mri", str(mri_dir), "--other", str(other_dir),
                 "--metrics", "EN", "--metrics", "SD", "EN", "--csv", str(table)]) == 0
    assert list(csv.DictReader(table.open()).fieldnames) == ["pair", "EN", "SD"]


def test_names_are_separated_by_commas_or_spaces_in_both_commands(tmp_path: Path, capsys) -> None:
    """``metrics --metrics EN,SD`` was refused (``unknown metric(s) ['EN,SD']``) and ``evaluate --metrics EN SD`` too
    (``unrecognized arguments: SD``): one option name, two syntaxes; found by a docs hand-check helper."""
    mri_dir, other_dir = _pairs(tmp_path / "data")
    out = tmp_path / "eval"
    assert main(["evaluate", "--mri-dir", str(mri_dir), "--other-dir", str(other_dir), "-o", str(out),
                 "--methods", "max", "mean", "--metrics", "EN", "SD,SF", "-q"]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert list(rows[0]) == ["task", "pair", "method", "EN", "SD", "SF"]
    assert sorted({row["method"] for row in rows}) == ["max", "mean"]
    fused = out / "fused" / "max" / "PET"
    table = tmp_path / "m.csv"
    assert main(["metrics", "--fused", str(fused), "--mri", str(mri_dir), "--other", str(other_dir),
                 "--metrics", "EN,SD", "SF", "--csv", str(table)]) == 0
    assert list(csv.DictReader(table.open()).fieldnames) == ["pair", "EN", "SD", "SF"]
    capsys.readouterr()
    assert main(["metrics", "--fused", str(fused), "--mri", str(mri_dir), "--other", str(other_dir),
                 "--metrics", ","]) == 2
    said = capsys.readouterr().err
    assert said == "lkcfusion: error: --metrics: give at least one name (separated by commas or spaces)\n"
    assert main(["evaluate", "--mri-dir", str(mri_dir), "--other-dir", str(other_dir), "-o", str(tmp_path / "e2"),
                 "--methods", " , ", "-q"]) == 2  # the option is named, not the library's setting
    assert capsys.readouterr().err.startswith("lkcfusion: error: --methods: give at least one name")


def test_overwrite_replaces_an_earlier_evaluation_as_a_whole(tmp_path: Path) -> None:
    """``--overwrite`` with fewer methods kept the earlier run's fused/mean/ images beside the new results (and an
    overview.png that the new run does not draw); found by a hand-check helper."""
    mri_dir, other_dir = _pairs(tmp_path / "data")
    pairs = [{"mri": str(mri_dir / f"p{i}.png"), "other": str(other_dir / f"p{i}.png")} for i in range(2)]
    out = tmp_path / "out"
    compare_methods(pairs, out, methods=["max", "mean"], metric_names=["EN"])
    assert (out / "fused" / "mean").is_dir() and (out / "overview.png").is_file()
    compare_methods(pairs, out, methods=["max"], metric_names=["EN"], figure_rows=0, overwrite=True)
    assert sorted(p.name for p in (out / "fused").iterdir()) == ["max"] and not (out / "overview.png").exists()
    with pytest.raises(FusionInputError, match="unknown fusion method"):  # a failed start keeps the earlier results
        compare_methods(pairs, out, methods=["bogus"], metric_names=["EN"], overwrite=True)
    assert (out / "fused" / "max").is_dir() and (out / "metrics.csv").is_file()


def _earlier_evaluation(tmp_path: Path, n: int = 2, figure_rows: int = 0) -> tuple[list[dict], Path, dict]:
    """An evaluation (max, mean) of ``n`` made-up pairs in ``tmp_path/out``: the pairs, OUT and its files' bytes."""
    mri_dir, other_dir = _pairs(tmp_path / "data", n=n)
    pairs = [{"mri": str(mri_dir / f"p{i}.png"), "other": str(other_dir / f"p{i}.png")} for i in range(n)]
    out = tmp_path / "out"
    compare_methods(pairs, out, methods=["max", "mean"], metric_names=["EN"], figure_rows=figure_rows)
    return pairs, out, _files(out)


def _files(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones too) and its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_interrupted_overwrite_keeps_the_earlier_results(tmp_path: Path, monkeypatch) -> None:
    """``--overwrite`` removed the earlier results before the new run started: a Ctrl-C (or a failure) in the middle
    left a partial ``fused/`` and no tables. The new results are complete before they replace the earlier ones."""
    import monai_lkcfusion.inference as inference

    pairs, out, before = _earlier_evaluation(tmp_path, n=3, figure_rows=1)
    fuse, calls = inference.fuse, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the second pair
            raise KeyboardInterrupt
        return fuse(*args, **kwargs)

    monkeypatch.setattr(inference, "fuse", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compare_methods(pairs, out, methods=["max"], metric_names=["EN", "SD"], figure_rows=0, overwrite=True)
    after = _files(out)
    assert after == before and not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left
    fresh = tmp_path / "new" / "out"  # a folder the run made is removed again when nothing was written
    with pytest.raises(KeyboardInterrupt):
        calls.clear()
        compare_methods(pairs, fresh, methods=["max"], metric_names=["EN"], figure_rows=0)
    assert not fresh.exists() and fresh.parent.is_dir()
    monkeypatch.setattr(inference, "fuse", fuse)
    compare_methods(pairs, out, methods=["max"], metric_names=["EN", "SD"], figure_rows=0, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["fused", "metrics.csv", "metrics.png", "summary.csv",
                                                     "summary.json"]
    assert sorted(p.name for p in (out / "fused").iterdir()) == ["max"]
    assert len(list((out / "fused" / "max").rglob("*.png"))) == 3


def test_a_failed_replacement_keeps_the_earlier_results_and_stale_stages_are_cleaned(tmp_path, monkeypatch) -> None:
    """Review helper: ``--overwrite`` deleted the earlier results and then moved the new ones in, so a failure in
    between (a file that cannot be removed, a full disk, Ctrl-C) left neither; a dangling ``fused`` link failed only
    after all the work; a killed run's hidden folder stayed for good; a second evaluation finishing into the same
    folder replaced the first's tables without a word."""
    import os

    import monai_lkcfusion.apps.evaluation as evaluation
    import monai_lkcfusion.inference as inference

    pairs, out, before = _earlier_evaluation(tmp_path)
    replace, calls = os.replace, []

    def failing(src, dst, **kwargs):  # os.replace is also what every atomic write ends with
        staged = Path(src).parent.name.endswith(".tmp-evaluation") and not Path(src).name.startswith(".lkcfusion-")
        if staged:  # a new result moved from its stage into place (not an atomic write within the stage)
            calls.append(dst)
            if len(calls) == 2:  # the earlier results are aside, one new one is in
                raise OSError(28, "No space left on device", str(dst))
        return replace(src, dst, **kwargs)

    monkeypatch.setattr(evaluation.os, "replace", failing)
    with pytest.raises(OSError, match="No space left"):
        compare_methods(pairs, out, methods=["max"], metric_names=["EN", "SD"], figure_rows=0, overwrite=True)
    monkeypatch.undo()
    assert len(calls) == 2
    after = _files(out)
    assert after == before and not [p for p in out.rglob(".*")]  # the earlier evaluation, whole; nothing hidden
    for folder in (out, out / "fused"):  # a killed run's partial results (pid 4194303 runs nowhere here)
        (folder / ".lkcfusion-4194303-0badcafe.tmp-evaluation" / "max").mkdir(parents=True)
    fuse = inference.fuse

    def racing(*args, **kwargs):  # another evaluation writes its tables into OUT meanwhile
        (tmp_path / "new" / "metrics.csv").write_text("theirs")
        return fuse(*args, **kwargs)

    (tmp_path / "new").mkdir()
    monkeypatch.setattr(inference, "fuse", racing)
    with pytest.raises(FusionInputError, match="new.metrics.csv: written by another evaluation while this one ran"):
        compare_methods(pairs, tmp_path / "new", methods=["max"], metric_names=["EN"], figure_rows=0)
    assert (tmp_path / "new" / "metrics.csv").read_text() == "theirs"
    monkeypatch.undo()
    compare_methods(pairs, out, methods=["max"], metric_names=["EN"], figure_rows=0, overwrite=True)
    assert not [p for p in out.rglob(".*")] and sorted(p.name for p in (out / "fused").iterdir()) == ["max"]
    dangling = tmp_path / "dangling"
    dangling.mkdir()
    (dangling / "fused").symlink_to(tmp_path / "nowhere", target_is_directory=True)
    monkeypatch.setattr(inference, "fuse", lambda *a, **k: pytest.fail("fused before the check"))
    with pytest.raises(FusionInputError, match="fused: a link to .*nowhere, which does not exist"):
        compare_methods(pairs, dangling, methods=["max"], metric_names=["EN"], figure_rows=0)


@pytest.mark.parametrize("window", ["aside", "in"])
def test_a_replacement_interrupted_right_after_a_rename_is_undone(tmp_path, monkeypatch, window) -> None:
    """Re-check helper: an interrupt just after an earlier entry went aside (or a new one came in), before it was
    recorded, left neither evaluation (the aside folder was deleted). Moves are recorded before they happen (and
    Ctrl-C is held back during them)."""
    import os

    import monai_lkcfusion.apps.evaluation as evaluation

    pairs, out, before = _earlier_evaluation(tmp_path)
    replace = os.replace

    def renamed_then_interrupted(src, dst, **kwargs):
        replace(src, dst, **kwargs)
        kind = "aside" if Path(dst).parent.name.endswith(".tmp-replaced") else \
            "in" if Path(src).parent.name.endswith(".tmp-evaluation") and not Path(src).name.startswith(".") else None
        if kind == window:
            raise KeyboardInterrupt

    monkeypatch.setattr(evaluation.os, "replace", renamed_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        compare_methods(pairs, out, methods=["max"], metric_names=["EN", "SD"], figure_rows=0, overwrite=True)
    monkeypatch.undo()
    after = _files(out)
    assert after == before and not [p for p in out.rglob(".*")]


def test_overwrite_replaces_what_another_run_wrote_meanwhile(tmp_path, monkeypatch) -> None:
    """Re-check helper: two --overwrite runs into one new folder: the second renamed its tables over the first's,
    failed on fused/max with a hidden path in the message, and then deleted its tables: neither evaluation was
    left. What appeared meanwhile is replaced like earlier results, as a whole."""
    import monai_lkcfusion.inference as inference

    mri_dir, other_dir = _pairs(tmp_path / "data", n=2)
    pairs = [{"mri": str(mri_dir / f"p{i}.png"), "other": str(other_dir / f"p{i}.png")} for i in range(2)]
    out, other_run = tmp_path / "out", tmp_path / "other"
    compare_methods(pairs, other_run, methods=["max", "mean"], metric_names=["SD"], figure_rows=0)
    fuse, done = inference.fuse, []

    def racing(*args, **kwargs):  # the other run finishes into OUT while this one fuses
        if not done:
            import shutil

            shutil.copytree(other_run, out, dirs_exist_ok=True)
            done.append(1)
        return fuse(*args, **kwargs)

    monkeypatch.setattr(inference, "fuse", racing)
    compare_methods(pairs, out, methods=["max"], metric_names=["EN"], figure_rows=0, overwrite=True)
    assert (out / "metrics.csv").read_text().splitlines()[0] == "task,pair,method,EN"
    assert sorted(p.name for p in (out / "fused").iterdir()) == ["max"] and not [p for p in out.rglob(".*")]


def test_overwrite_never_removes_what_an_evaluation_did_not_write(tmp_path: Path, capsys) -> None:
    """``--overwrite`` removed OUT/fused as a whole: the user's own `lkcfusion fuse` results there, and input folders
    inside it (found by a hand-check helper): both are refused now, before any work, and kept."""
    mri_dir, other_dir = _pairs(tmp_path / "data")
    own = tmp_path / "study" / "fused"
    assert main(["fuse", "--mri-dir", str(mri_dir), "--other-dir", str(other_dir), "-o", str(own), "--method", "max",
                 "-q"]) == 0
    for extra in ([], ["--overwrite"]):  # it said "results of an earlier evaluation ... pass --overwrite"
        code = main(["evaluate", "--mri-dir", str(mri_dir), "--other-dir", str(other_dir), "-o", str(own.parent),
                     "--methods", "max", "--metrics", "EN", "-q", *extra])
        err = capsys.readouterr().err
        assert code == 2 and "p0.png: not written by an evaluation" in err and "Traceback" not in err, err
    assert sorted(p.name for p in own.iterdir()) == ["p0.png", "p1.png"]
    # an earlier evaluation's fused images scored again as inputs, into the same folder
    out = tmp_path / "ev"
    pairs = [{"mri": str(mri_dir / f"p{i}.png"), "other": str(other_dir / f"p{i}.png")} for i in range(2)]
    compare_methods(pairs, out, methods=["max"], metric_names=["EN"], figure_rows=0)
    again = [{"mri": str(mri_dir / "p0.png"), "other": str(out / "fused" / "max" / "PET" / "p0.png")}]
    with pytest.raises(FusionInputError, match="an input lies in the earlier results .*fused.max"):
        compare_methods(again, out, methods=["max"], metric_names=["EN"], figure_rows=0, overwrite=True)
    assert (out / "fused" / "max" / "PET" / "p0.png").is_file() and (out / "metrics.csv").is_file()


def test_overwrite_through_a_linked_fused_folder(tmp_path: Path) -> None:
    """OUT/fused a symbolic link (to a bigger disk): it failed with "Cannot call rmtree on a symbolic link" after
    removing metrics.csv; the earlier images in the folder it points to are replaced, the link kept."""
    mri_dir, other_dir = _pairs(tmp_path / "data")
    pairs = [{"mri": str(mri_dir / f"p{i}.png"), "other": str(other_dir / f"p{i}.png")} for i in range(2)]
    out, disk = tmp_path / "out", tmp_path / "disk"
    disk.mkdir()
    out.mkdir()
    (out / "fused").symlink_to(disk, target_is_directory=True)
    compare_methods(pairs, out, methods=["max", "mean"], metric_names=["EN"], figure_rows=0)
    for index in (out / "fused" / ".DS_Store", out / "fused" / "max" / "PET" / "Thumbs.db"):  # a file manager's
        index.write_bytes(b"\0")  # (they made the folder "not written by an evaluation" for good)
    compare_methods(pairs, out, methods=["max"], metric_names=["EN"], figure_rows=0, overwrite=True)
    assert (out / "fused").is_symlink() and sorted(p.name for p in disk.iterdir()) == [".DS_Store", "max"]


def test_pairs_of_one_task_and_name_unused_weights_and_a_file_as_output_are_refused(tmp_path: Path) -> None:
    """Two patients' `slice_050.png` under folders both named PET shared one fused file (the first overwritten) and two
    rows no one could tell apart; weights with no lkcfunet run were recorded in summary.json as if used."""
    first, _ = _pairs(tmp_path / "patient1")
    second, _ = _pairs(tmp_path / "patient2")
    pairs = [{"mri": str(root / "p0.png"), "other": str(root.parent / "PET" / "p0.png")} for root in (first, second)]
    with pytest.raises(FusionInputError, match="task 'PET' already has a pair named 'p0.png' .*patient1"):
        compare_methods(pairs, tmp_path / "out", methods=["max"], metric_names=["EN"])
    same_fused = [{**pairs[0], "name": "a.png"}, {**pairs[1], "name": "a.jpg"}]  # both fused/max/PET/a.png
    with pytest.raises(FusionInputError, match="already has a pair named 'a.png' .*same file name"):
        compare_methods(same_fused, tmp_path / "out", methods=["max"], metric_names=["EN"])
    with pytest.raises(FusionInputError, match="without '/'"):
        compare_methods([{**pairs[0], "task": "MRI/PET"}], tmp_path / "out", methods=["max"], metric_names=["EN"])
    compare_methods([{**pair, "task": f"PET{i}"} for i, pair in enumerate(pairs)], tmp_path / "out", methods=["max"],
                    metric_names=["EN"], figure_rows=0)
    assert sorted(p.name for p in (tmp_path / "out" / "fused" / "max").iterdir()) == ["PET0", "PET1"]
    (tmp_path / "afile").write_text("x")  # it was found when the first fused image was written, after the models
    with pytest.raises(FusionInputError, match="afile: is a file; an evaluation writes a folder"):
        compare_methods(pairs[:1], tmp_path / "afile", methods=["max"], metric_names=["EN"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "weights" not in summary["options"]  # lkcfunet did not run
    with pytest.raises(FusionInputError, match="weights nope.pt given, but lkcfunet is not among the methods"):
        compare_methods(pairs[:1], tmp_path / "out2", methods=["max"], weights="nope.pt")
    assert not (tmp_path / "out2").exists()


def test_other_folder_given_as_dot_names_the_task(tmp_path: Path, monkeypatch, capsys) -> None:
    """``--other-dir .`` gave the task "" (the fused images in fused/max/, "" in every table)."""
    mri_dir, other_dir = _pairs(tmp_path / "data")
    monkeypatch.chdir(other_dir)
    assert main(["evaluate", "--mri-dir", str(mri_dir), "--other-dir", ".", "-o", str(tmp_path / "out"), "--methods",
                 "max", "--metrics", "EN", "-q"]) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "metrics.csv").open()))
    assert {row["task"] for row in rows} == {"PET"}
    assert (tmp_path / "out" / "fused" / "max" / "PET" / "p0.png").is_file()


def test_an_infinite_mean_is_named_not_drawn(tmp_path: Path) -> None:
    """PSNR of a fused image equal to a source is infinite: matplotlib printed two raw RuntimeWarnings."""
    import warnings

    from monai_lkcfusion.apps.figures import metrics_bar_chart

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = metrics_bar_chart({"max": {"PSNR": float("inf"), "EN": 4.0}, "mean": {"PSNR": 30.0, "EN": 3.0}},
                                 tmp_path / "m.png", spread={"max": {"PSNR": float("nan"), "EN": 0.1},
                                                             "mean": {"PSNR": 1.0, "EN": 0.1}})
    assert Image.open(path).size[0] > 100
