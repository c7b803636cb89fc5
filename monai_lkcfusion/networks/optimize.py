"""Inference optimisation of a trained network: the same function, faster, on the device the network sits on.

:func:`optimize_for_inference` copies the network (the original keeps training on the plain path, with exact
gradients), puts the copy in eval mode, folds BatchNorm layers into the convolutions they follow where that is
exact, and replaces every large-kernel convolution with a :class:`LargeKernelConv2d` that chooses, for each input
shape, between the direct convolution and tiled FFT convolutions of several tile sizes. The choices (per layer and
input shape, and the network's memory format) are measured on the machine at first use and cached on disk
(:mod:`~monai_lkcfusion.networks.calibration`), with a cost model as the fallback.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import hashlib
import math
import threading
from collections.abc import Callable, Sequence

import torch
from torch import nn

from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.networks.blocks import MultipathAdaptiveFusion
from monai_lkcfusion.networks.calibration import ChoiceCache, fastest, synchronize
from monai_lkcfusion.networks.fft_conv import FFTConv2d, large_kernel_convolutions, tile_layout

__all__ = [
    "PLAN_CACHE",
    "InferenceNetwork",
    "LargeKernelConv2d",
    "fold_batch_norm",
    "network_signature",
    "optimize_for_inference",
    "retain_freed_memory",
]

DEFAULT_FFT_SIZES = (16, 24, 32, 48, 64, 80)
"""Tile (FFT) sizes tried for large-kernel convolutions; sizes not above the kernel size are skipped."""

# Relative per-operation costs of the cost model (measured on a 2-core AMD EPYC with AVX-512, in units of one dense
# channels-last direct-convolution multiply-add). It decides alone only without calibration; with calibration it
# only shortlists the candidates worth timing (see LargeKernelConv2d).
_COST_FFT = 24.0  # per (tile pixel x log2 of the tile area) of one channel's forward or inverse FFT, with tiling
_COST_MIX = 14.0  # per complex multiply-add of the per-frequency channel mixing
_COST_DEPTHWISE_DIRECT = 100.0  # per multiply-add of a direct depthwise convolution
_SHORTLIST = 4.0  # time every tile size whose modelled cost is within this factor of the cheapest
_DIRECT_SHORTLIST = 8.0  # time a dense direct convolution modelled within this factor of the cheapest FFT
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters

PLAN_CACHE = ChoiceCache("inference_plans")
"""Measured per-layer and per-network choices of :func:`optimize_for_inference`, per machine."""
_PLANNING = threading.RLock()  # one calibration at a time: timings of two would disturb each other


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


def _timed_call(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
    """``fn(x)`` as a function without arguments that waits for the device, for :func:`fastest`."""

    def call() -> None:
        fn(x)
        synchronize(x.device)

    return call


def _format_name(x: torch.Tensor) -> str:
    return "channels_last" if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else "contiguous"


class LargeKernelConv2d(nn.Module):
    """A large-kernel convolution that runs, per input shape, the fastest of direct and tiled FFT convolution.

    On the first input of a given (batch, height, width, device, memory format) the candidates are
    :class:`~monai_lkcfusion.networks.fft_conv.FFTConv2d` with each tile size whose modelled cost is within a factor 4
    of the cheapest, and the direct convolution (for a dense layer only if modelled within a factor 8). With
    ``calibrate`` they are timed on that input (once per machine: the winner is kept in ``cache``, keyed by the CPU,
    torch version, thread count, layer and shape); without it the cost model's cheapest is taken. The choice is used
    for every later input of that shape, and the output has the input's memory format. Kernel spectra are kept only
    for the tile sizes in use.

    Args:
        conv: the convolution (see :func:`~monai_lkcfusion.networks.fft_conv.fft_conv_supported`).
        fft_sizes: tile sizes to consider.
        calibrate: time the candidates (cached per machine); ``False`` trusts the cost model.
        max_spectra_mb: tile sizes whose kernel spectra would exceed this many MB are not considered.
        cache: where measured choices are kept (default :data:`PLAN_CACHE`).
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        fft_sizes: Sequence[int],
        calibrate: bool = True,
        max_spectra_mb: float = 1024.0,
        cache: ChoiceCache | None = None,
    ) -> None:
        super().__init__()
        self.conv = conv
        self.kernel_size = conv.kernel_size[0]
        self.fft_sizes = tuple(
            n for n in fft_sizes if n > self.kernel_size and self.spectra_bytes(n) <= max_spectra_mb * 2**20
        )
        self.calibrate = calibrate
        self.cache = cache if cache is not None else PLAN_CACHE
        self.fft = nn.ModuleDict()  # str(tile size) -> FFTConv2d, only those chosen for some shape
        self.plans: dict[tuple[int, int, int, str, str], int] = {}  # input shape, format -> tile size (0 = direct)

    def extra_repr(self) -> str:
        """The module's settings in its ``repr``.

        Returns:
            the tile sizes considered and the plans chosen so far.
        """
        return f"fft_sizes={self.fft_sizes}, plans={self.plans}"

    def spectra_bytes(self, fft_size: int) -> int:
        """Memory of the kernel spectra for tile size ``fft_size``.

        Args:
            fft_size: tile (FFT) size ``N``.

        Returns:
            bytes of ``N x (N // 2 + 1)`` complex64 values per (input channel / groups, output channel) pair.
        """
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

    def cache_key(self, x: torch.Tensor) -> str:
        """The key of this layer's measured choice for inputs like ``x`` (layer, shape, format, device, threads).

        Args:
            x: an input (B, C_in, H, W).

        Returns:
            the key in :attr:`cache` (also naming the tile sizes considered).
        """
        conv, (batch, _, height, width) = self.conv, x.shape
        return (
            f"conv {conv.in_channels}->{conv.out_channels} groups {conv.groups} k {self.kernel_size} "
            f"bias {conv.bias is not None} | input {batch}x{height}x{width} {_format_name(x)} {x.device.type} | "
            f"{torch.get_num_threads()} threads | sizes {','.join(map(str, self.fft_sizes))}"
        )

    def _plan(self, x: torch.Tensor) -> int:
        batch, _, height, width = x.shape
        costs = {n: self.modelled_cost(batch, height, width, n) for n in self.fft_sizes}
        if not self.calibrate or not costs:
            costs[0] = self.modelled_cost(batch, height, width, 0)
            return min(costs, key=costs.__getitem__)
        cheapest = min(costs.values())
        shortlist = sorted(n for n, cost in costs.items() if cost <= _SHORTLIST * cheapest)
        # the direct convolution is timed too, unless it is a dense layer the model puts far behind (the model is
        # close for dense layers, but not for depthwise ones, whose direct speed varies most between CPUs)
        if self.conv.groups > 1 or self.modelled_cost(batch, height, width, 0) <= _DIRECT_SHORTLIST * cheapest:
            shortlist.insert(0, 0)
        if len(shortlist) == 1:
            return shortlist[0]
        key = self.cache_key(x)
        cached = self.cache.get(key)
        if isinstance(cached, int) and cached in shortlist:
            return cached
        with torch.no_grad():
            best = int(fastest({str(n): _timed_call(self._candidate(n), x) for n in shortlist}))
        self.cache.put(key, best)
        in_use = {str(n) for n in (*self.plans.values(), best)}
        for name in [name for name in self.fft if name not in in_use]:
            del self.fft[name]
        return best

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` (B, C_in, H, W) -> (B, C_out, H, W) with the plan for its shape, in ``x``'s memory format.

        The first input of a new shape, device or memory format is planned (and, with ``calibrate``, timed) first.

        Args:
            x: input (B, C_in, H, W).

        Returns:
            output (B, C_out, H, W).
        """
        key = (x.shape[0], x.shape[2], x.shape[3], str(x.device), _format_name(x))
        if key not in self.plans:
            with _PLANNING:
                if key not in self.plans:
                    self.plans[key] = self._plan(x)
        return self._candidate(self.plans[key])(x)


_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


class InferenceNetwork(nn.Module):
    """Wraps an optimised copy of a network: eval mode only, every call without autograd, in the faster memory format.

    With ``memory_format="auto"`` the first call times the network in channels-last and in contiguous (NCHW) memory
    format on its input (channels-last suits wide layers and the FFT convolutions, NCHW narrow ones and GroupNorm;
    which wins depends on the CPU) and keeps the faster for every later call; the choice is cached per machine,
    network, input shape and thread count in ``cache``.

    Args:
        module: the optimised network.
        memory_format: ``"auto"``, ``"channels_last"`` or ``"contiguous"``.
        signature: identifies the network's architecture in cache keys (see :func:`optimize_for_inference`).
        cache: where the measured format is kept (default :data:`PLAN_CACHE`).

    Raises:
        FusionInputError: an unknown ``memory_format``.
    """

    def __init__(
        self,
        module: nn.Module,
        memory_format: str = "channels_last",
        signature: str = "",
        cache: ChoiceCache | None = None,
    ) -> None:
        super().__init__()
        if memory_format not in ("auto", *_FORMATS):
            raise FusionInputError(f"memory_format {memory_format!r}: choose auto, channels_last or contiguous")
        self.module = module
        self.memory_format = memory_format
        self.signature = signature
        self.cache = cache if cache is not None else PLAN_CACHE
        self.size_divisible = getattr(module, "size_divisible", 1)
        self._chosen = "" if memory_format == "auto" else memory_format  # the format every call runs in
        self._weights = ""  # the format the weights are in now
        if self._chosen:
            self._convert(self._chosen)

    def train(self, mode: bool = True) -> InferenceNetwork:
        """Only eval mode is allowed: train the original network, then optimise it again.

        Args:
            mode: must be ``False``.

        Returns:
            this network, in eval mode.

        Raises:
            FusionInputError: for ``mode=True``.
        """
        if mode:
            raise FusionInputError("an optimize_for_inference() network is inference only; train the original net")
        return super().train(False)

    def _convert(self, name: str) -> None:
        if name != self._weights:
            self.module.to(memory_format=_FORMATS[name])
            self._weights = name

    def _run(self, x: torch.Tensor, name: str) -> torch.Tensor:
        self._convert(name)
        with torch.no_grad():
            return self.module(x.contiguous(memory_format=_FORMATS[name]) if x.dim() == 4 else x)

    def _choose_format(self, x: torch.Tensor) -> str:
        """The faster memory format for inputs like ``x``: cached, or measured now (each candidate also plans its
        large-kernel layers for that format)."""
        key = (
            f"network {self.signature} | input {'x'.join(map(str, x.shape))} {x.device.type} | "
            f"{torch.get_num_threads()} threads"
        )
        cached = self.cache.get(key)
        if cached in _FORMATS:
            return str(cached)
        best = fastest({name: _timed_call(lambda t, name=name: self._run(t, name), x) for name in _FORMATS})
        self.cache.put(key, best)
        return best

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the optimised network without autograd; same inputs and outputs as the original.

        With ``memory_format="auto"`` the first 4D input also chooses the memory format (cached or measured).

        Args:
            x: the original network's input, e.g. a pair (B, 2, H, W).

        Returns:
            the original network's output, contiguous, e.g. the fused image (B, 1, H, W).
        """
        if not self._chosen and x.dim() == 4:
            with _PLANNING:
                if not self._chosen:
                    self._chosen = self._choose_format(x)
        return self._run(x, self._chosen or "channels_last").contiguous()


def network_signature(net: nn.Module) -> str:
    """A short hash of a network's architecture (its module tree and parameter shapes, not their values).

    Args:
        net: the network.

    Returns:
        the first 16 hexadecimal digits of a SHA-1 of its ``repr`` and its parameters' and buffers' names and shapes.
    """
    shapes = ";".join(f"{name}:{tuple(t.shape)}" for name, t in (*net.named_parameters(), *net.named_buffers()))
    return hashlib.sha1(f"{net!r}|{shapes}".encode()).hexdigest()[:16]


def optimize_for_inference(
    net: nn.Module,
    enabled: bool = True,
    fft_sizes: Sequence[int] = DEFAULT_FFT_SIZES,
    min_kernel_size: int = 7,
    calibrate: bool = True,
    max_spectra_mb: float = 1024.0,
    retain_memory: bool = True,
    memory_format: str | None = None,
) -> nn.Module:
    """An inference-only copy of ``net`` that computes the same function faster, on the device ``net`` is on.

    The copy is in eval mode and runs without autograd. BatchNorm layers that follow a 1x1 convolution in the fusion
    modules are folded into it (exact), and every stride-1 "same" convolution, dense or depthwise, with a kernel of
    at least ``min_kernel_size`` becomes an :class:`LargeKernelConv2d` that runs, per input shape, the fastest of the
    direct convolution and tiled FFT convolutions. With ``calibrate`` (default) the choices, per layer and input
    shape, and the network's memory format (channels-last or NCHW) are timed on the first input of each shape and
    cached on disk per machine (CPU model, extensions, torch version, thread count), so they are measured once per
    kind of machine and never taken from another CPU; without it a cost model decides (constants measured on one
    CPU) and the network runs channels-last. The first call with a new input shape builds kernel spectra (and, when
    not cached, measures), so it is slower. ``net`` itself is not changed (a TorchScript module is put in eval
    mode); inputs and outputs keep the usual shapes and the output is contiguous.

    Args:
        net: a network such as :class:`~monai_lkcfusion.networks.LKCFUNet` (any ``nn.Module`` works; only its
            ``nn.Conv2d`` layers and MAFM modules are rewritten; a TorchScript module is not copied, only put in
            eval mode, and run as it is without autograd).
        enabled: ``False`` returns a plain eval-mode copy (same interface, no rewriting), for comparisons and as a
            switch for callers.
        fft_sizes: tile (FFT) sizes to consider.
        min_kernel_size: convolutions with smaller kernels stay direct.
        calibrate: measure the per-layer choices and the memory format on this machine (cached); ``False`` uses
            the cost model and channels-last.
        max_spectra_mb: per-layer memory cap of the cached kernel spectra (tile sizes above it are skipped).
        retain_memory: for a network on the CPU, call :func:`retain_freed_memory` (process-wide), which halves the
            optimised forward's time on the released network by avoiding page faults on every new activation.
        memory_format: ``"channels_last"``, ``"contiguous"`` or ``"auto"`` (measured); default ``"auto"`` with
            ``calibrate``, else ``"channels_last"``.

    Returns:
        the optimised network (an :class:`InferenceNetwork`), or the plain eval-mode copy.

    Raises:
        FusionInputError: an unknown ``memory_format``.

    Example::

        fast = optimize_for_inference(LKCFUNet.from_preset("official").eval())
        fused = fast(pair)  # (B, 2, H, W) -> (B, 1, H, W), as the original
    """
    if enabled and isinstance(net, torch.jit.ScriptModule):  # compiled (`lkcfusion export`): nothing to rewrite,
        return InferenceNetwork(net.eval(), memory_format="contiguous")  # and a deep copy's parameters are not leaves
    plain = copy.deepcopy(net).eval()
    if not enabled:
        return plain
    signature = network_signature(plain)
    plain.requires_grad_(False)
    if retain_memory and all(p.device.type == "cpu" for p in plain.parameters()):
        retain_freed_memory()
    _fold_fusion_norms(plain)
    for _, parent, name, conv in large_kernel_convolutions(plain, min_kernel_size):
        setattr(parent, name, LargeKernelConv2d(conv, fft_sizes, calibrate=calibrate, max_spectra_mb=max_spectra_mb))
    chosen = memory_format or ("auto" if calibrate else "channels_last")
    return InferenceNetwork(plain, memory_format=chosen, signature=signature).eval()
