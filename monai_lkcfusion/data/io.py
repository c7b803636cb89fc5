"""Reading and writing fusion inputs and outputs: pictures, NIfTI, NRRD/MHA and DICOM series folders.

Every reader returns a channel-first :class:`~monai.data.MetaTensor` of raw float32 values:

- 2D pictures (PNG, JPEG, BMP, TIFF): ``(C, H, W)`` in row/column order (as the file is displayed), ``C`` 1 for
  gray or 3 for colour; palette images are expanded, alpha is composited on black, RGB images whose three
  channels are equal become gray;
- volumes (NIfTI, NRRD, MHA, DICOM): ``(C, X, Y, Z)`` in voxel-index order with a 4x4 RAS ``affine``
  (ITK's LPS geometry converted as MONAI's ``ITKReader`` does).

Metadata recorded: ``filename_or_obj``, ``modality`` (from DICOM, else ``None``), ``color``, ``display_max``
(255 or 65535 for integer pictures, used by the intensity scaling) and ``spatial_dims``.
Writers choose the format from the extension and write atomically (temporary file + :func:`os.replace`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

from ..errors import FusionInputError
from .atomic import atomic_path

__all__ = [
    "PICTURE_SUFFIXES",
    "VOLUME_SUFFIXES",
    "WRITABLE_SUFFIXES",
    "image_stem",
    "image_suffix",
    "read_image",
    "write_image",
]

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
WRITABLE_SUFFIXES = PICTURE_SUFFIXES + NIFTI_SUFFIXES + (".nrrd", ".mha")
"""Extensions :func:`write_image` writes."""
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def image_suffix(path: str | Path) -> str:
    """The lower-case extension of an image file, with ``.nii.gz`` kept whole (``A.NII.GZ`` -> ``.nii.gz``)."""
    path = Path(path)
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def image_stem(path: str | Path) -> str:
    """The name of an image file without its extension (``a.nii.gz`` -> ``a``); a folder's own name."""
    path = Path(path)
    suffix = image_suffix(path)
    return path.name[: -len(suffix)] if suffix in PICTURE_SUFFIXES + VOLUME_SUFFIXES else path.name


def read_image(path: str | Path, series: str | None = None) -> MetaTensor:
    """Read a picture, a volume or a DICOM series folder as a channel-first MetaTensor of raw values.

    Args:
        path: file (PNG/JPEG/BMP/TIFF, NIfTI, NRRD/NHDR, MHA/MHD, single DICOM file) or a folder of one DICOM series.
        series: SeriesInstanceUID to pick when a DICOM folder holds several series.

    Returns:
        ``(C, H, W)`` for pictures, ``(C, X, Y, Z)`` for volumes, float32, with metadata (see module docstring).

    Raises:
        FusionInputError: missing, empty, unreadable or unsupported file, mixed DICOM series, 4D series.
    """
    path = Path(path)
    if path.is_dir():
        return _read_dicom_series(path, series)
    if not path.exists():
        raise FusionInputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise FusionInputError(f"{path}: empty file")
    suffix = image_suffix(path)
    if suffix in PICTURE_SUFFIXES:
        return _read_picture(path)
    if suffix in NIFTI_SUFFIXES:
        return _read_nifti(path)
    if suffix in ITK_SUFFIXES:
        return _read_itk(path)
    raise FusionInputError(
        f"{path}: unsupported format '{suffix}'; use {', '.join(PICTURE_SUFFIXES + VOLUME_SUFFIXES)} "
        "or a DICOM series folder"
    )


def _meta(path: Path, spatial_dims: int, color: bool, display_max: float | None, modality: str | None) -> dict:
    return {
        "filename_or_obj": str(path),
        "spatial_dims": spatial_dims,
        "color": color,
        "display_max": display_max,
        "modality": modality,
    }


