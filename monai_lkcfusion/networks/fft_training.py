"""Differentiable whole-image FFT convolution, to train large-kernel networks faster on the CPU, where it is faster.

On the CPU the direct large-kernel convolutions dominate a training step, their backward pass most of all (measured
on the ``small`` preset, batch 4 of 256x256 slices, one thread: 4.5 s of a 6.2 s step). The same "same"-padded
convolution computed as a product of spectra over the whole (zero-extended) image is exact up to float rounding and
its gradients come from ``torch.fft``'s autograd: 5x faster for a dense 15x15 layer with few channels and 15x for a
depthwise one. It is not faster everywhere: its cost grows with ``C_in * C_out`` times the padded image area
whatever the kernel, and the kernels' spectra (``C_out * C_in`` padded images) are kept for the backward pass, so
wide dense layers (the ``official`` preset's 128-256 channels) train slower and use far more memory on a CPU with
fast direct convolutions (AVX-512/AMX).

:class:`SpectralConv2d` is an ``nn.Conv2d`` with the same parameters and state-dict keys, so checkpoints do not
change; :func:`use_spectral_convolutions` swaps it in for a network's large-kernel convolutions, sharing their
parameters (call it before building the optimizer or after; the parameters are the same objects). Its policy
``"measured"`` swaps only the layers where the FFT path was measured faster on this CPU, at the layer's real input
shape (:func:`spectral_layer_choice`); the timings are cached on disk per CPU model, extensions, torch version and
thread count (:data:`TIMINGS_CACHE`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import scipy.fft
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from monai_lkcfusion.networks.calibration import ChoiceCache, synchronize
from monai_lkcfusion.networks.fft_conv import large_kernel_convolutions

__all__ = [
    "SPECTRAL_POLICIES",
    "TIMINGS_CACHE",
    "ConvCase",
    "ConvTiming",
    "LayerChoice",
    "SpectralConv2d",
    "prefers_spectral",
    "spectral_conv2d",
    "spectral_layer_choice",
    "time_convolution",
    "use_spectral_convolutions",
]

SPECTRAL_POLICIES = ("all", "measured")
"""Policies of :func:`use_spectral_convolutions`: every large-kernel layer, or those measured faster on this CPU."""

TIMINGS_CACHE = "spectral_training"
"""Name of the :class:`~monai_lkcfusion.networks.calibration.ChoiceCache` of the measured timings
(``spectral_training.json`` in :func:`~monai_lkcfusion.networks.calibration.cache_dir`)."""

_logger = logging.getLogger(__name__)


def spectral_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=k // 2, groups=groups)`` by FFT over the whole image, differentiable.

    Args:
        x: input (B, C_in, H, W).
        weight: odd square kernels (C_out, C_in / groups, k, k); ``groups`` is 1 (dense) or ``C_in == C_out``
            (depthwise).
        bias: (C_out,) or ``None``.
        groups: 1 or the channel count.

    Returns:
        the convolution, (B, C_out, H, W), in the dtype of ``x`` (float32 or float64).
    """
    height, width = x.shape[-2:]
    k = weight.shape[-1]
    pad = k // 2
    # linear (not circular) convolution of the image with the flipped kernel; its centre crop is PyTorch's
    # cross-correlation with "same" zero padding
    size = (scipy.fft.next_fast_len(height + k - 1, real=True), scipy.fft.next_fast_len(width + k - 1, real=True))
    x_spec = torch.fft.rfft2(x, s=size)  # (B, C_in, Fh, Fw) complex
    w_spec = torch.fft.rfft2(weight.flip(-2, -1), s=size)  # (C_out, C_in / groups, Fh, Fw)
    if groups == 1:
        y_spec = torch.einsum("bchw,ochw->bohw", x_spec, w_spec)  # (B, C_out, Fh, Fw)
    else:
        y_spec = x_spec * w_spec[:, 0]
    y = torch.fft.irfft2(y_spec, s=size)[..., pad : pad + height, pad : pad + width]  # (B, C_out, H, W)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


class SpectralConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` ("same" zero padding, stride 1, odd square kernel, dense or depthwise) computed by FFT.

    Same arguments, parameters and state-dict keys as ``nn.Conv2d``; the forward (and so the backward) runs
    :func:`spectral_conv2d`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` by FFT, as ``nn.Conv2d.forward`` would directly.

        Args:
            x: input (B, C_in, H, W).

        Returns:
            output (B, C_out, H, W).
        """
        return spectral_conv2d(x, self.weight, self.bias, self.groups)


@dataclass(frozen=True)
class ConvCase:
    """One convolution as a training step runs it: the layer's configuration and the shape of its input.

    Layers with equal cases cost the same, so each distinct case is measured once; :attr:`key` names it in the
    on-disk cache (together with :func:`~monai_lkcfusion.machine.machine_key`).

    Attributes:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: the odd square kernel's side ``k``.
        groups: 1 (dense) or ``C_in`` (depthwise).
        bias: whether the layer has a bias.
        input_shape: the layer's input (B, C_in, H, W) in a training step.
        dtype: the parameters' dtype, e.g. ``"float32"``.
        device: the device type, e.g. ``"cpu"``.
        threads: ``torch.get_num_threads()`` (speed ratios change with it).
    """

    in_channels: int
    out_channels: int
    kernel_size: int
    groups: int
    bias: bool
    input_shape: tuple[int, int, int, int]
    dtype: str = "float32"
    device: str = "cpu"
    threads: int = 1

    @classmethod
    def of(cls, conv: nn.Conv2d, input_shape: Sequence[int]) -> ConvCase:
        """The case of ``conv`` fed an input of ``input_shape`` (B, C_in, H, W), at the current thread count.

        Args:
            conv: the layer (its weight's dtype and device are recorded).
            input_shape: the layer's input shape (B, C_in, H, W).

        Returns:
            the case.
        """
        return cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size[0],
            conv.groups,
            conv.bias is not None,
            tuple(input_shape),
            str(conv.weight.dtype).removeprefix("torch."),
            conv.weight.device.type,
            torch.get_num_threads(),
        )

    @property
    def key(self) -> str:
        """The case as one line, e.g. ``128->128 k15 groups 1 bias 1 input 2x128x64x64 float32 cpu threads 1``.

        Returns:
            the line, used as the key in the on-disk cache.
        """
        batch, channels, height, width = self.input_shape
        return (
            f"{self.in_channels}->{self.out_channels} k{self.kernel_size} groups {self.groups} bias {int(self.bias)} "
            f"input {batch}x{channels}x{height}x{width} {self.dtype} {self.device} threads {self.threads}"
        )

    def spectrum_bytes(self) -> int:
        """Memory of the spectra that :func:`spectral_conv2d` keeps for the backward pass of this case.

        Returns:
            bytes of the input's, the kernels' and the output's spectra, (B, C_in), (C_out, C_in / groups) and
            (B, C_out) maps of ``Fh x (Fw // 2 + 1)`` complex values, where the direct convolution keeps only its
            input and its ``k x k`` kernels.
        """
        batch, _, height, width = self.input_shape
        fft_h = scipy.fft.next_fast_len(height + self.kernel_size - 1, real=True)
        fft_w = scipy.fft.next_fast_len(width + self.kernel_size - 1, real=True) // 2 + 1
        maps = (batch + self.out_channels // self.groups) * self.in_channels + batch * self.out_channels
        complex_bytes = 2 * torch.empty((), dtype=getattr(torch, self.dtype)).element_size()
        return maps * fft_h * fft_w * complex_bytes


class ConvTiming(NamedTuple):
    """Seconds for the forward and backward pass of one :class:`ConvCase`, direct and by FFT."""

    direct_s: float
    spectral_s: float


class LayerChoice(NamedTuple):
    """What :func:`spectral_layer_choice` decided for one layer.

    Attributes:
        case: the layer and its input in a training step.
        timing: its measured (or cached) timing; ``None`` where the FFT path would need more memory than allowed.
        spectral: whether the layer is to run :class:`SpectralConv2d`.
    """

    case: ConvCase
    timing: ConvTiming | None
    spectral: bool


def prefers_spectral(timing: ConvTiming, min_speedup: float = 1.2) -> bool:
    """The decision rule: the FFT path only where it is faster than the direct one by at least ``min_speedup``.

    Args:
        timing: the layer's forward + backward times.
        min_speedup: the margin, ``direct_s / spectral_s`` at least this (1.2: 20% faster), so that measurement
            noise on a busy machine does not swap layers that gain nothing.

    Returns:
        ``True`` to run the layer by FFT.
    """
    return timing.direct_s >= min_speedup * timing.spectral_s


def time_convolution(case: ConvCase, repeats: int = 2, decisive_ratio: float = 4.0) -> ConvTiming:
    """Time forward + backward of one convolution, direct (``F.conv2d``) and by FFT (:func:`spectral_conv2d`).

    The paths run alternately on random data of the case's shapes, with gradients for the input, the kernels and
    the bias as in a training step; the first runs warm up too, so the minimum counts. After the first round, a
    path ``decisive_ratio`` times faster than the other ends the measurement (no noise flips such a decision).

    Args:
        case: the layer and its input shape (B, C_in, H, W).
        repeats: most runs per path.
        decisive_ratio: speed ratio after which one run per path is enough.

    Returns:
        the minimum seconds of each path.
    """
    dtype, device = getattr(torch, case.dtype), torch.device(case.device)
    batch, _, height, width = case.input_shape
    k, groups = case.kernel_size, case.groups
    generator = torch.Generator(device).manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, dtype=dtype, device=device, generator=generator)

    x = rand(*case.input_shape).requires_grad_()  # (B, C_in, H, W)
    weight = rand(case.out_channels, case.in_channels // groups, k, k).requires_grad_()
    bias = rand(case.out_channels).requires_grad_() if case.bias else None
    grad_output = rand(batch, case.out_channels, height, width)
    inputs = [t for t in (x, weight, bias) if t is not None]
    paths: tuple[Callable[[], torch.Tensor], ...] = (
        lambda: F.conv2d(x, weight, bias, padding=k // 2, groups=groups),
        lambda: spectral_conv2d(x, weight, bias, groups),
    )
    best = [math.inf, math.inf]
    for _ in range(repeats):
        for index, conv in enumerate(paths):
            synchronize(device)
            start = time.perf_counter()
            torch.autograd.grad(conv(), inputs, grad_output)
            synchronize(device)
            best[index] = min(best[index], time.perf_counter() - start)
        if max(best) >= decisive_ratio * min(best):
            break
    return ConvTiming(*best)


def _cached_timing(entry: object) -> ConvTiming | None:
    """A cached ``{"direct_s", "spectral_s"}`` entry as a timing; ``None`` if absent or malformed."""
    try:
        timing = ConvTiming(float(entry["direct_s"]), float(entry["spectral_s"]))  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None
    return timing if all(math.isfinite(s) and s > 0 for s in timing) else None


def _input_shapes(net: nn.Module, sample_shape: Sequence[int], convs: dict[str, nn.Module]) -> dict[str, tuple]:
    """Input shape of each of ``convs`` (by name) in one forward pass of a ``sample_shape`` batch.

    The pass runs on the meta device (shapes only, no arithmetic) with meta copies of the parameters and buffers
    substituted, so the network's tensors, running statistics and the random state are left as they were.
    """
    shapes: dict[str, tuple] = {}

    def recorder(name: str) -> Callable[[nn.Module, tuple], None]:
        def record(_module: nn.Module, args: tuple) -> None:
            shapes[name] = tuple(args[0].shape)

        return record

    handles = [conv.register_forward_pre_hook(recorder(name)) for name, conv in convs.items()]
    tensors = {name: torch.empty_like(t, device="meta") for name, t in [*net.named_parameters(), *net.named_buffers()]}
    dtype = next(net.parameters()).dtype
    try:
        with torch.no_grad():
            functional_call(net, tensors, (torch.empty(tuple(sample_shape), dtype=dtype, device="meta"),))
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def spectral_layer_choice(
    net: nn.Module,
    sample_shape: Sequence[int],
    min_kernel_size: int = 7,
    min_speedup: float = 1.2,
    max_spectrum_mib: float = 256.0,
    timer: Callable[[ConvCase], ConvTiming] | None = None,
    cache: bool = True,
) -> dict[str, LayerChoice]:
    """Decide, per large-kernel convolution of ``net``, whether the FFT path trains it faster on this machine.

    One forward pass of a ``sample_shape`` batch on the meta device gives each layer's input shape; each distinct
    :class:`ConvCase` (configuration + input shape) is then timed once by ``timer``, unless the cache holds it for
    this machine (:func:`~monai_lkcfusion.machine.machine_key`). A layer runs by FFT if :func:`prefers_spectral` and
    its spectra fit in ``max_spectrum_mib``; layers over that limit are not timed.

    Args:
        net: the network, on the device and in the dtype it will train in.
        sample_shape: one training batch, (B, C, H, W) as the network receives it (B = the loader's batch size
            times the samples drawn per image).
        min_kernel_size: smallest kernel size considered (direct convolution stays faster for small kernels).
        min_speedup: the margin of :func:`prefers_spectral`.
        max_spectrum_mib: most memory, in MiB, that one layer's spectra (:meth:`ConvCase.spectrum_bytes`) may take.
        timer: measures one case; ``None``: :func:`time_convolution`.
        cache: read and update the timings in the :data:`TIMINGS_CACHE` file of
            :func:`~monai_lkcfusion.networks.calibration.cache_dir` (a missing, corrupt or unwritable file only
            costs measuring again).

    Returns:
        ``{qualified layer name: LayerChoice}`` for every candidate layer the sample pass reached, in network order.
    """
    convs = {name: conv for name, _, _, conv in large_kernel_convolutions(net, min_kernel_size)}
    shapes = _input_shapes(net, sample_shape, convs) if convs else {}
    cases = {name: ConvCase.of(conv, shapes[name]) for name, conv in convs.items() if name in shapes}
    store = ChoiceCache(TIMINGS_CACHE) if cache and cases else None
    measure = timer or time_convolution  # looked up at call time
    timings: dict[ConvCase, ConvTiming | None] = {}
    for case in dict.fromkeys(cases.values()):  # distinct cases, in network order
        if case.spectrum_bytes() > max_spectrum_mib * 2**20:
            timings[case] = None
            continue
        timings[case] = _cached_timing(store.get(case.key)) if store is not None else None
        if timings[case] is None:
            timings[case] = measure(case)
            if store is not None:
                store.put(case.key, timings[case]._asdict())
    choice = {}
    for name, case in cases.items():
        timing = timings[case]
        choice[name] = LayerChoice(case, timing, timing is not None and prefers_spectral(timing, min_speedup))
        _logger.info("%s (%s): %s -> %s", name, case.key, timing, "spectral" if choice[name].spectral else "direct")
    return choice


def use_spectral_convolutions(
    net: nn.Module,
    min_kernel_size: int = 7,
    policy: str = "all",
    sample_shape: Sequence[int] | None = None,
    min_speedup: float = 1.2,
    max_spectrum_mib: float = 256.0,
    timer: Callable[[ConvCase], ConvTiming] | None = None,
    cache: bool = True,
) -> nn.Module:
    """Swap, in place, large-kernel convolutions for :class:`SpectralConv2d` modules that share their parameters.

    The network computes the same function (to float rounding) with the same parameters, so an optimizer built
    before or after the swap trains it alike, and its state dict loads into the plain network.

    Policies (:data:`SPECTRAL_POLICIES`):

    - ``"all"``: every supported convolution with a kernel of at least ``min_kernel_size``.
    - ``"measured"``: only those that :func:`spectral_layer_choice` finds faster by FFT on this machine for a
      training batch of ``sample_shape`` (timed once per CPU, torch version and thread count, then cached).

    Args:
        net: a network, e.g. :class:`~monai_lkcfusion.networks.LKCFUNet`.
        min_kernel_size: smallest kernel size to swap (direct convolution stays faster for small kernels).
        policy: ``"all"`` or ``"measured"``.
        sample_shape: with ``"measured"``: one training batch, (B, C, H, W).
        min_speedup: with ``"measured"``: see :func:`prefers_spectral`.
        max_spectrum_mib: with ``"measured"``: see :func:`spectral_layer_choice`.
        timer: with ``"measured"``: measures one :class:`ConvCase` (``None``: :func:`time_convolution`).
        cache: with ``"measured"``: use the on-disk timings cache.

    Returns:
        ``net`` itself.

    Raises:
        ValueError: for an unknown policy, or ``"measured"`` without ``sample_shape``.
    """
    if policy not in SPECTRAL_POLICIES:
        raise ValueError(f"policy {policy!r} is not one of {', '.join(SPECTRAL_POLICIES)}")
    selected: Collection[str] | None = None
    if policy == "measured":
        if sample_shape is None:
            raise ValueError("policy 'measured' needs sample_shape, the (B, C, H, W) of a training batch")
        choice = spectral_layer_choice(net, sample_shape, min_kernel_size, min_speedup, max_spectrum_mib, timer, cache)
        selected = {name for name, layer in choice.items() if layer.spectral}
    for name, parent, attribute, conv in large_kernel_convolutions(net, min_kernel_size):
        if selected is not None and name not in selected:
            continue
        spectral = SpectralConv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            padding=conv.padding,
            groups=conv.groups,
            bias=conv.bias is not None,
            device="meta",
        )
        spectral.weight, spectral.bias = conv.weight, conv.bias
        setattr(parent, attribute, spectral)
    return net
