"""A wheel built from the checkout, installed (not editable) in a new virtual environment and run from an empty
folder: the default weights, the CLI, the Python API, ``lkcfusion bundle DEST`` and ``python -m monai.bundle run``
on DEST, which uses DEST's own ``models/model.pt``.

The new environment has no packages of its own but the wheel; the others (torch, monai, ...) come from the
environment running the tests through a ``.pth`` line, which adds their folder without running its ``.pth`` files,
so the checkout's editable install stays out. Skipped when the wheel cannot be built or installed here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_lkcfusion.data import demo_files
from monai_lkcfusion.networks import LKCFUNet, save_network

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "monai_lkcfusion", "bundle")
"""What the build reads; copied so that the build leaves nothing in the checkout."""


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with the wheel installed; returns its ``bin`` folder."""
    root = tmp_path_factory.mktemp("wheel")
    (root / "src").mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, root / "src" / name, ignore=shutil.ignore_patterns("__pycache__", "eval"))
        else:
            shutil.copy(REPO / name, root / "src" / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                  "-w", str(root / "dist"), str(root / "src")], root, env)
    if build.returncode != 0:
        pytest.skip(f"cannot build the wheel here: {build.stderr.strip().splitlines()[-1:]}")
    wheel = next((root / "dist").glob("monai_lkcfusion-*.whl"))
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], root, env)
    if made.returncode != 0:
        pytest.skip(f"cannot make a virtual environment: {made.stderr.strip()}")
    python = root / "venv" / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, env)
    parent = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib.stdout.strip(), "parent_env.pth").write_text("\n".join(sorted(parent)) + "\n")
    # --ignore-installed: the parent environment's (editable) monai-lkcfusion must not count as installed
    install = _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
                   root, env)
    if install.returncode != 0:
        pytest.skip(f"cannot install the wheel: {install.stderr.strip().splitlines()[-1:]}")
    return python.parent


@pytest.fixture
def env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1"}


def _check(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_installed_wheel_runs_outside_the_checkout(venv: Path, env: dict[str, str], tmp_path: Path) -> None:
    work = tmp_path / "empty"
    work.mkdir()
    demo = demo_files()
    shutil.copy(demo["mri_2d"], work / "a.png")
    shutil.copy(demo["pet_2d"], work / "b.png")
    python, lkcfusion = str(venv / "python"), str(venv / "lkcfusion")

    # the Python API with the default weights, from the installed package
    api = _check(_run([python, "-c", (
        "import monai_lkcfusion, numpy as np; from PIL import Image; from monai_lkcfusion import fuse;"
        "from monai_lkcfusion.networks import default_weights_path as w;"
        "f = fuse(np.asarray(Image.open('a.png')) / 255.0, np.asarray(Image.open('b.png').convert('L')) / 255.0);"
        "print(monai_lkcfusion.__file__); print(w()); print(w().is_file(), tuple(f.shape))"
    )], work, env))
    package, weights, result = api.strip().splitlines()[-3:]
    assert package.startswith(str(venv.parent)) and weights.startswith(str(venv.parent)), api
    assert result.startswith("True") and str(REPO) not in api

    _check(_run([lkcfusion, "fuse", "a.png", "b.png", "-o", "f.png"], work, env))
    assert Image.open(work / "f.png").size == Image.open(work / "a.png").size
    _check(_run([lkcfusion, "demo", "-o", "demo"], work, env))
    assert (work / "demo" / "fused_2d.png").is_file() and (work / "demo" / "fused_3d.nii.gz").is_file()

    _check(_run([lkcfusion, "bundle", "dest"], work, env))
    refused = _run([lkcfusion, "bundle", "dest"], work, env)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr and refused.stderr.count("\n") == 1

    # the relocated bundle, run from another folder, with its own weights; then with other weights put there
    dest, elsewhere = work / "dest", tmp_path / "elsewhere"
    elsewhere.mkdir()
    configs = dest / "configs"
    bundle_run = [python, "-m", "monai.bundle", "run", "--config_file", str(configs / "inference.json"),
                  "--meta_file", str(configs / "metadata.json"), "--logging_file", str(configs / "logging.conf"),
                  "--dataset", "$@datalist[:1]"]  # the 2D demo pair only, for time
    _check(_run(bundle_run, elsewhere, env))
    shipped = np.asarray(Image.open(dest / "eval" / "fused_mri_slice.png"))
    save_network(LKCFUNet.from_preset("tiny"), dest / "models" / "model.pt")
    _check(_run([*bundle_run, "--output_dir", str(dest / "eval_tiny")], elsewhere, env))
    tiny = np.asarray(Image.open(dest / "eval_tiny" / "fused_mri_slice.png"))
    assert shipped.shape == tiny.shape and np.abs(shipped.astype(float) - tiny).mean() > 1
    assert not any(elsewhere.iterdir())
