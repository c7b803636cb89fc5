"""Building blocks of LKC-FUNet: the normalisation factory, the residual block, the RepLK block and MAFM.

Every block takes its normalisation as a kind name (see :func:`get_norm`), so one implementation serves the released
network and the paper's normalisation ablations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_lkcfusion.errors import FusionInputError

__all__ = [
    "NORM_KINDS",
    "DropPath",
    "MultipathAdaptiveFusion",
    "RepLKBlock",
    "ResBlock",
    "UpSample",
    "get_norm",
    "group_count",
]

NORM_KINDS = ("batch", "instance", "group", "layer")
"""Normalisation kinds: BatchNorm, InstanceNorm (affine), GroupNorm (up to 32 groups), layer norm as GroupNorm(1)."""


def group_count(channels: int, max_groups: int = 32) -> int:
    """The largest number of groups ``<= max_groups`` that divides ``channels``.

    For the released widths (multiples of 32) this is exactly 32; narrow networks (e.g. 16 or 24 channels) get
    16 or 24 groups instead of failing.

    Args:
        channels: number of channels to normalise.
        max_groups: upper bound on the group count.

    Returns:
        the group count.
    """
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


def get_norm(kind: str, channels: int, max_groups: int = 32) -> nn.Module:
    """Create a 2D normalisation layer of the given kind (all with eps 1e-5 and learnable affine parameters).

    Args:
        kind: one of ``"batch"`` (``BatchNorm2d``), ``"instance"`` (``InstanceNorm2d(affine=True)``),
            ``"group"`` (``GroupNorm`` with :func:`group_count` groups) or ``"layer"`` (``GroupNorm(1, C)``).
        channels: number of channels.
        max_groups: upper bound on the GroupNorm group count (32 as released; a count equal to ``channels`` would
            make the "group" norm a per-channel instance norm).

    Returns:
        the normalisation module.

    Raises:
        FusionInputError: for an unknown kind.
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(group_count(channels, max_groups), channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    raise FusionInputError(f"norm kind {kind!r} is not one of {', '.join(NORM_KINDS)}")


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training (identity in eval mode).

    Args:
        drop_prob: probability of dropping the branch of a sample.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Zero each sample's ``x`` with probability ``drop_prob`` and scale the kept ones by ``1 / (1 - drop_prob)``.

        Args:
            x: branch output (B, C, H, W).

        Returns:
            tensor of the shape of ``x``; ``x`` itself in eval mode or with ``drop_prob`` 0.
        """
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep


class ResBlock(nn.Module):
    """Pre-activation residual block with two dense ``k x k`` convolutions.

    ``norm1 -> ReLU -> conv1 -> norm2 -> ReLU -> Dropout -> conv2``, plus the input (through a 1x1 convolution when
    the channel count changes).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size of both convolutions ("same" zero padding).
        dropout: dropout probability before the second convolution.
        norm: normalisation kind, see :func:`get_norm`.
        max_groups: upper bound on the GroupNorm group count, see :func:`get_norm`.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dropout: float, norm: str, max_groups: int = 32
    ) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.norm1 = get_norm(norm, in_channels, max_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size, padding=pad)
        self.norm2 = get_norm(norm, out_channels, max_groups)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size, padding=pad)
        self.residual = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: features (B, in_channels, H, W).

        Returns:
            features (B, out_channels, H, W).
        """
        h = self.conv1(F.relu(self.norm1(x)))
        h = self.conv2(self.drop(F.relu(self.norm2(h))))
        return h + self.residual(x)


class RepLKBlock(nn.Module):
    """RepLKNet-style large-kernel block: a depthwise ``k x k`` convolution between two 1x1 projections.

    ``x + DropPath(n4(pw2(ReLU(n3(dw(ReLU(n2(pw1(n1(x))))))))))`` with bias-free convolutions and an inner width
    of ``int(1.5 * channels)``.

    Args:
        channels: input and output channels.
        kernel_size: odd kernel size of the depthwise convolution.
        drop_path: stochastic-depth probability of the branch.
        norm: normalisation kind, see :func:`get_norm`.
        dw_ratio: inner width as a multiple of ``channels``.
        max_groups: upper bound on the GroupNorm group count, see :func:`get_norm`.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        drop_path: float,
        norm: str,
        dw_ratio: float = 1.5,
        max_groups: int = 32,
    ) -> None:
        super().__init__()
        inner = int(channels * dw_ratio)
        self.pre_norm = get_norm(norm, channels, max_groups)
        self.pw1 = nn.Conv2d(channels, inner, 1, bias=False)
        self.pw1_norm = get_norm(norm, inner, max_groups)
        self.dw = nn.Conv2d(inner, inner, kernel_size, padding=kernel_size // 2, groups=inner, bias=False)
        self.dw_norm = get_norm(norm, inner, max_groups)
        self.pw2 = nn.Conv2d(inner, channels, 1, bias=False)
        self.pw2_norm = get_norm(norm, channels, max_groups)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: features (B, channels, H, W).

        Returns:
            features (B, channels, H, W): ``x`` plus the (stochastically dropped) large-kernel branch.
        """
        h = F.relu(self.pw1_norm(self.pw1(self.pre_norm(x))))
        h = F.relu(self.dw_norm(self.dw(h)))
        h = self.pw2_norm(self.pw2(h))
        return x + self.drop_path(h)


class MultipathAdaptiveFusion(nn.Module):
    """MAFM: fuses the decoder feature ``x`` with the encoder skip ``g`` (the official "MultiScaleGatedAttn").

    A channel-attention path on ``x`` and a spatial path on ``g`` (channel mean and max, 1x1 conv) are added and
    normalised; a 1x1 conv and a softmax give two per-pixel weights ``a, b``; ``xa = a*x + x``, ``ga = b*g + g``;
    the bidirectional interaction ``i = sigmoid(ga)*xa + sigmoid(xa)*ga`` gates ``x`` through
    ``sigmoid(norm(conv1x1(i)))``, and a final 1x1 conv doubles the channels.

    Args:
        channels: channels ``C`` of both inputs; the output has ``2C``.
        norm: normalisation kind of the three normalisation layers, see :func:`get_norm`.
        reduction: channel reduction of the channel-attention bottleneck.
        max_groups: upper bound on the GroupNorm group count, see :func:`get_norm`.
    """

    def __init__(self, channels: int, norm: str, reduction: int = 8, max_groups: int = 32) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.channel_attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
        )
        self.spatial_conv = nn.Conv2d(2, 1, 1)
        self.spatial_norm = get_norm(norm, 1, max_groups)
        self.mix_norm = get_norm(norm, channels, max_groups)
        self.selection = nn.Conv2d(channels, 2, 1)
        self.gate_conv = nn.Conv2d(channels, channels, 1)
        self.gate_norm = get_norm(norm, channels, max_groups)
        self.out_conv = nn.Conv2d(channels, 2 * channels, 1)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Fuse a decoder feature with its encoder skip.

        Args:
            x: decoder feature (B, C, H, W).
            g: encoder skip feature (B, C, H, W).

        Returns:
            fused features (B, 2C, H, W).
        """
        pooled = torch.cat((g.mean(dim=1, keepdim=True), torch.amax(g, dim=1, keepdim=True)), dim=1)  # (B, 2, H, W)
        spatial = self.spatial_norm(self.spatial_conv(pooled))  # (B, 1, H, W)
        mix = self.mix_norm(self.channel_attention(x) + spatial)  # (B, C, 1, 1) + (B, 1, H, W) -> (B, C, H, W)
        weights = torch.softmax(self.selection(mix), dim=1)  # (B, 2, H, W)
        xa = weights[:, 0:1] * x + x
        ga = weights[:, 1:2] * g + g
        interaction = torch.sigmoid(ga) * xa + torch.sigmoid(xa) * ga
        gated = torch.sigmoid(self.gate_norm(self.gate_conv(interaction))) * x
        return self.out_conv(gated)  # (B, 2C, H, W)


class UpSample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 convolution.

    Args:
        in_channels: input channels.
        out_channels: output channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upsample and convolve.

        Args:
            x: features (B, in_channels, H, W).

        Returns:
            features (B, out_channels, 2H, 2W).
        """
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
