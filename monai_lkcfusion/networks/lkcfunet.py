"""LKC-FUNet: the large-kernel U-Net of He et al. for multimodal medical image fusion, with named presets.

Reference: D. He et al., "Rethinking Normalization Strategies and Convolutional Kernels for Multimodal Image
Fusion", arXiv 2411.10036 (Pattern Recognition 173, 2026); official code HeDan-11/LKC-FUNet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.networks.blocks import (
    NORM_KINDS,
    MultipathAdaptiveFusion,
    RepLKBlock,
    ResBlock,
    UpSample,
    get_norm,
)

__all__ = [
    "NETWORK_PRESETS", "NORM_SCHEMES", "NORM_SITES", "OUTPUT_MODES", "LKCFUNet", "as_max_residual",
    "resolve_norm_scheme",
]

OUTPUT_MODES = ("direct", "max_residual")
"""What the head's output is: ``"direct"`` the fused image itself (the paper), ``"max_residual"`` a correction
added to the pixel-wise maximum of the input channels (the fused image starts from pixel-max fusion, the
intensity loss's own target, and the network learns what to change)."""

NORM_SITES = ("stem", "resblock", "replk", "mafm", "head")
"""Where a norm scheme chooses the normalisation: the stem (before its large-kernel conv), the dense residual
blocks, the RepLK blocks, the MAFM fusion modules and the output head."""

NORM_SCHEMES: dict[str, dict[str, str]] = {
    # the released checkpoint: BatchNorm in the stem and MAFM, GroupNorm(32) in residual blocks and the head,
    # GroupNorm(1) (layer norm) in the RepLK blocks
    "official": {"stem": "batch", "resblock": "group", "replk": "layer", "mafm": "batch", "head": "group"},
    # the paper's BatchNorm baseline
    "bn": {"stem": "batch", "resblock": "batch", "replk": "batch", "mafm": "batch", "head": "batch"},
    # the paper's IN/GN mixture without batch statistics: instance norm on the shallow stem features (sample
    # independence), group norm where channel correlation matters (residual blocks, MAFM, head), per-sample
    # GroupNorm(1) in the RepLK blocks as released (see docs/network.md for this reading of the paper)
    "ingn": {"stem": "instance", "resblock": "group", "replk": "layer", "mafm": "group", "head": "group"},
}
"""Named norm schemes: site -> norm kind (``"batch"``, ``"instance"``, ``"group"``, ``"layer"``)."""

NETWORK_PRESETS: dict[str, dict[str, Any]] = {
    "official": {},
    "bn_3x3": {"kernel_sizes": (3, 3, 3), "middle_kernel": 3, "norm": "bn"},
    "bn_large": {"norm": "bn"},
    "ingn_3x3": {"kernel_sizes": (3, 3, 3), "middle_kernel": 3, "norm": "ingn"},
    "ingn_large": {"norm": "ingn"},
    "small": {"features": 6, "channel_mults": (1, 2, 4)},
    # mid-size: the paper's kernels (15, 11, 5) and real GroupNorm groups (4 groups of 2-16 channels)
    "base": {"features": 8, "channel_mults": (1, 2, 4), "norm_groups": 4},
    "tiny": {"features": 4, "channel_mults": (1, 2), "kernel_sizes": (5, 3), "num_blocks": 1, "middle_kernel": 3},
}
"""Keyword overrides of the :class:`LKCFUNet` defaults (which are the released network, preset ``"official"``)."""


def resolve_norm_scheme(norm: str | Mapping[str, str]) -> dict[str, str]:
    """Turn a norm scheme name or a ``{site: kind}`` mapping into a complete ``{site: kind}`` dict.

    Args:
        norm: a name in :data:`NORM_SCHEMES`, or a mapping from sites in :data:`NORM_SITES` to kinds in
            :data:`~monai_lkcfusion.networks.blocks.NORM_KINDS`; sites left out keep the ``"official"`` choice.

    Returns:
        the norm kind for every site.

    Raises:
        FusionInputError: for an unknown scheme name, site or kind.
    """
    if isinstance(norm, str):
        if norm not in NORM_SCHEMES:
            raise FusionInputError(f"norm scheme {norm!r} is not one of {', '.join(NORM_SCHEMES)} (or a dict)")
        return dict(NORM_SCHEMES[norm])
    unknown = sorted(set(norm) - set(NORM_SITES))
    if unknown:
        raise FusionInputError(f"norm scheme sites {unknown} are not among {', '.join(NORM_SITES)}")
    bad = {site: kind for site, kind in norm.items() if kind not in NORM_KINDS}
    if bad:
        raise FusionInputError(f"norm scheme kinds {bad} are not among {', '.join(NORM_KINDS)}")
    return {**NORM_SCHEMES["official"], **norm}


def _check_norm_kinds(module: nn.Module, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
    """``load_state_dict`` pre-hook: refuse weights of another norm scheme (their tensors would load silently)."""
    incoming = state_dict.get(f"{prefix}norm_kinds")
    own = module.norm_kinds
    if incoming is None or own.is_meta or incoming.is_meta or torch.equal(incoming.cpu(), own.cpu()):
        return
    names = [NORM_KINDS[int(c)] if 0 <= int(c) < len(NORM_KINDS) else str(int(c)) for c in incoming.tolist()]
    raise FusionInputError(
        f"weights are for norm scheme {dict(zip(NORM_SITES, names))}, this network has "
        f"{dict(zip(NORM_SITES, (NORM_KINDS[int(c)] for c in own.tolist())))}; build it with that norm= or use "
        "load_network"
    )


class _EncoderLevel(nn.Module):
    """One encoder level: a residual block, RepLK blocks, then (except at the deepest level) a strided conv."""

    def __init__(self, blocks: nn.Sequential, downsample: nn.Module) -> None:
        super().__init__()
        self.blocks = blocks
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.blocks(x)
        return skip, self.downsample(skip)


class _DecoderLevel(nn.Module):
    """One decoder level: MAFM with the skip, residual and RepLK blocks, then (except at the top) upsampling."""

    def __init__(self, fusion: MultipathAdaptiveFusion, blocks: nn.Sequential, upsample: nn.Module) -> None:
        super().__init__()
        self.fusion = fusion
        self.blocks = blocks
        self.upsample = upsample

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.blocks(self.fusion(x, skip)))


class LKCFUNet(nn.Module):
    """LKC-FUNet: a U-Net with large-kernel convolutions and multipath adaptive fusion (MAFM) skip connections.

    The defaults build the released network (preset ``"official"``, 41,174,438 parameters). Structure, with
    ``C_l = features * channel_mults[l]`` and ``k_l = kernel_sizes[l]``:

    - stem: ``f0 = Conv3x3(in -> features)``; ``norm, ReLU, Dropout, Conv k_0 x k_0 (features -> C_0)``.
    - encoder level ``l``: ``ResBlock(k_l)`` and ``num_blocks - 1`` RepLK blocks (output = skip ``s_l``), then a
      strided Conv3x3 (not at the deepest level).
    - middle: two RepLK blocks with ``middle_kernel``.
    - decoder level ``l`` (deepest first): ``MAFM(x, s_l)`` (-> ``2 C_l``), ``ResBlock(2 C_l -> C_l, k_l)`` and
      ``num_blocks`` RepLK blocks (``num_blocks - 1`` at level 0), then nearest x2 upsampling + Conv3x3
      (``C_l -> C_{l-1}``; not at level 0).
    - ``ResBlock(C_0 + features -> C_0, k_0)`` on ``cat(x, f0)``; head ``norm, ReLU, Conv3x3 (C_0 -> out)``.

    Inputs of any height and width are padded (replicate mode, bottom/right) to a multiple of
    :attr:`size_divisible` and the output is cropped back. The output has no activation (callers clamp to [0, 1]).

    Args:
        in_channels: input channels; for fusion 2, channel 0 = MRI and channel 1 = the other modality.
        out_channels: output channels.
        features: width of the first 3x3 convolution (the official ``inner_channel``).
        channel_mults: channel multiplier per level; ``len`` gives the number of levels.
        kernel_sizes: odd kernel size per level (dense residual blocks and RepLK depthwise convolutions).
        num_blocks: blocks per level (the official ``res_blocks``), at least 1.
        middle_kernel: kernel size of the two middle RepLK blocks.
        dropout: dropout probability in the stem and residual blocks, and drop-path probability of RepLK blocks.
        norm: norm scheme: a name in :data:`NORM_SCHEMES` or a ``{site: kind}`` dict (see
            :func:`resolve_norm_scheme`).
        norm_groups: most groups of a ``"group"`` norm layer (32 as released); a layer with at most this many
            channels gets one group per channel, which is an instance norm.
        output_mode: one of :data:`OUTPUT_MODES`: ``"direct"`` (as released) or ``"max_residual"`` (output =
            pixel-wise max of the input channels + head; every output channel gets the same max).

    Example::

        net = LKCFUNet.from_preset("small").eval()
        fused = net(torch.rand(1, 2, 256, 256)).clamp(0, 1)  # (1, 1, 256, 256)
    """

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 1,
        features: int = 32,
        channel_mults: Sequence[int] = (4, 4, 4),
        kernel_sizes: Sequence[int] = (15, 11, 5),
        num_blocks: int = 2,
        middle_kernel: int = 5,
        dropout: float = 0.2,
        norm: str | Mapping[str, str] = "official",
        norm_groups: int = 32,
        output_mode: str = "direct",
    ) -> None:
        super().__init__()
        if len(channel_mults) != len(kernel_sizes) or len(channel_mults) < 1:
            raise FusionInputError(
                f"channel_mults {tuple(channel_mults)} and kernel_sizes {tuple(kernel_sizes)} must have the same "
                "non-zero length (one entry per level)"
            )
        if norm_groups < 1:
            raise FusionInputError(f"norm_groups must be at least 1, got {norm_groups}")
        if num_blocks < 1:
            raise FusionInputError(f"num_blocks must be at least 1, got {num_blocks}")
        if output_mode not in OUTPUT_MODES:
            raise FusionInputError(f"output_mode {output_mode!r} is not one of {', '.join(OUTPUT_MODES)}")
        even = [k for k in (*kernel_sizes, middle_kernel) if k % 2 == 0 or k < 1]
        if even:
            raise FusionInputError(f"kernel sizes must be odd and positive, got {even}")
        scheme = resolve_norm_scheme(norm)
        widths = [features * m for m in channel_mults]
        levels = len(widths)
        self.config = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "features": features,
            "channel_mults": tuple(int(m) for m in channel_mults),
            "kernel_sizes": tuple(int(k) for k in kernel_sizes),
            "num_blocks": num_blocks,
            "middle_kernel": middle_kernel,
            "dropout": dropout,
            "norm": scheme,
            "norm_groups": int(norm_groups),
            "output_mode": output_mode,
        }
        self.size_divisible = 2 ** (levels - 1)
        # the norm scheme travels with the weights (GroupNorm / InstanceNorm tensors alone cannot tell it)
        self.register_buffer("norm_kinds", torch.tensor([NORM_KINDS.index(scheme[site]) for site in NORM_SITES]))
        if norm_groups != 32:  # the released layout (and every earlier file) has no such tensor
            self.register_buffer("norm_groups", torch.tensor(int(norm_groups)))
        self.max_residual = output_mode == "max_residual"
        if self.max_residual:  # stored so that loading rebuilds the same output (files without it are "direct")
            self.register_buffer("output_mode", torch.tensor(OUTPUT_MODES.index(output_mode)))
        self.register_load_state_dict_pre_hook(_check_norm_kinds)

        self.stem_conv = nn.Conv2d(in_channels, features, 3, padding=1)
        self.stem = nn.Sequential(
            get_norm(scheme["stem"], features, norm_groups),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(features, widths[0], kernel_sizes[0], padding=kernel_sizes[0] // 2),
        )

        def replk(channels: int, kernel: int) -> RepLKBlock:
            return RepLKBlock(channels, kernel, drop_path=dropout, norm=scheme["replk"], max_groups=norm_groups)

        def resblock(c_in: int, c_out: int, kernel: int) -> ResBlock:
            return ResBlock(c_in, c_out, kernel, dropout=dropout, norm=scheme["resblock"], max_groups=norm_groups)

        encoder = []
        for level, (width, kernel) in enumerate(zip(widths, kernel_sizes)):
            c_in = widths[max(level - 1, 0)]
            blocks = [resblock(c_in, width, kernel)] + [replk(width, kernel) for _ in range(num_blocks - 1)]
            down = nn.Conv2d(width, width, 3, stride=2, padding=1) if level < levels - 1 else nn.Identity()
            encoder.append(_EncoderLevel(nn.Sequential(*blocks), down))
        self.encoder = nn.ModuleList(encoder)

        self.middle = nn.Sequential(replk(widths[-1], middle_kernel), replk(widths[-1], middle_kernel))

        decoder = []
        for level in reversed(range(levels)):
            width, kernel = widths[level], kernel_sizes[level]
            n_replk = num_blocks if level > 0 else num_blocks - 1
            blocks = [resblock(2 * width, width, kernel)] + [replk(width, kernel) for _ in range(n_replk)]
            up = UpSample(width, widths[level - 1]) if level > 0 else nn.Identity()
            fusion = MultipathAdaptiveFusion(width, norm=scheme["mafm"], max_groups=norm_groups)
            decoder.append(_DecoderLevel(fusion, nn.Sequential(*blocks), up))
        self.decoder = nn.ModuleList(decoder)

        self.stem_skip_block = resblock(widths[0] + features, widths[0], kernel_sizes[0])
        self.head = nn.Sequential(
            get_norm(scheme["head"], widths[0], norm_groups),
            nn.ReLU(),
            nn.Conv2d(widths[0], out_channels, 3, padding=1),
        )

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> LKCFUNet:
        """Build a network from a named preset in :data:`NETWORK_PRESETS`, with optional keyword overrides.

        Args:
            name: preset name, e.g. ``"official"``, ``"small"``, ``"ingn_large"``.
            overrides: :class:`LKCFUNet` keyword arguments that replace the preset's.

        Returns:
            the (randomly initialised) network.

        Raises:
            FusionInputError: for an unknown preset.
        """
        if name not in NETWORK_PRESETS:
            raise FusionInputError(f"network preset {name!r} is not one of {', '.join(NETWORK_PRESETS)}")
        return cls(**{**NETWORK_PRESETS[name], **overrides})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fuse a batch of image pairs.

        Args:
            x: (B, in_channels, H, W), for fusion channel 0 = MRI and channel 1 = other modality, in [0, 1].

        Returns:
            (B, out_channels, H, W) raw network output (``"max_residual"``: already added to the input's max).
        """
        height, width = x.shape[-2], x.shape[-1]
        base = x.amax(dim=1, keepdim=True) if self.max_residual else None  # (B, 1, H, W)
        pad_h = (self.size_divisible - height % self.size_divisible) % self.size_divisible
        pad_w = (self.size_divisible - width % self.size_divisible) % self.size_divisible
        x = F.pad(x, [0, pad_w, 0, pad_h], mode="replicate")  # unconditional: keeps ONNX export shape-generic
        f0 = self.stem_conv(x)  # (B, features, H, W)
        x = self.stem(f0)  # (B, C_0, H, W)
        skips: list[torch.Tensor] = []
        for level in self.encoder:
            skip, x = level(x)
            skips.append(skip)  # s_l: (B, C_l, H / 2^l, W / 2^l)
        x = self.middle(x)
        for i, level in enumerate(self.decoder):
            x = level(x, skips[len(skips) - 1 - i])
        x = self.stem_skip_block(torch.cat((x, f0), dim=1))  # (B, C_0 + features, H, W) -> (B, C_0, H, W)
        x = self.head(x)[:, :, :height, :width]
        return x + base if base is not None else x


def as_max_residual(network: LKCFUNet) -> LKCFUNet:
    """A ``"max_residual"`` copy of a ``"direct"`` network that starts as pixel-max fusion.

    All weights are kept except the head's last convolution, which is zeroed: the new network's output is exactly
    the pixel-wise maximum of its input channels until training changes it, and the trained features are there
    for it to learn from.

    Args:
        network: a trained or new ``"direct"`` network.

    Returns:
        a new network on the same device, in the same train/eval mode.

    Raises:
        FusionInputError: if ``network`` is already ``"max_residual"``.
    """
    if network.config["output_mode"] != "direct":
        raise FusionInputError(f"the network's output mode is already {network.config['output_mode']!r}")
    residual = LKCFUNet(**{**network.config, "output_mode": "max_residual"}).to(network.stem_conv.weight.device)
    residual.load_state_dict({**network.state_dict(), "output_mode": residual.output_mode})
    with torch.no_grad():
        residual.head[-1].weight.zero_()  # (out, C_0, 3, 3)
        residual.head[-1].bias.zero_()
    return residual.train(network.training)
