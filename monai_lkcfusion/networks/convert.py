"""Load checkpoints saved by the official LKC-FUNet code (``best_MIF.pth`` / ``best_VIF.pth``) into :class:`LKCFUNet`.

The official ``Model`` wraps a ``UNet`` as ``self.model`` and is saved with ``torch.save(model.state_dict())``, so
its keys read ``model.init_conv.weight``, ``model.downs.0.res_block.block1.block.0.weight``, ... Its input is
``cat(Other, MRI)``; ours is ``cat(MRI, Other)``, so the first convolution's input channels are swapped.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from collections.abc import Mapping
from os import PathLike
from typing import Any

import torch

from monai_lkcfusion.errors import FusionInputError, list_names
from monai_lkcfusion.networks.lkcfunet import LKCFUNet

__all__ = [
    "convert_official_state_dict",
    "is_official_state_dict",
    "load_official_checkpoint",
    "official_config",
    "read_state_dict",
    "unwrap_state_dict",
]

# official submodule path (inside a block) -> ours
_RESBLOCK = {
    "block1.block.0": "norm1",
    "block1.block.3": "conv1",
    "block2.block.0": "norm2",
    "block2.block.3": "conv2",
    "res_conv": "residual",
}
_REPLK = {
    "prelkb_bn": "pre_norm",
    "pw1.conv": "pw1",
    "pw1.bn": "pw1_norm",
    "large_kernel.lkb_origin.conv": "dw",
    "large_kernel.lkb_origin.bn": "dw_norm",
    "pw2.conv": "pw2",
    "pw2.bn": "pw2_norm",
}
_MAFM = {
    "multi.local.ca.0": "channel_attention.1",
    "multi.local.ca.2": "channel_attention.3",
    "multi.global_.proj.0": "spatial_conv",
    "multi.global_.proj.1": "spatial_norm",
    "multi.bn": "mix_norm",
    "selection": "selection",
    "proj": "gate_conv",
    "bn": "gate_norm",
    "conv_block.0": "out_conv",
}
_WRAPPER_KEYS = ("state_dict", "model", "network", "net", "model_state_dict")
_PREFIXES = ("module.", "model.", "net.", "_orig_mod.")  # DDP, wrappers, torch.compile


def read_state_dict(source: str | PathLike | Mapping[str, Any], map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.pt``/``.pth`` file (``weights_only=True``), a ``.safetensors`` file or a mapping.

    Checkpoint wrappers (``{"state_dict": sd}``, ``{"model": sd}``, ``{"network": sd}``, ...) and ``module.`` /
    ``model.`` key prefixes are removed, see :func:`unwrap_state_dict`.

    Args:
        source: the file or an already loaded checkpoint.
        map_location: device for the tensors (as in ``torch.load``).

    Returns:
        a flat ``{name: tensor}`` dict.

    Raises:
        FusionInputError: if the file is missing, cannot be read safely, or holds no tensors.
    """
    if isinstance(source, Mapping):
        return unwrap_state_dict(source, str(type(source).__name__))
    path = str(source)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            device = str(map_location) if isinstance(map_location, (str, torch.device)) else "cpu"
            loaded: Any = load_file(path, device=device)
        elif _is_torchscript(path):  # torch.load would warn, then refuse it with advice to load it unsafely
            raise FusionInputError(
                f"{path}: is a TorchScript model (e.g. from lkcfusion export); give the .pt/.pth state dict or "
                ".safetensors weights it was made from"
            )
        else:
            with warnings.catch_warnings():  # the refusal below is the message; no pickle-protocol noise
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                loaded = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as e:
        raise FusionInputError(f"{path}: weights file not found") from e
    except FusionInputError:
        raise
    except Exception as e:  # unpickling refused, corrupt file, wrong format
        with open(path, "rb") as f:  # text gave "KeyError: 101", an empty file "IndexError: pop from empty list"
            head = f.read(2)
        if not path.endswith(".safetensors") and head[:1] != b"\x80" and head != b"PK":  # no pickle, no zip
            what = "an empty file" if not head else "not a PyTorch weights file"
            raise FusionInputError(f"{path}: {what} (neither a torch.save archive nor a pickle); give a .pt/.pth "
                                   "state dict or .safetensors weights") from None
        detail = (str(e).strip().splitlines() or ["empty or truncated file"])[0]
        if "torch.cuda.is_available() is False" in detail:  # map_location names a CUDA device on a CPU machine
            raise FusionInputError(f"device {map_location}: CUDA is not available on this machine; use cpu "
                                   f"(weights {path})") from None
        if "Weights only load failed" in detail:  # torch's hint to retry unsafely is not advice we pass on
            detail = (
                "it holds Python objects besides tensors, which are never unpickled; save a plain state dict"
                if _is_pickle(path)
                else "not a PyTorch weights file, or a corrupt one; give a .pt/.pth state dict or .safetensors"
            )
        raise FusionInputError(f"{path}: cannot read weights ({type(e).__name__}: {detail})") from e
    if not isinstance(loaded, Mapping):
        raise FusionInputError(f"{path}: holds a {type(loaded).__name__}, not a state dict")
    return unwrap_state_dict(loaded, path)


