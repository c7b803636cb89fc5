"""Modality-aware intensity scaling to [0, 1] with non-finite voxels masked."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends
from monai.utils.type_conversion import convert_to_dst_type

from ..errors import FusionInputError

__all__ = [
    "CT_WINDOW",
    "NEGATIVE_NOISE",
    "PERCENTILES",
    "ScaleModality",
    "ScaleModalityD",
    "ScaleModalityDict",
    "ScaleModalityd",
    "known_modality",
    "looks_like_ct",
    "normalize_modality",
    "scale_to_unit",
]

#: default CT window in Hounsfield units (a wide bone window: brain ~0.27, cortical bone -> 1)
CT_WINDOW: tuple[float, float] = (-500.0, 1500.0)
#: default robust percentiles for MR, PET and SPECT
PERCENTILES: tuple[float, float] = (0.5, 99.5)
#: a negative low percentile within this share of the percentile range is noise about 0: 0 is kept as black
NEGATIVE_NOISE = 0.05
_ALIASES = {"MRI": "MR", "MR": "MR", "CT": "CT", "PT": "PET", "PET": "PET", "NM": "SPECT", "SPECT": "SPECT"}


def normalize_modality(modality: str | None) -> str | None:
    """Map DICOM codes and common names to ``"MR"``, ``"CT"``, ``"PET"`` or ``"SPECT"`` (``None`` stays ``None``).

    Args:
        modality: ``MR``/``MRI``, ``CT``, ``PT``/``PET``, ``NM``/``SPECT`` (any case, surrounding spaces ignored), or
            ``None``.

    Returns:
        the canonical name, or ``None`` for ``None``.

    Raises:
        FusionInputError: an unknown modality name.
    """
    if modality is None:
        return None
    key = str(modality).strip().upper()
    if key not in _ALIASES:
        raise FusionInputError(f"unknown modality '{modality}'; use MR, CT, PET or SPECT")
    return _ALIASES[key]


def scale_to_unit(
    img: torch.Tensor,
    modality: str | None = None,
    display_max: float | None = None,
    ct_window: Sequence[float] = CT_WINDOW,
    percentiles: Sequence[float] = PERCENTILES,
    name: str = "image",
) -> tuple[torch.Tensor, dict[str, object]]:
    """Scale raw intensities to [0, 1] by modality; NaN/Inf voxels become 0 and are counted.

    Rules, in order: 8-bit pictures (``display_max == 255``) are divided by 255 (they are already windowed for
    display) and in-memory data already in [0, 1] (``display_max == 1``) is kept; CT (given, or detected when
    ``modality`` is ``None``: see :func:`looks_like_ct`) uses ``ct_window`` in HU; everything else (MR, PET,
    SPECT, 16-bit and float data) maps the ``percentiles`` of the finite voxels to [0, 1] and clips (when they are
    equal, e.g. a PET masked to a small region, the full range instead, warned; a constant image becomes 0, warned;
    a negative low percentile within :data:`NEGATIVE_NOISE` of the range, of an MR, PET or SPECT image or of one
    with at least 5% of its voxels exactly 0, is noise about 0, so 0 is mapped to 0 and stays background: a z-scored
    MRI, whose background lies far below 0, keeps its low percentile). Pass
    ``"MR"`` for an MRI: it is then never CT-windowed, whatever its values (a few negative voxels, signed data).

    Args:
        img: raw ``(C, *spatial)`` image.
        modality: ``"MR"``, ``"CT"``, ``"PET"``, ``"SPECT"`` (or a DICOM code) or ``None`` to decide from the data.
        display_max: the display maximum: 255 for 8-bit pictures, 1 for data already in [0, 1], else ``None``.
        ct_window: ``(low, high)`` HU window for CT.
        percentiles: ``(low, high)`` percentiles for the other modalities.
        name: name used in error messages (the file).

    Returns:
        The scaled float32 image and a record with ``intensity_scaling`` (what was done), ``nonfinite_voxels`` and,
        when known (given, or CT detected), ``modality``.

    Raises:
        FusionInputError: no finite voxel at all.
    """
    data = img.detach().to(torch.float32)
    finite = torch.isfinite(data)
    nonfinite = data.numel() - int(finite.sum())
    if nonfinite == data.numel():
        raise FusionInputError(f"{name}: no finite voxel (all NaN/Inf)")
    values = data[finite] if nonfinite else data.reshape(-1)  # a view when every voxel is finite: no copy
    modality = normalize_modality(modality)
    if display_max in (1.0, 255.0):
        low, high, rule = 0.0, display_max, f"display range / {display_max:g}"
    elif modality == "CT" or modality is None and looks_like_ct(values):
        low, high = float(ct_window[0]), float(ct_window[1])
        rule = f"CT window [{low:g}, {high:g}] HU" + ("" if modality else " (detected: air at -1000 HU)")
        modality = "CT"
    else:
        # in float64: NumPy interpolates float32 percentiles in float32, which overflows for spans past 3.4e38; the
        # float64 copy is partitioned in place (a second copy of a 512^2 x 450 CT took 0.9 GB more)
        low, high = (float(v) for v in np.percentile(values.cpu().numpy().astype(np.float64), list(percentiles),
                                                      overwrite_input=True))
        rule = f"{modality or 'auto'} percentiles {percentiles[0]:g}-{percentiles[1]:g} = [{low:.6g}, {high:.6g}]"
        zero_background = modality in ("MR", "PET", "SPECT") or float((values == 0).float().mean()) >= 0.05
        if low < 0.0 < high and -low <= NEGATIVE_NOISE * (high - low) and zero_background:
            # MR magnitude, PET and SPECT are never negative: a few small negative voxels are reconstruction or
            # interpolation noise about 0, and their percentile would lift 0 (the background) above black. Of
            # unknown modality only with a zero background (5% of the voxels exactly 0): a CT cropped to tissue,
            # fat at -100 HU, is real signal below 0
            low, rule = 0.0, f"{rule}, negatives taken as noise about 0: [0, {high:.6g}]"
        if high <= low:  # most voxels share one value (a masked PET, a constant image): no window to scale by
            low, high = float(values.min()), float(values.max())
            if high > low:
                rule = f"{modality or 'auto'} full range [{low:.6g}, {high:.6g}] (percentiles equal)"
                warnings.warn(f"{name}: its {percentiles[0]:g}-{percentiles[1]:g} percentiles are equal (most voxels "
                              f"share one value); scaled by its full range [{low:.6g}, {high:.6g}] instead",
                              stacklevel=2)
            else:
                warnings.warn(f"{name}: constant image (every voxel {low:.6g}): no contrast, taken as 0", stacklevel=2)
    span = max(high - low, 1e-12)
    # a span past float32's range (values near +-3.4e38) would become Inf in float32 and give NaN: divide in float64
    wide = data.double() if span > torch.finfo(torch.float32).max else data
    scaled = (wide - low).div_(span).clamp_(0.0, 1.0).to(torch.float32)  # one new volume, not four
    if nonfinite:
        scaled.masked_fill_(~finite, 0.0)
    record: dict[str, object] = {"intensity_scaling": rule, "nonfinite_voxels": nonfinite}
    if modality is not None:  # MONAI's collate cannot batch None
        record["modality"] = modality
    return scaled, record


def looks_like_ct(values: torch.Tensor) -> bool:
    """Whether finite raw values look like a CT in Hounsfield units, for images of unknown modality.

    A CT holds air at about -1000 HU around and inside the body: at least 1% of the voxels lie in [-1100, -900]
    HU, no value is below -3100 HU (the lowest air-like padding value scanners use, -3024) other than the 16-bit
    minimum -32768 (padding outside the reconstruction circle, ignored) and none above 32767 (16-bit). A few
    negative voxels (an MRI's interpolation undershoot), signed MR data, or float data of other units do not
    qualify.

    Args:
        values: the finite voxel values.

    Returns:
        ``True`` when the values look like HU.
    """
    padding = values == -32768.0
    if bool(padding.any()):  # copied only then: the selection took 1 of the 2 s this check took on a 512^2 x 400 CT
        values = values[~padding]
    if values.numel() == 0:
        return False
    low, high = torch.aminmax(values)  # one pass
    if float(low) < -3100.0 or float(high) > 32767.0:
        return False
    air = ((values >= -1100.0) & (values <= -900.0)).float().mean()
    return float(air) >= 0.01


def known_modality(modality: object) -> str | None:
    """A file's modality (e.g. DICOM ``Modality``) when the scaling knows it (MR, CT, PT, NM, ...), else ``None``.

    Unlike :func:`normalize_modality` this never raises: a DICOM ``"OT"`` (other) is left for the data to decide.

    Args:
        modality: any value (``None``, a DICOM code, a name); compared as an upper-case string without spaces around.

    Returns:
        ``"MR"``, ``"CT"``, ``"PET"`` or ``"SPECT"``, or ``None`` for anything else.
    """
    key = str(modality).strip().upper()
    return _ALIASES.get(key)


class ScaleModality(Transform):
    """Array transform over :func:`scale_to_unit`: modality-aware scaling of one image to [0, 1].

    The modality is, in order: the one given to the call, the one given here, the image's own (``meta["modality"]``,
    e.g. from DICOM, when it is one the scaling knows), ``fallback``, else decided from the data. ``display_max``
    comes from the image's meta (set by the readers). The record (``intensity_scaling``, ``nonfinite_voxels``,
    ``modality``) is written into the result's meta and NaN/Inf voxels are reported with a warning.

    Args:
        modality: default modality (``"MR"``, ``"CT"``, ``"PET"``, ``"SPECT"`` or a DICOM code).
        ct_window: HU window for CT.
        percentiles: robust percentiles for MR/PET/SPECT.
        fallback: modality used when neither the call, ``modality`` nor the file name one (``"MR"`` for the
            MRI, which must never be CT-windowed by detection); ``None`` decides from the data.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        modality: str | None = None,
        ct_window: Sequence[float] = CT_WINDOW,
        percentiles: Sequence[float] = PERCENTILES,
        fallback: str | None = None,
    ) -> None:
        self.modality = modality
        self.ct_window = ct_window
        self.percentiles = percentiles
        self.fallback = fallback

    def __call__(self, img: torch.Tensor, modality: str | None = None, fallback: str | None = None) -> torch.Tensor:
        """Scale ``(C, *spatial)`` to float32 [0, 1], keeping a MetaTensor's metadata and history.

        Args:
            img: the raw image.
            modality: its modality, overriding the one given at construction and the file's.
            fallback: overrides the ``fallback`` given at construction.

        Returns:
            the scaled image ``(C, *spatial)``, float32, with the scaling record in its meta.
        """
        meta = img.meta if isinstance(img, MetaTensor) else {}
        name = str(meta.get("filename_or_obj", "image"))
        scaled, record = scale_to_unit(
            torch.as_tensor(img),
            modality=modality or self.modality or known_modality(meta.get("modality")) or fallback or self.fallback,
            display_max=meta.get("display_max"),
            ct_window=self.ct_window,
            percentiles=self.percentiles,
            name=name,
        )
        if record["nonfinite_voxels"]:
            warnings.warn(f"{name}: {record['nonfinite_voxels']} NaN/Inf voxels set to 0 before fusion", stacklevel=2)
        out = convert_to_dst_type(scaled, img, dtype=torch.float32)[0]
        if isinstance(out, MetaTensor):
            out.meta.update(record)
            out.meta.pop("display_max", None)  # the input's range, not this one's: [0, 1] data is kept as it is
        return out


