"""The unsupervised fusion loss of the released LKC-FUNet training code.

The fused image ``F`` is pulled toward the two sources ``A`` (MRI) and ``B`` (other modality) by three terms:

* intensity: ``L1(F, max(A, B))``, or with ``intensity_sigma > 0`` on the base layers: ``L1(G * F, max(G * A, G * B))``
  with ``G`` a Gaussian of that sigma (complete windows only);
* structure: ``1 - (SSIM(A, F) + SSIM(B, F)) / 2`` with an 11x11 Gaussian window (sigma 1.5), data range 1 and
  ``(K1, K2) = (0.01, 0.03)``;
* gradient: ``L1(|Sobel F|, max(|Sobel A|, |Sobel B|))`` with ``|Sobel x| = |Gx| + |Gy|`` (zero padding);
* edge (not in the released loss, off by default): ``1 - Q`` with ``Q`` the differentiable Qabf edge preservation
  of both sources (:func:`monai_lkcfusion.metrics.edge_preservation`): F's Sobel edges should match each source's
  in strength and orientation where that source has edges. The gradient term instead asks for the larger of the
  two strengths at every pixel, stronger edges than either source where both have some.
* fidelity (not in the released loss, off by default): ``1 - (VIF(A -> F) + VIF(B -> F)) / 2`` with the
  differentiable pixel-domain VIF of the evaluators (:func:`monai_lkcfusion.metrics.information_fidelity`), on the
  8-bit scale its noise variance is meant for: F should carry each source's local structure as a gain (ideally 1
  or more) with little added variance, which the pixel-wise max does where one source dominates.

Two details of the released training are options, because its code disagrees with a plain reading of the paper:
its data loader scales images to [-1, 1] (``value_range="symmetric"``: the two L1 terms double against the
SSIM term, whose constants stay those of range 1), and its SSIM (from SwinFusion, not in the release) zero-pads
the window to the image size (``ssim_padding="zeros"``: dark borders enter every edge window). The defaults
(``"unit"``, ``"valid"``) are [0, 1] intensities and only complete windows. ``ssim_form="max_variance"`` is the
structure term of DM-FNet-style losses: each window is compared with the source of larger local variance only.

The loss is computed in float32 at least, also inside ``torch.autocast`` (mixed-precision training): in float16 the
SSIM denominator ``(mu_x^2 + mu_y^2 + C1)(var_x + var_y + C2)`` is about 1e-7 on black background, below float16's
smallest normal number, and the gradients became inf/NaN (a CUDA run with AMP diverged from it).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.filters import PADDINGS, gaussian_blur, sobel_gradients
from monai_lkcfusion.metrics.gradient import edge_preservation
from monai_lkcfusion.metrics.vif import VIF_MIN_SIZE, information_fidelity

__all__ = [
    "FusionLoss", "SSIM_FORMS", "SSIM_PADDINGS", "VALUE_RANGES", "gaussian_blur", "gaussian_ssim", "sobel_magnitude"
]

VALUE_RANGES = ("unit", "symmetric")
"""Intensity range the loss sees: [0, 1] as given, or mapped to [-1, 1] as the released data loader does."""

SSIM_PADDINGS = PADDINGS
"""SSIM windows: complete windows only, or zero padding to the image size (SwinFusion's SSIM)."""

OPTIONAL_TERMS = ("edge", "vif")
"""Terms that are not in the released loss, computed only when weighted (and by :meth:`FusionLoss.components`)."""

SSIM_FORMS = ("mean", "max_variance")
"""Structure term: the mean SSIM against both sources, or SSIM against the source of larger local variance."""


def ssim_maps(
    x: torch.Tensor,
    y: torch.Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
    k1: float = 0.01,
    k2: float = 0.03,
    padding: str = "valid",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local SSIM of ``x`` against ``y`` and the local variance of ``x``, per Gaussian window.

    Args:
        x: images (B, C, H, W).
        y: images broadcastable to ``x``.
        window_size: side of the Gaussian window (shrunk to the image size for smaller images).
        sigma: standard deviation of the Gaussian window.
        data_range: dynamic range of the intensities (1 for [0, 1]).
        k1: luminance stabiliser factor, ``C1 = (k1 * data_range) ** 2``.
        k2: contrast stabiliser factor, ``C2 = (k2 * data_range) ** 2``.
        padding: ``"valid"`` (complete windows, maps of ``H - s + 1``) or ``"zeros"`` (zero padding, maps of ``H``).

    Returns:
        ``(ssim_map, var_x)``, both (B, C, H', W').
    """
    x, y = torch.broadcast_tensors(x, y)
    b, c, h, w = x.shape
    size = min(window_size, h, w)
    stack = gaussian_blur(torch.cat([x, y, x * x, y * y, x * y], dim=0), sigma, size, padding)  # (5B, C, H', W')
    mu_x, mu_y, e_xx, e_yy, e_xy = stack.reshape(5, b, c, *stack.shape[-2:])  # each (B, C, H', W')
    var_x = e_xx - mu_x**2
    var_y = e_yy - mu_y**2
    cov = e_xy - mu_x * mu_y
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map, var_x


def gaussian_ssim(x: torch.Tensor, y: torch.Tensor, **options: Any) -> torch.Tensor:
    """Mean SSIM per image over the windows of :func:`ssim_maps`.

    Args:
        x: images (B, C, H, W).
        y: images broadcastable to ``x``.
        options: the window and constants of :func:`ssim_maps` (``window_size``, ``sigma``, ``data_range``, ``k1``,
            ``k2``, ``padding``).

    Returns:
        SSIM per image and channel, shape (B, C).
    """
    return ssim_maps(x, y, **options)[0].mean(dim=(-2, -1))


def sobel_magnitude(image: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude ``|Gx| + |Gy|`` of every channel, zero padded to the input size.

    Args:
        image: images (B, C, H, W).

    Returns:
        Gradient magnitudes, shape (B, C, H, W).
    """
    gx, gy = sobel_gradients(image)
    return gx.abs() + gy.abs()


class FusionLoss(_Loss):
    """Unsupervised image-fusion loss of LKC-FUNet: intensity + SSIM + gradient (+ edge preservation), weighted.

    Called as ``loss(fused, sources)`` so that MONAI's ``SupervisedTrainer`` can use the source pair as its
    label. With the default weights 1:1:1 it is the released training loss.

    Args:
        intensity_weight: weight of ``L1(F, max(A, B))``.
        ssim_weight: weight of ``1 - (SSIM(A, F) + SSIM(B, F)) / 2``.
        gradient_weight: weight of ``L1(|Sobel F|, max(|Sobel A|, |Sobel B|))``.
        edge_weight: weight of ``1 - Qabf(F; A, B)`` in its differentiable form (0: the released loss).
        vif_weight: weight of ``1 - (VIF(A -> F) + VIF(B -> F)) / 2`` in its differentiable form (0: the released
            loss), computed on [0, 255] whatever ``value_range``.
        value_range: ``"unit"`` or ``"symmetric"`` (see :data:`VALUE_RANGES` and the module notes).
        ssim_padding: ``"valid"`` or ``"zeros"`` (see :data:`SSIM_PADDINGS`).
        ssim_form: ``"mean"`` or ``"max_variance"`` (see :data:`SSIM_FORMS`).
        intensity_sigma: 0 for the released pixel-wise intensity term, else the Gaussian sigma (pixels) of the base
            layers it compares (see the module notes).

    Example::

        loss = FusionLoss()
        value = loss(net(sources), sources)  # sources (B, 2, H, W): [MRI, other]
    """

    def __init__(
        self,
        intensity_weight: float = 1.0,
        ssim_weight: float = 1.0,
        gradient_weight: float = 1.0,
        edge_weight: float = 0.0,
        vif_weight: float = 0.0,
        value_range: str = "unit",
        ssim_padding: str = "valid",
        ssim_form: str = "mean",
        intensity_sigma: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value, allowed in (
            ("value_range", value_range, VALUE_RANGES),
            ("ssim_padding", ssim_padding, SSIM_PADDINGS),
            ("ssim_form", ssim_form, SSIM_FORMS),
        ):
            if value not in allowed:
                raise FusionInputError(f"{name} must be one of {allowed}, got {value!r}")
        for name, value in (("intensity_weight", intensity_weight), ("ssim_weight", ssim_weight),
                            ("gradient_weight", gradient_weight), ("edge_weight", edge_weight),
                            ("vif_weight", vif_weight),
                            ("intensity_sigma", intensity_sigma)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise FusionInputError(f"{name} must be 0 or positive, got {value!r}")
        self.intensity_sigma = float(intensity_sigma)
        self.intensity_weight = float(intensity_weight)
        self.ssim_weight = float(ssim_weight)
        self.gradient_weight = float(gradient_weight)
        self.edge_weight = float(edge_weight)
        self.vif_weight = float(vif_weight)
        self.value_range = value_range
        self.ssim_padding = ssim_padding
        self.ssim_form = ssim_form

    @property
    def config(self) -> dict[str, float | str]:
        """The loss's settings (its terms' weights and forms), e.g. for a run's record.

        Returns:
            ``{setting: value}`` for the weights, ``value_range``, ``ssim_padding``, ``ssim_form`` and
            ``intensity_sigma``.
        """
        return {name: getattr(self, name) for name in (
            "intensity_weight", "ssim_weight", "gradient_weight", "edge_weight", "vif_weight", "value_range",
            "ssim_padding", "ssim_form", "intensity_sigma")}

    def components(self, fused: torch.Tensor, sources: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted terms.

        Args:
            fused: fused images (B, 1, H, W).
            sources: source images (B, 2, H, W), channel 0 MRI and channel 1 the other modality.

        Returns:
            Scalars ``{"intensity", "ssim", "gradient", "edge", "vif"}``, whatever the weights; ``"vif"`` only for
            images of at least 41 x 41 pixels (VIF's four scales).
        """
        optional = [name for name in OPTIONAL_TERMS if name != "vif" or min(fused.shape[-2:]) >= VIF_MIN_SIZE]
        return self._terms(fused, sources, optional=optional)

    def _terms(self, fused: torch.Tensor, sources: torch.Tensor, optional: Collection[str]) -> dict[str, torch.Tensor]:
        """The unweighted terms, of :data:`OPTIONAL_TERMS` only those in ``optional`` (the edge term alone takes a
        third of the loss's time on whole slices)."""
        if fused.ndim != 4 or fused.shape[1] != 1:
            raise ValueError(f"fused must have shape (B, 1, H, W), got {tuple(fused.shape)}")
        if sources.ndim != 4 or sources.shape[1] != 2 or sources.shape[-2:] != fused.shape[-2:]:
            raise ValueError(f"sources must have shape (B, 2, H, W) matching fused, got {tuple(sources.shape)}")
        if sources.shape[0] != fused.shape[0]:  # F.l1_loss would broadcast one pair over the batch
            raise ValueError(f"sources hold a batch of {sources.shape[0]}, fused a batch of {fused.shape[0]}; give one "
                             "source pair per fused image")
        dtype = torch.promote_types(fused.dtype, torch.float32)  # float32 at least (see the module notes)
        with torch.autocast(device_type=fused.device.type, enabled=False):
            return self._float_terms(fused.to(dtype), sources.to(dtype), optional)

    def _float_terms(
        self, fused: torch.Tensor, sources: torch.Tensor, optional: Collection[str]
    ) -> dict[str, torch.Tensor]:
        terms = {}
        if "vif" in optional:  # on the 8-bit scale of VIF's noise variance, before any range mapping
            if min(fused.shape[-2:]) < VIF_MIN_SIZE:
                raise FusionInputError(f"vif_weight: the VIF term needs images of at least {VIF_MIN_SIZE}x"
                                       f"{VIF_MIN_SIZE} pixels (its four scales), got {tuple(fused.shape[-2:])}: "
                                       "train on larger crops (roi_size) or set vif_weight to 0")
            terms["vif"] = 1.0 - information_fidelity(255.0 * fused, 255.0 * sources).mean()
        if self.value_range == "symmetric":
            fused, sources = 2.0 * fused - 1.0, 2.0 * sources - 1.0
        if self.intensity_sigma > 0:  # base layers (B, 1|2, H - s + 1, W - s + 1)
            intensity = F.l1_loss(gaussian_blur(fused, self.intensity_sigma),
                                  gaussian_blur(sources, self.intensity_sigma).amax(dim=1, keepdim=True))
        else:
            intensity = F.l1_loss(fused, sources.amax(dim=1, keepdim=True))
        ssim_map, variance = ssim_maps(sources, fused, padding=self.ssim_padding)  # (B, 2, H', W') each
        if self.ssim_form == "max_variance":  # per window, the source with more local structure
            ssim_map = ssim_map.gather(1, variance.argmax(dim=1, keepdim=True))
        ssim = 1.0 - ssim_map.mean()  # mean over batch, windows (and the two sources for "mean")
        gradient = F.l1_loss(sobel_magnitude(fused), sobel_magnitude(sources).amax(dim=1, keepdim=True))
        terms.update(intensity=intensity, ssim=ssim, gradient=gradient)
        if "edge" in optional:
            terms["edge"] = 1.0 - edge_preservation(fused, sources).mean()
        return terms

    def forward(self, fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the terms.

        Args:
            fused: fused images (B, 1, H, W).
            sources: source images (B, 2, H, W), channel 0 MRI and channel 1 the other modality.

        Returns:
            The scalar loss.
        """
        weights = {"intensity": self.intensity_weight, "ssim": self.ssim_weight, "gradient": self.gradient_weight,
                   "edge": self.edge_weight, "vif": self.vif_weight}
        optional = [name for name in OPTIONAL_TERMS if weights[name] > 0]  # optional terms only when they count
        terms = self._terms(fused, sources, optional=optional)
        return sum(weights[name] * value for name, value in terms.items())
