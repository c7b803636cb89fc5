"""Turn a training checkpoint into the plain network state dict that ships as ``bundle/models/model.pt``."""

from __future__ import annotations

from pathlib import Path

from ..errors import FusionInputError

__all__ = ["export_weights"]


def export_weights(checkpoint: str | Path, path: str | Path) -> Path:
    """Save the network weights of a training checkpoint as a tensors-only state dict (``.safetensors`` by
    extension, else ``torch.save``).

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
            network tensors, ``path`` is the checkpoint itself, or ``path`` cannot be written; ``path`` is replaced
            only by a complete file.
    """
    from ..data.atomic import check_not_input
    from ..networks.convert import read_state_dict
    from ..networks.loading import save_state_dict

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FusionInputError(f"{checkpoint}: checkpoint not found")
    check_not_input(path, [checkpoint])  # the resumable checkpoint would become weights only
    tensors = read_state_dict(checkpoint)  # {"network": sd, ...} or the state dict itself; one-line errors
    return save_state_dict(tensors, path)  # .safetensors by extension, else torch.save
