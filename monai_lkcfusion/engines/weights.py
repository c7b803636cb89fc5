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
        FusionInputError: the checkpoint does not exist, cannot be read (damaged, not a checkpoint) or holds no
            network tensors, or ``path`` cannot be written; ``path`` is replaced only by a complete file.
    """
    from ..data.atomic import atomic_path
    from ..networks.convert import read_state_dict

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FusionInputError(f"{checkpoint}: checkpoint not found")
    tensors = read_state_dict(checkpoint)  # {"network": sd, ...} or the state dict itself; one-line errors
    with atomic_path(path, overwrite=True) as partial:
        torch.save(tensors, partial)
    return Path(path)
