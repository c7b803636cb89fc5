"""Fuse folders of pairs with the model and classical baselines, score them and write CSV, JSON and figures."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import FusionInputError

__all__ = ["EVALUATION_METRICS", "compare_methods", "summarize"]

EVALUATION_METRICS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")
"""The metrics of the published comparison tables (CDDFuse Table 5)."""


def _gray8(image: torch.Tensor) -> np.ndarray:
    """8-bit gray of a fused ``(1|3, H, W)`` image in [0, 1]: rounded BT.601 luma for colour."""
    from ..metrics import luma_bt601

    array = (image.detach().cpu().float().clamp(0, 1) * 255.0).numpy()
    return luma_bt601(np.moveaxis(array, 0, -1)) if array.shape[0] == 3 else np.round(array[0])


def compare_methods(
    pairs: Sequence[dict[str, Any]],
    output_dir: str | Path,
    methods: Sequence[str] = ("lkcfunet", "max", "mean", "dwt", "laplacian"),
    weights: str | Path | None = None,
    metric_names: Sequence[str] = EVALUATION_METRICS,
    ssim_data_range: float = 2.0,
    device: str | torch.device | None = None,
    save_fused: bool = True,
    figure_rows: int = 4,
) -> dict[str, dict[str, dict[str, float]]]:
    """Fuse every pair with each method, score it and write the results.

    Sources are read as the literature's evaluators do (8-bit gray, colour as rounded BT.601 luma); a fused colour
    image (PET/SPECT with chroma restored) is scored on its rounded luma.

    Writes into ``output_dir``: ``metrics.csv`` (one row per pair and method), ``summary.json`` (means per
    group and method, with the options used), ``overview.png`` (the first ``figure_rows`` pairs, all methods; not
    written for 0), ``metrics.png`` (bar chart of the means) and, with ``save_fused``,
    ``fused/<method>/<group>/<name>.png``.

    Args:
        pairs: dicts with ``"mri"`` and ``"other"`` file paths, optional ``"name"`` and ``"task"`` (the group).
        output_dir: where results go.
        methods: ``"lkcfunet"`` and/or baselines of :func:`monai_lkcfusion.baselines.fuse_baseline`.
        weights: LKC-FUNet weights (default: the bundle's model).
        metric_names: metrics to compute.
        ssim_data_range: SSIM data range: 2 as in the published CDDFuse/EMMA tables, 255 as LKC-FUNet's evaluator.
        device: where the network runs.
        save_fused: also write the fused images.
        figure_rows: pairs shown in the overview figure (0: no overview figure).

    Returns:
        ``{group: {method: {metric: mean}}}``.

    Raises:
        FusionInputError: no pairs, or an unknown method or metric.
    """
    from ..data import image_stem, write_image
    from ..inference import build_predictor, fuse
    from ..metrics import compute_fusion_metrics
    from ..metrics.folders import read_gray
    from ..visualize import metrics_bar_chart, overview_figure

    if not pairs:
        raise FusionInputError("no (MRI, other) pairs to evaluate")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictors = {m: build_predictor(None, m, weights=weights, device=device) for m in methods}
    records: list[dict[str, Any]] = []
    figure: list[dict[str, Any]] = []
    for pair in pairs:
        name = str(pair.get("name", Path(pair["mri"]).name))
        group = str(pair.get("task", Path(pair["other"]).parent.name))
        mri, other = read_gray(pair["mri"]), read_gray(pair["other"])
        fused_images, fused_metrics = {}, {}
        for method, predictor in predictors.items():
            fused = fuse(pair["mri"], pair["other"], model=predictor, progress=False)  # (1|3, H, W) in [0, 1]
            scores = compute_fusion_metrics(_gray8(fused), mri, other, names=metric_names, ssim_data_range=ssim_data_range)
            scores = {k: float(v) for k, v in scores.items()}
            records.append({"group": group, "name": name, "method": method, **scores})
            fused_images[method], fused_metrics[method] = fused, scores
            if save_fused:
                write_image(fused, out / "fused" / method / group / f"{image_stem(name)}.png", overwrite=True)
        if len(figure) < figure_rows:
            figure.append({"mri": mri / 255.0, "other": _as_display(pair["other"]), "fused": fused_images,
                           "metrics": fused_metrics, "name": f"{group} {name}", "other_label": group})
    _write_csv(records, metric_names, out / "metrics.csv")
    summary = summarize(records, metric_names)
    options = {"ssim_data_range": ssim_data_range, "gray": "8-bit BT.601 luma, rounded", "weights": str(weights or "bundle default")}
    (out / "summary.json").write_text(json.dumps({"options": options, "means": summary}, indent=2))
    if figure:
        overview_figure(figure, out / "overview.png", metric_names=metric_names, title="MRI | other | fused per method")
    metrics_bar_chart(summary, out / "metrics.png", metric_names=metric_names)
    return summary


def _as_display(path: str | Path) -> np.ndarray:
    """The other modality as shown to a reader: RGB kept, in [0, 1]."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB") if img.mode not in ("L",) else img, dtype=np.float32) / 255.0


def summarize(records: Sequence[dict[str, Any]], metric_names: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean of each metric per group and method (``records`` as written to ``metrics.csv``)."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for group in dict.fromkeys(r["group"] for r in records):
        summary[group] = {}
        for method in dict.fromkeys(r["method"] for r in records):
            rows = [r for r in records if r["group"] == group and r["method"] == method]
            if rows:
                summary[group][method] = {m: float(np.mean([r[m] for r in rows])) for m in metric_names}
    return summary


def _write_csv(records: Sequence[dict[str, Any]], metric_names: Sequence[str], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["group", "name", "method", *metric_names])
        writer.writeheader()
        writer.writerows(records)
