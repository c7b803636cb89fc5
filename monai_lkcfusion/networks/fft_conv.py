"""Tiled FFT (overlap-save) convolution for large dense kernels, inference only.

A dense ``k x k`` convolution costs ``k^2 * C_in * C_out`` multiply-adds per output pixel. Cutting the (padded) image
into tiles of ``N x N`` pixels that overlap by ``k - 1`` (overlap-save) turns it into, per tile, an FFT of every input
channel, a ``C_in -> C_out`` complex matrix product at each of the ``N * (N // 2 + 1)`` frequencies, and an inverse
FFT of every output channel, of which the last ``N - k + 1`` rows and columns are the valid output. Batched over the
frequencies, the channel mixing is a compute-bound matrix product ``(tiles, 2 C_in) @ (2 C_in, 2 C_out)`` (complex
numbers as interleaved real pairs), and the kernel spectra (a few hundred MB per 128-channel layer) are computed
once per FFT size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FFTConv2d", "fft_conv_supported", "kernel_spectra", "tile_layout"]


def fft_conv_supported(conv: nn.Module) -> bool:
    """Whether ``conv`` is a convolution that :class:`FFTConv2d` computes exactly.

    Args:
        conv: any module.

    Returns:
        ``True`` for an ``nn.Conv2d`` with an odd square kernel, stride 1, dilation 1, "same" zero padding
        (``kernel_size // 2``) and either one group (dense) or one group per channel (depthwise).
    """
    if type(conv) is not nn.Conv2d:
        return False
    k_h, k_w = conv.kernel_size
    return (
        k_h == k_w
        and k_h % 2 == 1
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and (conv.groups == 1 or conv.groups == conv.in_channels == conv.out_channels)
        and conv.padding == (k_h // 2, k_w // 2)
        and conv.padding_mode == "zeros"
    )


def tile_layout(length: int, kernel_size: int, fft_size: int) -> tuple[int, int]:
    """Valid outputs per tile and number of tiles along one image axis.

    Args:
        length: image height or width.
        kernel_size: convolution kernel size ``k``.
        fft_size: tile (FFT) size ``N > k``.

    Returns:
        ``(step, count)``: each tile yields ``step = N - k + 1`` output pixels, ``count = ceil(length / step)``.
    """
    step = fft_size - kernel_size + 1
    return step, math.ceil(length / step)


def kernel_spectra(weight: torch.Tensor, fft_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Spectra of a convolution kernel as real matrices that multiply interleaved (real, imag) channel vectors.

    For the complex kernel spectrum ``W[f] = A + iB`` (``C_in x C_out`` at frequency ``f``), the returned matrix is
    ``[[A, B], [-B, A]]`` with rows and columns interleaved per channel, so that a row vector of interleaved
    ``(re, im)`` input spectra times it gives the interleaved output spectra.

    Args:
        weight: (C_out, C_in, k, k) cross-correlation kernel (PyTorch convention).
        fft_size: FFT size ``N >= k``.
        dtype: dtype of the result (the dtype of the matrix products).

    Returns:
        (N * (N // 2 + 1), 2 C_in, 2 C_out) tensor on the weight's device.
    """
    c_out, c_in, k, _ = weight.shape
    padded = weight.new_zeros((c_in, c_out, fft_size, fft_size), dtype=torch.float32)
    padded[..., :k, :k] = weight.detach().float().flip(-1, -2).transpose(0, 1)  # flipped: a true convolution
    spec = torch.fft.rfft2(padded)  # (C_in, C_out, N, N // 2 + 1)
    re = spec.real.permute(2, 3, 0, 1)  # (N, N // 2 + 1, C_in, C_out)
    im = spec.imag.permute(2, 3, 0, 1)
    blocks = torch.stack((torch.stack((re, im), dim=-1), torch.stack((-im, re), dim=-1)), dim=3)
    # blocks: (N, N // 2 + 1, C_in, 2 [in re/im], C_out, 2 [out re/im])
    return blocks.reshape(-1, 2 * c_in, 2 * c_out).to(dtype).contiguous()


class FFTConv2d(nn.Module):
    """Inference-only drop-in for a "same" ``nn.Conv2d`` computed by tiled overlap-save FFT convolution.

    Dense convolutions mix channels per frequency with a batched matrix product; depthwise ones multiply each
    channel's spectrum by its kernel's spectrum.

    Args:
        conv: the convolution to replace; see :func:`fft_conv_supported`. Its weights are copied (not shared).
        fft_size: tile (FFT) size ``N``, larger than the kernel size.
        matmul_dtype: dtype of the dense per-frequency channel mixing (``torch.float32``, or ``torch.bfloat16``
            for CPUs/GPUs with fast bf16 matrix products, at about 1e-3 relative error per layer); depthwise
            convolutions always multiply in float32.

    Raises:
        ValueError: if ``conv`` is not supported or ``fft_size`` is not larger than the kernel.
    """

    def __init__(self, conv: nn.Conv2d, fft_size: int, matmul_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if not fft_conv_supported(conv):
            raise ValueError(f"FFTConv2d needs a stride-1, 'same', odd-kernel dense or depthwise Conv2d, got {conv}")
        self.kernel_size = conv.kernel_size[0]
        if fft_size <= self.kernel_size:
            raise ValueError(f"fft_size {fft_size} must exceed the kernel size {self.kernel_size}")
        self.fft_size = fft_size
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.depthwise = conv.groups > 1
        if self.depthwise:
            padded = conv.weight.new_zeros((conv.out_channels, fft_size, fft_size), dtype=torch.float32)
            padded[:, : self.kernel_size, : self.kernel_size] = conv.weight.detach().float()[:, 0].flip(-1, -2)
            spectra = torch.fft.rfft2(padded)  # (C, N, N // 2 + 1) complex
        else:
            spectra = kernel_spectra(conv.weight, fft_size, matmul_dtype)
        self.register_buffer("spectra", spectra)
        self.register_buffer("bias", conv.bias.detach().clone() if conv.bias is not None else None)

    def extra_repr(self) -> str:
        kind = "depthwise" if self.depthwise else f"matmul_dtype={self.spectra.dtype}"
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, fft_size={self.fft_size}, {kind}"

    def _mix(self, spec: torch.Tensor) -> torch.Tensor:
        """Per-frequency channel mixing: (T, C_in, N, N // 2 + 1) complex -> (T, C_out, N, N // 2 + 1) complex."""
        if self.depthwise:
            return spec * self.spectra
        count, c_in, n, half = spec.shape
        lhs = torch.empty((n, half, count, c_in, 2), dtype=self.spectra.dtype, device=spec.device)
        lhs.copy_(torch.view_as_real(spec).permute(2, 3, 0, 1, 4))
        out = torch.matmul(lhs.view(n * half, count, 2 * c_in), self.spectra)  # (N * (N // 2 + 1), T, 2 C_out)
        out_spec = torch.empty((count, self.out_channels, n, half, 2), dtype=torch.float32, device=spec.device)
        out_spec.copy_(out.view(n, half, count, self.out_channels, 2).permute(2, 3, 0, 1, 4))
        return torch.view_as_complex(out_spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x``.

        Args:
            x: (B, C_in, H, W).

        Returns:
            (B, C_out, H, W), equal to the replaced convolution's output up to rounding.
        """
        batch, c_in, height, width = x.shape
        n, k = self.fft_size, self.kernel_size
        step, rows = tile_layout(height, k, n)
        _, cols = tile_layout(width, k, n)
        pad = k // 2
        x = F.pad(x.float(), [pad, cols * step + k - 1 - width - pad, pad, rows * step + k - 1 - height - pad])
        tiles = x.unfold(2, n, step).unfold(3, n, step)  # (B, C_in, rows, cols, N, N)
        tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, c_in, n, n)  # (T, C_in, N, N), T = B * rows * cols
        y = torch.fft.irfft2(self._mix(torch.fft.rfft2(tiles)), s=(n, n))  # (T, C_out, N, N)
        y = y.view(batch, rows, cols, self.out_channels, n, n)[..., k - 1 :, k - 1 :].permute(0, 3, 1, 4, 2, 5)
        y = y.reshape(batch, self.out_channels, rows * step, cols * step)[:, :, :height, :width]
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y