def _read_picture(path: Path) -> MetaTensor:
    """A 2D picture as ``(1|3, H, W)``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if getattr(image, "n_frames", 1) > 1:
                raise FusionInputError(f"{path}: {image.n_frames} frames/pages; save one 2D image per file")
            image.load()
            array, display_max = _picture_array(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, FusionInputError):
            raise
        raise FusionInputError(f"{path}: cannot read image ({' '.join(str(err).split())})") from None
    if array.ndim == 3:
        alpha = array.shape[-1] in (2, 4)
        if alpha:  # composite on black
            array = array[..., :-1] * (array[..., -1:] / display_max if display_max else array[..., -1:])
        if array.shape[-1] == 1 or np.all(array == array[..., :1]):
            array = array[..., 0]
    data = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)  # (C, H, W)
    img = MetaTensor(torch.as_tensor(np.ascontiguousarray(data), dtype=torch.float32), affine=torch.eye(3))
    img.meta.update(_meta(path, 2, data.shape[0] == 3, display_max, None))
    return img


def _picture_array(image) -> tuple[np.ndarray, float | None]:
    """Pixel array ``(H, W)`` or ``(H, W, C)`` and its display maximum for any PIL mode."""
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV", "PA"):
        image = image.convert("RGBA" if mode == "PA" else "L" if mode == "1" else "RGB")
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return array.astype(np.float32), 255.0
    if array.dtype.kind == "u" and array.dtype.itemsize == 2 or mode.startswith("I;16"):
        return array.astype(np.float32), 65535.0
    return array.astype(np.float32), None


def _as_volume(array: np.ndarray, affine: np.ndarray, path: Path, modality: str | None) -> MetaTensor:
    """``(X, Y, Z)`` voxels, or ``(X, Y, Z, 3|4)`` colour vectors, and a RAS affine as a ``(C, X, Y, Z)`` MetaTensor."""
    if array.ndim == 4 and array.shape[-1] in (3, 4):
        data = np.moveaxis(array[..., :3], -1, 0)
    elif array.ndim == 3:
        data = array[None]
    else:
        raise FusionInputError(f"{path}: image of shape {array.shape}; need one 3D volume (gray or RGB)")
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise FusionInputError(f"{path}: invalid geometry (singular or non-finite affine)")
    img = MetaTensor(torch.as_tensor(np.ascontiguousarray(data), dtype=torch.float32), affine=torch.as_tensor(affine))
    img.meta.update(_meta(path, 3, data.shape[0] == 3, None, modality))
    return img


def _read_nifti(path: Path) -> MetaTensor:
    import nibabel as nib

    try:
        nii = nib.load(str(path))
        array = np.asarray(nii.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises many types for damaged files
        raise FusionInputError(f"{path}: cannot read NIfTI ({' '.join(str(err).split())})") from None
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim == 4:
        raise FusionInputError(f"{path}: 4D volume with {array.shape[3]} frames; extract one 3D frame first")
    if array.ndim == 5 and array.shape[3] == 1:
        array = array[:, :, :, 0]  # NIfTI vector image (X, Y, Z, 1, C)
    return _as_volume(array, np.asarray(nii.affine, dtype=np.float64), path, None)


def _itk_affine(image) -> np.ndarray:
    """4x4 RAS affine of a 3D SimpleITK image."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return _LPS_TO_RAS @ affine


