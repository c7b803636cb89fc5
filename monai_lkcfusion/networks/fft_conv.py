"""Tiled FFT (overlap-save) convolution for large kernels, inference only.

A dense ``k x k`` convolution costs ``k^2 * C_in * C_out`` multiply-adds per output pixel. Cutting the (padded) image
into tiles of ``N x N`` pixels that overlap by ``k - 1`` (overlap-save) turns it into, per tile, an FFT of every input
channel, a ``C_in -> C_out`` complex matrix product at each of the ``N * (N // 2 + 1)`` frequencies, and an inverse
FFT of every output channel, of which the last ``N - k + 1`` rows and columns are the valid output.

The data stay channels-last throughout (tiles ``(T, N, N, C)``, spectra ``(T, N, N // 2 + 1, C)``), so the per-frequency
``(T, C_in)`` matrices are strided views of the spectra and the channel mixing is one batched complex matrix product
without any transpose; the kernel spectra (``(F, C_in, C_out)`` complex, about 430 MB for a 128->128 layer at
``N = 80``) are computed once per tile size. On the CPU the FFTs run in SciPy's pocketfft (measured 1.5-2x faster than
``torch.fft`` on these batched, channels-last transforms), elsewhere in ``torch.fft``.
"""

from __future__ import annotations

import math

import scipy.fft
import torch
from torch import nn

__all__ = ["FFTConv2d", "fft_conv_supported", "large_kernel_convolutions", "tile_layout"]


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


def large_kernel_convolutions(net: nn.Module, min_kernel_size: int) -> list[tuple[str, nn.Module, str, nn.Conv2d]]:
    """The convolutions of ``net`` that :func:`fft_conv_supported` accepts, with a kernel of at least
    ``min_kernel_size``: ``(qualified name, parent module, attribute name, conv)`` each, in network order (a list, so
    the caller may replace them while going through it).

    Args:
        net: the network to search.
        min_kernel_size: smallest kernel side to include.

    Returns:
        ``[(qualified name, parent module, attribute name, conv), ...]``.
    """
    return [
        (f"{parent_name}.{name}" if parent_name else name, parent, name, conv)
        for parent_name, parent in net.named_modules()
        for name, conv in parent.named_children()
        if fft_conv_supported(conv) and conv.kernel_size[0] >= min_kernel_size
    ]


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


def _rfft2(x: torch.Tensor, dims: tuple[int, int]) -> torch.Tensor:
    """Real 2D FFT over ``dims`` (SciPy on the CPU, ``torch.fft`` elsewhere); complex64 for float32 input."""
    if x.device.type != "cpu":
        return torch.fft.rfft2(x, dim=dims)
    return torch.from_numpy(scipy.fft.rfft2(x.detach().numpy(), axes=dims, workers=torch.get_num_threads()))


def _irfft2(spec: torch.Tensor, size: int, dims: tuple[int, int], first_row: int = 0) -> torch.Tensor:
    """Inverse of :func:`_rfft2` to real outputs of ``size`` columns and rows ``first_row:size`` (overlap-save keeps
    only those); ``spec`` may be overwritten."""
    if spec.device.type != "cpu":
        return torch.fft.irfft2(spec, s=(size, size), dim=dims).narrow(dims[0], first_row, size - first_row)
    workers = torch.get_num_threads()
    # two 1D passes with overwrite (measured faster than scipy's irfft2, which copies its input first); the second
    # transforms only the rows that are kept
    half = scipy.fft.ifft(spec.numpy(), axis=dims[0], workers=workers, overwrite_x=True)
    rows = half[(slice(None),) * dims[0] + (slice(first_row, None),)]
    return torch.from_numpy(scipy.fft.irfft(rows, n=size, axis=dims[1], workers=workers, overwrite_x=True))


