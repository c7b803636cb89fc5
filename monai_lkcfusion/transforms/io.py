"""Loading fusion inputs (paths, arrays, tensors) as MetaTensors and saving fused images atomically."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends
from monai.utils.type_conversion import convert_to_dst_type

from ..data.io import (
    ROWS_COLUMNS_SWAPPED,
    check_output_path,
    check_voxel_values,
    composite_on_black,
    fit_float32,
    read_image,
    write_image,
)
from ..data.pairing import output_name
from ..errors import FusionInputError, as_flag

__all__ = [
    "UNIT_TOLERANCE",
    "LoadFusionImage",
    "LoadFusionImageD",
    "LoadFusionImageDict",
    "LoadFusionImaged",
    "SaveFused",
    "SaveFusedD",
    "SaveFusedDict",
    "SaveFusedd",
]

ImageLike = str | Path | np.ndarray | torch.Tensor

#: in-memory float data within [-UNIT_TOLERANCE, 1 + UNIT_TOLERANCE] is taken as already in [0, 1] (and clipped)
UNIT_TOLERANCE = 1e-3


class LoadFusionImage(Transform):
    """Any fusion input as a channel-first float32 MetaTensor of raw values with ``spatial_dims``/``display_max``.

    - a path: :func:`monai_lkcfusion.data.io.read_image` (pictures ``(1|3, H, W)`` in display row/column order,
      unlike MONAI's ``LoadImage`` which transposes PIL images; volumes ``(1|3, X, Y, Z)`` with a RAS affine;
      DICOM series folders);
    - a NumPy array: ``(H, W)`` gray, ``(H, W, 3|4)`` colour picture (alpha composited on black; warned unless
      ``uint8``, as it may be a volume of 3 or 4 slices: pass those as a ``(1, X, Y, Z)`` tensor) or ``(X, Y, Z)``;
    - a tensor/MetaTensor ``(1|3, *spatial)``, its metadata kept; a picture read by MONAI's ``LoadImage``
      (``PILReader``: ``(C, W, H)`` float32 by default) gets the file's 8-bit (16-bit) ``display_max`` while its values
      are the file's, and ``meta["rows_columns_swapped"]`` (:data:`~monai_lkcfusion.data.io.ROWS_COLUMNS_SWAPPED`:
      true unless it is ``(C, H, W)`` of a non-square picture, read with ``reverse_indexing=False``; a square
      picture is taken as read with MONAI's default, set the key to ``False`` to say otherwise), so it is fused as
      its file is.

    ``display_max`` is 255 for ``uint8`` arrays and tensors and 1 for data already in [0, 1] (within
    :data:`UNIT_TOLERANCE`: a -1e-7 rounding undershoot switched such data to percentile scaling, moving it by up to
    48 gray levels; see :class:`ScaleModality`); otherwise it is absent. A MetaTensor's own record is kept unless
    its values contradict it, which is warned: a picture's record (255, 65535) holds for whole values from 0 to it,
    a record of 1 for values from 0 to 1; otherwise (``read_image(p) / 255``, a bicubic resize, MONAI's
    ``NormalizeIntensity`` or ``ScaleIntensity``: divided by 255 again they fused nearly black; a scaled image times
    255 under a record of 1 saturated) the values are scaled as data without a record; a dark 8-bit picture of 0s
    and 1s keeps its record.

    Args:
        name: name used in error messages and as ``filename_or_obj`` of in-memory data.
        allow_irregular_slices: read DICOM series with missing, duplicated or unevenly spaced slices (reported),
            see :func:`~monai_lkcfusion.data.io.read_image`.
        allow_external_data: let detached headers name data files outside their folder.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, name: str = "image", allow_irregular_slices: bool = False,
                 allow_external_data: bool = False) -> None:
        self.name = name
        self.allow_irregular_slices = allow_irregular_slices
        self.allow_external_data = allow_external_data

    def __call__(self, value: ImageLike, series: str | None = None) -> MetaTensor:
        """Load ``value``; ``series`` picks a SeriesInstanceUID in a DICOM folder with several series.

        Raises:
            FusionInputError: unreadable file, unsupported type or shape.
        """
        if isinstance(value, (str, Path)):
            return read_image(value, series=series, allow_irregular_slices=self.allow_irregular_slices,
                              allow_external_data=self.allow_external_data)
        if isinstance(value, (np.ndarray, torch.Tensor)):
            kind = value.dtype.kind if isinstance(value, np.ndarray) else "c" if value.is_complex() else "f"
            check_voxel_values(kind, tuple(value.shape), self.name)
        if isinstance(value, np.ndarray):
            array = value
            if array.ndim == 3 and array.shape[-1] in (3, 4):  # (H, W, 3|4) colour picture
                if value.dtype != np.uint8:  # pictures come as uint8; this may be a volume of 3 or 4 slices
                    warnings.warn(
                        f"{self.name}: a {value.dtype} array of shape {tuple(value.shape)} is read as a colour picture "
                        f"(H, W, {value.shape[-1]}); for a volume of {value.shape[-1]} slices pass a (1, X, Y, Z) "
                        "tensor or a NIfTI file",
                        stacklevel=2,
                    )
                if array.shape[-1] == 4:
                    array = composite_on_black(array.astype(np.float32), 255.0 if value.dtype == np.uint8 else None,
                                               self.name)
                array = np.moveaxis(array, -1, 0)
            else:
                array = array[None]
            display_max = 255.0 if value.dtype == np.uint8 else None
            tensor = torch.as_tensor(np.ascontiguousarray(fit_float32(array, self.name)))
        elif isinstance(value, torch.Tensor):
            tensor, display_max = value, 255.0 if value.dtype == torch.uint8 else None
            if value.is_floating_point() and value.dtype.itemsize > 4:  # float64 beyond float32: scale, not Inf
                fitted = torch.as_tensor(fit_float32(value.detach().cpu().numpy(), self.name))
                tensor = convert_to_dst_type(fitted, value)[0] if isinstance(value, MetaTensor) else fitted
        else:
            raise FusionInputError(
                f"{self.name}: unsupported input type {type(value).__name__}; give a path, array or tensor"
            )
        if isinstance(value, MetaTensor) and _channel_not_first(value):
            raise FusionInputError(
                f"{self.name}: shape {tuple(value.shape)} has no channel first (MONAI's LoadImage gives it with "
                "ensure_channel_first=True, or apply EnsureChannelFirst)"
            )
        if tensor.ndim not in (3, 4) or tensor.shape[0] not in (1, 3):
            raise FusionInputError(
                f"{self.name}: shape {tuple(value.shape)}; need (H, W), (H, W, 3), (X, Y, Z) arrays or "
                "(1|3, *spatial) tensors"
            )
        img = tensor.detach().cpu() if isinstance(tensor, MetaTensor) else MetaTensor(tensor.detach().cpu())
        img = img.float()
        finite = img.as_tensor()[torch.isfinite(img.as_tensor())]
        if isinstance(value, MetaTensor) and img.ndim == 3 and _read_by_pil_reader(img.meta):
            display_max = display_max or _pil_display_max(str(img.meta["mode"]), finite)
            img.meta.setdefault(ROWS_COLUMNS_SWAPPED, _pil_rows_columns_swapped(img))
        if display_max is None and finite.numel() and float(finite.min()) >= -UNIT_TOLERANCE \
                and float(finite.max()) <= 1.0 + UNIT_TOLERANCE:  # [0, 1] up to rounding and interpolation undershoot
            display_max = 1.0
        img.meta.setdefault("filename_or_obj", self.name)
        img.meta.setdefault("spatial_dims", img.ndim - 1)
        img.meta.setdefault("has_geometry", isinstance(value, MetaTensor))  # an array's identity affine is no place
        recorded = img.meta.get("display_max")
        if recorded is not None and finite.numel():  # a record that outlived the values it described
            low, top, whole = float(finite.min()), float(finite.max()), bool(torch.equal(finite, finite.round()))
            if not (-UNIT_TOLERANCE <= low and top <= float(recorded) * (1 + UNIT_TOLERANCE)
                    and (whole or float(recorded) == 1.0)):  # a picture's record holds for its whole values only
                img.meta.pop("display_max")
                warnings.warn(f"{img.meta['filename_or_obj']}: its values ({low:g} to {top:g}"
                              f"{'' if whole else ', not whole numbers'}) do not fit the display_max "
                              f"{float(recorded):g} its metadata records: the record is dropped and the values "
                              f"{'taken as scaled to [0, 1]' if display_max == 1.0 else 'scaled from the data'}",
                              stacklevel=2)
        if display_max is not None:  # unknown stays absent: MONAI's collate cannot batch None
            img.meta.setdefault("display_max", display_max)
        return img


