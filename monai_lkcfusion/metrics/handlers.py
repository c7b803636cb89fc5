"""Ignite handler for MONAI evaluators: ``FusionMetricHandler`` (key_val_metric / additional_metrics)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.handlers import IgniteMetricHandler

from ..errors import FusionInputError
from .fusion_metric import FusionMetric

__all__ = ["FusionMetricHandler", "fusion_output_transform"]


def fusion_output_transform(
    pred_key: str = "pred", source_keys: Sequence[str] = ("mri", "other")
) -> Callable[[Any], tuple[torch.Tensor, torch.Tensor]]:
    """Make an ``output_transform`` giving ``(fused (B, 1, H, W), sources (B, 2, H, W))`` from an engine output.

    Args:
        pred_key: key of the fused image.
        source_keys: keys of the MRI and the other modality, concatenated in this order as channels.

    Returns:
        A function taking ``engine.state.output`` (a dict of batched tensors or a decollated list of dicts); it
        raises :class:`~monai_lkcfusion.errors.FusionInputError` naming the keys an output lacks.
    """

    def transform(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        items = output if isinstance(output, (list, tuple)) else [output]
        preds, sources = [], []
        for item in items:
            missing = [key for key in (pred_key, *source_keys) if key not in item]
            if missing:  # a SupervisedEvaluator's output has image/label/pred: a bare KeyError('mri') before
                has = ", ".join(map(repr, item))
                raise FusionInputError(
                    f"the engine's output has no {', '.join(map(repr, missing))} (it has {has}); "
                    "give the handler an output_transform, e.g. monai.handlers.from_engine(['pred', 'label']) when "
                    "the label holds the two sources"
                )
            pred = torch.as_tensor(item[pred_key])
            batched = pred.ndim == 4
            preds.append(pred if batched else pred.unsqueeze(0))
            src = torch.cat([torch.as_tensor(item[k]) for k in source_keys], dim=1 if batched else 0)
            sources.append(src if batched else src.unsqueeze(0))
        return torch.cat(preds), torch.cat(sources)

    return transform


class FusionMetricHandler(IgniteMetricHandler):
    """Score fused images during a MONAI/Ignite run; the handler's value is one metric, the others are recorded too.

    Attached under ``name``, ``engine.state.metrics[name]`` is the mean of ``metric_name`` (so it can be the
    evaluator's ``key_val_metric``; use a higher-is-better metric, or a ``metric_cmp_fn`` for MSE/Nabf), and
    ``engine.state.metrics[prefix + m]`` holds the mean of every metric ``m`` in ``metric_names``. With
    ``save_details``, ``engine.state.metric_details[prefix + m]`` holds each metric's (N,) per-image values, and
    ``engine.state.metric_details[name]``, when ``name`` is not one of them, the (N, len(metric_names)) table.

    Args:
        metric_name: the metric reported as this handler's value.
        metric_names: all metrics to compute (``metric_name`` is added if missing); ``None``: the default set.
        output_transform: maps ``engine.state.output`` to ``(fused, sources)``; ``None``: ``fusion_output_transform()``
            (keys ``pred``, ``mri``, ``other``).
        save_details: keep the per-image values in ``engine.state.metric_details``.
        prefix: prepended to every metric name written to ``engine.state.metrics``.
        metric_kwargs: passed to :class:`FusionMetric` (``input_scale``, ``ssim_data_range``, ...).
    """

    def __init__(
        self,
        metric_name: str = "SSIM",
        metric_names: Sequence[str] | None = None,
        output_transform: Callable | None = None,
        save_details: bool = True,
        prefix: str = "",
        **metric_kwargs: Any,
    ) -> None:
        metric_fn = FusionMetric(metric_names=metric_names, **metric_kwargs)
        if metric_name not in metric_fn.metric_names:
            metric_fn = FusionMetric(metric_names=(*metric_fn.metric_names, metric_name), **metric_kwargs)
        self.metric_name = metric_name
        self.prefix = prefix
        transform = fusion_output_transform() if output_transform is None else output_transform
        super().__init__(metric_fn=metric_fn, output_transform=transform, save_details=save_details)

    def compute(self) -> float:
        """Aggregate, write every metric's mean into ``engine.state.metrics`` and return ``metric_name``'s mean.

        With ``save_details``, each metric's (N,) per-image values also go to ``engine.state.metric_details``.

        Returns:
            the mean of ``metric_name`` over the images scored (NaN ignored).

        Raises:
            FusionInputError: the handler was not attached to an engine, or no images were scored.
        """
        if self._engine is None:
            raise FusionInputError("FusionMetricHandler: call attach(engine, name) before running the engine")
        means: dict[str, float] = super().compute()
        for name, value in means.items():
            self._engine.state.metrics[f"{self.prefix}{name}"] = value
        if self.save_details:
            table = self.metric_fn.get_buffer()
            for i, name in enumerate(self.metric_fn.metric_names):
                self._engine.state.metric_details[f"{self.prefix}{name}"] = table[:, i]
        return means[self.metric_name]
