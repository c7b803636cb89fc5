"""The ``lkcfusion`` inference task: a co-registered 2-channel volume in, the fused volume (float) out."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

logger = logging.getLogger(__name__)


def read_channels(path: str) -> tuple[MetaTensor, MetaTensor]:
    """Read a 2-channel NIfTI, (X, Y, Z, 2) or NIfTI vector (X, Y, Z, 1, 2), as MRI and other (1, X, Y, Z) images."""
    image = nib.load(path)
    voxels = np.asarray(image.dataobj, dtype=np.float32)
    if voxels.ndim == 5 and voxels.shape[3] == 1:
        voxels = voxels[:, :, :, 0]
    if voxels.ndim != 4 or voxels.shape[3] != 2:
        raise ValueError(f"{path}: expected 2 channels (X, Y, Z, 2) = (MRI, other), got shape {voxels.shape}")
    affine = torch.as_tensor(image.affine, dtype=torch.float64)
    mri, other = (
        MetaTensor(torch.from_numpy(np.ascontiguousarray(voxels[..., c]))[None], affine=affine) for c in (0, 1)
    )
    return mri, other


class FusionInferTask(InferTask):
    """Fuse channel 0 (MRI) and channel 1 (CT/PET/SPECT) of the requested image with LKC-FUNet.

    The result is an image, not a label map: a float32 NIfTI with the input's grid (shape and affine), which
    ``/infer/lkcfusion?image=ID&output=image`` returns.

    Args:
        weights: network weights file; ``None`` uses ``monai_lkcfusion``'s default (the bundle's model).
        device: ``"cpu"`` or ``"cuda"``; a request may override it with ``{"device": ...}``.
    """

    def __init__(self, weights: str | None = None, device: str = "cpu") -> None:
        super().__init__(
            type=InferType.OTHERS,
            labels=None,
            dimension=3,
            description="LKC-FUNet fusion of a 2-channel volume (ch0 MRI, ch1 CT/PET/SPECT); returns a float image",
            config={"device": device},
        )
        self.weights = weights
        self._predictors: dict[str, Any] = {}
        self._lock = threading.Lock()

    def is_valid(self) -> bool:
        return True

    def _predictor(self, device: str) -> Any:
        """The optimised network for ``device``, built on the first request and kept for the next ones."""
        from monai_lkcfusion.inferers import build_predictor

        with self._lock:
            if device not in self._predictors:
                self._predictors[device] = build_predictor(None, weights=self.weights, device=device)
            return self._predictors[device]

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        from monai_lkcfusion.data import write_image
        from monai_lkcfusion.inference import fuse

        start = time.time()
        device = str(request.get("device", self.config()["device"]))
        mri, other = read_channels(request["image"])
        fused = fuse(mri, other, model=self._predictor(device), device=device, progress=False)  # (1, X, Y, Z)
        path = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
        write_image(fused, path, overwrite=True)
        result = {"shape": list(fused.shape[1:]), "dtype": "float32", "latency": round(time.time() - start, 3)}
        logger.info(f"Fused {request['image']} -> {path} {result}")
        return path, result