def _channel_not_first(img: MetaTensor) -> bool:
    """Whether a MetaTensor from MONAI's readers lacks its leading channel: its shape is the ``spatial_shape`` they
    record, without a channel or with it last (``LoadImage`` without ``ensure_channel_first``)."""
    spatial = img.meta.get("spatial_shape")
    if spatial is None:
        return False
    spatial = tuple(int(s) for s in np.asarray(spatial).flatten())
    last = img.meta.get("original_channel_dim") == -1  # a colour picture's channel, last as read
    return tuple(img.shape) == spatial or (last and tuple(img.shape[:-1]) == spatial)


def _read_by_pil_reader(meta: Mapping[str, object]) -> bool:
    """Whether ``meta`` is what MONAI's ``PILReader`` records for a picture (``LoadImage`` of a PNG, JPEG, ...)."""
    return all(key in meta for key in ("format", "mode", "width", "height"))


def _pil_display_max(mode: str, values: torch.Tensor) -> float | None:
    """The display range of a picture of PIL ``mode`` that MONAI's ``PILReader`` gave as float32 (``read_image``'s
    record of the file: 255 for 8-bit modes, 65535 for 16-bit ones), when ``values`` are still the file's whole
    numbers; ``None`` otherwise (e.g. after MONAI's ``ScaleIntensity``)."""
    top = 255.0 if mode in ("L", "LA", "RGB", "RGBA") else 65535.0 if mode.startswith("I;16") else None
    if top is None or not values.numel():
        return None
    fits = float(values.min()) >= 0 and float(values.max()) <= top and bool(torch.equal(values, values.round()))
    return top if fits else None


