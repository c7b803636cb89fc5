"""Classical baselines: definitions of max/mean, perfect reconstruction of the multi-scale rules, shapes, types."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_lkcfusion.baselines import BASELINE_METHODS, fuse_baseline
from monai_lkcfusion.errors import FusionInputError


def test_max_and_mean(synthetic_pair):
    mri, other = synthetic_pair
    assert np.array_equal(fuse_baseline(mri, other, "max"), np.maximum(mri, other))
    assert np.allclose(fuse_baseline(mri, other, "mean"), (mri + other) / 2)


@pytest.mark.parametrize("method", BASELINE_METHODS)
@pytest.mark.parametrize("shape", [(61, 47), (3, 250, 230), (2, 1, 33, 64), (1, 5)])
def test_shape_type_range_and_identity(method, shape):
    rng = np.random.default_rng(1)
    x = rng.random(shape, dtype=np.float32)
    y = rng.random(shape, dtype=np.float32)
    fused = fuse_baseline(x, y, method)
    assert isinstance(fused, np.ndarray) and fused.shape == shape and fused.dtype == np.float32
    assert fused.min() >= 0 and fused.max() <= 1
    assert np.allclose(fuse_baseline(x, x, method), x, atol=1e-5)  # fusing an image with itself returns it
    tensor = fuse_baseline(torch.from_numpy(x), torch.from_numpy(y), method)
    assert isinstance(tensor, torch.Tensor) and np.allclose(tensor.numpy(), fused, atol=1e-6)


@pytest.mark.parametrize("method", ["dwt", "laplacian"])
def test_multiscale_keeps_both_edges(method, synthetic_pair):
    """Sharp structures of either source survive better than in the mean (max-abs detail selection)."""
    mri, other = synthetic_pair
    fused = fuse_baseline(mri, other, method)
    def grad(img):
        return np.abs(np.diff(img, axis=0)).mean() + np.abs(np.diff(img, axis=1)).mean()
    assert grad(fused) > grad(fuse_baseline(mri, other, "mean"))
    ring = other > 0.5
    assert fused[ring].mean() > (mri[ring].mean() + 0.9) / 2 - 0.1


def test_errors():
    with pytest.raises(FusionInputError, match="unknown fusion method"):
        fuse_baseline(np.zeros((4, 4)), np.zeros((4, 4)), "pca")
    with pytest.raises(FusionInputError, match="one shape"):
        fuse_baseline(np.zeros((4, 4)), np.zeros((4, 5)), "max")
