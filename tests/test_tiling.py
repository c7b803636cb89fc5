"""Tiles and small slices with predictors that are not pixel-wise (the pixel-wise 'max' hides padding and blending)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from monai_lkcfusion import FusionInferer, fuse


def _blur(x: torch.Tensor) -> torch.Tensor:
    """3x3 mean of the pair's average, replicated border: (B, 2, H, W) -> (B, 1, H, W)."""
    return F.avg_pool2d(F.pad((x[:, :1] + x[:, 1:]) / 2, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def _blur_np(x: np.ndarray) -> np.ndarray:
    padded = np.pad(x, 1, mode="edge")
    return sum(padded[i:i + x.shape[0], j:j + x.shape[1]] for i in range(3) for j in range(3)) / 9


def test_a_slice_smaller_than_the_network_minimum_is_padded_by_replication():
    """A 5x5 slice is padded (replicate, bottom/right) to the network's smallest input, 2 x its stride = 8, and
    cropped back: the result is the predictor's output on the replicated 8x8 slice, cropped."""
    rng = np.random.default_rng(0)
    mri, other = (rng.random((5, 5), dtype=np.float32) * 0.8 + 0.1 for _ in range(2))
    seen = []

    def blur(x):  # zero border: a network's own padding, so the replicated rows and columns change the result
        seen.append(tuple(x.shape[-2:]))
        return F.avg_pool2d((x[:, :1] + x[:, 1:]) / 2, 3, stride=1, padding=1, count_include_pad=True)

    def blur_np(x):
        padded = np.pad(x, 1)
        return sum(padded[i:i + x.shape[0], j:j + x.shape[1]] for i in range(3) for j in range(3)) / 9

    fused = np.asarray(fuse(mri, other, model=blur, progress=False))
    grown = np.pad((mri + other) / 2, ((0, 3), (0, 3)), mode="edge")
    assert seen == [(8, 8)] and np.allclose(fused, blur_np(grown)[:5, :5], atol=1e-6)


def test_inferer_tiles_blend_to_the_whole_pass_away_from_the_image_border():
    """FusionInferer with tile_size 32 on a 70 x 50 pair, overlap 0.25 and 0.5: Gaussian-weighted overlapping
    tiles agree with the whole pass except for small differences on the seams."""
    rng = np.random.default_rng(1)
    pair = torch.from_numpy(rng.random((1, 2, 70, 50), dtype=np.float32) * 0.8 + 0.1)
    whole = FusionInferer(progress=False, workers=1)(pair, _blur)
    assert torch.allclose(whole[0, 0], torch.from_numpy(_blur_np(pair[0].mean(0).numpy())), atol=1e-6)
    for overlap in (0.25, 0.5):
        tiled = FusionInferer(tile_size=32, overlap=overlap, progress=False, workers=1)(pair, _blur)
        inside = (tiled - whole).abs()[0, 0, 3:-3, 3:-3]
        assert tiled.shape == whole.shape and float(inside.mean()) < 5e-4, overlap
        assert float((inside > 1e-2).float().mean()) < 0.01, overlap