def _pil_rows_columns_swapped(img: MetaTensor) -> bool:
    """Whether a picture read by MONAI's ``PILReader`` is ``(C, W, H)``: its default ``reverse_indexing=True``. Only
    ``(C, H, W)`` of a non-square picture shows ``reverse_indexing=False``; a square one is taken as MONAI's default
    (set ``meta["rows_columns_swapped"]`` to say otherwise)."""
    height, width = int(img.meta["height"]), int(img.meta["width"])
    return not (tuple(img.shape[1:]) == (height, width) and height != width)


class LoadFusionImaged(MapTransform):
    """Dict wrapper of :class:`LoadFusionImage`; the key is the name of in-memory data.

    Args:
        keys: keys holding paths, arrays or tensors, usually ``("mri", "other")``.
        series: SeriesInstanceUID per key for DICOM folders with several series.
        allow_irregular_slices: read DICOM series with missing, duplicated or unevenly spaced slices (reported).
        allow_external_data: let detached headers name data files outside their folder.
        allow_missing_keys: don't raise when a key is absent.
    """

    backend = LoadFusionImage.backend

    def __init__(
        self,
        keys: KeysCollection,
        series: Mapping[Hashable, str | None] | None = None,
        allow_irregular_slices: bool = False,
        allow_external_data: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.series = dict(series or {})
        self.allow_irregular_slices = allow_irregular_slices
        self.allow_external_data = allow_external_data

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            loader = LoadFusionImage(str(key), self.allow_irregular_slices, self.allow_external_data)
            d[key] = loader(d[key], series=self.series.get(key))
        return d


class SaveFused(Transform):
    """Write a fused image atomically as ``output_dir/<prefix><name><suffix>``, named after its input.

    ``<name>`` is the stem of ``meta["filename_or_obj"]`` (the MRI, whose metadata the fused image carries), the
    extension the MRI's own when it is writable, else ``.nii.gz`` (see
    :func:`~monai_lkcfusion.data.pairing.output_name`). Pictures, NIfTI, NRRD and MHA are written by
    :func:`monai_lkcfusion.data.io.write_image` (temporary file + rename, so a failed write never leaves a partial
    file); the written path is recorded as ``meta["saved_to"]``.

    Two inputs of one run that map to one output name (``a/mri.png`` and ``b/mri.png``, or ``t1.png`` and
    ``t1.nii.gz`` with one ``output_suffix``) never replace each other: the second is refused with a message
    naming both (see :meth:`claim`; :meth:`reset` starts a new run). The output is never the input file itself.

    Args:
        output_dir: output folder (created when missing).
        output_suffix: output extension, e.g. ``".nii.gz"``; default the input's own.
        output_prefix: put before the name (``"fused_"`` for the bundle, ``""`` for ``lkcfusion fuse --mri-dir``).
        overwrite: replace an existing file of the same name from an earlier run (otherwise that is a
            :class:`FusionInputError`).
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        output_dir: str | Path,
        output_suffix: str | None = None,
        output_prefix: str = "fused_",
        overwrite: bool = False,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.output_suffix = output_suffix
        self.output_prefix = output_prefix
        self.overwrite = as_flag(overwrite, "overwrite")
        self.claimed: dict[Path, str] = {}

    def output_path(self, source: str | Path) -> Path:
        """The path written for an input named ``source``.

        Args:
            source: the input's file name or path (the MRI's ``filename_or_obj``).

        Returns:
            ``output_dir/<prefix><stem><suffix>`` (see :func:`~monai_lkcfusion.data.pairing.output_name`); nothing
            is checked or reserved.
        """
        return self.output_dir / output_name(source, self.output_prefix, self.output_suffix)

    def reset(self) -> None:
        """Forget the outputs of the previous run (a new run may replace them, given ``overwrite``)."""
        self.claimed = {}

    def check(self, source: str | Path) -> Path:
        """What :meth:`claim` checks, without reserving the output (before the work of a pair that may still fail).

        Args:
            source: the input's file name or path.

        Returns:
            The output path.

        Raises:
            FusionInputError: as :meth:`claim`; a collision with another input of this run is named as such (it was
                "output exists; pass --overwrite" when the other input's output had been written already).
        """
        target = self.output_path(source)
        key = target.resolve()
        if key in self.claimed and self.claimed[key] != str(source):
            raise FusionInputError(
                f"{source}: its output {target.name} is also the output of {self.claimed[key]} in this run; rename "
                "one of them (inputs of one name in different folders, or one name with two extensions, collide)"
            )
        check_output_path(target, self.overwrite or key in self.claimed, inputs=(source,))
        return target

    def claim(self, source: str | Path) -> Path:
        """Reserve the output of ``source`` for this run, checked before any work. The record is this object's
        (one process): savers copied into ``DataLoader`` workers do not see each other's outputs, so write in the
        main process (the package's pipelines save in their post-processing there).

        Args:
            source: the input's file name or path.

        Returns:
            The output path.

        Raises:
            FusionInputError: another input of this run has that output name, the output is the input itself, it
                exists without ``overwrite``, or it cannot be written in that format.
        """
        target = self.check(source)
        self.claimed[target.resolve()] = str(source)
        return target

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Write ``img`` (``(1|3, *spatial)`` in [0, 1] on the MRI's geometry) and return it."""
        meta = img.meta if isinstance(img, MetaTensor) else {}
        source = meta.get("filename_or_obj", "fused")
        target = self.claim(source)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_image(img, target, overwrite=self.overwrite)
        if isinstance(img, MetaTensor):
            img.meta["saved_to"] = str(target)
        return img


class SaveFusedd(MapTransform):
    """Dict wrapper of :class:`SaveFused` (usually for ``"pred"``, named after the MRI whose metadata it carries).

    Args:
        keys: keys of the images to write.
        output_dir: output folder.
        output_suffix: output extension; default the input's own.
        output_prefix: put before the name.
        overwrite: replace existing files.
        allow_missing_keys: don't raise when a key is absent.
    """

    backend = SaveFused.backend

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | Path,
        output_suffix: str | None = None,
        output_prefix: str = "fused_",
        overwrite: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.saver = SaveFused(output_dir, output_suffix, output_prefix, overwrite)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.saver(d[key])
        return d


LoadFusionImageD = LoadFusionImageDict = LoadFusionImaged
SaveFusedD = SaveFusedDict = SaveFusedd
