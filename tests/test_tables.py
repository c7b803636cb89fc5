"""Metric tables: per-pair rows, per-group summaries (n, mean, std per metric), CSV and text layout."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from monai_lkcfusion.metrics.tables import format_summary, format_table, json_text, pivot, summarize, write_table

RECORDS = [
    {"task": "MRI-CT", "pair": "a.png", "method": "max", "EN": 5.0, "SD": 60.0},
    {"task": "MRI-CT", "pair": "b.png", "method": "max", "EN": 7.0, "SD": math.nan},
    {"task": "MRI-PET", "pair": "c.png", "method": "max", "EN": 4.0, "SD": 50.0},
]


def test_summarize_counts_finite_values_per_group_and_metric():
    summary = summarize(RECORDS, ["EN", "SD"])
    assert summary[0] == {"task": "MRI-CT", "method": "max", "metric": "EN", "n": 2, "mean": 6.0, "std": 1.0}
    assert summary[1] == {"task": "MRI-CT", "method": "max", "metric": "SD", "n": 1, "mean": 60.0, "std": 0.0}
    assert [(r["task"], r["metric"], r["n"]) for r in summary[2:]] == [("MRI-PET", "EN", 1), ("MRI-PET", "SD", 1)]
    assert pivot(summary)["MRI-CT"]["max"] == {"EN": 6.0, "SD": 60.0}
    assert pivot(summary, "n")["MRI-PET"]["max"]["SD"] == 1
    overall = summarize(RECORDS, ["EN"], by=())
    assert overall == [{"metric": "EN", "n": 3, "mean": pytest.approx(16 / 3), "std": pytest.approx(np.std([5, 7, 4]))}]
    assert pivot(overall, "mean", by=()) == {"EN": pytest.approx(16 / 3)}
    empty = summarize([{"task": "t", "method": "m", "EN": math.nan}], ["EN"])[0]
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and math.isnan(empty["std"])


def test_infinite_scores_are_counted_and_json_stays_standard():
    """An infinite score (PSNR of identical images) counts and makes the mean infinite; NaN alone is left out;
    JSON has null where a number is not finite (strict readers refuse NaN/Infinity)."""
    import json

    records = [{"PSNR": math.inf}, {"PSNR": 30.0}, {"PSNR": math.nan}, {"PSNR": -math.inf}]
    assert summarize(records[:2], ["PSNR"], by=())[0]["n"] == 2
    assert summarize(records[:2], ["PSNR"], by=())[0]["mean"] == math.inf
    mixed = summarize(records, ["PSNR"], by=())[0]
    assert mixed["n"] == 3 and math.isnan(mixed["mean"]) and math.isnan(mixed["std"])

    def strict(token):
        raise ValueError(token)

    text = json_text({"mean": {"PSNR": math.inf, "EN": 1.5}, "pairs": [math.nan, (2.0, -math.inf)]})
    assert json.loads(text, parse_constant=strict) == {"mean": {"PSNR": None, "EN": 1.5}, "pairs": [None, [2.0, None]]}


def test_write_table_round_trips_and_keeps_an_existing_file_on_request(tmp_path):
    path = write_table(RECORDS, tmp_path / "sub" / "metrics.csv")
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["task", "pair", "method", "EN", "SD"] and float(rows[0]["EN"]) == 5.0
    assert write_table(summarize(RECORDS, ["EN"]), path).read_text().splitlines()[0] == "task,method,metric,n,mean,std"
    from monai_lkcfusion.errors import FusionInputError

    with pytest.raises(FusionInputError, match="output exists"):
        write_table(RECORDS, path, overwrite=False)


def test_text_layout():
    table = format_table(RECORDS[:1]).splitlines()
    assert table[0].split() == ["task", "pair", "method", "EN", "SD"] and table[1].split()[-1] == "60.0000"
    lines = format_summary(summarize(RECORDS, ["EN", "SD"])).splitlines()
    assert lines[0].split()[:3] == ["task", "method", "n"]
    assert "6.0000 ± 1.0000" in lines[1] and "60.0000 ± 0.0000 (n=1)" in lines[1]