def _is_torchscript(path: str) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``): a zip holding ``<name>/constants.pkl``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _is_pickle(path: str) -> bool:
    """Whether ``path`` is a ``torch.save`` zip archive or a bare pickle (protocol 2+ starts with ``0x80``)."""
    with open(path, "rb") as f:
        head = f.read(1)
    return head == b"\x80" or zipfile.is_zipfile(path)


def unwrap_state_dict(checkpoint: Mapping[str, Any], origin: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the tensors of a checkpoint: unwrap ``{"state_dict"|"model"|"network"|"net": sd}`` and strip prefixes.

    Args:
        checkpoint: a state dict or a dict wrapping one.
        origin: file name (or description) used in error messages.

    Returns:
        ``{name: tensor}`` with ``module.``, ``model.``, ``net.`` and ``_orig_mod.`` (``torch.compile``) prefixes
        shared by all keys removed.

    Raises:
        FusionInputError: if no tensors are found.
    """
    found: Mapping[str, Any] = checkpoint
    while True:  # the larger set of tensors: {"network": sd, "step": tensor(3)}, but {**sd, "net": {"scale": t}}
        inner = max((found[k] for k in _WRAPPER_KEYS if isinstance(found.get(k), Mapping)), key=_most_tensors,
                    default=None)
        if inner is not None and _most_tensors(inner) > _tensors_at(found):
            found = inner
            continue
        if any(isinstance(v, torch.Tensor) for v in found.values()):
            break
        raise FusionInputError(
            f"{origin}: no tensors found (keys: {list_names(sorted(map(str, found)))}); expected a state dict "
            f"or a dict with one under {'/'.join(_WRAPPER_KEYS)}"
        )
    state = {str(k): v for k, v in found.items() if isinstance(v, torch.Tensor)}
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return state


def _tensors_at(mapping: Mapping[str, Any]) -> int:
    """The number of tensors directly in ``mapping``."""
    return sum(isinstance(v, torch.Tensor) for v in mapping.values())


def _most_tensors(mapping: Mapping[str, Any]) -> int:
    """The most tensors at one level of ``mapping`` or of a wrapper in it (``"state_dict"``, ``"network"``...):
    a state dict is the largest set of tensors of a checkpoint (a ``{"model": {"name": ...}}`` record holds none)."""
    inner = [_most_tensors(mapping[k]) for k in _WRAPPER_KEYS if isinstance(mapping.get(k), Mapping)]
    return max([_tensors_at(mapping), *inner])


def is_official_state_dict(state: Mapping[str, Any]) -> bool:
    """Whether an (unwrapped) state dict uses the official code's names (``init_conv``, ``downs``, ``ups``).

    Args:
        state: a state dict without wrapper prefixes (see :func:`unwrap_state_dict`).

    Returns:
        ``True`` when it holds ``init_conv.weight`` and at least one ``downs.*`` entry.
    """
    return "init_conv.weight" in state and any(k.startswith("downs.") for k in state)


def _indices(state: Mapping[str, Any], group: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.match(rf"{group}\.(\d+)\.", k))})


def _shape(state: Mapping[str, torch.Tensor], key: str, origin: str) -> tuple[int, ...]:
    if key not in state:
        raise FusionInputError(f"{origin}: not an official LKC-FUNet checkpoint, it has no {key!r}")
    return tuple(state[key].shape)


def official_config(state: Mapping[str, torch.Tensor], origin: str = "checkpoint") -> dict[str, Any]:
    """Infer the :class:`LKCFUNet` configuration of an official state dict from its names and shapes.

    Args:
        state: unwrapped official state dict (see :func:`unwrap_state_dict`).
        origin: file name used in error messages.

    Returns:
        :class:`LKCFUNet` keyword arguments (``norm="official"``, ``dropout`` as released).

    Raises:
        FusionInputError: if the names do not follow the official layout.
    """
    features, in_channels = _shape(state, "init_conv.weight", origin)[:2]
    downs = _indices(state, "downs")
    n_down = sum(f"downs.{j}.conv.weight" in state for j in downs)
    levels = n_down + 1
    num_blocks, rest = divmod(len(downs) - n_down, levels)
    if rest or num_blocks < 1:
        raise FusionInputError(f"{origin}: {len(downs)} 'downs' modules do not form {levels} encoder levels")
    widths, kernels = [], []
    for level in range(levels):
        shape = _shape(state, f"downs.{level * (num_blocks + 1)}.res_block.block1.block.3.weight", origin)
        widths.append(shape[0])
        kernels.append(shape[-1])
    if any(w % features for w in widths):
        raise FusionInputError(f"{origin}: level widths {widths} are not multiples of the base width {features}")
    return {
        "in_channels": in_channels,
        "out_channels": _shape(state, "final_conv.block.3.weight", origin)[0],
        "features": features,
        "channel_mults": tuple(w // features for w in widths),
        "kernel_sizes": tuple(kernels),
        "num_blocks": num_blocks,
        "middle_kernel": _shape(state, "mid.0.res_block.large_kernel.lkb_origin.conv.weight", origin)[-1],
        "norm": "official",
    }


def _official_module_map(levels: int, num_blocks: int) -> dict[str, str]:
    """Official module path -> our module path, for every module that holds tensors."""
    pairs = {
        "init_conv": "stem_conv",
        "IN_conv.0": "stem.0",
        "IN_conv.3": "stem.3",
        "final_conv.block.0": "head.0",
        "final_conv.block.3": "head.2",
    }

    def add(official: str, ours: str, table: dict[str, str]) -> None:
        pairs.update({f"{official}.{a}": f"{ours}.{b}" for a, b in table.items()})

    j = 0
    for level in range(levels):
        for b in range(num_blocks):
            add(f"downs.{j}.res_block", f"encoder.{level}.blocks.{b}", _RESBLOCK if b == 0 else _REPLK)
            j += 1
        if level < levels - 1:
            pairs[f"downs.{j}.conv"] = f"encoder.{level}.downsample"
            j += 1
    for b in range(2):
        add(f"mid.{b}.res_block", f"middle.{b}", _REPLK)
    j = 0
    for i, level in enumerate(reversed(range(levels))):
        add(f"ups.{j}", f"decoder.{i}.fusion", _MAFM)
        j += 1
        for b in range(num_blocks + 1):
            if b == 0:
                add(f"ups.{j}.res_block", f"decoder.{i}.blocks.0", _RESBLOCK)
            elif level == 0 and b == num_blocks:
                add(f"ups.{j}.res_block", "stem_skip_block", _RESBLOCK)
            else:
                add(f"ups.{j}.res_block", f"decoder.{i}.blocks.{b}", _REPLK)
            j += 1
        if level > 0:
            pairs[f"ups.{j}.conv"] = f"decoder.{i}.upsample.conv"
            j += 1
    return pairs


def convert_official_state_dict(
    state: Mapping[str, torch.Tensor], origin: str = "checkpoint"
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Rename an official state dict to :class:`LKCFUNet` names and swap the input channels to (MRI, other).

    Args:
        state: unwrapped official state dict.
        origin: file name used in error messages.

    Returns:
        ``(config, converted)``: :class:`LKCFUNet` keyword arguments and our state dict (without the
        ``norm_kinds`` buffer, which the network sets from ``config``).

    Raises:
        FusionInputError: naming unknown, missing or wrongly shaped keys.
    """
    config = official_config(state, origin)
    if config["in_channels"] != 2:
        raise FusionInputError(
            f"{origin}: official fusion checkpoints take 2 input channels, this one takes {config['in_channels']}"
        )
    with torch.device("meta"):
        expected = {k: v.shape for k, v in LKCFUNet(**config).state_dict().items() if k != "norm_kinds"}
    modules = _official_module_map(len(config["channel_mults"]), config["num_blocks"])
    converted: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}  # our key -> official key
    unknown = []
    for key, tensor in state.items():
        module, _, leaf = key.rpartition(".")
        ours = f"{modules[module]}.{leaf}" if module in modules else None
        if ours not in expected:
            unknown.append(key)
        else:
            converted[ours], source[ours] = tensor, key
    if unknown:
        raise FusionInputError(f"{origin}: unknown keys for an official LKC-FUNet checkpoint: {list_names(unknown)}")
    reverse = {ours: official for official, ours in modules.items()}
    missing = [f"{reverse[k.rpartition('.')[0]]}.{k.rpartition('.')[2]}" for k in expected if k not in converted]
    if missing:
        raise FusionInputError(f"{origin}: keys missing from the official checkpoint: {list_names(missing)}")
    wrong = [
        f"{source[k]} {tuple(converted[k].shape)} != {tuple(shape)}"
        for k, shape in expected.items()
        if converted[k].shape != shape
    ]
    if wrong:
        raise FusionInputError(f"{origin}: tensor shapes do not fit the inferred network: {list_names(wrong)}")
    # official input is cat(Other, MRI); ours is cat(MRI, Other)
    converted["stem_conv.weight"] = converted["stem_conv.weight"].flip(1).contiguous()
    return config, converted


