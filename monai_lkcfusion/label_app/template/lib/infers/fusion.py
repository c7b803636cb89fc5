"""The ``lkcfusion`` inference task: an MRI and a CT/PET/SPECT in, the fused image (float) out.

Two images per request, as MONAI Label's ``/infer`` API can carry them:

- ``image`` = the MRI (an image ID of the studies folder, or the uploaded ``file``) and the second image as
  ``params={"other": "<image ID>"}`` (resolved by the app) or uploaded as the ``label`` form field;
- or one co-registered 2-channel volume (channel 0 MRI, channel 1 other) as ``image``.

Fusion is the package's one pipeline, run by :class:`monai_lkcfusion.apps.worker.FusionWorker` (the same call as
``lkcfusion fuse``: the other image is resampled onto the MRI grid), which keeps one loaded predictor per server
process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from typing import Any

import nibabel as nib
import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

logger = logging.getLogger(__name__)

OPTIONS = ("method", "color", "mask_background", "tta", "modality", "axis", "batch_size", "register")
"""Request parameters passed on to the fusion (see ``lkcfusion fuse --help``)."""


def split_channels(path: str, folder: str) -> tuple[str, str]:
    """Write the two channels of a 2-channel NIfTI, (X, Y, Z, 2) or NIfTI vector (X, Y, Z, 1, 2), as the MRI and
    the other image, each a NIfTI file with the volume's header, into ``folder``.

    Files, not in-memory tensors: the fusion then reads and scales them as it reads two uploaded files (as
    ``lkcfusion fuse`` does); float values in [0, 1] in memory are taken as already scaled, which fused a
    2-channel request up to 0.15 off the same pair sent as two images (hand-check helper).

    Returns:
        The paths of the MRI and of the other image.

    Raises:
        ValueError: the volume does not hold 2 channels.
    """
    image = nib.load(path)
    voxels = np.asanyarray(image.dataobj)
    if voxels.ndim == 5 and voxels.shape[3] == 1:
        voxels = voxels[:, :, :, 0]
    if voxels.ndim != 4 or voxels.shape[3] != 2:
        raise ValueError(
            f"{path}: expected 2 channels (X, Y, Z, 2) = (MRI, other), got shape {voxels.shape}; or send the "
            "second image as params {\"other\": \"<image ID>\"} or as the 'label' upload"
        )
    paths = []
    for channel, name in enumerate(("mri", "other")):
        header = image.header.copy()
        header.set_intent("none")  # a vector image's intent does not describe one channel
        header.set_data_dtype(voxels.dtype)  # the values as read (scaled by scl_slope already): stored unchanged
        single = nib.Nifti1Image(np.ascontiguousarray(voxels[..., channel]), image.affine, header)
        single.header.set_slope_inter(1.0, 0.0)
        paths.append(os.path.join(folder, f"{name}.nii.gz"))
        nib.save(single, paths[-1])
    return paths[0], paths[1]


class FusionInferTask(InferTask):
    """Fuse the request's MRI with its second image (or the two channels of one image) with LKC-FUNet.

    The result is an image, not a label map: a float32 NIfTI on the MRI's grid (shape and affine), values in
    [0, 1] (a 3-component vector image for a colour PET/SPECT), returned by ``/infer/lkcfusion?output=image``.

    Args:
        weights: network weights file; ``None`` uses ``monai_lkcfusion``'s default (the bundle's model).
        device: ``"cpu"`` or ``"cuda"``; a request may override it with ``{"device": ...}``.
    """

    def __init__(self, weights: str | None = None, device: str = "cpu") -> None:
        from monai_lkcfusion.apps.worker import FusionWorker

        super().__init__(
            type=InferType.OTHERS,
            labels=None,
            dimension=3,
            description="LKC-FUNet fusion of an MRI with CT/PET/SPECT (2 images, or 1 image with 2 channels); "
            "returns a float image on the MRI grid",
            config={"device": device},
        )
        self.weights = weights
        self.worker = FusionWorker()
        self._lock = threading.Lock()

    def is_valid(self) -> bool:
        return True

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        from monai_lkcfusion.apps.worker import FusionJob, check_job_values

        start = time.time()
        if not request.get("image"):  # MONAI Label's datastore gives "" for an unknown ID: the working folder
            raise ValueError("image: no MRI given (an image ID not in the studies folder?)")
        other = request.get("other") or request.get("label")
        options = {key: request[key] for key in (*OPTIONS, "device") if request.get(key) is not None}
        options.setdefault("device", self.config()["device"])
        check_job_values(options, "params")  # {"device": 0} was "--device 0: Invalid device string"
        weights = self.weights if options.get("method", "lkcfunet") == "lkcfunet" else None  # the app's network
        path = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
        channels = None if other else tempfile.mkdtemp(prefix="lkcfusion-channels-")
        try:
            mri, other = (request["image"], other) if other else split_channels(request["image"], channels)
            job = FusionJob(mri=mri, other=other, output=path, weights=weights, **options)
            with self._lock:  # one predictor per server process, one fusion at a time
                done = self.worker.run(job)
            written = nib.load(path).shape  # a picture is written as (X, Y, 1[, 1, 3]): the file's axes
        except BaseException:  # the server sends only a result's file (and deletes it then): none to leave behind
            with contextlib.suppress(OSError):  # never in place of the error that brought us here
                os.remove(path)
            raise
        finally:
            if channels is not None:
                shutil.rmtree(channels, ignore_errors=True)
        result = {
            "shape": list(written[:3]),
            "channels": done["shape"][0],
            "dtype": "float32",
            "latency": round(time.time() - start, 3),
            "predictor_reused": done["predictor_reused"],
            "predictor_seconds": done["predictor_seconds"],
            "predictor_loads": self.worker.loads,
        }
        logger.info(f"Fused {request['image']} + {other if isinstance(other, str) else 'channel 1'} -> {path} {result}")
        return path, result
