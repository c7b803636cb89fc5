"""Fuse two volumes given as Slicer hands them over: voxel arrays in (K, J, I) order and IJK-to-RAS matrices.

Plain Python on top of :func:`monai_lkcfusion.inference.fuse`; 3D Slicer is not needed to import or test it.
"""

from __future__ import annotations

from os import PathLike

import numpy as np
import torch
from monai.data import MetaTensor

from monai_lkcfusion.errors import FusionInputError

__all__ = ["fuse_volume_arrays"]


def _as_image(array_kji: np.ndarray, ijk_to_ras: np.ndarray, name: str) -> MetaTensor:
    """(K, J, I) array + 4x4 IJK-to-RAS -> channel-first (1, I, J, K) MetaTensor with that affine (MONAI's RAS)."""
    array_kji = np.asarray(array_kji)
    ijk_to_ras = np.asarray(ijk_to_ras, dtype=np.float64)
    if array_kji.ndim != 3:
        raise FusionInputError(f"{name}: expected a scalar volume (K, J, I), got an array of shape {array_kji.shape}")
    if ijk_to_ras.shape != (4, 4):
        raise FusionInputError(f"{name}: expected a 4x4 IJK-to-RAS matrix, got shape {ijk_to_ras.shape}")
    voxels = torch.from_numpy(np.ascontiguousarray(array_kji.transpose(2, 1, 0), dtype=np.float32))
    return MetaTensor(voxels[None], affine=torch.from_numpy(ijk_to_ras), meta={"filename_or_obj": name})


def fuse_volume_arrays(
    mri_kji: np.ndarray,
    mri_ijk_to_ras: np.ndarray,
    other_kji: np.ndarray,
    other_ijk_to_ras: np.ndarray,
    weights: str | PathLike | None = None,
    device: str | None = None,
    method: str = "lkcfunet",
) -> np.ndarray:
    """Fuse an MRI volume with a CT/PET/SPECT volume; the result lies on the MRI's voxel grid.

    The other volume is resampled onto the MRI grid using both IJK-to-RAS matrices (so it may have another
    size, spacing or orientation), then the pair is fused slice by slice by LKC-FUNet.

    Args:
        mri_kji: MRI voxels, (K, J, I) as ``slicer.util.arrayFromVolume`` returns them.
        mri_ijk_to_ras: the MRI's 4x4 IJK-to-RAS matrix (``GetIJKToRASMatrix``).
        other_kji: the other modality's voxels, (K', J', I').
        other_ijk_to_ras: its 4x4 IJK-to-RAS matrix.
        weights: network weights file; ``None`` uses the package default (the bundle's model).
        device: ``"cpu"``, ``"cuda"``, ...; ``None`` picks CUDA when available.
        method: ``"lkcfunet"`` (the network) or a baseline for comparison: ``"max"``, ``"mean"``, ``"dwt"``,
            ``"laplacian"``.

    Returns:
        The fused volume, float32 (K, J, I) on the MRI grid, values in [0, 1]; give it the MRI's IJK-to-RAS.

    Raises:
        FusionInputError: an array is not 3D or a matrix is not 4x4 (and what ``fuse`` raises for unusable
            inputs).
    """
    from monai_lkcfusion.inference import fuse

    mri = _as_image(mri_kji, mri_ijk_to_ras, "MRI volume")
    other = _as_image(other_kji, other_ijk_to_ras, "other volume")
    fused = fuse(mri, other, method=method, weights=weights, device=device, progress=False)  # (1, I, J, K)
    voxels = fused.detach().cpu().numpy() if isinstance(fused, torch.Tensor) else np.asarray(fused)
    return np.ascontiguousarray(voxels[0].transpose(2, 1, 0), dtype=np.float32)
