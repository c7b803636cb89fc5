"""The 3D Slicer module's logic (plain Python, no Slicer): Slicer-ordered arrays + IJK-to-RAS in, fused volume out."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.networks import LKCFUNet, save_network

MODULE = Path(__file__).resolve().parents[1] / "slicer" / "LKCFusion"
sys.path.insert(0, str(MODULE))

from LKCFusionLib import fuse_volume_arrays  # noqa: E402


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_network(LKCFUNet.from_preset("tiny"), tmp_path_factory.mktemp("w") / "tiny.pt")


def _volumes() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An MRI (K, J, I) = (5, 24, 20) and a 'CT' of the same anatomy on a grid with half the in-plane resolution."""
    k, j, i = np.mgrid[0:5, 0:24, 0:20].astype(np.float32)
    mri = 100 + 80 * np.sin(i / 3) * np.cos(j / 4)
    mri_to_ras = np.array([[-0.8, 0, 0, 10], [0, -0.8, 0, 20], [0, 0, 3.0, -6], [0, 0, 0, 1]])
    ct_full = 1000.0 * (np.hypot(i - 10, j - 12) < 6)
    ct = np.ascontiguousarray(ct_full[:, ::2, ::2])
    ct_to_ras = mri_to_ras @ np.diag([2.0, 2.0, 1.0, 1.0])
    return mri, mri_to_ras, ct, ct_to_ras


def test_fused_volume_lies_on_the_mri_grid(tiny_weights):
    mri, mri_to_ras, ct, ct_to_ras = _volumes()
    fused = fuse_volume_arrays(mri, mri_to_ras, ct, ct_to_ras, weights=tiny_weights, device="cpu")
    assert fused.shape == mri.shape and fused.dtype == np.float32
    assert np.isfinite(fused).all() and 0 <= fused.min() and fused.max() <= 1


@pytest.mark.parametrize("ct_step", [1, 2])
def test_geometry_and_axis_order_with_max_baseline(ct_step):
    """A bright, asymmetric box in the CT must land on the same MRI voxels (K, J, I), on the same or a coarser grid."""
    mri, mri_to_ras, _, _ = _volumes()
    mri = np.full_like(mri, 50.0)  # featureless, so the max fusion shows the CT
    ct_full = np.full(mri.shape, -1000.0, dtype=np.float32)
    ct_full[:, 4:12, 6:10] = 1000.0  # J 4..11, I 6..9 in every slice
    ct = np.ascontiguousarray(ct_full[:, ::ct_step, ::ct_step])
    ct_to_ras = mri_to_ras @ np.diag([ct_step, ct_step, 1.0, 1.0])
    fused = fuse_volume_arrays(mri, mri_to_ras, ct, ct_to_ras, method="max", device="cpu")
    assert fused.shape == mri.shape
    inside, outside = fused[:, 5:11, 7:9], np.delete(fused, np.s_[2:14], axis=1)
    assert inside.min() > outside.max() + 0.1, (inside.min(), outside.max())


def test_rejects_vector_volumes_and_bad_matrices(tiny_weights):
    mri, mri_to_ras, ct, ct_to_ras = _volumes()
    with pytest.raises(FusionInputError, match="scalar volume"):
        fuse_volume_arrays(np.stack([mri] * 3, -1), mri_to_ras, ct, ct_to_ras, weights=tiny_weights)
    with pytest.raises(FusionInputError, match="4x4"):
        fuse_volume_arrays(mri, mri_to_ras[:3], ct, ct_to_ras, weights=tiny_weights)


def test_slicer_module_file_is_valid_python():
    source = MODULE / "LKCFusion.py"
    compile(source.read_text(), str(source), "exec")
    for name in ("LKCFusion(ScriptedLoadableModule)", "LKCFusionWidget(ScriptedLoadableModuleWidget)",
                 "LKCFusionLogic(ScriptedLoadableModuleLogic)", "LKCFusionTest(ScriptedLoadableModuleTest)"):
        assert f"class {name}" in source.read_text()
    assert (MODULE / "Resources" / "Icons" / "LKCFusion.png").is_file()


def test_repeated_runs_reuse_the_loaded_network(tmp_path, monkeypatch):
    """Each Run click fuses with the network loaded (and optimised) by the first one, until the weights change."""
    import monai_lkcfusion.networks as networks

    weights = save_network(LKCFUNet.from_preset("tiny"), tmp_path / "fresh.pt")
    loads, optimised = [], []
    real_load, real_optimize = networks.load_network, networks.optimize_for_inference
    monkeypatch.setattr(networks, "load_network", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    monkeypatch.setattr(networks, "optimize_for_inference",
                        lambda *a, **k: optimised.append(1) or real_optimize(*a, **k))
    mri, mri_to_ras, ct, ct_to_ras = _volumes()
    runs = [fuse_volume_arrays(mri, mri_to_ras, ct, ct_to_ras, weights=weights, device="cpu") for _ in range(3)]
    assert len(loads) == 1 and len(optimised) == 1 and all(np.array_equal(runs[0], r) for r in runs[1:])
    save_network(LKCFUNet.from_preset("tiny"), weights)  # new weights in the same file: loaded again
    fuse_volume_arrays(mri, mri_to_ras, ct, ct_to_ras, weights=weights, device="cpu")
    assert len(loads) == 2