def _from_itk(image, path: Path, modality: str | None) -> MetaTensor:
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image).astype(np.float32)  # (Z, Y, X[, C]) or (Y, X[, C])
    if image.GetDimension() == 2:
        data = array[None] if array.ndim == 2 else np.moveaxis(array[..., :3], -1, 0)  # (C, H, W)
        img = MetaTensor(torch.as_tensor(np.ascontiguousarray(data)), affine=torch.eye(3))
        img.meta.update(_meta(path, 2, data.shape[0] == 3, None, modality))
        return img
    if image.GetDimension() != 3:
        raise FusionInputError(f"{path}: {image.GetDimension()}D image; need one 2D image or 3D volume")
    array = np.moveaxis(array, (0, 1, 2), (2, 1, 0)) if array.ndim == 3 else array.transpose(2, 1, 0, 3)
    return _as_volume(array, _itk_affine(image), path, modality)


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Discard what C++ libraries (ITK's MetaIO, GDCM) print on file descriptor 2; their errors still raise."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _read_itk(path: Path) -> MetaTensor:
    import SimpleITK as sitk

    try:
        with _native_stderr_silenced():
            image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise FusionInputError(f"{path}: cannot read image ({' '.join(str(err).split())[:200]})") from None
    modality = image.GetMetaData("0008|0060").strip() if image.HasMetaDataKey("0008|0060") else None
    return _from_itk(image, path, modality or None)


def _read_dicom_series(folder: Path, series: str | None) -> MetaTensor:
    """One DICOM series from a folder (SimpleITK/GDCM sorts the slices by position)."""
    import pydicom
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    with _native_stderr_silenced():  # GDCM prints multi-line warnings for folders without DICOM
        uids = list(reader.GetGDCMSeriesIDs(str(folder)))
    if not uids:
        raise FusionInputError(f"{folder}: folder holds no DICOM series")
    if series is None and len(uids) > 1:
        described = []
        for uid in uids:
            first = reader.GetGDCMSeriesFileNames(str(folder), uid)[0]
            header = pydicom.dcmread(first, stop_before_pixels=True)
            described.append(f"{uid} ('{header.get('SeriesDescription', '')}', {header.get('Modality', '?')})")
        raise FusionInputError(
            f"{folder}: {len(uids)} DICOM series: {'; '.join(described)}; "
            "put one series per folder or choose one with series=<UID> (CLI: --mri-series/--other-series)"
        )
    uid = series if series is not None else uids[0]
    if uid not in uids:
        raise FusionInputError(f"{folder}: no DICOM series {uid}; found {', '.join(uids)}")
    files = reader.GetGDCMSeriesFileNames(str(folder), uid)
    reader.SetFileNames(files)
    try:
        with _native_stderr_silenced():
            image = reader.Execute()
    except RuntimeError as err:
        raise FusionInputError(f"{folder}: cannot read DICOM series ({' '.join(str(err).split())[:200]})") from None
    modality = pydicom.dcmread(files[0], stop_before_pixels=True).get("Modality", None)
    return _from_itk(image, folder, modality or None)


def write_image(
    img: torch.Tensor | np.ndarray,
    path: str | Path,
    overwrite: bool = False,
    affine: torch.Tensor | np.ndarray | None = None,
) -> Path:
    """Write a channel-first image with values in [0, 1]; the extension picks the format.

    Pictures (``.png``, ``.jpg``, ``.bmp``, ``.tif``) take ``(1|3, H, W)`` and are stored as 8-bit gray/RGB.
    Volumes (``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``) take ``(1|3, X, Y, Z)`` and are stored as float32 on
    ``affine`` (default: the MetaTensor's own), colour as a 3-component vector image.

    Args:
        img: ``(C, *spatial)`` image; a MetaTensor carries its affine.
        path: output file.
        overwrite: replace an existing file.
        affine: 4x4 RAS affine for volumes, overriding the MetaTensor's.

    Returns:
        The written path.

    Raises:
        FusionInputError: unsupported extension, a volume to a picture format, wrong channel count, or an
            existing file without ``overwrite``.
    """
    path = Path(path)
    suffix = image_suffix(path)
    if affine is None and isinstance(img, MetaTensor):
        affine = img.affine
    data = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    data = np.asarray(data, dtype=np.float32)
    if data.ndim not in (3, 4) or data.shape[0] not in (1, 3):
        raise FusionInputError(f"{path}: cannot write an image of shape {data.shape}; need (1|3, *spatial)")
    if suffix in PICTURE_SUFFIXES:
        if data.ndim != 3:
            raise FusionInputError(f"{path}: a 3D volume cannot be written as '{suffix}'; use .nii.gz, .nrrd or .mha")
        pixels = np.round(np.clip(np.nan_to_num(data), 0.0, 1.0) * 255.0).astype(np.uint8)
        pixels = pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)
        from PIL import Image

        with atomic_path(path, overwrite) as tmp:
            Image.fromarray(pixels).save(tmp, format=_PIL_FORMATS[suffix])
        return path
    if suffix not in WRITABLE_SUFFIXES:
        raise FusionInputError(f"{path}: unsupported output format '{suffix}'; use .png/.jpg, .nii(.gz), .nrrd or .mha")
    if data.ndim == 3:
        data = data[..., None]  # a 2D image as a one-slice volume
        affine = None
    matrix = np.eye(4) if affine is None else np.asarray(torch.as_tensor(affine).cpu(), dtype=np.float64)
    if matrix.shape != (4, 4):
        matrix = np.eye(4)
    voxels = data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)  # (X, Y, Z[, 3])
    with atomic_path(path, overwrite) as tmp:
        if suffix in NIFTI_SUFFIXES:
            _write_nifti(voxels, matrix, tmp)
        else:
            _write_itk(voxels, matrix, tmp)
    return path


_PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}


def _write_nifti(voxels: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    if voxels.ndim == 4:
        voxels = voxels[:, :, :, None, :]  # NIfTI vector images keep components in the 5th dimension
    nii = nib.Nifti1Image(voxels, affine)
    nii.header.set_qform(affine, code=1)
    nii.header.set_sform(affine, code=1)
    if voxels.ndim == 5:
        nii.header.set_intent("vector")
    nib.save(nii, str(path))


def _write_itk(voxels: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import SimpleITK as sitk

    lps = _LPS_TO_RAS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    array = voxels.transpose(2, 1, 0) if voxels.ndim == 3 else voxels.transpose(2, 1, 0, 3)  # (Z, Y, X[, C])
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=voxels.ndim == 4)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).flatten().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    sitk.WriteImage(image, str(path))
