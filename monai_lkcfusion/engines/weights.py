"""Turn a training checkpoint into the plain network state dict that ships as ``bundle/models/model.pt``."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import FusionInputError

__all__ = ["export_weights"]


def export_weights(checkpoint: str | Path, path: str | Path) -> Path:
    """Save the network weights of a training checkpoint as a tensors-only state dict.

    Accepts the evaluator's best-model file (a dict with a ``network`` entry, the saver's ``checkpointer`` tracking
    state and the ``best`` record; before bundle 0.4.3 the network's state dict itself plus ``checkpointer``) and the
    trainer's ``checkpoint_epoch=N.pt`` (a dict with a ``network`` entry).

    Args:
        checkpoint: the checkpoint to read (loaded with ``weights_only=True``).
        path: where to write the state dict.

    Returns:
        ``path``.

    Raises:
        FusionInputError: the checkpoint does not exist or holds no network tensors.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FusionInputError(f"{checkpoint}: checkpoint not found")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = state.get("network", state)
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise FusionInputError(f"{checkpoint}: no network weights in this checkpoint")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tensors, path)
    return path
