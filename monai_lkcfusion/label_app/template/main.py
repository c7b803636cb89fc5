"""MONAI Label app: LKC-FUNet multimodal image fusion (model ``lkcfusion``), written by ``lkcfusion label-app``.

Start it with ``monailabel start_server --app <this folder> --studies <folder of MRI, CT/PET/SPECT volumes>
--conf models lkcfusion``; optional ``--conf device cpu|cuda`` and ``--conf weights <file>`` (default: the
weights copied into ``model/`` when the app was written). A request names the MRI as ``image`` and the second
image as ``params={"other": "<image ID>"}`` or uploads it as ``label`` (see docs/monailabel.md).
"""

from __future__ import annotations

import logging
import os

import monailabel
from lib.infers import FusionInferTask
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask

logger = logging.getLogger(__name__)

MODEL_NAME = "lkcfusion"


class LKCFusionApp(MONAILabelApp):
    """Serves one inference task, ``lkcfusion``: an MRI and a second image (or one 2-channel volume) in, the fused
    volume out (a float image, not a label map)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        models = [m.strip() for m in conf.get("models", MODEL_NAME).split(",") if m.strip()]
        unknown = [m for m in models if m not in (MODEL_NAME, "all")]
        if unknown:
            raise ValueError(f"--conf models: unknown model(s) {unknown}; this app serves {MODEL_NAME!r}")
        model_dir = os.path.join(app_dir, "model")
        found = sorted(f for f in os.listdir(model_dir) if f.startswith(MODEL_NAME)) if os.path.isdir(model_dir) else []
        self.weights = conf.get("weights") or (os.path.join(model_dir, found[0]) if found else None)
        self.device = conf.get("device", "cpu")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="LKC-FUNet multimodal image fusion",
            description="Fuses an MRI with CT/PET/SPECT (two images, or one with two channels) into one image",
            version=monailabel.__version__,
        )

    def infer(self, request: dict, datastore=None) -> dict:
        """Resolve the second image's ID (``params={"other": ID}``) in the datastore, then run the task. An unknown
        ``image`` ID is refused here too: the datastore gives ``""`` for it, which the task read as the server's
        working folder (a DICOM series lying there was fused without a word). A request the task cannot serve
        because of what it asks is answered with HTTP 422 and the one-line reason (see :func:`client_error`)."""
        try:
            for key in ("image", "other"):
                given = request.get(key)
                if not isinstance(given, str) or not given or os.path.exists(given):
                    continue
                uri = (datastore or self.datastore()).get_image_uri(given)
                if not uri or not os.path.exists(uri):
                    raise ValueError(f"{key}={given!r}: no such image ID in the studies folder")
                if key == "other":  # MONAI Label resolves "image" itself
                    request = {**request, "other": uri}
            return super().infer(request, datastore)
        except Exception as err:
            client = client_error(err)
            if client is None:
                raise
            raise client from err

    def init_infers(self) -> dict[str, InferTask]:
        task = FusionInferTask(weights=self.weights, device=self.device)
        logger.info(f"+++ Adding Inferer:: {MODEL_NAME} => {task} (weights: {self.weights or 'package default'})")
        return {MODEL_NAME: task}

    def init_trainers(self) -> dict:
        return {}

    def init_strategies(self) -> dict:
        return {}

    def init_scoring_methods(self) -> dict:
        return {}


def client_error(err: Exception) -> Exception | None:
    """The HTTP 422 answer (FastAPI's ``HTTPException``, whose ``detail`` the client and Slicer show) for an error
    the request caused: a ``ValueError`` of the app's checks or a ``FusionInputError``, also inside MONAI's
    wrappers; MONAI Label answered them with a bare "Internal Server Error" (500) and the reason only in the
    server's log. ``None`` for other errors (and outside a server, without FastAPI): they stay as they are.

    Args:
        err: the error raised while serving a request.

    Returns:
        The exception to raise instead, or ``None``.
    """
    from monai_lkcfusion.errors import one_line, user_error

    user = err if isinstance(err, ValueError) else user_error(err)
    if user is None:
        return None
    try:
        from fastapi import HTTPException
    except ImportError:
        return None
    return HTTPException(status_code=422, detail=one_line(user))
