"""``FusionMetric``: fusion metrics as a MONAI ``CumulativeIterationMetric`` (y_pred = fused, y = both sources)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.metrics import CumulativeIterationMetric

from ..errors import FusionInputError, as_names
from .functional import ALL_METRICS, DEFAULT_METRICS, _unit_range_fractions, compute_fusion_metrics

__all__ = ["FusionMetric"]


class FusionMetric(CumulativeIterationMetric):
    """Accumulate per-image fusion metrics over iterations; ``aggregate()`` gives their means as a dict.

    ``y_pred`` is the fused image (B, 1, H, W) and ``y`` the sources (B, 2, H, W), channel 0 the MRI and channel 1
    the other modality (the project's channel convention). Inputs are multiplied by ``input_scale`` to reach the
    8-bit gray scale (255 for network outputs in [0, 1]) and, with ``round_to_uint8``, clamped to [0, 255] and
    rounded, which is what scoring the saved 8-bit images would give.

    Args:
        metric_names: metrics to compute, from ``ALL_METRICS``; ``None`` gives ``DEFAULT_METRICS``.
        input_scale: factor from the inputs' intensity scale to [0, 255]; with the default 1, inputs in [0, 1]
            (network outputs) are refused rather than rounded to 0 and 1.
        round_to_uint8: clamp to [0, 255] and round before scoring.
        ssim_data_range: see :func:`~monai_lkcfusion.metrics.compute_fusion_metrics`.
        reduction: ``"sum"`` or ``"mean"`` over the two sources for MI, SSIM, MS-SSIM and VIF.
        mi_base: e (nats) or 2 (bits).
        psnr_peak: ``"max"`` or ``"255"``.

    Example::

        metric = FusionMetric(input_scale=255.0, ssim_data_range=2)
        metric(y_pred=fused, y=torch.cat([mri, other], dim=1))  # every iteration
        means = metric.aggregate()  # {"EN": ..., "SD": ..., ...}
    """

    def __init__(
        self,
        metric_names: Sequence[str] | None = None,
        input_scale: float = 1.0,
        round_to_uint8: bool = True,
        ssim_data_range: float = 255.0,
        reduction: str = "sum",
        mi_base: float = math.e,
        psnr_peak: str = "max",
    ) -> None:
        super().__init__()
        self.metric_names = DEFAULT_METRICS if metric_names is None else as_names(metric_names, "metric_names")
        unknown = [n for n in self.metric_names if n not in ALL_METRICS]
        if unknown:
            raise FusionInputError(f"metric_names: unknown {unknown}; choose from {', '.join(ALL_METRICS)}")
        self.input_scale = input_scale
        self.round_to_uint8 = round_to_uint8
        self.options = {
            "ssim_data_range": ssim_data_range, "reduction": reduction, "mi_base": mi_base, "psnr_peak": psnr_peak
        }

    def _to_gray(self, image: torch.Tensor) -> torch.Tensor:
        if self.input_scale == 1.0 and _unit_range_fractions(image):  # rounding [0, 1] to 0/1 would score nonsense
            raise FusionInputError(
                "FusionMetric: values lie in [0, 1], not on the 8-bit gray scale [0, 255] of the metrics; "
                "pass input_scale=255"
            )
        gray = image.detach().to(torch.float64) * self.input_scale
        return gray.clamp(0, 255).round() if self.round_to_uint8 else gray

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-image metrics of one batch: (B, len(metric_names)) float64, columns in ``metric_names`` order."""
        if y is None or y_pred.ndim != 4 or y_pred.shape[1] != 1 or y.ndim != 4 or y.shape[1] != 2:
            raise FusionInputError(
                "FusionMetric expects y_pred (B, 1, H, W) fused and y (B, 2, H, W) sources [MRI, other], got "
                f"{tuple(y_pred.shape)} and {None if y is None else tuple(y.shape)}"
            )
        fused, sources = self._to_gray(y_pred), self._to_gray(y)
        values = compute_fusion_metrics(
            fused, sources[:, :1], sources[:, 1:], names=self.metric_names, **self.options  # type: ignore[arg-type]
        )
        return torch.stack([values[name] for name in self.metric_names], dim=1)  # type: ignore[misc]

    def aggregate(self) -> dict[str, float]:  # type: ignore[override]
        """Mean of every metric over all images seen since the last ``reset()``, ignoring NaN.

        Returns:
            ``{name: mean}`` in ``metric_names`` order.

        Raises:
            FusionInputError: no images were scored since the last ``reset()``.
        """
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            raise FusionInputError("FusionMetric.aggregate(): no images were scored since the last reset()")
        means = data.nanmean(dim=0)
        return {name: float(means[i]) for i, name in enumerate(self.metric_names)}
