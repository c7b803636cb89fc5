"""Inference optimisation of a trained network: the same function, faster, on the device the network sits on.

:func:`optimize_for_inference` copies the network (the original keeps training on the plain path, with exact
gradients), puts the copy in eval mode, folds BatchNorm layers into the convolutions they follow where that is
exact, and replaces every large-kernel convolution with a :class:`LargeKernelConv2d` that chooses, for each input
shape, between the direct convolution and tiled FFT convolutions of several tile sizes.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.networks.blocks import MultipathAdaptiveFusion
from monai_lkcfusion.networks.fft_conv import FFTConv2d, fft_conv_supported, tile_layout

__all__ = ["InferenceNetwork", "LargeKernelConv2d", "fold_batch_norm", "optimize_for_inference", "retain_freed_memory"]

DEFAULT_FFT_SIZES = (16, 24, 32, 48, 64, 80)
"""Tile (FFT) sizes tried for large-kernel convolutions; sizes not above the kernel size are skipped."""

# Relative per-operation costs of the cost model that ranks the candidates (measured on a 2-core AVX-512 CPU, in
# units of one dense channels-last direct-convolution multiply-add).
_COST_FFT = 24.0  # per (tile pixel x log2 of the tile area) of one channel's forward or inverse FFT, with tiling
_COST_MIX = 14.0  # per complex multiply-add of the per-frequency channel mixing
_COST_DEPTHWISE_DIRECT = 100.0  # per multiply-add of a direct depthwise convolution
_SHORTLIST = 1.5  # time every candidate whose modelled cost is within this factor of the cheapest
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def retain_freed_memory() -> bool:
    """Let the C allocator keep freed memory for reuse instead of returning it to the system (glibc only).

    By default glibc serves every allocation above 128 KB-32 MB with a fresh ``mmap`` and unmaps it on free, so each
    new activation tensor of a network page-faults all its memory again. Measured on the released network (256x256,
    2 CPU threads) this doubled the optimised forward (2.7-3.4 s instead of 1.4 s). Raising the mmap and trim
    thresholds keeps freed blocks in the process, so the memory of one forward is reused by the next; the process
    keeps its peak memory until it exits. The setting is process-wide and only touches the allocator's thresholds.

    Returns:
        whether both thresholds were set (``False`` where the C library has no ``mallopt``, e.g. macOS, Windows).
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 2**30)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution equal to ``norm(conv(x))`` for an eval-mode BatchNorm with running statistics.

    Args:
        conv: the convolution.
        norm: the BatchNorm that follows it.

    Returns:
        a new ``nn.Conv2d`` with folded weight and bias.
    """
    gamma = norm.weight.detach() if norm.weight is not None else torch.ones_like(norm.running_var)
    beta = norm.bias.detach() if norm.bias is not None else torch.zeros_like(norm.running_mean)
    scale = gamma / torch.sqrt(norm.running_var + norm.eps)  # (C_out,)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(norm.running_mean)
    folded = copy.deepcopy(conv)
    folded.weight = nn.Parameter(conv.weight.detach() * scale.view(-1, 1, 1, 1), requires_grad=False)
    folded.bias = nn.Parameter((bias - norm.running_mean) * scale + beta, requires_grad=False)
    return folded


def _fold_fusion_norms(net: nn.Module) -> None:
    """Fold the conv -> BatchNorm pairs of every MAFM module in ``net`` (in place; eval mode only)."""
    for module in net.modules():
        if not isinstance(module, MultipathAdaptiveFusion):
            continue
        for conv_name, norm_name in (("spatial_conv", "spatial_norm"), ("gate_conv", "gate_norm")):
            norm = getattr(module, norm_name)
            if isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats and norm.running_var is not None:
                setattr(module, conv_name, fold_batch_norm(getattr(module, conv_name), norm))
                setattr(module, norm_name, nn.Identity())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """Seconds for one call of ``fn(x)``."""
    start = time.perf_counter()
    fn(x)
    _synchronize(x.device)
    return time.perf_counter() - start


class LargeKernelConv2d(nn.Module):
    """A large-kernel convolution that runs, per input shape, the cheapest of direct and tiled FFT convolution.

    On the first input of a given (batch, height, width, device) the candidates (the direct convolution and
    :class:`~monai_lkcfusion.networks.fft_conv.FFTConv2d` with each tile size) are ranked by a cost model; with
    ``autotune`` those within a factor 1.5 of the cheapest are timed once and the fastest wins. The choice is used for
    every later input of that shape. Kernel spectra are kept only for the tile sizes in use.

    Args:
        conv: the convolution (see :func:`~monai_lkcfusion.networks.fft_conv.fft_conv_supported`).
        fft_sizes: tile sizes to consider.
        autotune: time the shortlisted candidates; ``False`` takes the cost model's cheapest without timing.
        max_spectra_mb: tile sizes whose kernel spectra would exceed this many MB are not considered.
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        fft_sizes: Sequence[int],
        autotune: bool = False,
        max_spectra_mb: float = 1024.0,
    ) -> None:
        super().__init__()
        self.conv = conv
        self.kernel_size = conv.kernel_size[0]
        self.fft_sizes = tuple(
            n for n in fft_sizes if n > self.kernel_size and self.spectra_bytes(n) <= max_spectra_mb * 2**20
        )
        self.autotune = autotune
        self.fft = nn.ModuleDict()  # str(tile size) -> FFTConv2d, only those chosen for some shape
        self.plans: dict[tuple[int, int, int, str], int] = {}  # input shape -> tile size (0 = direct)

    def extra_repr(self) -> str:
        return f"fft_sizes={self.fft_sizes}, plans={self.plans}"

    def spectra_bytes(self, fft_size: int) -> int:
        """Memory of the kernel spectra for tile size ``fft_size``."""
        conv = self.conv
        bins = fft_size * (fft_size // 2 + 1)
        return bins * (conv.in_channels // conv.groups) * conv.out_channels * 8  # complex64, as FFTConv2d stores them

    def modelled_cost(self, batch: int, height: int, width: int, fft_size: int) -> float:
        """Cost model of one call, in dense direct multiply-adds (``fft_size`` 0: the direct convolution).

        Args:
            batch: batch size.
            height: input height.
            width: input width.
            fft_size: tile size, or 0 for the direct convolution.

        Returns:
            the modelled cost.
        """
        conv, k = self.conv, self.kernel_size
        depthwise = conv.groups > 1
        mixing = conv.out_channels if depthwise else conv.in_channels * conv.out_channels
        if fft_size == 0:
            return batch * height * width * k * k * mixing * (_COST_DEPTHWISE_DIRECT if depthwise else 1.0)
        _, rows = tile_layout(height, k, fft_size)
        _, cols = tile_layout(width, k, fft_size)
        tiles = batch * rows * cols
        area = fft_size * fft_size
        ffts = tiles * (conv.in_channels + conv.out_channels) * area * math.log2(area) * _COST_FFT
        return ffts + tiles * fft_size * (fft_size // 2 + 1) * mixing * (4.0 if depthwise else _COST_MIX)

    def _candidate(self, fft_size: int) -> nn.Module:
        if fft_size == 0:
            return self.conv
        key = str(fft_size)
        if key not in self.fft:
            self.fft[key] = FFTConv2d(self.conv, fft_size).to(self.conv.weight.device)
        return self.fft[key]

    def _plan(self, x: torch.Tensor) -> int:
        batch, _, height, width = x.shape
        costs = {n: self.modelled_cost(batch, height, width, n) for n in (0, *self.fft_sizes)}
        cheapest = min(costs.values())
        shortlist = sorted(n for n, cost in costs.items() if cost <= _SHORTLIST * cheapest)
        if not self.autotune or len(shortlist) == 1:
            return min(costs, key=costs.__getitem__)
        timings = {n: _time_once(self._candidate(n), x) for n in shortlist}
        best = min(timings, key=timings.__getitem__)
        in_use = {str(n) for n in (*self.plans.values(), best)}
        for key in [key for key in self.fft if key not in in_use]:
            del self.fft[key]
        return best

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` (B, C_in, H, W) -> (B, C_out, H, W) with the plan for its shape."""
        key = (x.shape[0], x.shape[2], x.shape[3], str(x.device))
        if key not in self.plans:
            self.plans[key] = self._plan(x)
        return self._candidate(self.plans[key])(x)


class InferenceNetwork(nn.Module):
    """Wraps an optimised copy of a network: eval mode only, every call without autograd.

    Args:
        module: the optimised network.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.size_divisible = getattr(module, "size_divisible", 1)

    def train(self, mode: bool = True) -> InferenceNetwork:
        """Only eval mode is allowed: train the original network, then optimise it again.

        Raises:
            FusionInputError: for ``mode=True``.
        """
        if mode:
            raise FusionInputError("an optimize_for_inference() network is inference only; train the original net")
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the optimised network without autograd; same inputs and outputs as the original."""
        with torch.no_grad():
            out = self.module(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)
        return out.contiguous()


def optimize_for_inference(
    net: nn.Module,
    enabled: bool = True,
    fft_sizes: Sequence[int] = DEFAULT_FFT_SIZES,
    min_kernel_size: int = 7,
    autotune: bool = False,
    max_spectra_mb: float = 1024.0,
    retain_memory: bool = True,
) -> nn.Module:
    """An inference-only copy of ``net`` that computes the same function faster, on the device ``net`` is on.

    The copy is in eval mode, runs without autograd and keeps its activations channels-last (faster for the
    direct convolutions on the CPU and the layout the FFT convolutions work in; inputs and outputs keep the usual
    shapes and are returned contiguous). BatchNorm layers that follow a 1x1 convolution in the
    fusion modules are folded into it (exact), and every stride-1 "same" convolution, dense or depthwise, with a
    kernel of at least ``min_kernel_size`` becomes an :class:`LargeKernelConv2d` that picks, on the first input of
    each shape, the cheapest of the direct convolution and tiled FFT convolutions (by a cost model measured on a
    2-core AVX-512 CPU, optionally confirmed by timing), and builds the kernel spectra it needs then, so the first
    call with a new input shape is slower. ``net`` itself is not changed.

    Args:
        net: a network such as :class:`~monai_lkcfusion.networks.LKCFUNet` (any ``nn.Module`` works; only its
            ``nn.Conv2d`` layers and MAFM modules are rewritten).
        enabled: ``False`` returns a plain eval-mode copy (same interface, no rewriting), for comparisons and as a
            switch for callers.
        fft_sizes: tile (FFT) sizes to consider.
        min_kernel_size: convolutions with smaller kernels stay direct.
        autotune: also time the shortlisted candidates on the first input of each shape (slow on a busy CPU: the
            released network needs minutes to tune); by default the cost model alone decides.
        max_spectra_mb: per-layer memory cap of the cached kernel spectra (tile sizes above it are skipped).
        retain_memory: for a network on the CPU, call :func:`retain_freed_memory` (process-wide), which halves the
            optimised forward's time on the released network by avoiding page faults on every new activation.

    Returns:
        the optimised network (an :class:`InferenceNetwork`), or the plain eval-mode copy.

    Example::

        fast = optimize_for_inference(LKCFUNet.from_preset("official").eval())
        fused = fast(pair)  # (B, 2, H, W) -> (B, 1, H, W), as the original
    """
    plain = copy.deepcopy(net).eval()
    if not enabled:
        return plain
    plain.requires_grad_(False)
    if retain_memory and all(p.device.type == "cpu" for p in plain.parameters()):
        retain_freed_memory()
    _fold_fusion_norms(plain)
    for parent in list(plain.modules()):
        for name, child in list(parent.named_children()):
            if fft_conv_supported(child) and child.kernel_size[0] >= min_kernel_size:
                large = LargeKernelConv2d(child, fft_sizes, autotune=autotune, max_spectra_mb=max_spectra_mb)
                setattr(parent, name, large)
    return InferenceNetwork(plain.to(memory_format=torch.channels_last)).eval()
