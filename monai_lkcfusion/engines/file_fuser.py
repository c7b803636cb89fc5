"""File-to-file fusion as an Ignite engine: the bundle's inference workflow (and ``lkcfusion fuse --mri-dir``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from monai.data import Dataset
from monai.inferers import Inferer

from ..data.io import check_output_path
from ..data.pairing import check_distinct_pair
from ..errors import FusionInputError
from ..inferers import FusionInferer
from ..transforms.io import SaveFused
from ..transforms.pipelines import fusion_preprocessing
from ..transforms.post import describe_fusion
from .distributed import all_gather_objects, is_main_process

__all__ = ["FileFusionEngine", "fusion_pairs"]

_OTHER_FOLDERS = ("CT", "PET", "SPECT", "other")


def fusion_pairs(dataset_dir: str | Path) -> list[dict[str, str]]:
    """List the (MRI, other) pairs of a folder for inference.

    Recognised layouts, in order: a datalist JSON file given itself, or a ``datalist.json`` in the folder (section
    ``"test"``, MONAI decathlon style); an ``MRI/``
    folder beside one of ``CT/``, ``PET/``, ``SPECT/``, ``other/`` (paired by file name; two of them are refused as
    ambiguous); the package's demo folder.
    A file of the two folders without a partner is listed too, as ``{"unpaired": "<file>: no partner in <folder>"}``,
    which :class:`FileFusionEngine` reports as a failed pair (as ``lkcfusion fuse --mri-dir`` does), never skips.

    Args:
        dataset_dir: the folder, or a datalist JSON file.

    Returns:
        Dicts with ``"mri"`` and ``"other"`` paths (and ``"unpaired"`` ones after them).

    Raises:
        FusionInputError: no recognised layout, two second-modality folders, or no pair found.
    """
    from ..data import load_fusion_datalist
    from ..data.pairing import pair_files_by_name
    from ..data.samples import DEMO_DIR, demo_files

    root = Path(dataset_dir)
    if root.is_file() and root.suffix.lower() == ".json":  # the datalist itself
        items = load_fusion_datalist(root, section="test")
    elif (root / "datalist.json").is_file():
        items = load_fusion_datalist(root / "datalist.json", section="test")
    elif (root / "MRI").is_dir() and any((root / name).is_dir() for name in _OTHER_FOLDERS):
        found = [name for name in _OTHER_FOLDERS if (root / name).is_dir()]
        if len(found) > 1:  # which one the user means is not ours to guess
            raise FusionInputError(
                f"{root}: MRI/ beside {', '.join(f'{name}/' for name in found)}: keep one second-modality folder per "
                "dataset_dir (or list the pairs in datalist.json)"
            )
        other = root / found[0]
        pairs, unpaired = pair_files_by_name(root / "MRI", other)
        items = [{"mri": str(m), "other": str(o)} for m, o in pairs] + [{"unpaired": text} for text in unpaired]
    elif root.resolve() == DEMO_DIR.resolve():
        files = demo_files()
        items = [{"mri": str(files[f"mri_{d}"]), "other": str(files[f"pet_{d}"])} for d in ("2d", "3d")]
    else:
        raise FusionInputError(
            f"{root}: expected datalist.json or MRI/ beside one of {', '.join(f'{name}/' for name in _OTHER_FOLDERS)} "
            "(paired by name)"
        )
    if not any("mri" in item for item in items):
        raise FusionInputError(f"{root}: no (MRI, other) pairs found")
    return items


class FileFusionEngine(Engine):
    """Fuse every pair of a datalist with the package's inference pipeline and write the results.

    Each iteration runs one pair through ``preprocessing`` (read, scale, other onto the MRI grid, luma split,
    pair), ``inferer`` with ``network`` (slice by slice for volumes) and ``postprocessing`` (clip, background
    mask, chroma back, write), with :func:`monai_lkcfusion.inference.fuse_dict`. The bundle's inference.json
    passes these pieces (``preprocessing`` as the transform of a MONAI ``Dataset``, ``postprocessing`` ending in
    a :class:`~monai_lkcfusion.transforms.SaveFusedd`); without them each pair goes through
    :func:`~monai_lkcfusion.inference.fuse` (the same pieces, built from ``fuse_kwargs``) and is written as
    ``output_dir/<output_prefix><mri name><ext>``. ``engine.state.output`` is the written path, or ``None`` for a
    pair that could not be fused (unreadable, mismatched, no overlap, unwritable, existing output without
    ``overwrite``): it is logged and skipped, and :meth:`run` fuses the others and then raises one error listing
    the failures.

    Args:
        datalist: dicts with ``"mri"`` and ``"other"`` paths, or a MONAI ``Dataset`` of them whose ``transform``
            is the preprocessing (applied pair by pair, so that a bad pair is reported, not fatal).
        network: a network (optimised once, see :func:`monai_lkcfusion.inferers.build_predictor`) or a predictor
            ``(B, 2, H, W) -> (B, 1, H, W)`` in [0, 1].
        output_dir: where fused images are written when ``postprocessing`` is not given.
        output_suffix: output extension (e.g. ``".nii.gz"``); default the MRI's own.
        output_prefix: put before the MRI's name (``"fused_"``; the CLI's batch mode uses ``""``).
        overwrite: replace existing outputs (otherwise an existing output is that pair's failure, found first).
        fuse_kwargs: options of :func:`~monai_lkcfusion.inference.fuse` when the pieces are not given.
        preprocessing: with ``postprocessing``: the ``Dataset``'s transform, else
            :func:`~monai_lkcfusion.transforms.fusion_preprocessing`.
        inferer: with ``postprocessing``: default :class:`~monai_lkcfusion.inferers.FusionInferer`.
        postprocessing: e.g. :func:`~monai_lkcfusion.transforms.fusion_postprocessing` plus a ``SaveFusedd``.

    Raises:
        FusionInputError: neither ``postprocessing`` nor ``output_dir`` is given.
    """

    def __init__(
        self,
        datalist: Sequence[dict[str, Any]] | Dataset,
        network: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
        output_dir: str | Path | None = None,
        output_suffix: str | None = None,
        output_prefix: str = "fused_",
        overwrite: bool = False,
        fuse_kwargs: dict[str, Any] | None = None,
        preprocessing: Callable | None = None,
        inferer: Inferer | None = None,
        postprocessing: Callable | None = None,
    ) -> None:
        super().__init__(self._fuse_one)
        if isinstance(datalist, Dataset):
            datalist, preprocessing = datalist.data, preprocessing or datalist.transform
        if postprocessing is None and output_dir is None:
            raise FusionInputError("FileFusionEngine: give output_dir (or a postprocessing that writes the results)")
        self.datalist = list(datalist)
        self.network = network
        self.pieces = None if postprocessing is None else (
            preprocessing or fusion_preprocessing(), inferer or FusionInferer(), postprocessing
        )
        self.fuse_kwargs = dict(fuse_kwargs or {})
        self.writer = SaveFused(output_dir, output_suffix, output_prefix, overwrite) if output_dir else None
        self.failures: list[str] = []
        self.last_record: str | None = None  # how the last pair was scaled (describe_fusion), for reports

    def _savers(self) -> list[SaveFused]:
        """The writers of this engine: its own, or the ``SaveFusedd`` of the given post-processing."""
        transforms = getattr(self.pieces[2], "transforms", ()) if self.pieces is not None else ()
        return [self.writer] if self.writer is not None else [t.saver for t in transforms if hasattr(t, "saver")]

    def _fuse_one(self, engine: Engine, item: dict[str, Any]) -> Path | None:
        from ..inference import fuse, fuse_dict

        try:
            if "unpaired" in item:  # a file of the dataset folder without a partner (fusion_pairs)
                raise FusionInputError(item["unpaired"])
            if self.pieces is not None:
                check_distinct_pair(item["mri"], item["other"])  # the other path's fuse() checks it itself
                for saver in self._savers():  # before any work: an existing output, a collision in this run
                    saver.check(item["mri"])
                fused = fuse_dict(item, self.network, *self.pieces)["pred"]
                self.last_record = describe_fusion(fused.meta)
                return Path(fused.meta["saved_to"])
            self.writer.claim(item["mri"])  # before any work: an existing output, a collision, the input itself
            check_output_path(self.writer.output_path(item["mri"]), True, inputs=(item["mri"], item["other"]))
            options = {"progress": False, "overwrite": self.writer.overwrite, **self.fuse_kwargs}  # side files too
            fused = fuse(item["mri"], item["other"], model=self.network, **options)
            self.last_record = describe_fusion(fused.meta)
            return Path(self.writer(fused).meta["saved_to"])
        except (FusionInputError, OSError) as err:  # report the bad pair and go on with the others
            self.failures.append(" ".join(str(err).split()))
            self.logger.error(self.failures[-1])
            return None

    def run(self) -> Any:  # type: ignore[override]
        """Fuse the whole datalist once, then log one summary line (``fused N of M pairs``).

        In a distributed run (``multi_gpu_inference.json``: each process got its shard of the pairs) the counts and
        failures of all processes are gathered, and rank 0 alone logs the summary and raises for failed pairs.

        Returns:
            The engine state.

        Raises:
            FusionInputError: before the run, an output folder that holds input images; after the run, when some
                pairs failed (the others are written).
        """
        self.failures = []
        inputs = {Path(item[key]).resolve().parent for item in self.datalist for key in ("mri", "other") if key in item}
        for saver in self._savers():
            if saver.output_dir.resolve() in inputs:  # results would replace inputs or be read as inputs next time
                raise FusionInputError(f"{saver.output_dir}: holds input images of this run; write the results to "
                                       "another folder")
            saver.reset()
        if self.writer is not None:
            self.writer.output_dir.mkdir(parents=True, exist_ok=True)
        state = super().run(self.datalist, max_epochs=1) if self.datalist else self.state
        # one summary for the whole run: in a distributed run each process fused its shard, rank 0 reports all
        counts = all_gather_objects(len(self.datalist))
        failures = [failure for shard in all_gather_objects(self.failures) for failure in shard]
        if not is_main_process():
            return state
        total = sum(counts)
        where = f" on {len(counts)} processes ({' + '.join(map(str, counts))})" if len(counts) > 1 else ""
        self.logger.info(f"fused {total - len(failures)} of {total} pairs{where}")
        if failures:
            written = "none was written" if len(failures) == total else "the others were written"
            raise FusionInputError(f"{len(failures)} of {total} pairs failed ({written}): " + "; ".join(failures))
        return state
