"""Slicer-independent parts of the LKCFusion module (importable and testable without 3D Slicer).

- :mod:`.process`: the background fusion process (``python -m monai_lkcfusion.apps.worker``) over pipes.
- :mod:`.dependencies`: the pip calls that install ``monai-lkcfusion`` without changing Slicer's packages.
"""

from .dependencies import InstallPlan, install_plan
from .process import FusionProcess

__all__ = ["FusionProcess", "InstallPlan", "install_plan"]
