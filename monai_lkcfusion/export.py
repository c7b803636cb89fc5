"""Export a fusion network for deployment: TorchScript (``torch.jit.script``) or ONNX (dynamic batch, H and W).

Both exported models take the network's input, (B, 2, H, W) with channel 0 = MRI and channel 1 = the other
modality in [0, 1], and return its raw output (B, 1, H, W) (clamp to [0, 1] for display). Any H and W work: the
TorchScript module keeps the network's own pad-and-crop; the ONNX graph is exported for sizes divisible by the
network's stride and wrapped in an edge-replicate ``Pad`` and a ``Slice`` computed from the input's shape.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data.atomic import atomic_path, check_writable
from .errors import FusionInputError

__all__ = ["EXPORT_FORMATS", "EXPORT_SUFFIXES", "export_format", "export_metadata", "export_network"]

EXPORT_FORMATS: tuple[str, ...] = ("torchscript", "onnx")
"""Formats understood by :func:`export_network`."""

EXPORT_SUFFIXES: dict[str, str] = {".ts": "torchscript", ".pt": "torchscript", ".pth": "torchscript",
                                   ".onnx": "onnx"}
"""File extensions that name an export format."""

_ONNX_OPSET = 18


def export_metadata(net: nn.Module) -> dict[str, str]:
    """Describe an exported network's input and output; stored inside the exported file.

    Args:
        net: the network (anything with ``size_divisible``, e.g. :class:`~monai_lkcfusion.networks.LKCFUNet`).

    Returns:
        string-valued metadata (TorchScript extra file ``lkcfusion.json``; ONNX ``metadata_props``).
    """
    return {
        "name": "LKC-FUNet multimodal image fusion (monai-lkcfusion)",
        "input": "image: float32 (B, 2, H, W), channel 0 = MRI, channel 1 = other modality (CT/PET/SPECT), in [0, 1]",
        "output": "fused: float32 (B, 1, H, W), raw network output; clamp to [0, 1]",
        "size_divisible": str(int(getattr(net, "size_divisible", 1))),
    }


def export_format(path: str | PathLike, format: str | None = None) -> str:
    """The format an export to ``path`` is written in: ``format``, else the one its extension names.

    Args:
        path: the output file.
        format: one of :data:`EXPORT_FORMATS`, or ``None`` to take it from the extension (:data:`EXPORT_SUFFIXES`).

    Returns:
        ``"torchscript"`` or ``"onnx"``.

    Raises:
        FusionInputError: an unknown ``format``; no ``format`` and an extension that names none; or an extension
            that names the other format (a ``.onnx`` file holding TorchScript would be silently wrong).
    """
    suffix = Path(path).suffix.lower()
    named = EXPORT_SUFFIXES.get(suffix)
    if format is not None and format not in EXPORT_FORMATS:
        raise FusionInputError(f"--format {format!r} is not one of {', '.join(EXPORT_FORMATS)}")
    if format is None and named is None:
        raise FusionInputError(f"{path}: the extension {suffix or '(none)'!r} names no export format; "
                               f"use {', '.join(EXPORT_SUFFIXES)}, or pass --format")
    if format is not None and named is not None and named != format:
        raise FusionInputError(f"{path}: the extension {suffix} says {named}, --format says {format}; make them agree "
                               "(or drop --format)")
    return format or named


def export_network(net: nn.Module, path: str | PathLike, format: str | None = None) -> Path:
    """Export ``net`` (a copy in eval mode, on the CPU; ``net`` keeps its mode and device) to ``path``, written
    atomically.

    Args:
        net: the fusion network, e.g. :class:`~monai_lkcfusion.networks.LKCFUNet`.
        path: output file (``.ts``/``.pt``/``.pth`` for TorchScript, ``.onnx`` for ONNX); parent folders are
            created; an existing file is replaced.
        format: one of :data:`EXPORT_FORMATS`; default: the one the extension names (:func:`export_format`).

    Returns:
        The path written.

    Raises:
        FusionInputError: see :func:`export_format`; a place that cannot be written (checked before exporting).
    """
    format = export_format(path, format)
    path = Path(path)
    check_writable(path)
    net = copy.deepcopy(net).cpu().eval()  # a network mid-training stayed in eval mode, moved to the CPU
    metadata = export_metadata(net)
    with atomic_path(path, overwrite=True) as tmp:
        if format == "torchscript":
            torch.jit.save(torch.jit.script(net), str(tmp), _extra_files={"lkcfusion.json": json.dumps(metadata)})
        else:
            _export_onnx(net, tmp, metadata)
    return path


def _export_onnx(net: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """Export to ONNX with dynamic batch/H/W: trace on stride-divisible sizes, then add pad and crop nodes."""
    import onnx

    divisible = int(getattr(net, "size_divisible", 1))
    dim = torch.export.Dim
    example = torch.rand(2, 2, 16 * divisible, 16 * divisible)  # batch 2 so the batch axis is not specialised
    dynamic = {
        "x": {
            0: dim("batch", min=1, max=4096),
            2: divisible * dim("h_blocks", min=2, max=16384),
            3: divisible * dim("w_blocks", min=2, max=16384),
        }
    }
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms": ops not used
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)  # deprecations inside torch's own exporter
            program = torch.onnx.export(
                net,
                (example,),
                input_names=["image"],
                output_names=["fused"],
                dynamic_shapes=dynamic,
                opset_version=_ONNX_OPSET,
                dynamo=True,
                verbose=False,
            )
    finally:
        registry_log.setLevel(level)
    model = program.model_proto
    _wrap_pad_crop(model.graph, divisible)
    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _wrap_pad_crop(graph: Any, divisible: int) -> None:
    """Make an ONNX graph (input ``image``, output ``fused``) accept any H, W.

    The input is padded at the bottom/right by edge replication to a multiple of ``divisible`` (as the network
    does in PyTorch) and the output is cropped back to the input's H, W.
    """
    from onnx import TensorProto, helper

    inner_in, inner_out = "lkcfusion_padded_image", "lkcfusion_padded_fused"
    for node in graph.node:
        node.input[:] = [inner_in if name == "image" else name for name in node.input]
        node.output[:] = [inner_out if name == "fused" else name for name in node.output]
    (old_input,) = [v for v in graph.input if v.name == "image"]
    graph.input.remove(old_input)
    graph.output.remove(next(v for v in graph.output if v.name == "fused"))
    graph.input.insert(0, helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 2, "height", "width"]))
    graph.output.append(helper.make_tensor_value_info("fused", TensorProto.FLOAT, ["batch", 1, "height", "width"]))

    def const(name: str, values: list[int]) -> Any:
        return helper.make_node(
            "Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values)
        )

    pre = [
        const("lkcfusion_divisible", [divisible]),
        const("lkcfusion_zeros6", [0] * 6),
        const("lkcfusion_hw_axes", [2, 3]),
        helper.make_node("Shape", ["image"], ["lkcfusion_hw"], start=2, end=4),  # [H, W]
        helper.make_node("Mod", ["lkcfusion_hw", "lkcfusion_divisible"], ["lkcfusion_rem"]),
        helper.make_node("Sub", ["lkcfusion_divisible", "lkcfusion_rem"], ["lkcfusion_gap"]),
        helper.make_node("Mod", ["lkcfusion_gap", "lkcfusion_divisible"], ["lkcfusion_pad_hw"]),
        # ONNX pads: [begin x4, end x4] -> [0, 0, 0, 0, 0, 0, pad_h, pad_w]
        helper.make_node("Concat", ["lkcfusion_zeros6", "lkcfusion_pad_hw"], ["lkcfusion_pads"], axis=0),
        helper.make_node("Pad", ["image", "lkcfusion_pads"], [inner_in], mode="edge"),
    ]
    post = [
        const("lkcfusion_starts", [0, 0]),
        helper.make_node(
            "Slice", [inner_out, "lkcfusion_starts", "lkcfusion_hw", "lkcfusion_hw_axes"], ["fused"]
        ),  # crop (B, 1, H_pad, W_pad) -> (B, 1, H, W)
    ]
    nodes = pre + list(graph.node) + post
    del graph.node[:]
    graph.node.extend(nodes)
