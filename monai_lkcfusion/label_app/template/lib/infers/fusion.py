"""The ``lkcfusion`` inference task: a co-registered 2-channel volume in, the fused volume (float) out."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

logger = logging.getLogger(__name__)


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
        self._networks: dict[str, Any] = {}
        self._lock = threading.Lock()

    def is_valid(self) -> bool:
        return True

    def _network(self, device: str) -> Any:
        """Load the network once per device."""
        from monai_lkcfusion.networks import default_weights_path, load_network

        with self._lock:
            if device not in self._networks:
                self._networks[device] = load_network(self.weights or default_weights_path(), map_location=device)
            return self._networks[device]

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        from monai_lkcfusion.data import read_image, write_image
        from monai_lkcfusion.inference import fuse

        start = time.time()
        device = str(request.get("device", self.config()["device"]))
        image = read_image(request["image"])  # (C, X, Y, Z) with its affine
        if image.shape[0] != 2:
            raise ValueError(f"{request['image']}: expected 2 channels (MRI, other), got shape {tuple(image.shape)}")
        fused = fuse(image[0:1], image[1:2], model=self._network(device), device=device)  # (1, X, Y, Z)
        path = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
        write_image(fused, path, overwrite=True)
        result = {"shape": list(fused.shape[1:]), "dtype": "float32", "latency": round(time.time() - start, 3)}
        logger.info(f"Fused {request['image']} -> {path} {result}")
        return path, result