def load_official_checkpoint(
    path_or_state_dict: str | PathLike | Mapping[str, Any], map_location: Any = "cpu"
) -> LKCFUNet:
    """Build an :class:`LKCFUNet` from a checkpoint saved by the official LKC-FUNet code.

    Accepts the released ``best_MIF.pth`` / ``best_VIF.pth`` (keys ``model.init_conv.weight``, ...), a bare
    ``UNet`` state dict, ``module.``-prefixed (DataParallel) keys, and dicts wrapping the state dict under
    ``state_dict`` / ``model`` / ``network`` / ``net``. Files are read with ``weights_only=True``. The architecture
    (width, levels, kernel sizes, blocks) is inferred from the tensors; every tensor (BatchNorm running statistics
    included) must map onto the network and every network tensor must be provided.

    Our output on ``cat(MRI, other)`` equals the official output on ``cat(other, MRI)``.

    Args:
        path_or_state_dict: checkpoint file (``.pth``/``.pt``/``.safetensors``) or a loaded checkpoint.
        map_location: device for the tensors.

    Returns:
        the network with the official weights, in eval mode.

    Raises:
        FusionInputError: if the file cannot be read or its keys do not form an official checkpoint.
    """
    origin = "state dict" if isinstance(path_or_state_dict, Mapping) else str(path_or_state_dict)
    state = read_state_dict(path_or_state_dict, map_location)
    if not is_official_state_dict(state):
        raise FusionInputError(
            f"{origin}: not an official LKC-FUNet checkpoint (no init_conv/downs keys; found "
            f"{list_names(sorted(state))}); use load_network for this package's checkpoints"
        )
    config, converted = convert_official_state_dict(state, origin)
    net = LKCFUNet(**config)
    converted["norm_kinds"] = net.norm_kinds
    net.load_state_dict(converted, strict=True)
    return net.to(converted["stem_conv.weight"].device).eval()
