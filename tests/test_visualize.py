"""Overview figure and metrics bar chart: PNGs written from synthetic images, colour kept, inputs checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.apps.figures import metrics_bar_chart, overview_figure

METRICS = {"EN": 6.123, "SD": 71.4, "SF": 12.5, "MI": 2.61, "Qabf": 0.68, "SSIM": 1.34, "MSE": 1234.5}


def _saturation(path: Path) -> float:
    """Largest per-pixel channel spread of the PNG (0 for a purely gray image)."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
    return float((rgb.max(-1) - rgb.min(-1)).max())


def _row(synthetic_pair, colour: bool) -> dict:
    mri, other = synthetic_pair
    if colour:
        other = np.stack([other, np.zeros_like(other), 0.2 * other], axis=-1)  # (H, W, 3) red-ish
    return {"mri": mri, "other": other, "fused": np.maximum(mri, synthetic_pair[1]), "metrics": METRICS, "name": "p1"}


def test_overview_gray_rows_are_gray_and_grow_with_rows(tmp_path, synthetic_pair):
    one = overview_figure([_row(synthetic_pair, colour=False)], tmp_path / "one.png")
    three = overview_figure([_row(synthetic_pair, colour=False)] * 3, tmp_path / "sub" / "three.png")
    assert one.is_file() and three.is_file()
    assert _saturation(one) <= 2  # gray in, gray out (antialiasing may add a hair)
    h1, h3 = Image.open(one).size[1], Image.open(three).size[1]
    assert h3 > 2 * h1


def test_overview_keeps_colour_and_accepts_tensors_and_uint8(tmp_path, synthetic_pair):
    row = _row(synthetic_pair, colour=True)
    row["mri"] = torch.from_numpy(row["mri"])[None]  # (1, H, W) tensor
    row["fused"] = (np.asarray(row["fused"]) * 255).astype(np.uint8)  # 8-bit
    row["other"] = np.moveaxis(row["other"], -1, 0)  # (3, H, W)
    path = overview_figure([row], tmp_path / "colour.png", title="synthetic")
    assert _saturation(path) > 100


def test_overview_compares_methods_side_by_side(tmp_path, synthetic_pair):
    mri, other = synthetic_pair
    row = {
        "mri": mri,
        "other": other,
        "fused": {"model": np.maximum(mri, other), "mean": (mri + other) / 2, "max": np.maximum(mri, other)},
        "metrics": {"model": METRICS, "mean": {"EN": 5.0}},
    }
    wide = overview_figure([row], tmp_path / "wide.png")
    narrow = overview_figure([_row(synthetic_pair, colour=False)], tmp_path / "narrow.png")
    assert Image.open(wide).size[0] > 1.5 * Image.open(narrow).size[0]


@pytest.mark.parametrize(
    "rows, message",
    [([], "at least one row"), ([{"mri": np.zeros((4, 4)), "other": np.zeros((4, 4))}], "lack one of the keys")],
)
def test_overview_rejects_bad_rows(tmp_path, rows, message):
    with pytest.raises(FusionInputError, match=message):
        overview_figure(rows, tmp_path / "x.png")


def test_overview_rejects_volume(tmp_path):
    volume = np.zeros((4, 8, 8))
    with pytest.raises(FusionInputError, match="cannot display"):
        overview_figure([{"mri": volume, "other": volume, "fused": volume}], tmp_path / "x.png")


def test_bar_chart_grouped_and_flat(tmp_path):
    methods = {"model": METRICS, "max": {k: v * 0.9 for k, v in METRICS.items()}, "mean": {"EN": 4.0, "SD": 50.0}}
    grouped = metrics_bar_chart({"MRI-CT": methods, "MRI-PET": methods}, tmp_path / "g.png", title="means")
    flat = metrics_bar_chart(methods, tmp_path / "f.png", metric_names=["EN", "SD", "Qabf"])
    assert _saturation(grouped) > 100 and _saturation(flat) > 100  # coloured bars were drawn
    # 7 metrics at 4 panels per row -> two rows of panels; 3 metrics -> one row
    assert Image.open(grouped).size[1] > 1.5 * Image.open(flat).size[1]


def test_bar_chart_rejects_unknown_metrics(tmp_path):
    with pytest.raises(FusionInputError, match="none of the metrics"):
        metrics_bar_chart({"model": METRICS}, tmp_path / "x.png", metric_names=["nope"])
    with pytest.raises(FusionInputError, match="at least one method"):
        metrics_bar_chart({}, tmp_path / "x.png")


def test_bar_chart_titles_follow_the_metrics_direction_and_draw_spread(tmp_path, monkeypatch):
    from matplotlib.container import ErrorbarContainer

    import monai_lkcfusion.apps.figures as figures

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.extend(fig.axes))
    summary, spread = {"max": {"Nabf": 0.1, "MSE": 3.0, "SD": 60.0}}, {"max": {"Nabf": 0.01, "MSE": 1.0, "SD": 5.0}}
    metrics_bar_chart(summary, tmp_path / "c.png", spread=spread)
    titles = ["Nabf (lower is better)", "MSE (lower is better)", "SD (higher is better)"]
    assert [ax.get_title() for ax in drawn] == titles
    assert all(any(isinstance(c, ErrorbarContainer) for c in ax.containers) for ax in drawn)
