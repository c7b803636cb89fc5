"""The demo images shipped with the package (made by :mod:`monai_lkcfusion.data.make_demo`)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEMO_DIR", "DEMO_FILES", "demo_files"]

DEMO_DIR = Path(__file__).resolve().parent / "demo"
#: key -> file name in :data:`DEMO_DIR`
DEMO_FILES = {"mri_3d": "mri_t1.nii.gz", "pet_3d": "pet_sim.nii.gz", "mri_2d": "mri_slice.png", "pet_2d": "pet_slice.png"}


def demo_files() -> dict[str, Path]:
    """Paths of the shipped demo images: keys ``mri_3d``, ``pet_3d``, ``mri_2d``, ``pet_2d``.

    Returns:
        ``{key: path}`` for the keys of :data:`DEMO_FILES`.

    Raises:
        FileNotFoundError: the demo folder is incomplete (regenerate it with
            ``python -m monai_lkcfusion.data.make_demo``).
    """
    files = {key: DEMO_DIR / name for key, name in DEMO_FILES.items()}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"demo data missing: {', '.join(missing)}; run python -m monai_lkcfusion.data.make_demo")
    return files
