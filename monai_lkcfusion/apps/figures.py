"""Figures for fusion results: an image overview (MRI | other | fused, metrics under each fused image) and a bar
chart of mean metrics per method.

Both functions write a PNG with matplotlib's non-interactive ``Agg`` canvas, so they run on headless machines and
never touch the global ``pyplot`` state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..data.atomic import atomic_path
from ..errors import FusionInputError
from ..metrics import HIGHER_IS_BETTER

__all__ = ["DEFAULT_OVERVIEW_METRICS", "overview_figure", "metrics_bar_chart"]

DEFAULT_OVERVIEW_METRICS: tuple[str, ...] = ("EN", "SD", "SF", "MI", "Qabf", "SSIM")
"""Metrics printed under each fused image unless ``metric_names`` says otherwise."""

_PANEL_INCHES = 2.3
_METRICS_PER_LINE = 3
_DPI = 110


def _as_display(image: Any) -> np.ndarray:
    """Convert an image to a float array in [0, 1] that ``imshow`` draws directly.

    Args:
        image: numpy array or torch tensor shaped (H, W), (1, H, W), (3, H, W), (H, W, 1) or (H, W, 3); floats in
            [0, 1] or 8-bit values in [0, 255] (integer dtype, or any float image whose maximum exceeds 1).

    Returns:
        (H, W) gray or (H, W, 3) RGB float32 array clipped to [0, 1].
    """
    array = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    array = np.squeeze(array)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)  # (C, H, W) -> (H, W, C)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise FusionInputError(f"cannot display an image of shape {array.shape}: expected (H, W) or RGB (H, W, 3)")
    scale = 255.0 if np.issubdtype(array.dtype, np.integer) or float(np.nanmax(array)) > 1.0 else 1.0
    return np.clip(array.astype(np.float32) / scale, 0.0, 1.0)


def _format_value(value: float) -> str:
    """Three significant digits, without scientific notation for the usual metric ranges."""
    if not math.isfinite(value):
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _metrics_text(metrics: Mapping[str, float], names: Sequence[str], per_line: int = _METRICS_PER_LINE) -> str:
    """Lay out ``name value`` pairs, ``per_line`` to a line, for the metrics in ``names`` that ``metrics`` holds."""
    items = [f"{name} {_format_value(float(metrics[name]))}" for name in names if name in metrics]
    return "\n".join("  ".join(items[i : i + per_line]) for i in range(0, len(items), per_line))


def _fused_columns(row: Mapping[str, Any]) -> list[tuple[str, Any, Mapping[str, float]]]:
    """The fused images of one row as (column title, image, metrics).

    ``row["fused"]`` is one image, or a mapping {method: image}; ``row["metrics"]`` is then one metrics dict, or a
    mapping {method: metrics dict}.
    """
    fused, metrics = row["fused"], row.get("metrics", {})
    if isinstance(fused, Mapping):
        return [(str(method), image, metrics.get(method, {})) for method, image in fused.items()]
    return [(str(row.get("method", "fused")), fused, metrics)]


def overview_figure(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    metric_names: Sequence[str] = DEFAULT_OVERVIEW_METRICS,
    title: str | None = None,
) -> Path:
    """Draw fusion examples as a grid, one pair per row: MRI | other | fused, with metrics under each fused image.

    Gray images are drawn in gray, RGB (pseudo-colour PET/SPECT, or a colour fused result) in colour.

    Args:
        rows: one mapping per pair with keys ``"mri"``, ``"other"`` and ``"fused"`` (images as accepted by
            :func:`matplotlib.axes.Axes.imshow` after conversion: (H, W), (H, W, 3), (1|3, H, W); floats in
            [0, 1] or 8-bit [0, 255]); optional ``"metrics"`` ({name: value}), ``"name"`` (row label, e.g. the
            task and file name), ``"other_label"`` (column title of the second source, e.g. ``"PET"``) and
            ``"method"`` (column title of the fused image). To compare methods side by side, ``"fused"`` may be
            a mapping {method: image} and ``"metrics"`` a mapping {method: {name: value}}.
        path: the PNG to write (parent folders are created).
        metric_names: metrics to print under each fused image, in this order; names absent from a row's metrics
            are skipped.
        title: optional figure title.

    Returns:
        The path written.

    Raises:
        FusionInputError: when ``rows`` is empty, a row lacks an image, or an image has an unusable shape.
    """
    if not rows:
        raise FusionInputError("overview_figure needs at least one row of images")
    missing = [i for i, row in enumerate(rows) if not {"mri", "other", "fused"} <= set(row)]
    if missing:
        raise FusionInputError(f"overview rows {missing} lack one of the keys 'mri', 'other', 'fused'")
    columns = [_fused_columns(row) for row in rows]
    n_cols = 2 + max(len(c) for c in columns)
    text_lines = math.ceil(len(metric_names) / _METRICS_PER_LINE)
    row_height = _PANEL_INCHES + 0.17 * text_lines + 0.3
    fig = Figure(figsize=(_PANEL_INCHES * n_cols, row_height * len(rows) + (0.4 if title else 0.0)), dpi=_DPI)
    fig.set_layout_engine("constrained", w_pad=0.02, h_pad=0.02, wspace=0.0, hspace=0.0)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(rows), n_cols)
    for r, (row, fused_columns) in enumerate(zip(rows, columns)):
        panels = [("MRI", row["mri"], None), (str(row.get("other_label", "other")), row["other"], None)]
        for c, (label, image, metrics) in enumerate(panels + fused_columns):
            ax = fig.add_subplot(grid[r, c])
            display = _as_display(image)
            ax.imshow(display, cmap="gray" if display.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label, fontsize=10, fontweight="bold" if metrics is not None else "normal", pad=3)
            if metrics:
                ax.set_xlabel(_metrics_text(metrics, metric_names), fontsize=7.5, family="monospace", labelpad=2)
            if c == 0 and row.get("name"):
                ax.set_ylabel(str(row["name"]), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=12, fontweight="bold")
    return _save(fig, path)


def _by_group(summary: Mapping[str, Any]) -> dict[str, Mapping[str, Mapping[str, float]]]:
    """Normalise ``summary`` to {group: {method: {metric: value}}}; an ungrouped summary becomes one group ``""``."""
    first = next(iter(summary.values()))
    first_value = next(iter(first.values()), None) if isinstance(first, Mapping) else None
    if isinstance(first_value, Mapping):
        return {str(group): methods for group, methods in summary.items()}
    return {"": summary}


def metrics_bar_chart(
    summary: Mapping[str, Any],
    path: str | Path,
    metric_names: Sequence[str] | None = None,
    title: str | None = None,
    n_cols: int = 4,
    spread: Mapping[str, Any] | None = None,
) -> Path:
    """Draw mean metrics per method (the model vs baselines) as bars, one small panel per metric.

    Metrics live on different scales (EN ~ 5, SD ~ 70, Qabf < 1), so every metric gets its own y axis. In each
    panel the bars are grouped by task when ``summary`` is grouped, and coloured by method (legend below). Each
    panel's title says whether higher or lower is better (:data:`monai_lkcfusion.metrics.HIGHER_IS_BETTER`); an
    infinite mean (PSNR of a fused image equal to a source) has no bar, and the panel names its methods.

    Args:
        summary: {method: {metric: mean}}, or grouped {group (e.g. task): {method: {metric: mean}}}. Methods keep
            the order of their first appearance; list the model first so it gets the first colour.
        path: the PNG to write (parent folders are created).
        metric_names: metrics to draw, in this order; by default every metric found, in order of appearance.
        title: optional figure title.
        n_cols: panels per row.
        spread: the standard deviations, nested as ``summary``; drawn as error bars.

    Returns:
        The path written.

    Raises:
        FusionInputError: when ``summary`` is empty or none of ``metric_names`` occurs in it.
    """
    if not summary:
        raise FusionInputError("metrics_bar_chart needs at least one method in the summary")
    groups = _by_group(summary)
    errors = _by_group(spread) if spread else {}
    methods = list(dict.fromkeys(m for per_group in groups.values() for m in per_group))
    found = list(dict.fromkeys(k for per_group in groups.values() for v in per_group.values() for k in v))
    names = [n for n in (metric_names or found) if n in found]
    if not names:
        raise FusionInputError(f"none of the metrics {list(metric_names or [])} is in the summary (it has {found})")
    n_cols = min(n_cols, len(names))
    n_rows = math.ceil(len(names) / n_cols)
    fig = Figure(figsize=(3.0 * n_cols, 2.3 * n_rows + 0.6), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    colours = [f"C{i % 10}" for i in range(len(methods))]
    group_names = list(groups)
    width = 0.8 / len(methods)
    x = np.arange(len(group_names), dtype=float)
    for i, name in enumerate(names):
        ax = fig.add_subplot(n_rows, n_cols, i + 1)
        infinite = []  # e.g. PSNR of an image identical to a source: no bar can show it
        for j, method in enumerate(methods):
            values = np.array([float(groups[g].get(method, {}).get(name, np.nan)) for g in group_names])
            infinite += [method] if np.isinf(values).any() else []
            values[~np.isfinite(values)] = np.nan
            yerr = None
            if errors:
                yerr = np.array([float(errors.get(g, {}).get(method, {}).get(name, np.nan)) for g in group_names])
                yerr[~np.isfinite(yerr) | np.isnan(values)] = np.nan
            ax.bar(x + (j - (len(methods) - 1) / 2) * width, values, width * 0.92, color=colours[j], label=method,
                   yerr=yerr, error_kw={"elinewidth": 0.8, "capsize": 2})
        if infinite:
            ax.text(0.5, 0.97, f"infinite, not drawn: {', '.join(infinite)}", transform=ax.transAxes, ha="center",
                    va="top", fontsize=7)
        better = "higher" if HIGHER_IS_BETTER.get(name, True) else "lower"
        ax.set_title(f"{name} ({better} is better)", fontsize=9.5)
        ax.set_xticks(x, group_names if len(group_names) > 1 else [""], fontsize=8.5)
        ax.tick_params(axis="x", length=0)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(methods), 6), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=12, fontweight="bold")
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically, creating parent folders and replacing an earlier figure."""
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI, bbox_inches="tight", facecolor="white")
    return Path(path)
