"""Tiled FFT (overlap-save) convolution for large dense kernels, inference only.

A dense ``k x k`` convolution costs ``k^2 * C_in * C_out`` multiply-adds per output pixel. Cutting the (padded) image
into tiles of ``N x N`` pixels that overlap by ``k - 1`` (overlap-save) turns it into, per tile, an FFT of every input
channel, a ``C_in -> C_out`` complex matrix product at each of the ``N * (N // 2 + 1)`` frequencies, and an inverse
FFT of every output channel, of which the last ``N - k + 1`` rows and columns are the valid output. Batched over the
frequencies, the channel mixing is two real matrix products ``[Re X; Im X] (2 tiles, C_in) @ Re W, Im W (C_in, C_out)``
and the kernel spectra (a few hundred MB per 128-channel layer at ``N = 64``) are computed once per FFT size.
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
    """Real and imaginary parts of a dense kernel's spectra, as per-frequency ``C_in x C_out`` matrices.

    Args:
        weight: (C_out, C_in, k, k) cross-correlation kernel (PyTorch convention).
        fft_size: FFT size ``N >= k``.
        dtype: dtype of the result (the dtype of the matrix products).

    Returns:
        (2, N * (N // 2 + 1), C_in, C_out) tensor on the weight's device: index 0 the real, 1 the imaginary part of
        the spectrum of the flipped (true convolution) kernel zero-padded to ``N x N``.
    """
    c_out, c_in, k, _ = weight.shape
    padded = weight.new_zeros((c_in, c_out, fft_size, fft_size), dtype=torch.float32)
    padded[..., :k, :k] = weight.detach().float().flip(-1, -2).transpose(0, 1)
    spec = torch.view_as_real(torch.fft.rfft2(padded))  # (C_in, C_out, N, N // 2 + 1, 2)
    out = torch.empty((2, fft_size, fft_size // 2 + 1, c_in, c_out), dtype=dtype, device=weight.device)
    out.copy_(spec.permute(4, 2, 3, 0, 1))
    return out.view(2, -1, c_in, c_out)


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
        """Per-frequency channel mixing.

        Args:
            spec: (T, C_in, N, N // 2 + 1) complex spectra of the tiles.

        Returns:
            complex output spectra, (T, C_out, N, N // 2 + 1) for depthwise and (N, N // 2 + 1, T, C_out) (frequencies
            first) for dense convolutions.
        """
        if self.depthwise:
            return spec * self.spectra
        count, c_in, n, half = spec.shape
        # real parts stacked over imaginary parts as the rows of one matrix per frequency
        lhs = torch.empty((n, half, 2, count, c_in), dtype=self.spectra.dtype, device=spec.device)
        lhs.copy_(torch.view_as_real(spec).permute(2, 3, 4, 0, 1))
        lhs = lhs.view(n * half, 2 * count, c_in)
        by_re = torch.matmul(lhs, self.spectra[0]).view(n, half, 2, count, -1)  # [Xr; Xi] @ Wr
        by_im = torch.matmul(lhs, self.spectra[1]).view(n, half, 2, count, -1)  # [Xr; Xi] @ Wi
        out = torch.empty((n, half, count, self.out_channels, 2), dtype=torch.float32, device=spec.device)
        torch.sub(by_re[:, :, 0], by_im[:, :, 1], out=out[..., 0])  # Yr = Xr Wr - Xi Wi
        torch.add(by_im[:, :, 0], by_re[:, :, 1], out=out[..., 1])  # Yi = Xr Wi + Xi Wr
        return torch.view_as_complex(out)

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
        mixed = self._mix(torch.fft.rfft2(tiles))
        if self.bias is not None:  # a constant per output channel: added to the zero-frequency bins, (T, C_out)
            dc = mixed[:, :, 0, 0] if self.depthwise else mixed[0, 0]
            dc += self.bias * (n * n)
        if self.depthwise:
            y = torch.fft.irfft2(mixed, s=(n, n))  # (T, C_out, N, N)
            y = y.view(batch, rows, cols, self.out_channels, n, n)[..., k - 1 :, k - 1 :].permute(0, 3, 1, 4, 2, 5)
        else:
            y = torch.fft.irfft2(mixed, s=(n, n), dim=(0, 1))  # (N, N, T, C_out)
            y = y.view(n, n, batch, rows, cols, self.out_channels)[k - 1 :, k - 1 :].permute(2, 5, 3, 0, 4, 1)
        return y.reshape(batch, self.out_channels, rows * step, cols * step)[:, :, :height, :width]