def _untile(tiles: torch.Tensor, height: int, width: int, channels_last: bool = True) -> torch.Tensor:
    """Assemble valid tile outputs into an image, dropping the part beyond ``height x width``.

    Args:
        tiles: (B, rows, step, cols, step, C) view of the valid outputs of every tile.
        height: output height (``<= rows * step``).
        width: output width (``<= cols * step``).

    Returns:
        (B, C, height, width) tensor, channels-last or (``channels_last=False``) contiguous.
    """
    batch, rows, step, cols, _, channels = tiles.shape
    if channels_last:
        out = tiles.new_empty((batch, height, width, channels))
    else:  # the same (B, H, W, C) indexing over a contiguous (B, C, H, W) tensor: one strided copy, no conversion
        out = tiles.new_empty((batch, channels, height, width)).permute(0, 2, 3, 1)
    # whole tiles and the last (cropped) tile along each axis: every piece is a plain view of ``out``
    row_parts = [(slice(0, rows - 1), 0, (rows - 1) * step), (slice(rows - 1, rows), (rows - 1) * step, height)]
    col_parts = [(slice(0, cols - 1), 0, (cols - 1) * step), (slice(cols - 1, cols), (cols - 1) * step, width)]
    for tile_rows, top, bottom in row_parts:
        for tile_cols, left, right in col_parts:
            n_rows, n_cols = tile_rows.stop - tile_rows.start, tile_cols.stop - tile_cols.start
            if n_rows == 0 or n_cols == 0:
                continue
            dst = out[:, top:bottom, left:right].view(batch, n_rows, -1, n_cols, (right - left) // n_cols, channels)
            dst.copy_(tiles[:, tile_rows, : dst.shape[2], tile_cols, : dst.shape[4]])
    return out.permute(0, 3, 1, 2)


class FFTConv2d(nn.Module):
    """Inference-only drop-in for a "same" ``nn.Conv2d`` computed by tiled overlap-save FFT convolution.

    Dense convolutions mix channels per frequency with a batched complex matrix product; depthwise ones multiply each
    channel's spectrum by its kernel's spectrum. Any input memory format is accepted; the output is contiguous for a
    contiguous input, else channels-last.

    Args:
        conv: the convolution to replace; see :func:`fft_conv_supported`. Its weights are copied (not shared).
        fft_size: tile (FFT) size ``N``, larger than the kernel size.

    Raises:
        ValueError: if ``conv`` is not supported or ``fft_size`` is not larger than the kernel.
    """

    def __init__(self, conv: nn.Conv2d, fft_size: int) -> None:
        super().__init__()
        if not fft_conv_supported(conv):
            raise ValueError(f"FFTConv2d needs a stride-1, 'same', odd-kernel dense or depthwise Conv2d, got {conv}")
        k = conv.kernel_size[0]
        if fft_size <= k:
            raise ValueError(f"fft_size {fft_size} must exceed the kernel size {k}")
        self.kernel_size = k
        self.fft_size = fft_size
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.depthwise = conv.groups > 1
        # the true-convolution (flipped) kernel, zero-padded to N x N, with its channel axes last
        weight = conv.weight.detach().float().flip(-1, -2)
        padded = weight.new_zeros((fft_size, fft_size, weight.shape[1], weight.shape[0]))
        padded[:k, :k] = weight.permute(2, 3, 1, 0)  # (k, k, C_in / groups, C_out)
        spectra = _rfft2(padded, (0, 1))  # (N, N // 2 + 1, C_in / groups, C_out)
        if self.depthwise:
            spectra = spectra[:, :, 0]  # (N, N // 2 + 1, C)
        else:
            spectra = spectra.reshape(-1, self.in_channels, self.out_channels)  # (F, C_in, C_out)
        self.register_buffer("spectra", spectra.contiguous())
        self.register_buffer("bias", conv.bias.detach().float().clone() if conv.bias is not None else None)

    def extra_repr(self) -> str:
        """The module's settings in its ``repr``.

        Returns:
            channels, kernel size, FFT size and ``depthwise`` or ``dense``.
        """
        kind = "depthwise" if self.depthwise else "dense"
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, fft_size={self.fft_size}, {kind}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x``.

        Args:
            x: (B, C_in, H, W), any memory format.

        Returns:
            (B, C_out, H, W), contiguous for a contiguous input, else channels-last; equal to the replaced
            convolution's output up to rounding.
        """
        batch, c_in, height, width = x.shape
        n, k = self.fft_size, self.kernel_size
        step, rows = tile_layout(height, k, n)
        _, cols = tile_layout(width, k, n)
        pad = k // 2
        padded = x.new_empty((batch, rows * step + k - 1, cols * step + k - 1, c_in), dtype=torch.float32)
        padded[:, :pad] = 0  # zero only the border: top, bottom, left, right
        padded[:, pad + height :] = 0
        padded[:, pad : pad + height, :pad] = 0
        padded[:, pad : pad + height, pad + width :] = 0
        padded[:, pad : pad + height, pad : pad + width] = x.permute(0, 2, 3, 1)  # (B, H', W', C_in)
        tiles = padded.unfold(1, n, step).unfold(2, n, step)  # (B, rows, cols, C_in, N, N) view
        count = batch * rows * cols
        # the FFT reads the overlapping tiles straight from the padded image (a strided view, no tile copy)
        spec = _rfft2(tiles.permute(0, 1, 2, 4, 5, 3), (3, 4))  # (B, rows, cols, N, N // 2 + 1, C_in)
        spec = spec.view(count, n, n // 2 + 1, c_in)  # (T, N, N // 2 + 1, C_in)
        if self.depthwise:
            mixed = spec.mul_(self.spectra)  # (T, N, N // 2 + 1, C)
            if self.bias is not None:  # a constant per channel: added to the zero-frequency bin
                mixed[:, 0, 0] += self.bias * (n * n)
            y = _irfft2(mixed, n, (1, 2), first_row=k - 1)  # (T, step, N, C)
            valid = y[:, :, k - 1 :].view(batch, rows, cols, step, step, -1).permute(0, 1, 3, 2, 4, 5)
        else:
            # per frequency, (T, C_in) @ (C_in, C_out): the left side is a strided view of the spectra
            mixed = torch.bmm(spec.reshape(count, -1, c_in).transpose(0, 1), self.spectra)  # (F, T, C_out)
            if self.bias is not None:
                mixed[0] += self.bias * (n * n)
            y = _irfft2(mixed.view(n, n // 2 + 1, count, -1), n, (0, 1), first_row=k - 1)  # (step, N, T, C_out)
            valid = y[:, k - 1 :].view(step, step, batch, rows, cols, -1).permute(2, 3, 0, 4, 1, 5)
        channels_last = not x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
        return _untile(valid, height, width, channels_last)  # valid: (B, rows, step, cols, step, C_out)
