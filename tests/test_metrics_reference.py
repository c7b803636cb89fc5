"""The fast paths of the batched metrics against straightforward per-image NumPy/SciPy evaluators.

VIF filters by banded matrix products, one axis at a time, SSIM sums integer images in float32, and MI counts
with a table of c log c: each is compared with the literature's way of computing the metric, on images
made here (with black backgrounds, where VIF's 1e-10 thresholds decide) and on Harvard pairs when present.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import uniform_filter
from sklearn.metrics import mutual_info_score

from monai_lkcfusion.metrics import mutual_information, structural_similarity, visual_information_fidelity
from monai_lkcfusion.metrics.folders import read_gray
from monai_lkcfusion.metrics.structural import _box_mean

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from reference_evaluator import ssim as _ssim_reference  # noqa: E402  (the per-image reference, shared)
from reference_evaluator import vif as _vif_reference  # noqa: E402


def _labels(image: np.ndarray) -> np.ndarray:
    """The flattened image as integer labels, one per distinct value (what ``mutual_info_score`` bins by)."""
    return np.unique(image, return_inverse=True)[1].ravel()


def _scan_like(seed: int, size: int = 96) -> np.ndarray:
    """An 8-bit slice-like image: a textured disc on a black background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    inside = (yy - size / 2) ** 2 + (xx - size / 2 - 3 * seed) ** 2 < (size / 3) ** 2
    texture = 110 + 90 * np.sin(xx / (2 + seed)) * np.cos(yy / 4) + rng.normal(0, 15, (size, size))
    return np.where(inside, np.clip(np.round(texture), 0, 255), 0.0)


def _triples(offset: float = 0.0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    triples = []
    for seed in range(3):
        a, b = _scan_like(seed) + offset, _scan_like(seed + 3)
        triples.append((np.maximum(a, b), a, b))
    return triples


def _compare(triples: list[tuple[np.ndarray, np.ndarray, np.ndarray]], rel: float) -> None:
    f, a, b = (torch.from_numpy(np.stack([t[i] for t in triples])[:, None].astype(np.float64)) for i in range(3))
    vif = visual_information_fidelity(f, a, b)
    ssim = {r: structural_similarity(f, a, b, data_range=r) for r in (255.0, 2.0)}
    mi = mutual_information(f, a, b)
    for i, (fi, ai, bi) in enumerate(triples):
        assert float(vif[i]) == pytest.approx(_vif_reference(ai, fi) + _vif_reference(bi, fi), rel=rel)
        for r, values in ssim.items():
            expected = _ssim_reference(fi, ai, r) + _ssim_reference(fi, bi, r)
            assert float(values[i]) == pytest.approx(expected, rel=rel), r
        expected_mi = mutual_info_score(_labels(fi), _labels(ai)) + mutual_info_score(_labels(fi), _labels(bi))
        assert float(mi[i]) == pytest.approx(expected_mi, rel=1e-12)


@pytest.mark.parametrize("offset", [0.0, 0.25])
def test_fast_paths_match_reference_on_made_up_scans(offset):
    """8-bit scans (SSIM's float32 sums, MI's count table) and off-grid values (the general paths)."""
    _compare(_triples(offset), rel=1e-6)


@pytest.mark.shared
def test_fast_paths_match_reference_on_harvard(harvard_root):
    files = sorted((harvard_root / "test").glob("*/MRI/*.png"))[::8]
    if not files:
        pytest.skip("no Harvard test pairs")
    triples = []
    for mri in files:
        other = next(p for p in mri.parent.parent.iterdir() if p.name != "MRI") / mri.name
        a, b = read_gray(mri).astype(np.float64), read_gray(other).astype(np.float64)
        triples.append((np.maximum(a, b), a, b))
    _compare(triples, rel=1e-6)


def test_box_mean_float32_sums_equal_float64_sums():
    """Integer planes take float32 first-pass sums; they round exactly as the float64 sums of the general path."""
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (2, 3, 40, 40)).astype(np.float32))
    planes = torch.cat([images, images * images, images[:, :1] * images[:, 1:]], dim=1)  # (2, 8, 40, 40)
    too_large = torch.full_like(planes[:, :1], 2.0**22)  # float32 sums of 7 would round: the float64 path
    general = _box_mean(torch.cat([planes, too_large], dim=1), 7)[:, :-1]
    assert torch.equal(_box_mean(planes, 7), general)
    expected = np.stack([[uniform_filter(p, 7)[3:-3, 3:-3] for p in batch] for batch in planes.numpy()])
    torch.testing.assert_close(general, torch.from_numpy(expected), rtol=2e-7, atol=0)


def test_odd_sizes():
    """Odd, non-square images (61x67: filter blocks with a tail) keep VIF exact."""
    a, b = _scan_like(0)[:61, :67], _scan_like(4)[:61, :67]
    f = np.maximum(a, b)
    expected = _vif_reference(a, f) + _vif_reference(b, f)
    assert visual_information_fidelity(f, a, b) == pytest.approx(expected, rel=1e-6)


def test_metrics_doc_baseline_table_is_what_the_package_computes(harvard_root):
    """docs/metrics.md's "pixel-wise baselines on the Harvard test set" table, recomputed to its printed precision
    (a hand-check helper found two cells of the pixel-mean row that no rule reproduced)."""
    import re

    from PIL import Image

    from monai_lkcfusion.metrics.functional import compute_fusion_metrics
    from monai_lkcfusion.metrics.utils import luma_bt601

    text = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    section = text.split("## Reference numbers: pixel-wise baselines on the Harvard test set")[1].split("\n\n")[2]
    lines = [line.strip("|").split("|") for line in section.splitlines()]
    header, rows = [cell.strip() for cell in lines[0]], lines[2:]
    assert header[:2] == ["task", "fusion"] and len(rows) == 6
    for row in rows:
        task, fusion, *cells = (cell.strip() for cell in row)
        folder = harvard_root / "test" / task
        names = sorted(path.name for path in (folder / "MRI").glob("*.png"))
        other = next(path for path in folder.iterdir() if path.name != "MRI")
        a, b = (np.stack([luma_bt601(np.asarray(Image.open(d / name).convert("RGB")))[None] for name in names])
                for d in (folder / "MRI", other))
        fused = np.maximum(a, b) if fusion == "max" else np.round((a + b) / 2).astype(np.float32)
        scores = compute_fusion_metrics(fused, a, b, names=header[2:], ssim_data_range=2)
        for name, cell in zip(header[2:], cells):
            decimals = len(cell.split(".")[1])
            mean = float(np.mean(np.asarray(scores[name], dtype=np.float64)))
            assert f"{mean:.{decimals}f}" == cell, (task, fusion, name, mean, cell)
        assert re.fullmatch(r"MRI-(CT|PET|SPECT)", task) and len(names) == 24