class ScaleModalityd(MapTransform):
    """Dict wrapper of :class:`ScaleModality`.

    Args:
        keys: image keys, usually ``("mri", "other")``.
        modality: modality per key (a mapping) or one for all; ``None`` uses the file's (DICOM) or ``fallback``.
        ct_window: HU window for CT.
        percentiles: robust percentiles for MR/PET/SPECT.
        fallback: modality per key when neither ``modality`` nor the file gives one; default ``{"mri": "MR"}``:
            the MRI is scaled as MR (never CT-windowed because of its values), the other image is detected.
        allow_missing_keys: don't raise when a key is absent.
    """

    backend = ScaleModality.backend

    def __init__(
        self,
        keys: KeysCollection,
        modality: str | Mapping[Hashable, str | None] | None = None,
        ct_window: Sequence[float] = CT_WINDOW,
        percentiles: Sequence[float] = PERCENTILES,
        fallback: Mapping[Hashable, str | None] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modality = modality
        self.fallback = dict(fallback) if fallback is not None else {"mri": "MR"}
        self.scaler = ScaleModality(ct_window=ct_window, percentiles=percentiles)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            modality = self.modality.get(key) if isinstance(self.modality, Mapping) else self.modality
            d[key] = self.scaler(d[key], modality, self.fallback.get(key))
        return d


ScaleModalityD = ScaleModalityDict = ScaleModalityd
