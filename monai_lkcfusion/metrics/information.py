"""Information-theoretic fusion metrics: MI (joint histogram) and FMI on raw pixels (Haghighat's Fast-FMI)."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .utils import batched_metric, reduce_sources

__all__ = ["mutual_information", "feature_mutual_information"]

# joint histograms with at most this many bins (pairs x levels^2) are counted densely
_DENSE_BINS = 1 << 24


def _plogp(p: torch.Tensor) -> torch.Tensor:
    """p * log(p) with 0 log 0 = 0 (natural log)."""
    return p * torch.log(torch.where(p > 0, p, 1.0))


@functools.lru_cache(maxsize=4)
def _count_log_count(n: int, device: torch.device) -> torch.Tensor:
    """(n + 1,) float64 table of c log c (natural log) for the counts c = 0..n, with 0 log 0 = 0."""
    counts = torch.arange(n + 1, dtype=torch.float64, device=device)
    return _plogp(counts)


def _is_8bit(images: torch.Tensor) -> bool:
    """Whether every value of ``images`` is an integer in [0, 255]."""
    lo, hi = (float(v) for v in torch.aminmax(images))
    return 0 <= lo and hi <= 255 and torch.equal(images, images.round())


def _mutual_information_per_source(fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """Mutual information (nats) of (B, N) ``fused`` with each of the (B, S, N) ``sources`` over distinct values.

    Every distinct value is its own histogram bin (as ``sklearn.metrics.mutual_info_score`` does for labels),
    so 8-bit images give 256-level histograms and other values are never binned together.

    Returns:
        (B, S) float64 tensor.
    """
    b, s, n = sources.shape
    p = b * s  # one joint histogram per (image, source) pair
    if _is_8bit(fused) and _is_8bit(sources):
        k = 256  # 8-bit images: the levels are the labels
        # bin of each pixel in the (P, K, K) histograms: exact integers in float64, converted once
        offsets = torch.arange(p, dtype=torch.float64, device=fused.device).view(b, s, 1) * (k * k)
        keys = (fused.unsqueeze(1) * k + sources).add_(offsets).to(torch.int64)  # (B, S, N)
    else:
        levels, inverse = torch.unique(torch.cat([fused.unsqueeze(1), sources], dim=1), return_inverse=True)
        k = levels.numel()
        la, lb = inverse[:, :1], inverse[:, 1:]  # (B, 1, N), (B, S, N) labels in [0, K)
        offsets = torch.arange(p, device=fused.device).view(b, s, 1) * (k * k)
        keys = (la * k + lb).add_(offsets)  # (B, S, N)
    if p * k * k <= _DENSE_BINS:
        joint = torch.bincount(keys.reshape(-1), minlength=p * k * k).reshape(p, k, k)  # (P, K, K) counts
        # MI = log n + (sum c_ab log c_ab - sum c_a log c_a - sum c_b log c_b) / n over the counts c
        table = _count_log_count(n, fused.device)
        total = table[joint].sum(dim=(1, 2)) - table[joint.sum(dim=2)].sum(dim=1) - table[joint.sum(dim=1)].sum(dim=1)
        return (math.log(n) + total / n).clamp_min(0.0).reshape(b, s)
    values = []
    for row in keys.reshape(p, n) % (k * k):  # label of F * K + label of the source
        pair_keys, counts = torch.unique(row, return_counts=True)
        pab = counts.to(torch.float64) / n
        pa = torch.bincount(row // k, minlength=k).to(torch.float64)[pair_keys // k] / n
        pb = torch.bincount(row % k, minlength=k).to(torch.float64)[pair_keys % k] / n
        values.append((pab * (torch.log(pab) - torch.log(pa) - torch.log(pb))).sum().clamp_min(0.0))
    return torch.stack(values).reshape(b, s)


@batched_metric
def mutual_information(
    fused: torch.Tensor, mri: torch.Tensor, other: torch.Tensor, reduction: str = "sum", base: float = math.e
) -> torch.Tensor:
    """MI: MI(F, MRI) + MI(F, other) from joint histograms over the images' distinct values.

    Args:
        fused: (B, 1, H, W) batch or (H, W) image on [0, 255].
        mri: the first source, same shape.
        other: the second source, same shape.
        reduction: ``"sum"`` over the two sources (the literature) or ``"mean"``.
        base: logarithm base; e (nats, the literature's evaluator) or 2 (bits).

    Returns:
        (B,) float64 tensor, or a float for a single image.
    """
    sources = torch.cat([mri, other], dim=1).flatten(2)  # (B, 2, N)
    mi = _mutual_information_per_source(fused.flatten(1), sources) / math.log(base)  # (B, 2)
    return reduce_sources(mi, reduction)


def _windows(image: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sliding windows of one image (1, 1, H, W) as (L, w*w) rows in MATLAB's column-major order, raw and rescaled.

    The rescaled rows are mapped to [0, 1] by their min and max; a constant window becomes all ones.
    """
    cols = F.unfold(image, window)[0]  # (w*w, L), row-major offsets
    cols = cols.reshape(window, window, -1).transpose(0, 1).reshape(window * window, -1).T  # (L, w*w) column-major
    lo, hi = cols.amin(dim=1, keepdim=True), cols.amax(dim=1, keepdim=True)
    span = hi - lo
    return cols, torch.where(span > 0, (cols - lo) / torch.where(span > 0, span, 1.0), 1.0)


def _window_fmi(src: torch.Tensor, fus: torch.Tensor, equal: torch.Tensor) -> torch.Tensor:
    """Normalised feature MI per window between window PDFs ``src`` and ``fus`` (L, l); 1 where windows are equal.

    The joint PDF is Nelsen's mix of the product copula and the upper (c >= 0) or lower (c < 0) Frechet bound
    matching the PDFs' Pearson correlation c, as in Haghighat & Razian's Fast-FMI.
    """
    n, l = src.shape
    cdf_s, cdf_f = src.cumsum(dim=1), fus.cumsum(dim=1)
    sc, fc = src - src.mean(dim=1, keepdim=True), fus - fus.mean(dim=1, keepdim=True)
    cov = (sc * fc).sum(dim=1)
    c = torch.where(cov == 0, 0.0, cov / torch.sqrt((sc * sc).sum(dim=1) * (fc * fc).sum(dim=1)))
    idx = torch.arange(1, l + 1, dtype=src.dtype, device=src.device)
    sd_s = ((src * idx**2).sum(dim=1) - (src * idx).sum(dim=1) ** 2).clamp_min(0.0).sqrt()
    sd_f = ((fus * idx**2).sum(dim=1) - (fus * idx).sum(dim=1) ** 2).clamp_min(0.0).sqrt()
    fi, sj = cdf_f.unsqueeze(2), cdf_s.unsqueeze(1)  # (L, l, 1), (L, 1, l): rows follow F, columns the source
    upper = torch.minimum(fi, sj)  # Frechet upper bound of the joint CDF
    lower = (fi + sj - 1).clamp_min(0.0)  # Frechet lower bound
    bound = torch.where((c >= 0).view(n, 1, 1), upper, lower)
    cov_bound = (bound - fi * sj).sum(dim=(1, 2))
    degenerate = (sd_s == 0) | (sd_f == 0) | (c == 0)
    weight = torch.where(degenerate, 0.0, c / torch.where(degenerate, 1.0, cov_bound / (sd_f * sd_s)))
    bound_pdf = torch.diff(F.pad(bound, (1, 0, 1, 0)), dim=1).diff(dim=2)  # joint CDF -> joint PDF
    joint = weight.view(n, 1, 1) * bound_pdf + (1 - weight.view(n, 1, 1)) * fus.unsqueeze(2) * src.unsqueeze(1)
    joint_entropy = -(joint * torch.log2(torch.where(joint != 0, joint.abs(), 1.0))).sum(dim=(1, 2))
    h_s = -(src * torch.log2(torch.where(src > 0, src, 1.0))).sum(dim=1)
    h_f = -(fus * torch.log2(torch.where(fus > 0, fus, 1.0))).sum(dim=1)
    mi = h_s + h_f - joint_entropy
    total = h_s + h_f
    fmi = torch.where((mi == 0) | (total == 0), 0.0, 2 * mi / torch.where(total == 0, 1.0, total))
    return torch.where(equal, 1.0, fmi)


@batched_metric
def feature_mutual_information(
    fused: torch.Tensor, mri: torch.Tensor, other: torch.Tensor, window: int = 3
) -> torch.Tensor:
    """FMI_pixel (Haghighat et al. 2011; Fast-FMI 2014) on raw pixels: mean over windows of (FMI_AF + FMI_BF) / 2.

    Args:
        fused: (B, 1, H, W) batch or (H, W) image on [0, 255].
        mri: the first source, same shape.
        other: the second source, same shape.
        window: odd sliding-window size (the reference uses 3); only windows fully inside the image count.

    Returns:
        (B,) float64 tensor, or a float for a single image.
    """
    values = []
    for f, a, b in zip(fused, mri, other):  # one image at a time: (L, w^2, w^2) joint PDFs per source
        raw_f, scaled_f = _windows(f.unsqueeze(0), window)
        raw_a, scaled_a = _windows(a.unsqueeze(0), window)
        raw_b, scaled_b = _windows(b.unsqueeze(0), window)
        pdf_f = scaled_f / scaled_f.sum(dim=1, keepdim=True)
        equal_a = (raw_a == raw_f).all(dim=1)
        # the reference compares the second source with F's window as left by the first comparison:
        # raw where it matched the first source, rescaled otherwise
        equal_b = (raw_b == torch.where(equal_a.unsqueeze(1), raw_f, scaled_f)).all(dim=1)
        fmi_a = _window_fmi(scaled_a / scaled_a.sum(dim=1, keepdim=True), pdf_f, equal_a)
        fmi_b = _window_fmi(scaled_b / scaled_b.sum(dim=1, keepdim=True), pdf_f, equal_b)
        values.append(((fmi_a + fmi_b) / 2).mean())
    return torch.stack(values)
