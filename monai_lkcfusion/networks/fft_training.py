"""Differentiable whole-image FFT convolution, to train large-kernel networks faster on the CPU.

On the CPU the direct large-kernel convolutions dominate a training step, their backward pass most of all (measured
on the ``small`` preset, batch 4 of 256x256 slices, one thread: 4.5 s of a 6.2 s step). The same "same"-padded
convolution computed as a product of spectra over the whole (zero-extended) image is exact up to float rounding and
its gradients come from ``torch.fft``'s autograd: 5x faster for a dense 15x15 layer and 15x for a depthwise one.

:class:`SpectralConv2d` is an ``nn.Conv2d`` with the same parameters and state-dict keys, so checkpoints do not
change; :func:`use_spectral_convolutions` swaps it in for a network's large-kernel convolutions, sharing their
parameters (call it before building the optimizer or after; the parameters are the same objects).
"""

from __future__ import annotations

import scipy.fft
import torch
from torch import nn

from monai_lkcfusion.networks.fft_conv import fft_conv_supported

__all__ = ["SpectralConv2d", "spectral_conv2d", "use_spectral_convolutions"]


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
        return spectral_conv2d(x, self.weight, self.bias, self.groups)


def use_spectral_convolutions(net: nn.Module, min_kernel_size: int = 7) -> nn.Module:
    """Swap, in place, every supported convolution with a kernel of at least ``min_kernel_size`` for a
    :class:`SpectralConv2d` that shares its parameters.

    The network computes the same function (to float rounding) with the same parameters, so an optimizer built
    before or after the swap trains it alike, and its state dict loads into the plain network.

    Args:
        net: a network, e.g. :class:`~monai_lkcfusion.networks.LKCFUNet`.
        min_kernel_size: smallest kernel size to swap (direct convolution stays faster for small kernels).

    Returns:
        ``net`` itself.
    """
    swaps = [
        (parent, name, conv)
        for parent in net.modules()
        for name, conv in parent.named_children()
        if fft_conv_supported(conv) and conv.kernel_size[0] >= min_kernel_size
    ]
    for parent, name, conv in swaps:
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
        setattr(parent, name, spectral)
    return net
