"""File-to-file fusion as an Ignite engine: the bundle's inference workflow over a folder of pairs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine

from ..errors import FusionInputError

__all__ = ["FileFusionEngine", "fusion_pairs"]

_OTHER_FOLDERS = ("CT", "PET", "SPECT", "other")


def fusion_pairs(dataset_dir: str | Path) -> list[dict[str, str]]:
    """List the (MRI, other) pairs of a folder for inference.

    Recognised layouts, in order: a ``datalist.json`` (section ``"test"``, MONAI decathlon style); an ``MRI/``
    folder beside one of ``CT/``, ``PET/``, ``SPECT/``, ``other/`` (paired by file name); the package's demo folder.

    Args:
        dataset_dir: the folder.

    Returns:
        Dicts with ``"mri"`` and ``"other"`` paths.

    Raises:
        FusionInputError: no recognised layout, or no pair found.
    """
    from ..data import load_fusion_datalist, pair_files_by_name
    from ..data.samples import DEMO_DIR, demo_files

    root = Path(dataset_dir)
    if (root / "datalist.json").is_file():
        items = load_fusion_datalist(root / "datalist.json", section="test")
    elif (root / "MRI").is_dir() and any((root / name).is_dir() for name in _OTHER_FOLDERS):
        other = next(root / name for name in _OTHER_FOLDERS if (root / name).is_dir())
        pairs, _ = pair_files_by_name(root / "MRI", other)
        items = [{"mri": str(m), "other": str(o)} for m, o in pairs]
    elif root.resolve() == DEMO_DIR.resolve():
        files = demo_files()
        items = [{"mri": str(files[f"mri_{d}"]), "other": str(files[f"pet_{d}"])} for d in ("2d", "3d")]
    else:
        raise FusionInputError(
            f"{root}: expected datalist.json or MRI/ beside one of {', '.join(_OTHER_FOLDERS)}/ (paired by name)"
        )
    if not items:
        raise FusionInputError(f"{root}: no (MRI, other) pairs found")
    return items


def _output_name(mri: str | Path, suffix: str | None) -> str:
    """``fused_<mri name>`` keeping the MRI's extension unless ``suffix`` is given."""
    from ..data import image_stem

    path = Path(mri)
    ext = suffix if suffix is not None else path.name[len(image_stem(path)) :] or ".nii.gz"
    return f"fused_{image_stem(path)}{ext}"


class FileFusionEngine(Engine):
    """Fuse every pair of a datalist with :func:`monai_lkcfusion.inference.fuse_files` and save the results.

    Each iteration reads one pair, resamples the other modality onto the MRI grid, fuses slice by slice (3D) or
    whole (2D), restores a colour image's chroma and writes ``output_dir/fused_<mri name>`` on the MRI's geometry.
    ``engine.state.output`` is the written path. A pair that cannot be fused (unreadable, mismatched, no overlap,
    unwritable) is logged and skipped; :meth:`run` fuses the others and then raises one error listing the failures.

    Args:
        datalist: dicts with ``"mri"`` and ``"other"`` paths.
        predictor: ``(B, 2, H, W) -> (B, 1, H, W)`` in [0, 1], e.g. from
            :func:`monai_lkcfusion.inference.build_predictor`.
        output_dir: where fused images are written (replacing earlier results of the same name).
        output_suffix: output extension (e.g. ``".nii.gz"``); default the MRI's own.
        fuse_kwargs: further arguments of :func:`~monai_lkcfusion.inference.fuse`.
    """

    def __init__(
        self,
        datalist: Sequence[dict[str, Any]],
        predictor: Callable[[torch.Tensor], torch.Tensor],
        output_dir: str | Path,
        output_suffix: str | None = None,
        fuse_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(self._fuse_one)
        self.datalist = list(datalist)
        self.predictor = predictor
        self.output_dir = Path(output_dir)
        self.output_suffix = output_suffix
        self.fuse_kwargs = dict(fuse_kwargs or {})
        self.failures: list[str] = []

    def _fuse_one(self, engine: Engine, item: dict[str, Any]) -> Path | None:
        from ..inference import fuse_files

        target = self.output_dir / _output_name(item["mri"], self.output_suffix)
        try:
            return fuse_files(
                item["mri"], item["other"], target, overwrite=True, model=self.predictor, progress=False,
                **self.fuse_kwargs,
            )
        except (FusionInputError, OSError) as err:  # report the bad pair and go on with the others
            self.failures.append(" ".join(str(err).split()))
            self.logger.error(self.failures[-1])
            return None

    def run(self) -> Any:  # type: ignore[override]
        """Fuse the whole datalist once.

        Returns:
            The engine state.

        Raises:
            FusionInputError: after the run, when some pairs failed (the others are written).
        """
        self.failures = []
        self.output_dir.mkdir(parents=True, exist_ok=True)
        state = super().run(self.datalist, max_epochs=1)
        if self.failures:
            raise FusionInputError(
                f"{len(self.failures)} of {len(self.datalist)} pairs failed (the others were written): "
                + "; ".join(self.failures)
            )
        return state
