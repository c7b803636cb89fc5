"""MONAI Label app: LKC-FUNet multimodal image fusion (model ``lkcfusion``), written by ``lkcfusion label-app``.

Start it with ``monailabel start_server --app <this folder> --studies <folder of 2-channel NIfTI volumes>
--conf models lkcfusion``; optional ``--conf device cpu|cuda`` and ``--conf weights <file>`` (default: the
weights copied into ``model/`` when the app was written).
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
    """Serves one inference task, ``lkcfusion``: a 2-channel volume (MRI, other) in, the fused volume out."""

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
            description="Fuses a co-registered MRI (channel 0) with CT/PET/SPECT (channel 1) into one image",
            version=monailabel.__version__,
        )

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
