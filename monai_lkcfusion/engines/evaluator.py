"""Evaluator factory: full-image fusion of a validation/test loader scored by the fusion loss and metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from monai.engines import SupervisedEvaluator
from monai.handlers import IgniteMetricHandler, from_engine
from monai.inferers import Inferer, SimpleInferer

from ..losses import FusionLoss
from .handlers import LOSS_METRIC, ExceptionRaiser, lower_is_better, validation_handlers

__all__ = ["create_evaluator", "clamp_prediction", "LOSS_METRIC"]


def clamp_prediction(mask_background: bool = False) -> Callable[[dict], dict]:
    """Post-processing of a batch that clamps the network output ``pred`` (B, 1, H, W) to the image range [0, 1].

    Args:
        mask_background: also set ``pred`` to 0 where both sources (``label``, (B, 2, H, W)) are 0, as
            :func:`~monai_lkcfusion.inference.fuse` does by default
            (:class:`~monai_lkcfusion.transforms.MaskBackground`): the bundle's evaluation then scores the image
            ``lkcfusion fuse`` writes.

    Returns:
        A function of the engine's output dict.
    """
    from ..transforms import MaskBackground

    mask = MaskBackground()

    def post(output: dict) -> dict:
        pred = output["pred"].clamp(0.0, 1.0)
        if mask_background:
            pred = torch.stack([mask(fused, sources) for fused, sources in zip(pred, output["label"])])
        return {**output, "pred": pred}

    return post


def _per_pair(loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
    """The loss of each pair of a batch, ``(B, 1)``, so that ``val_loss`` is the mean over pairs.

    MONAI's ``LossMetric`` averages what the loss returns per call: a batch's mean counted once, so the lone pair of
    a last, partial batch (or of a distributed run's smaller shard) weighed as much as a whole batch, and the best
    model was chosen on a loss that depended on how the pairs fell into batches.
    """

    def losses(pred: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        # pred (B, 1, H, W), sources (B, 2, H, W) -> (B, 1)
        return torch.stack([loss_function(pred[i : i + 1], sources[i : i + 1]) for i in range(len(pred))])[:, None]

    return losses


def _fusion_metric_handler(names: Sequence[str], ssim_data_range: float) -> IgniteMetricHandler:
    """One handler computing the fusion metrics ``names`` on the 8-bit gray scale; its own value is ``names[0]``.

    Every metric's mean is written into ``engine.state.metrics`` under its name.
    """
    from ..metrics import FusionMetricHandler

    return FusionMetricHandler(
        metric_name=names[0],
        metric_names=list(names),
        output_transform=from_engine(["pred", "label"]),
        input_scale=255.0,
        ssim_data_range=ssim_data_range,
    )


def create_evaluator(
    network: torch.nn.Module,
    val_loader: Iterable,
    device: str | torch.device = "cpu",
    key_metric: str = LOSS_METRIC,
    metrics: Sequence[str] = (),
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ssim_data_range: float = 2.0,
    inferer: Inferer | None = None,
    amp: bool | None = None,
    best_dir: str | Path | None = None,
    best_filename: str = "best_model.pt",
    resume: bool = False,
    handlers: Sequence | None = None,
    mask_background: bool = False,
) -> SupervisedEvaluator:
    """Build an evaluator that fuses whole images and scores them.

    The loader yields dicts with ``image`` = ``label`` = the sources (B, 2, H, W) in [0, 1]. The output ``pred``
    (B, 1, H, W) is clamped to [0, 1]; ``val_loss`` is the training loss (``loss_function``) and each
    name in ``metrics`` a fusion metric on the 8-bit gray scale (``monai_lkcfusion.metrics``).

    Args:
        network: the fusion network.
        val_loader: validation data.
        device: where to run.
        key_metric: ``"val_loss"`` or a fusion metric name, used to pick the best model; lower is better for
            ``val_loss``, ``MSE`` and ``Nabf`` (:func:`~monai_lkcfusion.engines.lower_is_better`), higher for the rest.
        metrics: further fusion metric names to compute and log (e.g. ``("Qabf", "SSIM")``).
        loss_function: ``(pred, sources) -> loss`` of ``val_loss``: pass the training loss, so that the best model is
            chosen on the objective it was trained for (default :class:`~monai_lkcfusion.losses.FusionLoss` 1:1:1);
            ``val_loss`` is its mean over the pairs (each pair scored alone).
        ssim_data_range: SSIM data range of the fusion metrics: 2 reproduces the published CDDFuse/EMMA tables,
            255 is LKC-FUNet's own evaluator.
        inferer: how to run the network; whole images by default (the network pads to its stride).
        amp: mixed precision; default on for CUDA devices.
        best_dir: the training run's folder for the default handlers: the network's state dict is saved there
            whenever the key metric improves (with the saver's tracking state so a resumed run keeps the best so
            far) and the metrics are logged to ``best_dir/tensorboard``.
        best_filename: file name of the best checkpoint in ``best_dir``.
        resume: continue the best-model tracking of an earlier run from the checkpoint in ``best_dir``, so that
            a resumed training only replaces it with a better model.
        handlers: the evaluator's Ignite handlers instead of the defaults
            (:func:`~monai_lkcfusion.engines.validation_handlers`: console statistics, and with ``best_dir``
            TensorBoard and the best-model saver).
        mask_background: score the output with 0 where both sources are 0 (see :func:`clamp_prediction`); the
            bundle's ``evaluate.json`` does, as ``lkcfusion evaluate`` and ``fuse`` do.

    Returns:
        The evaluator; ``evaluator.run()`` fills ``evaluator.state.metrics``.
    """
    device = torch.device(device)
    lower = lower_is_better(key_metric)
    loss = IgniteMetricHandler(loss_fn=_per_pair(loss_function or FusionLoss()),
                               output_transform=from_engine(["pred", "label"]))
    all_metrics = {LOSS_METRIC: loss}
    extra = [metrics] if isinstance(metrics, str) else list(metrics)  # a string is one name (--metrics EN)
    names = [m for m in dict.fromkeys([key_metric, *extra]) if m != LOSS_METRIC]
    if names:
        all_metrics[names[0]] = _fusion_metric_handler(names, ssim_data_range)
    key = {key_metric: all_metrics.pop(key_metric)}
    if handlers is None:
        handlers = validation_handlers(network, best_dir, key_metric, resume, best_filename)
    return SupervisedEvaluator(
        device=device,
        val_data_loader=val_loader,
        network=network,
        inferer=inferer or SimpleInferer(),
        postprocessing=clamp_prediction(mask_background),
        key_val_metric=key,
        additional_metrics=all_metrics,
        metric_cmp_fn=(lambda current, best: current < best if lower else current > best),
        val_handlers=[ExceptionRaiser(), *handlers],  # first: see ExceptionRaiser
        amp=device.type == "cuda" if amp is None else amp,
        decollate=False,
    )
