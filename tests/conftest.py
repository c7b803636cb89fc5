"""Shared fixtures: the Harvard data in ../shared (skipped cleanly when absent) and small synthetic pairs."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

# measured-choice caches (monai_lkcfusion.networks.calibration) of this test run, never the user's own; set before
# anything is imported so that subprocesses (CLI, bundle runs) inherit it, and removed when the run ends
_RUN_CACHE = None if "LKCFUSION_CACHE_DIR" in os.environ else tempfile.mkdtemp(prefix="lkcfusion-test-cache-")
if _RUN_CACHE is not None:
    os.environ["LKCFUSION_CACHE_DIR"] = _RUN_CACHE
# the temporary folder of subprocesses (torchrun leaves a torchelastic_* folder in it per run), removed with the run's
_RUN_TEMP = tempfile.mkdtemp(prefix="lkcfusion-test-tmp-")
os.environ["TMPDIR"] = _RUN_TEMP  # this process has read its own temporary folder already (mkdtemp above)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove this run's cache and temporary folders (every run left them in the temporary folder)."""
    for folder in (_RUN_CACHE, _RUN_TEMP):
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LKCFUSION_SHARED", REPO.parent / "shared"))
HARVARD = SHARED / "data" / "harvard_xg"
GOLDEN = SHARED / "golden" / "fusion_metrics.json"


@pytest.fixture(scope="session")
def harvard_root() -> Path:
    """Root of ``harvard_xg`` (``train/`` and ``test/``); skips the test when ../shared is not beside the repo."""
    if not HARVARD.is_dir():
        pytest.skip(f"Harvard data not found at {HARVARD}")
    return HARVARD


@pytest.fixture(scope="session")
def golden_path() -> Path:
    """The literature evaluator's reference values; skips when ../shared is absent."""
    if not GOLDEN.is_file():
        pytest.skip(f"golden metrics not found at {GOLDEN}")
    return GOLDEN


@pytest.fixture
def synthetic_pair() -> tuple[np.ndarray, np.ndarray]:
    """A made-up registered 2D pair in [0, 1], 61x47: an 'MRI' with soft texture and a 'CT'-like bright ring."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:61, 0:47].astype(np.float32)
    r = np.hypot(yy - 30, xx - 23)
    mri = np.clip(0.5 + 0.3 * np.sin(xx / 3.0) * np.cos(yy / 4.0) * (r < 20) + 0.05 * rng.standard_normal(r.shape), 0, 1)
    other = ((r > 17) & (r < 21)).astype(np.float32) * 0.9
    return mri.astype(np.float32), other.astype(np.float32)


@pytest.fixture
def process_ends():
    """``process_ends(pid, timeout=20)``: whether the process ends (is gone, or a zombie waiting for its new parent)
    within ``timeout`` seconds (Linux ``/proc``)."""
    import time

    def running(pid: int) -> bool:
        try:
            return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return False

    def ends(pid: int, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        return not running(pid)

    return ends
