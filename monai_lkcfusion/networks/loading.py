"""Save and load :class:`LKCFUNet` weights; the architecture is read back from the tensors' names and shapes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from monai_lkcfusion.bundle_files import packaged_bundle
from monai_lkcfusion.errors import FusionInputError, list_names
from monai_lkcfusion.networks.blocks import NORM_KINDS
from monai_lkcfusion.networks.convert import (
    convert_official_state_dict,
    is_official_state_dict,
    read_state_dict,
)
from monai_lkcfusion.networks.lkcfunet import NORM_SCHEMES, NORM_SITES, OUTPUT_MODES, LKCFUNet, resolve_norm_scheme

__all__ = [
    "check_finite_weights", "default_weights_path", "infer_config", "load_network", "save_network", "save_state_dict",
]

# a normalisation layer per site, used to recognise BatchNorm (running statistics) when ``norm_kinds`` is absent
_NORM_PROBES = {
    "stem": "stem.0",
    "resblock": "encoder.0.blocks.0.norm1",
    "replk": "middle.0.pre_norm",
    "mafm": "decoder.0.fusion.mix_norm",
    "head": "head.0",
}
# architecture fields compared against an expected preset/config, with their names in messages
_FIELDS = {
    "in_channels": "input channels",
    "out_channels": "output channels",
    "features": "width (features)",
    "channel_mults": "channel multipliers",
    "kernel_sizes": "kernel sizes",
    "num_blocks": "blocks per level",
    "middle_kernel": "middle kernel",
    "norm": "norm scheme",
    "norm_groups": "GroupNorm groups",
    "output_mode": "output mode",
}


def default_weights_path() -> Path:
    """Where the trained default model lives: ``models/model.pt`` of the bundle installed with the package.

    The bundle is the package data ``monai_lkcfusion.bundle`` (the repository's ``bundle/`` folder), found with
    :mod:`importlib.resources`; see :func:`~monai_lkcfusion.bundle_files.packaged_bundle`.

    Returns:
        the path (which may not exist yet).
    """
    return packaged_bundle() / "models" / "model.pt"


def _shape(state: Mapping[str, torch.Tensor], key: str, origin: str) -> tuple[int, ...]:
    if key not in state:
        raise FusionInputError(f"{origin}: not an LKC-FUNet state dict, it has no {key!r}")
    return tuple(state[key].shape)


def infer_config(state: Mapping[str, torch.Tensor], origin: str = "state dict") -> dict[str, Any]:
    """Read the :class:`LKCFUNet` architecture from a state dict of this package (names and shapes).

    The norm scheme comes from the ``norm_kinds`` buffer; without it, sites with BatchNorm running statistics are
    ``"batch"`` and the others take the ``"official"`` non-batch kind (``"group"`` at the stem and MAFM).

    Args:
        state: unwrapped state dict, see :func:`~monai_lkcfusion.networks.convert.unwrap_state_dict`.
        origin: file name used in error messages.

    Returns:
        :class:`LKCFUNet` keyword arguments (``dropout`` is not stored in weights and keeps its default).

    Raises:
        FusionInputError: if the names do not follow this package's layout.
    """
    features, in_channels = _shape(state, "stem_conv.weight", origin)[:2]
    levels = len({m.group(1) for k in state if (m := re.match(r"encoder\.(\d+)\.", k))})
    num_blocks = len({m.group(1) for k in state if (m := re.match(r"encoder\.0\.blocks\.(\d+)\.", k))})
    widths, kernels = [], []
    for level in range(levels):
        shape = _shape(state, f"encoder.{level}.blocks.0.conv1.weight", origin)
        widths.append(shape[0])
        kernels.append(shape[-1])
    if any(w % features for w in widths):
        raise FusionInputError(f"{origin}: level widths {widths} are not multiples of the base width {features}")
    if "norm_kinds" in state:
        codes = state["norm_kinds"].tolist()
        if len(codes) != len(NORM_SITES) or not all(0 <= c < len(NORM_KINDS) for c in codes):
            raise FusionInputError(f"{origin}: norm_kinds {codes} is not a valid norm scheme code")
        norm = {site: NORM_KINDS[c] for site, c in zip(NORM_SITES, codes)}
    else:
        fallback = {site: "group" if kind == "batch" else kind for site, kind in NORM_SCHEMES["official"].items()}
        norm = {
            site: "batch" if f"{probe}.running_mean" in state else fallback[site]
            for site, probe in _NORM_PROBES.items()
        }
    return {
        "in_channels": in_channels,
        "out_channels": _shape(state, "head.2.weight", origin)[0],
        "features": features,
        "channel_mults": tuple(w // features for w in widths),
        "kernel_sizes": tuple(kernels),
        "num_blocks": num_blocks,
        "middle_kernel": _shape(state, "middle.0.dw.weight", origin)[-1],
        "norm": norm,
        "norm_groups": int(state["norm_groups"]) if "norm_groups" in state else 32,
        "output_mode": OUTPUT_MODES[int(state["output_mode"])] if "output_mode" in state else "direct",
    }


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        named = next((name for name, scheme in NORM_SCHEMES.items() if dict(value) == scheme), None)
        return repr(named) if named else str(dict(value))
    return str(value)


def _check_expected(found: Mapping[str, Any], expected: str | Mapping[str, Any], origin: str) -> None:
    """Raise if the architecture of the weights differs from an expected preset name or config.

    A preset fixes the layers (widths, kernels, norms), not the output mode: weights of preset ``"small"`` trained
    as ``"max_residual"`` are still ``"small"``. A config that names ``output_mode`` is checked on it.
    """
    found = {**found, "norm": resolve_norm_scheme(found["norm"])}
    if isinstance(expected, str):
        with torch.device("meta"):
            wanted = {k: v for k, v in LKCFUNet.from_preset(expected).config.items() if k != "output_mode"}
        label = f"preset {expected!r}"
    else:
        unknown = sorted(set(expected) - set(_FIELDS) - {"dropout"})
        if unknown:
            raise FusionInputError(f"expected network settings {unknown} are not LKCFUNet arguments")
        wanted = {k: resolve_norm_scheme(v) if k == "norm" else v for k, v in expected.items()}
        wanted = {k: tuple(v) if k in ("channel_mults", "kernel_sizes") else v for k, v in wanted.items()}
        label = "the requested network"
    diffs = [
        f"{_FIELDS[k]} {_describe(found[k])}, {label} has {_describe(wanted[k])}"
        for k in _FIELDS
        if k in wanted and found[k] != wanted[k]
    ]
    if diffs:
        raise FusionInputError(f"{origin}: weights are for {'; '.join(diffs)}")


def check_finite_weights(state: Mapping[str, Any], origin: str = "state dict") -> None:
    """Refuse weights that cannot give a valid fusion: NaN/Inf values, or parameters that are not floating point.

    A diverged training exports NaN weights, which fuse every image to NaN (an all-black PNG, an all-NaN NIfTI);
    integer or boolean "weights" come from a wrong conversion and would be cast silently.

    Args:
        state: the state dict.
        origin: file name used in the message.

    Raises:
        FusionInputError: naming how many values and tensors are affected.
    """
    bad_dtype = [
        f"{k} ({str(v.dtype).replace('torch.', '')})" for k, v in state.items()
        if isinstance(v, torch.Tensor) and not v.is_floating_point() and not k.endswith(("num_batches_tracked",
                                                                                           "norm_kinds", "norm_groups",
                                                                                           "output_mode"))
    ]
    if bad_dtype:
        raise FusionInputError(
            f"{origin}: {len(bad_dtype)} tensor(s) are not floating point, e.g. {', '.join(bad_dtype[:3])}; these "
            "are not trained network weights (save the float state dict)"
        )
    counts = {k: int((~torch.isfinite(v)).sum()) for k, v in state.items()
              if isinstance(v, torch.Tensor) and v.is_floating_point()}
    broken = {k: n for k, n in counts.items() if n}
    if broken:
        first = next(iter(broken))
        raise FusionInputError(
            f"{origin}: {sum(broken.values())} NaN/Inf values in {len(broken)} of {len(counts)} tensors (e.g. "
            f"{first}); the training that wrote them diverged: use an earlier checkpoint"
        )


def load_network(
    weights: str | PathLike | Mapping[str, Any],
    map_location: Any = "cpu",
    expected: str | Mapping[str, Any] | None = None,
) -> LKCFUNet:
    """Build an :class:`LKCFUNet` from weights alone: this package's checkpoints or an official one.

    Args:
        weights: a ``.pt``/``.pth`` file (``torch.save`` of a state dict, possibly wrapped as ``{"model": sd}``,
            ``{"state_dict": sd}``, ...), a ``.safetensors`` file, or an already loaded state dict. Official
            LKC-FUNet checkpoints (keys ``model.init_conv.weight``, ...) are recognised and converted.
        map_location: device for the network.
        expected: optional preset name or :class:`LKCFUNet` keyword arguments the weights must match; architecture
            fields given there that differ from the weights raise an error naming them (a preset name does not fix
            the output mode, see :data:`~monai_lkcfusion.networks.OUTPUT_MODES`).

    Returns:
        the network in eval mode.

    Raises:
        FusionInputError: unreadable file, unknown/missing keys, or a mismatch with ``expected``.
    """
    origin = "state dict" if isinstance(weights, Mapping) else str(weights)
    state = read_state_dict(weights, map_location)
    check_finite_weights(state, origin)
    if is_official_state_dict(state):
        config, state = convert_official_state_dict(state, origin)
    else:
        config = infer_config(state, origin)
    if expected is not None:
        _check_expected(config, expected, origin)
        if not isinstance(expected, str) and "dropout" in expected:
            config["dropout"] = expected["dropout"]
    net = LKCFUNet(**config)
    own = net.state_dict()
    state.setdefault("norm_kinds", own["norm_kinds"])
    unknown = [k for k in state if k not in own]
    missing = [k for k in own if k not in state]
    if unknown or missing:
        parts = ([f"unknown keys {list_names(unknown)}"] if unknown else []) + (
            [f"missing keys {list_names(missing)}"] if missing else []
        )
        raise FusionInputError(f"{origin}: does not fit the inferred LKC-FUNet: {'; '.join(parts)}")
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        raise FusionInputError(f"{origin}: tensor shapes do not fit the inferred LKC-FUNet: {list_names(wrong)}")
    net.load_state_dict(state, strict=True)
    return net.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval()


def save_network(net: torch.nn.Module, path: str | PathLike) -> Path:
    """Save a network's state dict as ``.safetensors`` (by extension) or with ``torch.save`` (``.pt``/``.pth``).

    The file is self-describing: :func:`load_network` rebuilds the architecture from it.

    Args:
        net: the network (an :class:`LKCFUNet`).
        path: destination file (replaced only by a complete one); parent folders are created.

    Returns:
        the path written.
    """
    return save_state_dict(net.state_dict(), path)


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | PathLike) -> Path:
    """Save tensors as ``.safetensors`` (by extension) or with ``torch.save`` (any other), atomically.

    Args:
        state: ``{name: tensor}``; the tensors are saved from the CPU, contiguous.
        path: destination file (replaced only by a complete one); parent folders are created.

    Returns:
        the path written.

    Raises:
        FusionInputError: ``path`` cannot be written (see :func:`~monai_lkcfusion.data.atomic.atomic_path`).
    """
    from ..data.atomic import atomic_path

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_path(path, overwrite=True) as partial:  # an interrupted save never leaves a cut file at path
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(partial))
        else:
            torch.save(tensors, partial)
    return path
