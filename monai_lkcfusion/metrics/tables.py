"""Metric tables: one row per scored pair, and a summary per group (task, method) with n, mean and std per metric.

A *record* is one scored pair: identifying columns (e.g. ``task``, ``pair``, ``method``) and one value per metric.
A *summary row* is one group and metric: ``{*group columns, "metric", "n", "mean", "std"}``, where ``n`` counts the
values that are not NaN (a NaN score is left out and not counted; an infinite one, e.g. the PSNR of identical
images, is counted and makes the mean infinite) and ``std`` is the population standard deviation (ddof 0, as
MONAI's ``MetricsSaver``). Tables are written as CSV with :func:`write_table` (atomically); :func:`json_text` gives
standard JSON (non-finite numbers as ``null``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.atomic import write_text

__all__ = ["SUMMARY_COLUMNS", "format_summary", "format_table", "json_text", "pivot", "summarize", "write_table"]

SUMMARY_COLUMNS = ("metric", "n", "mean", "std")
"""The columns a summary row has after its group columns."""


def summarize(
    records: Sequence[Mapping[str, Any]], metric_names: Sequence[str], by: Sequence[str] = ("task", "method")
) -> list[dict[str, Any]]:
    """Summarise per-pair records per group and metric.

    Args:
        records: one mapping per scored pair, holding the ``by`` columns and a value per metric.
        metric_names: the metrics to summarise, in this order.
        by: the columns that form a group (groups keep the order of their first record); ``()``: one group.

    Returns:
        One row per group and metric: ``{*by, "metric", "n", "mean", "std"}`` (mean and std are NaN when n is 0;
        with an infinite value the mean is infinite and the std NaN).
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault(tuple(record[key] for key in by), []).append(record)
    rows = []
    for group, members in groups.items():
        for metric in metric_names:
            values = np.asarray([float(r[metric]) for r in members], dtype=np.float64)
            values = values[~np.isnan(values)]
            with np.errstate(invalid="ignore"):  # inf - inf in the std of an infinite score: NaN, as documented
                mean, std = (float(values.mean()), float(values.std())) if values.size else (math.nan, math.nan)
            rows.append({**dict(zip(by, group)), "metric": metric, "n": int(values.size), "mean": mean, "std": std})
    return rows


def json_text(document: Any, indent: int = 1) -> str:
    """``document`` as standard JSON: NaN and infinite floats become ``null`` (``json.dumps`` would write the
    non-standard ``NaN``/``Infinity``, which other JSON readers refuse).

    Args:
        document: dicts, lists and scalars (e.g. a summary from :func:`pivot`).
        indent: indentation.

    Returns:
        The JSON text.
    """

    def finite(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, Mapping):
            return {key: finite(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(item) for item in value]
        return value

    return json.dumps(finite(document), indent=indent, allow_nan=False)


def pivot(summary: Sequence[Mapping[str, Any]], value: str = "mean", by: Sequence[str] = ("task", "method")) -> dict:
    """Nest one statistic of a summary as ``{group value: ... {metric: value}}``.

    Args:
        summary: rows from :func:`summarize`.
        value: ``"mean"``, ``"std"`` or ``"n"``.
        by: the group columns of ``summary``, outermost first.

    Returns:
        e.g. ``{task: {method: {metric: mean}}}`` for the default ``by``; ``{metric: value}`` for ``by=()``.
    """
    nested: dict = {}
    for row in summary:
        node = nested
        for key in by:
            node = node.setdefault(row[key], {})
        node[row["metric"]] = row[value]
    return nested


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key of ``rows`` in order of first appearance."""
    return list(dict.fromkeys(key for row in rows for key in row))


def write_table(
    rows: Sequence[Mapping[str, Any]], path: str | Path, columns: Sequence[str] | None = None, overwrite: bool = True
) -> Path:
    """Write rows as a CSV file (full float precision), atomically.

    Args:
        rows: one mapping per row.
        path: the CSV file; parent folders are created.
        columns: the columns in order (default: every key, in order of first appearance).
        overwrite: replace an existing file.

    Returns:
        The written path.

    Raises:
        FusionInputError: the file exists without ``overwrite``, or cannot be written.
    """
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns or _columns(rows)), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, text.getvalue(), overwrite)


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Plain-text table with a header line; floats with four decimals, text left-aligned, numbers right-aligned.

    Args:
        rows: one mapping per row.
        columns: the columns in order (default: every key, in order of first appearance).

    Returns:
        The table as lines joined by newlines.
    """
    columns = list(columns or _columns(rows))
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row.get(c), (int, float)) for row in rows) for c in columns]
    lines = []
    for line in [columns, *cells]:
        lines.append("  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(line, widths, numeric)).rstrip())
    return "\n".join(lines)


def format_summary(summary: Sequence[Mapping[str, Any]], by: Sequence[str] = ("task", "method")) -> str:
    """A summary as a plain-text table: one line per group, ``n`` (pairs), then ``mean ± std`` per metric.

    A metric with fewer finite values than the group has pairs shows its own count, e.g. ``1.23 ± 0.05 (n=23)``.

    Args:
        summary: rows from :func:`summarize`.
        by: the group columns of ``summary``.

    Returns:
        The table as lines joined by newlines.
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in summary:
        groups.setdefault(tuple(row[key] for key in by), []).append(row)
    lines = []
    for group, rows in groups.items():
        n = max(row["n"] for row in rows)
        line: dict[str, Any] = {**dict(zip(by, group)), "n": n}
        for row in rows:
            own = f" (n={row['n']})" if row["n"] != n else ""
            line[row["metric"]] = f"{row['mean']:.4f} ± {row['std']:.4f}{own}"
        lines.append(line)
    return format_table(lines)
