"""Reading and writing fusion inputs and outputs: pictures, NIfTI, NRRD/MHA and DICOM series folders.

Every reader returns a channel-first :class:`~monai.data.MetaTensor` of raw float32 values:

- 2D pictures (PNG, JPEG, BMP, TIFF): ``(C, H, W)`` in row/column order as stored (an EXIF orientation is not
  applied, and is warned about), ``C`` 1 for gray or 3 for colour; palette images are expanded, alpha is
  composited on black, RGB images whose three channels are equal become gray;
- volumes (NIfTI, NRRD, MHA, DICOM): ``(C, X, Y, Z)`` in voxel-index order with a 4x4 RAS ``affine``
  (ITK's LPS geometry converted as MONAI's ``ITKReader`` does).

Metadata recorded: ``filename_or_obj``, ``color``, ``spatial_dims``, and where known ``modality`` (from DICOM) and
``display_max`` (255 or 65535 for integer pictures, used by the intensity scaling); unknown ones are left out.
Writers choose the format from the extension and write atomically (temporary file + :func:`os.replace`).
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from monai.data import MetaTensor

from ..errors import FusionInputError, list_names
from .atomic import atomic_path, check_not_input, check_writable

__all__ = [
    "NOT_IMAGE_SUFFIXES",
    "PICTURE_SUFFIXES",
    "ROWS_COLUMNS_SWAPPED",
    "VOLUME_SUFFIXES",
    "WRITABLE_SUFFIXES",
    "check_data_file_location",
    "check_input_exists",
    "check_dicom_frames",
    "check_dicom_slices",
    "check_output_path",
    "composite_on_black",
    "check_voxel_values",
    "fit_float32",
    "image_spatial_dims",
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
NOT_IMAGE_SUFFIXES = (
    ".txt", ".md", ".rst", ".csv", ".tsv", ".json", ".yaml", ".yml", ".xml", ".html", ".pdf", ".log", ".ini", ".db",
    ".tfm", ".mat", ".py", ".sh", ".zip",
)
"""Extensions of documents that sit beside images (a README, a table of results, a transform file) but are never
one: not entries of a folder of pairs, not slices of a DICOM series folder."""
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def image_suffix(path: str | Path) -> str:
    """The lower-case extension of an image file, with ``.nii.gz`` kept whole (``A.NII.GZ`` -> ``.nii.gz``).

    Args:
        path: a file name or path (the file need not exist).

    Returns:
        the extension with its dot (``".png"``, ``".nii.gz"``), or ``""`` for a name without one.
    """
    path = Path(path)
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _format_suffix(path: Path) -> str:
    """The extension that picks a file's reader: its own, or ``.dcm`` for a DICOM file named without one (scanners
    and PACS exports write ``IM_0001``); recognised by the ``DICM`` marker after the 128-byte preamble."""
    suffix = image_suffix(path)
    if suffix in PICTURE_SUFFIXES + VOLUME_SUFFIXES or not path.is_file():
        return suffix
    with open(path, "rb") as stream:
        return ".dcm" if stream.read(132)[128:] == b"DICM" else suffix


def unsupported_format(path: str | Path) -> str | None:
    """Why a file cannot be read by its format (the readers' message), or ``None`` when a reader takes it.

    Args:
        path: a file (a DICOM file may lack an extension); a folder is a DICOM series, never refused here.

    Returns:
        ``"<path>: unsupported format '<ext>'; use ..."``, or ``None``.
    """
    path = Path(path)
    suffix = _format_suffix(path)
    if not path.is_file() or suffix in PICTURE_SUFFIXES + VOLUME_SUFFIXES:
        return None
    return (f"{path}: unsupported format '{suffix}'; use {', '.join(PICTURE_SUFFIXES + VOLUME_SUFFIXES)} or a DICOM "
            "series folder")


def image_stem(path: str | Path) -> str:
    """The name of an image file without its extension (``a.nii.gz`` -> ``a``); a folder's own name.

    Args:
        path: a file or folder path (it need not exist).

    Returns:
        the name without an image extension (:data:`PICTURE_SUFFIXES` or :data:`VOLUME_SUFFIXES`); any other
        extension (``a.txt``) is kept, and so is the whole name of a folder.
    """
    path = Path(path)
    suffix = image_suffix(path)
    return path.name[: -len(suffix)] if suffix in PICTURE_SUFFIXES + VOLUME_SUFFIXES else path.name


def check_input_exists(path: str | Path) -> Path:
    """An input file (or DICOM folder) that must exist.

    Args:
        path: the input.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        FusionInputError: ``<path>: file not found``.
    """
    path = Path(path)
    if not path.exists():
        raise FusionInputError(f"{path}: file not found")
    return path


def read_image(
    path: str | Path,
    series: str | None = None,
    allow_irregular_slices: bool = False,
    allow_external_data: bool = False,
) -> MetaTensor:
    """Read a picture, a volume or a DICOM series folder as a channel-first MetaTensor of raw values.

    DICOM series are checked slice by slice before they are read (see :func:`check_dicom_slices`): missing,
    duplicated or unevenly spaced slices, and files of the folder that are not readable DICOM, are refused (or,
    with ``allow_irregular_slices``, reported with a warning giving the numbers). Detached headers (``.nhdr``,
    ``.mhd``, or ``.nrrd``/``.mha`` naming a data file) may only name data files inside their own folder.
    Floating-point values beyond the float32 range are divided by a power of two (with a warning), so that they
    are not turned into Inf.

    Args:
        path: file (PNG/JPEG/BMP/TIFF, NIfTI, NRRD/NHDR, MHA/MHD, single DICOM file) or a folder of one DICOM series.
        series: SeriesInstanceUID to pick when a DICOM folder holds several series.
        allow_irregular_slices: read a DICOM series with missing, duplicated or unevenly spaced slices anyway
            (duplicates are dropped; a warning gives the gaps and how far slices are then misplaced).
        allow_external_data: let a detached header name a data file outside its folder.

    Returns:
        ``(C, H, W)`` for pictures, ``(C, X, Y, Z)`` for volumes, float32, with metadata (see module docstring).

    Raises:
        FusionInputError: missing, empty, unreadable, not a regular file or unsupported file, a ``series`` for a
            file, mixed or irregular DICOM series, 4D series, an enhanced multi-frame DICOM whose frames ITK would
            misplace, DICOM without a pixel size or in a transfer syntax that cannot be decoded, a data file outside
            the header's folder.
    """
    path = Path(path)
    if path.is_dir():
        return _read_dicom_series(path, series, allow_irregular_slices)
    check_input_exists(path)
    if series is not None:  # a choice that would be ignored: the user meant another input
        raise FusionInputError(f"{path}: is a file; a series ({series}) is chosen in a DICOM folder of several series")
    if not path.is_file():  # a FIFO or device would block or never end
        raise FusionInputError(f"{path}: not a regular file (a pipe, socket or device); give an image file")
    if path.stat().st_size == 0:
        raise FusionInputError(f"{path}: empty file")
    suffix = _format_suffix(path)
    if suffix in PICTURE_SUFFIXES:
        return _read_picture(path)
    if suffix in NIFTI_SUFFIXES:
        return _read_nifti(path)
    if suffix in ITK_SUFFIXES:
        if not allow_external_data:
            check_data_file_location(path)
        return _read_itk(path, suffix, allow_irregular_slices)
    raise FusionInputError(unsupported_format(path))


def _meta(path: Path, spatial_dims: int, color: bool, display_max: float | None, modality: str | None) -> dict:
    """A reader's metadata; unknown values (``None``) are left out, as MONAI's collate cannot batch them."""
    known = {"display_max": display_max, "modality": modality}
    return {"filename_or_obj": str(path), "spatial_dims": spatial_dims, "color": color,
            **{key: value for key, value in known.items() if value is not None}}


_EXIF_ORIENTATION = 0x0112
"""EXIF tag of the orientation in which viewers show a photo (1: as stored)."""


def _read_picture(path: Path) -> MetaTensor:
    """A 2D picture as ``(1|3, H, W)``."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
    except Image.DecompressionBombError as err:  # PIL's guard: over 2 x Image.MAX_IMAGE_PIXELS
        raise FusionInputError(
            f"{path}: too large to decode ({' '.join(str(err).split()).split(' could be')[0].rstrip(',')}; a guard against "
            "decompression bombs); crop or downsample it first"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise FusionInputError(f"{path}: cannot read image ({' '.join(str(err).split())})") from None
    try:
        with image:
            if getattr(image, "n_frames", 1) > 1:
                raise FusionInputError(f"{path}: {image.n_frames} frames/pages; save one 2D image per file")
            image.load()
            array, display_max = _picture_array(image)
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        if isinstance(err, FusionInputError):
            raise
        raise FusionInputError(f"{path}: cannot read image ({' '.join(str(err).split())})") from None
    if orientation != 1:  # its partner (a PNG, a volume's slice) has no such tag: stored order is the common ground
        warnings.warn(f"{path}: has EXIF orientation {orientation} (photo viewers show it rotated or mirrored); it is "
                      "read in stored pixel order, as ITK and the fusion evaluators read it: save it without the "
                      "tag if the viewer's orientation is the right one", stacklevel=3)
    if array.ndim == 3:
        if array.shape[-1] in (2, 4):  # gray or colour with alpha
            array = composite_on_black(array, display_max, str(path))
        if array.shape[-1] == 1 or np.all(array == array[..., :1]):
            array = array[..., 0]
    data = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)  # (C, H, W)
    img = MetaTensor(torch.as_tensor(np.ascontiguousarray(data), dtype=torch.float32), affine=torch.eye(3))
    img.meta.update(_meta(path, 2, data.shape[0] == 3, display_max, None))
    return img


def composite_on_black(array: np.ndarray, alpha_max: float | None, name: str | None = None) -> np.ndarray:
    """Composite pixels with alpha on black.

    Args:
        array: ``(..., C)`` pixels whose last channel is alpha.
        alpha_max: the alpha of full opacity (255 for 8-bit pictures); ``None`` when alpha is already in [0, 1].
        name: the image's name for a warning when more than 1% of its pixels are partly transparent (they are
            dimmed by their alpha: an overlay saved at 50% opacity reads at half its values); ``None``: no warning.

    Returns:
        ``(..., C - 1)``: the other channels times ``alpha / alpha_max``.
    """
    alpha = array[..., -1:]
    full = alpha_max or 1.0
    partial = float(((alpha > 0) & (alpha < full)).mean()) if alpha.size else 0.0
    if name is not None and partial > 0.01:
        warnings.warn(f"{name}: {partial:.0%} of its pixels are partly transparent; they are composited onto black "
                      "(dimmed by their alpha): save the image without transparency if that is not what it shows",
                      stacklevel=3)
    return array[..., :-1] * (alpha / full)


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
    return fit_float32(array, str(getattr(image, "filename", "image"))), None


_FLOAT32_LIMIT = 1e30  # well inside float32 (3.4e38), so that differences and sums of values stay finite


def check_voxel_values(kind: str, shape: tuple[int, ...], name: str = "image") -> None:
    """Refuse data that has no single real number per voxel, instead of casting it to something else.

    Args:
        kind: the NumPy dtype kind (``"f"``, ``"i"``, ``"u"``, ``"b"``; ``"c"`` complex, ``"O"``, ``"U"``, ``"V"``...).
        shape: the data's shape.
        name: the file or input, for the message.

    Raises:
        FusionInputError: complex values (the imaginary part would be dropped), a non-numeric type, or no voxels.
    """
    if kind == "c":
        raise FusionInputError(f"{name}: complex values; pass a real image, e.g. the magnitude np.abs(image)")
    if kind not in "biuf":
        raise FusionInputError(f"{name}: data type of kind {kind!r} is not numeric; pass integers or floats")
    if 0 in shape:
        raise FusionInputError(f"{name}: empty image (shape {tuple(shape)})")


def fit_float32(array: np.ndarray, name: str = "image") -> np.ndarray:
    """``array`` as float32 without turning finite values into Inf.

    Values whose magnitude exceeds what float32 holds safely (``1e30``; e.g. a float64 PET in Bq with a broken
    scale factor, or ``1e300``) would become Inf and then be set to 0. Instead the whole image is divided by a
    power of two, which leaves its percentile scaling unchanged, and a warning gives the factor.

    Args:
        array: any real array (bool, integers, float16/32/64).
        name: the file, for the warning.

    Returns:
        A new C-contiguous float32 array in ``array``'s index order (never ``array`` itself: a view of another
        library's buffer may be passed).

    Raises:
        FusionInputError: complex, non-numeric or empty data (:func:`check_voxel_values`).
    """
    array = np.asarray(array)
    check_voxel_values(array.dtype.kind, array.shape, name)
    if array.dtype.kind != "f" or array.dtype.itemsize < 4:  # integers and float16: nothing near the limit
        return array.astype(np.float32, order="C")
    finite = np.isfinite(array)  # one byte per voxel; the extremes without a copy of the data
    if not finite.any():
        return array.astype(np.float32, order="C")
    peak = max(abs(float(np.max(array, where=finite, initial=-np.inf))),
               abs(float(np.min(array, where=finite, initial=np.inf))))
    if peak <= _FLOAT32_LIMIT:
        return array.astype(np.float32, order="C")
    exponent = int(np.ceil(np.log2(peak / _FLOAT32_LIMIT)))
    warnings.warn(
        f"{name}: values up to {peak:.3g} exceed the float32 range the pipeline uses; divided by 2^{exponent} "
        "before scaling (percentile scaling is unaffected)",
        stacklevel=2,
    )
    return np.ascontiguousarray(np.ldexp(array, -exponent), dtype=np.float32)


def _as_volume(array: np.ndarray, affine: np.ndarray, path: Path, modality: str | None,
               eight_bit: bool = False) -> MetaTensor:
    """``(X, Y, Z)`` voxels, or ``(X, Y, Z, 3|4)`` colour vectors, and a RAS affine as a ``(C, X, Y, Z)`` MetaTensor.

    An 8-bit colour volume (``eight_bit``: stored as uint8, e.g. an RGB24 NIfTI of a pseudo-coloured PET) is a
    rendered picture: it gets ``display_max`` 255 as 8-bit colour pictures do, so that the intensity scaling keeps
    its colours (percentiles would clip the brightest channel and shift the hue); gray volumes are scaled by
    percentiles whatever their type.
    """
    if array.ndim == 4 and array.shape[-1] in (3, 4):
        data = np.moveaxis(array[..., :3], -1, 0)
    elif array.ndim == 3:
        data = array[None]
    else:
        raise FusionInputError(f"{path}: image of shape {array.shape}; need one 3D volume (gray or RGB)")
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise FusionInputError(f"{path}: invalid geometry (singular or non-finite affine)")
    img = MetaTensor(torch.as_tensor(np.ascontiguousarray(data), dtype=torch.float32), affine=torch.as_tensor(affine))
    colour = data.shape[0] == 3
    img.meta.update(_meta(path, 3, colour, 255.0 if colour and eight_bit else None, modality))
    return img


def _load_nifti(path: Path):
    """The nibabel image of a NIfTI-1/2 file, also when its extension is not lower case (which nibabel misreads)."""
    import gzip

    import nibabel as nib

    if path.name.endswith(image_suffix(path)):
        return nib.load(str(path))
    with (gzip.open if image_suffix(path) == ".nii.gz" else open)(path, "rb") as stream:
        data = stream.read()
    nifti2 = 540 in (int.from_bytes(data[:4], "little"), int.from_bytes(data[:4], "big"))  # sizeof_hdr
    return (nib.Nifti2Image if nifti2 else nib.Nifti1Image).from_bytes(data)


def _read_nifti(path: Path) -> MetaTensor:
    try:
        nii = _load_nifti(path)
        raw = np.asanyarray(nii.dataobj)  # scaled by scl_slope
    except Exception as err:  # nibabel raises many types for damaged files
        raise FusionInputError(f"{path}: cannot read NIfTI ({' '.join(str(err).split())})") from None
    if raw.dtype.names:  # RGB24 / RGBA32 voxels: a colour image, as a NIfTI vector image (X, Y, Z, 1, 3)
        raw = raw.reshape(raw.shape + (1,) * (3 - raw.ndim))
        raw = np.stack([raw[channel] for channel in raw.dtype.names[:3]], axis=-1)[:, :, :, None]
    array = fit_float32(raw, str(path))  # kept in float32's range
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim == 4:
        raise FusionInputError(f"{path}: 4D volume with {array.shape[3]} frames; extract one 3D frame first")
    if array.ndim == 5 and array.shape[3] == 1:
        array = array[:, :, :, 0]  # NIfTI vector image (X, Y, Z, 1, C)
        if array.shape[3] == 1:  # of one component: gray
            array = array[..., 0]
    affine = np.asarray(nii.affine, dtype=np.float64)
    mm = _NIFTI_MM.get(nii.header.get_xyzt_units()[0], 1.0)  # in millimetres, as ITK reads it
    _warn_if_forms_disagree(nii, array.shape[:3], path, mm)
    affine[:3] *= mm
    codes = int(nii.header["qform_code"]), int(nii.header["sform_code"])
    if codes == (0, 0):
        warnings.warn(f"{path}: its header gives no orientation (qform_code and sform_code 0): its voxels are "
                      "placed by their size alone, as nibabel does (ITK and 3D Slicer place them otherwise), and a "
                      "NIfTI result on its grid is written the same way (a .nrrd/.mha result at nibabel's placement); "
                      "set the header's geometry if it is known", stacklevel=4)
    img = _as_volume(array, affine, path, None, raw.dtype == np.uint8)
    img.meta["nifti_dims"] = int(nii.header["dim"][0])  # a 2D file is written back 2D (write_image)
    img.meta["qform_code"], img.meta["sform_code"] = codes  # MONAI's NibabelReader names; kept by write_image
    img.meta["spatial_shape"] = np.asarray(array.shape[:3])  # as NibabelReader records it: unmoved if unchanged
    return img


def _warn_if_forms_disagree(nii, shape: tuple[int, ...], path: Path, mm: float, tolerance_mm: float = 0.1) -> None:
    """Warn when a NIfTI's qform and sform (both set) place the volume differently: readers disagree on it.

    nibabel, MONAI and FSL use the sform (so does this package); ITK, and so 3D Slicer, use the qform.

    Args:
        nii: the loaded NIfTI image.
        shape: its spatial shape ``(X, Y, Z)``.
        path: the file, for the message.
        mm: millimetres per unit of the file (``xyzt_units``).
        tolerance_mm: largest distance between the two placements of a corner voxel that is not reported.
    """
    header = nii.header
    if int(header["qform_code"]) <= 0 or int(header["sform_code"]) <= 0:
        return
    corners = np.array(np.meshgrid(*[(0, max(n - 1, 0)) for n in shape], indexing="ij")).reshape(3, -1)
    corners = np.vstack([corners, np.ones(corners.shape[1])])  # (4, 8) voxel corners, homogeneous
    gap = mm * float(np.linalg.norm(((header.get_qform() - header.get_sform()) @ corners)[:3], axis=0).max())
    if gap > tolerance_mm:
        warnings.warn(f"{path}: its qform and sform place the volume up to {gap:.1f} mm apart; the sform is used (as "
                      "nibabel, MONAI and FSL do), while ITK and 3D Slicer use the qform, so there the result will not "
                      "line up with this file: set both to the right geometry", stacklevel=4)


_NIFTI_MM = {"meter": 1000.0, "micron": 0.001}
"""Millimetres per NIfTI spatial unit other than mm (``xyzt_units``; "unknown" is taken as mm, as ITK does)."""


def _itk_affine(image) -> np.ndarray:
    """4x4 RAS affine of a 3D SimpleITK image."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return _LPS_TO_RAS @ affine


def _from_itk(image, path: Path, modality: str | None) -> MetaTensor:
    import SimpleITK as sitk

    if "complex" in image.GetPixelIDTypeAsString():  # NumPy would see two real components per voxel
        check_voxel_values("c", image.GetSize(), str(path))
    stored = sitk.GetArrayViewFromImage(image)  # (Z, Y, X[, C]) or (Y, X[, C]); a view: `image` outlives it here
    geometry = image
    if image.GetDimension() == 2:  # a one-slice volume with its geometry, as a 2D NIfTI is (world coordinates)
        stored = stored[None]  # (1, Y, X[, C])
        geometry = sitk.JoinSeries(image)  # 3D geometry: the plane's spacing, origin and direction, z 1 mm
    if geometry.GetDimension() != 3:
        raise FusionInputError(f"{path}: {geometry.GetDimension()}D image; need one 2D image or 3D volume")
    # (X, Y, Z[, C]) in one float32 copy: no copy of ITK's buffer and no second one to reorder (a CT of 512^2 x 200
    # read at 1.48 GB peak, 7x its float32 size)
    array = fit_float32(stored.transpose((2, 1, 0) if stored.ndim == 3 else (2, 1, 0, 3)), str(path))
    return _as_volume(array, _itk_affine(geometry), path, modality, stored.dtype == np.uint8)


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


_ITK_IO = {".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO", ".mha": "MetaImageIO", ".mhd": "MetaImageIO",
           ".dcm": "GDCMImageIO"}
"""ITK reader of each extension, named because ITK only recognises the lower-case ones (``.MHA`` is unreadable)."""


def _read_itk(path: Path, suffix: str, allow_irregular: bool = False) -> MetaTensor:
    """A NRRD, MetaImage or DICOM file; a DICOM file is checked first (:func:`_check_dicom_file`)."""
    import SimpleITK as sitk

    rescales = _check_dicom_file(path, allow_irregular) if suffix == ".dcm" else None
    try:
        with _native_stderr_silenced():
            image = sitk.ReadImage(str(path), imageIO=_ITK_IO[suffix])
    except RuntimeError as err:
        raise FusionInputError(f"{path}: cannot read image ({' '.join(str(err).split())[:200]})") from None
    modality = image.GetMetaData("0008|0060").strip() if image.HasMetaDataKey("0008|0060") else None
    img = _from_itk(image, path, modality or None)
    if rescales is not None:  # ITK applied frame 1's slope and intercept to every frame: each frame's own instead
        (slope, intercept), values = rescales[0], img.as_tensor().double()
        slopes, intercepts = torch.tensor(rescales, dtype=torch.float64).T
        scaled = (values - intercept) / slope * slopes + intercepts  # frames along z, in stored order
        img.as_tensor().copy_(torch.from_numpy(fit_float32(scaled.numpy(), str(path))))
    return img


def _check_dicom_file(path: Path, allow_irregular: bool = False) -> list[tuple[float, float]] | None:
    """Check one DICOM file before ITK reads it: a transfer syntax it can decode (:func:`_check_transfer_syntax`),
    an enhanced multi-frame file's frames (:func:`check_dicom_frames`) and a PixelSpacing.

    Args:
        path: the file.
        allow_irregular: read a file without a PixelSpacing above 0 (at ITK's 1 mm) with a warning.

    Returns:
        Each frame's ``(RescaleSlope, RescaleIntercept)`` where they differ from frame to frame, else ``None``.

    Raises:
        FusionInputError: an undecodable transfer syntax, frames ITK would misplace, no PixelSpacing (unless
            ``allow_irregular``).
    """
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # pydicom raises many types for damaged files: ITK's reading then names the problem
        return None
    _check_transfer_syntax(path, header)
    rescales = check_dicom_frames(path, header)
    if _pixel_spacing(header) is None:
        message = f"{path}: no PixelSpacing above 0: {_UNSIZED}"
        if not allow_irregular:
            raise FusionInputError(f"{message}; or pass --allow-irregular-slices (allow_irregular_slices=True) to "
                                   "fuse it anyway")
        warnings.warn(f"{message} (accepted: --allow-irregular-slices)", stacklevel=4)
    return rescales


_DATA_FILE_FIELDS = re.compile(r"^\s*(ElementDataFile\s*=|data\s*file\s*:|datafile\s*:)\s*(.*?)\s*$", re.I | re.M)


def check_data_file_location(header: str | Path) -> None:
    """Refuse a NRRD/MetaIO header whose data file lies outside the header's own folder.

    A detached header (``.nhdr``, ``.mhd``; also a ``.nrrd``/``.mha`` with a ``data file``/``ElementDataFile``
    field) names the file that holds its voxels; a header from elsewhere could name any file on the disk
    (``/etc/passwd``, ``../../secret``), which would then be read and written out as pixels. Absolute names, names
    leading out of the folder (``..``) and links to places outside it are refused. ``LOCAL`` (attached data),
    ``LIST`` (the names follow, one a line) and ``%d`` patterns (``slice%03d.raw 1 10 1``) are understood.

    Args:
        header: the header file.

    Raises:
        FusionInputError: a data file outside the header's folder.
    """
    header = Path(header)
    with open(header, "rb") as handle:
        text = handle.read(1 << 16).decode("latin-1")
    if image_suffix(header) in (".nrrd", ".nhdr"):
        text = re.split(r"\r?\n\r?\n", text, maxsplit=1)[0]  # the NRRD header ends at the first empty line
    folder = header.parent.resolve()
    for match in _DATA_FILE_FIELDS.finditer(text):
        value = match.group(2)
        if value.upper() == "LOCAL" or not value:
            continue
        if value.upper().startswith("LIST"):
            names = [line.strip() for line in text[match.end():].splitlines() if line.strip()]
        else:
            names = [value.split()[0] if "%" in value else value]
        for name in names:
            if "\x00" in name:  # no file system allows it: a damaged header (e.g. binary data in the field)
                raise FusionInputError(f"{header}: corrupt header: its data file name holds a NUL byte")
            target = (header.parent / name).resolve()
            if Path(name).is_absolute() or folder != target and folder not in target.parents:
                raise FusionInputError(
                    f"{header}: its data file '{name}' lies outside the header's folder, refused (a header can point "
                    "at any file); put the data beside the header, or pass --allow-external-data "
                    "(allow_external_data=True) if you trust this header"
                )


def _slice_position(header) -> tuple[np.ndarray, np.ndarray] | None:
    """``(slice normal, ImagePositionPatient)`` of a DICOM slice header, ``None`` without geometry."""
    try:
        orientation = np.asarray([float(v) for v in header.ImageOrientationPatient], dtype=np.float64)
        position = np.asarray([float(v) for v in header.ImagePositionPatient], dtype=np.float64)
    except (AttributeError, TypeError, ValueError):
        return None
    if orientation.shape != (6,) or position.shape != (3,):
        return None
    return np.cross(orientation[:3], orientation[3:]), position


def _functional_group(header, frame: int, name: str):
    """The item of functional group sequence ``name`` (``"PlanePositionSequence"``...) that applies to one frame of
    an enhanced multi-frame DICOM: the frame's own, else the shared one; ``None`` where neither has it."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        try:
            return getattr(getattr(header, groups)[index], name)[0]
        except (AttributeError, IndexError, TypeError):
            continue
    return None


def _pixel_spacing(header) -> tuple[float, float] | None:
    """The (row, column) PixelSpacing of a DICOM header (an enhanced one's from its first frame's pixel measures),
    ``None`` when it is missing or not above 0 (ITK then reads 1 mm)."""
    measures = _functional_group(header, 0, "PixelMeasuresSequence") if "NumberOfFrames" in header else None
    try:
        spacing = tuple(float(v) for v in (measures if measures is not None else header).PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        return None
    return spacing if len(spacing) == 2 and min(spacing) > 0 and np.isfinite(spacing).all() else None


_UNSIZED = ("the pixel size is unknown (ITK reads 1 mm), so its placement against the other image would be a "
            "guess (set PixelSpacing, or convert the image to NIfTI with its true voxel size)")

_DECODABLE_SYNTAXES = {
    "1.2.840.10008.1.2": "", "1.2.840.10008.1.2.1": "", "1.2.840.10008.1.2.1.99": "", "1.2.840.10008.1.2.2": "",
    "1.2.840.113619.5.2": "",  # GE's private implicit little endian with big-endian pixels
    "1.2.840.10008.1.2.5": "RLE", "1.2.840.10008.1.2.4.50": "JPEG", "1.2.840.10008.1.2.4.51": "JPEG",
    "1.2.840.10008.1.2.4.52": "JPEG", "1.2.840.10008.1.2.4.53": "JPEG", "1.2.840.10008.1.2.4.55": "JPEG",  # retired
    "1.2.840.10008.1.2.4.57": "JPEG", "1.2.840.10008.1.2.4.70": "JPEG", "1.2.840.10008.1.2.4.80": "JPEG-LS",
    "1.2.840.10008.1.2.4.81": "JPEG-LS", "1.2.840.10008.1.2.4.90": "JPEG 2000", "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.92": "JPEG 2000", "1.2.840.10008.1.2.4.93": "JPEG 2000",
}
"""Transfer syntaxes whose pixel data SimpleITK's GDCM decodes (uncompressed, deflated, RLE, JPEG, JPEG-LS, JPEG
2000); others (HTJ2K, JPEG XL, MPEG/HEVC video, JPIP) it cannot."""


def _check_transfer_syntax(path: Path, header) -> None:
    """Refuse a DICOM file whose pixel data is encoded in a transfer syntax the installed reader cannot decode.

    Args:
        path: the file (or series folder), for the message.
        header: one of its DICOM headers (``pydicom`` dataset with ``file_meta``).

    Raises:
        FusionInputError: ``<path>: pixel data compressed as <name> (<UID>), which the installed DICOM reader ...``.
    """
    from pydicom.uid import UID

    syntax = UID(str(getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", "") or "1.2.840.10008.1.2"))
    if str(syntax) not in _DECODABLE_SYNTAXES:
        raise FusionInputError(
            f"{path}: pixel data compressed as {syntax.name} ({syntax}), which the installed DICOM reader "
            "(SimpleITK's GDCM) cannot decode; convert it to an uncompressed transfer syntax first (e.g. "
            "dcmconv +te, or gdcmconv --raw where GDCM has the codec)"
        )


def check_dicom_frames(path: str | Path, header) -> list[tuple[float, float]] | None:
    """Check the frames of an enhanced multi-frame DICOM (one file, one frame per slice) before ITK reads it.

    ITK stacks the frames in stored order from the first frame's position, along the normal, evenly spaced (at 1 mm
    when the frames' spacing is uneven), with the first frame's orientation and RescaleSlope/Intercept. So every
    frame's ``ImagePositionPatient`` and ``ImageOrientationPatient`` (per-frame or shared functional groups) are
    checked as :func:`check_dicom_slices` checks a series' files, and the frames must be stored in slice order and
    at distinct positions (frames repeated at one position are several volumes: echoes, phases, time points).

    Args:
        path: the file, for the messages.
        header: its ``pydicom`` dataset (pixel data not needed).

    Returns:
        Each frame's ``(RescaleSlope, RescaleIntercept)`` when they differ from frame to frame (ITK applies the first
        frame's to all), else ``None``; also ``None`` for a file without per-frame functional groups.

    Raises:
        FusionInputError: frames that ITK would misplace (no ``--allow-irregular-slices``: the read could not
            honour it), or frames without a PixelSpacing.
    """
    frames = getattr(header, "PerFrameFunctionalGroupsSequence", None)
    if not frames or len(frames) < 2:
        return None
    count = len(frames)
    names = [f"frame {k + 1}" for k in range(count)]
    problems = [] if _pixel_spacing(header) is not None else [f"no PixelSpacing above 0: {_UNSIZED}"]
    geometries = []
    for k in range(count):
        plane = _functional_group(header, k, "PlanePositionSequence")
        orientation = _functional_group(header, k, "PlaneOrientationSequence")
        geometries.append(_slice_position(SimpleNamespace(
            ImagePositionPatient=getattr(plane, "ImagePositionPatient", None),
            ImageOrientationPatient=getattr(orientation, "ImageOrientationPatient", None),
        )))
    placed = [k for k, geometry in enumerate(geometries) if geometry is not None]
    if placed and len(placed) < count:
        problems.append(f"{count - len(placed)} of {count} frames without a position or orientation")
    elif placed:
        normals = np.asarray([geometry[0] for geometry in geometries])
        corners = np.asarray([geometry[1] for geometry in geometries])
        turned = [names[k] for k in range(count) if np.abs(normals[k] - normals[0]).max() > 1e-3]
        positions = corners @ normals[0]
        distinct = len(np.unique(np.round(positions, 3)))
        steps = np.diff(positions)
        if turned:
            problems.append(f"{len(turned)} frame(s) of another orientation than frame 1 ({list_names(turned, 3)})")
        elif distinct < count:
            problems.append(f"{count} frames at only {distinct} slice positions: several volumes in one file (echoes, "
                            "phases, diffusion directions or time points)")
        elif not (np.all(steps > 0) or np.all(steps < 0)):
            k = int(np.flatnonzero(np.sign(steps) != np.sign(steps[0]))[0])
            problems.append(f"the frames are not stored in slice order ({names[k + 1]} at {positions[k + 1]:.4g} mm "
                            f"follows {names[k]} at {positions[k]:.4g} mm), and ITK stacks them as stored")
        else:
            problems += _stack_problems(names, corners, normals[0])
    if problems:
        raise FusionInputError(f"{path}: {'; '.join(problems)}; convert it to NIfTI (e.g. with dcm2niix, one "
                               "3D volume per file) or to single-frame slices, and check the result")
    rescales = []
    for k in range(count):
        transform = _functional_group(header, k, "PixelValueTransformationSequence")
        rescales.append((float(getattr(transform, "RescaleSlope", 1) or 1),
                         float(getattr(transform, "RescaleIntercept", 0) or 0)))
    return rescales if len(set(rescales)) > 1 else None


_DEFERRED_BYTES = 4096
"""Values larger than this are not read when a slice's header is checked (``pydicom.dcmread``'s ``defer_size``):
the pixel data, which the check needs only the length of. Reading it took half of the check of a 512^2 CT series."""


def _pixel_bytes_missing(header, path: str) -> bool:
    """Whether an uncompressed slice holds fewer pixel bytes than its header promises (a truncated file).

    Args:
        header: the slice read with ``defer_size`` (:data:`_DEFERRED_BYTES`): its pixel data's length and place in
            the file are known, its value need not be read.
        path: the slice's file.

    Returns:
        ``True`` when the pixel data is shorter than Rows x Columns x samples x bytes x frames (by its declared
        length, or by running past the end of the file), or the header's sizes cannot be read.
    """
    import pydicom
    from pydicom.uid import UID

    syntax = UID(str(getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", "") or "1.2.840.10008.1.2"))
    if syntax.is_compressed or "PixelData" not in header:
        return False
    try:
        needed = int(header.Rows) * int(header.Columns) * int(header.get("SamplesPerPixel", 1)) * (
            int(header.BitsAllocated) // 8
        ) * int(header.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return True
    try:  # the raw element: its declared length and offset, its value left unread
        pixels = header.get_item(0x7FE00010, keep_deferred=True)
    except TypeError:  # pydicom 2 has no keep_deferred: it reads the value here, which is checked as before
        pixels = header.get_item(0x7FE00010)
    if pixels.value is not None:  # small enough to have been read
        return len(pixels.value) < needed
    if syntax.is_deflated:  # offsets are in the inflated stream, not the file: read the value
        try:
            return len(pydicom.dcmread(path).PixelData) < needed
        except Exception:  # pydicom raises many types for damaged files
            return True
    return pixels.length < needed or pixels.value_tell + pixels.length > os.path.getsize(path)


def check_dicom_slices(
    folder: str | Path, files: list[str], other_series_files: set[str] = frozenset(), allow_irregular: bool = False
) -> tuple[list[str], list[str]]:
    """Check the slices of one DICOM series before it is read; return the files to read and warnings.

    GDCM sorts slices by position and ITK then assumes they are evenly spaced and stacked along the slice normal: a
    missing slice (deleted, or a truncated/corrupt file that GDCM skips) stretches the volume and misplaces every
    slice after it, a duplicated file doubles a slice, and a gantry-tilted CT (slices shifted in their plane from
    one to the next) is read as an orthogonal stack, every slice shifted. So the slice positions
    (``ImagePositionPatient``) are checked: the same orientation for every slice, no two slices at one position, even
    spacing along the normal within 5%, and no shift in the slice plane beyond 0.01 of the distance along the normal
    (about half a degree of tilt). Files of the folder that belong to no series (not DICOM, or damaged) are named.

    Args:
        folder: the series folder.
        files: the series' files as GDCM sorted them.
        other_series_files: files of the folder's other (readable) series, which are not "skipped".
        allow_irregular: accept an irregular series: duplicates are dropped and the rest is read; the returned
            warnings give the gaps and how far slices are from their true position once read as evenly spaced.

    Returns:
        ``(files, warnings)``: the files to read, in order, and one-line warnings.

    Raises:
        FusionInputError: an irregular series without ``allow_irregular``, or no readable slice.
    """
    import pydicom

    folder = Path(folder)
    listed = {str(Path(f).resolve()) for f in files} | {str(Path(f).resolve()) for f in other_series_files}
    skipped = sorted(  # a DICOMDIR index or a document is not a slice; any other file GDCM could not place is named
        p.name for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
        and image_suffix(p) not in NOT_IMAGE_SUFFIXES and str(p.resolve()) not in listed
    )
    problems: list[str] = []
    slices: list[tuple[float, str, str]] = []  # (position along the normal, file, SOPInstanceUID)
    corners: dict[str, np.ndarray] = {}  # file -> ImagePositionPatient
    normals: list[np.ndarray] = []
    no_geometry = []
    unsized = []  # slices without a usable PixelSpacing
    for name in files:
        try:
            header = pydicom.dcmread(name, defer_size=_DEFERRED_BYTES)
        except Exception:  # pydicom raises many types for damaged files
            skipped.append(Path(name).name)
            continue
        if _pixel_bytes_missing(header, name):
            skipped.append(Path(name).name)
            continue
        if _pixel_spacing(header) is None:
            unsized.append(Path(name).name)
        geometry = _slice_position(header)
        if geometry is None:
            no_geometry.append(Path(name).name)
            slices.append((float(len(slices)), name, str(header.get("SOPInstanceUID", name))))
            continue
        normals.append(geometry[0])
        corners[name] = geometry[1]
        slices.append((float(geometry[1] @ geometry[0]), name, str(header.get("SOPInstanceUID", name))))
    if not slices:
        raise FusionInputError(f"{folder}: no readable DICOM slice ({', '.join(skipped[:5])} damaged)")
    if skipped:
        problems.append(f"{len(skipped)} file(s) of the folder are not readable DICOM slices (damaged slices, or "
                        f"files that are not DICOM: remove those): {list_names(skipped)}")
    if no_geometry and len(slices) > 1:
        problems.append(f"{len(no_geometry)} slice(s) without ImagePositionPatient/ImageOrientationPatient "
                        f"({', '.join(no_geometry[:3])}): positions cannot be checked")
    if unsized:
        problems.append(f"{len(unsized)} slice(s) without a PixelSpacing above 0 ({list_names(unsized, 3)}): "
                        f"{_UNSIZED}")
    placed = [name for name in files if name in corners]  # in the order of ``normals``
    turned = []
    if normals:  # the orientation of most slices (in one pass: comparing every pair took 11 s for 2000 slices)
        stacked = np.asarray(normals)
        orientations, counts = np.unique(np.round(stacked, 3), axis=0, return_counts=True)
        off = np.abs(stacked - orientations[int(np.argmax(counts))]).max(axis=1) > 1e-3
        turned = [Path(placed[k]).name for k in np.flatnonzero(off)]
    if turned:  # a localizer (scout) of another plane saved in the series: named, not read as spacing or tilt
        problems.append(f"{len(turned)} slice(s) of another orientation (ImageOrientationPatient) than the other "
                        f"{len(normals) - len(turned)} ({list_names(turned, 3)}: a localizer? remove them)")
    slices.sort(key=lambda item: item[0])
    kept = [slices[0]]
    duplicates = []
    for item in slices[1:]:
        if item[2] == kept[-1][2] or not no_geometry and abs(item[0] - kept[-1][0]) < 1e-3:
            duplicates.append(f"{Path(item[1]).name} = {Path(kept[-1][1]).name} (at {item[0]:.4g} mm)")
        else:
            kept.append(item)
    if duplicates:
        problems.append(f"{len(duplicates)} duplicated slice(s): {'; '.join(duplicates[:3])}")
    if len(kept) > 1 and not no_geometry and not turned:
        problems += _stack_problems([Path(item[1]).name for item in kept],
                                    np.asarray([corners[item[1]] for item in kept]), normals[0])
    if problems and not allow_irregular:
        raise FusionInputError(
            f"{folder}: {'; '.join(problems)}; complete or clean up the series folder, or pass "
            "--allow-irregular-slices (allow_irregular_slices=True) to fuse it anyway"
        )
    messages = [f"{folder}: {problem} (accepted: --allow-irregular-slices)" for problem in problems]
    return [item[1] for item in kept], messages


def _stack_problems(names: list[str], corners: np.ndarray, normal: np.ndarray) -> list[str]:
    """What makes slices sorted along their normal more than an evenly spaced orthogonal stack, which ITK reads them
    as: uneven spacing (beyond 5% of the median step: missing slices) and shifts in the slice plane from one to the
    next (beyond 0.01 of the distance along the normal: a gantry tilt).

    Args:
        names: the slices (files, or frames of one file), in order along the normal.
        corners: ``(S, 3)`` their ImagePositionPatient.
        normal: the slices' unit normal.

    Returns:
        One phrase per problem, with the numbers (how far slices would be from their true position), or ``[]``.
    """
    problems = []
    positions = corners @ normal
    steps = np.diff(positions)
    if len(names) > 2:
        spacing = float(np.median(steps))
        bad = np.flatnonzero(np.abs(steps - spacing) > 0.05 * abs(spacing))
        if bad.size:
            where = "; ".join(f"{abs(steps[i]):.4g} mm between {names[i]} and {names[i + 1]}" for i in bad[:3])
            missing = int(round(float(np.sum(np.maximum(steps[bad] / spacing - 1.0, 0.0)))))
            even = np.linspace(positions[0], positions[-1], len(positions))
            problems.append(
                f"slices are not evenly spaced: {len(names)} slices mostly {abs(spacing):.4g} mm apart, but {where}"
                + (f" (about {missing} slice(s) missing)" if missing else "")
                + f"; read as evenly spaced, slices would be up to {np.abs(even - positions).max():.3g} mm "
                "from their true position"
            )
    offsets = corners - corners[0]  # (S, 3) from the first
    along = offsets @ normal
    shift = np.linalg.norm(offsets - along[:, None] * normal, axis=1)  # in-plane part of each offset
    if shift.max() > max(0.01 * np.abs(along).max(), 0.01):
        tilt = float(np.degrees(np.arctan2(shift[-1], abs(along[-1]))))
        problems.append(
            f"the slices are shifted in their plane from one to the next (gantry tilt of about {tilt:.3g} "
            f"degrees); read as an orthogonal stack, slices would be up to {shift.max():.3g} mm from their true "
            "position (resample the series to remove the tilt first)"
        )
    return problems


def _dicom_series_ids(folder: str | Path) -> list[str]:
    """The DICOM series instance UIDs that GDCM finds in ``folder`` (empty for a folder without DICOM)."""
    import SimpleITK as sitk

    with _native_stderr_silenced():  # GDCM prints multi-line warnings for folders without DICOM
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def _rescales(files: list[str]) -> set[tuple[float, float]]:
    """The distinct (RescaleSlope, RescaleIntercept) of DICOM files (PET scanners write one per slice)."""
    import pydicom

    found = set()
    for name in files:
        header = pydicom.dcmread(name, stop_before_pixels=True, specific_tags=["RescaleSlope", "RescaleIntercept"])
        found.add((float(header.get("RescaleSlope", 1) or 1), float(header.get("RescaleIntercept", 0) or 0)))
    return found


def _read_dicom_series(folder: Path, series: str | None, allow_irregular: bool = False) -> MetaTensor:
    """One DICOM series from a folder (SimpleITK/GDCM sorts the slices by position, checked first)."""
    import pydicom
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    uids = _dicom_series_ids(folder)
    if not uids:
        images = [p for p in folder.iterdir() if image_suffix(p) in PICTURE_SUFFIXES + VOLUME_SUFFIXES]
        hint = (f" but {len(images)} image file(s): a folder is read as one DICOM series; to fuse folders of "
                "pairs matched by name use lkcfusion fuse --mri-dir/--other-dir, which does not search their "
                "sub-folders" if images else "")
        if not images:  # a PACS export or CD: DICOMDIR at the top, the slices in sub-folders (DICOM/ST0/SE0/IM0)
            inner = sorted({str(p.parent.relative_to(folder)) for p in folder.rglob("*") if p.parent != folder
                            and p.is_file() and p.name.upper() != "DICOMDIR" and _format_suffix(p) == ".dcm"})
            hint = (f"; its sub-folders hold DICOM files ({list_names(inner, 3)}): give the folder of one series, "
                    f"e.g. {folder / inner[0]}" if inner else "")
        raise FusionInputError(f"{folder}: folder holds no DICOM series{hint}")
    if series is None and len(uids) > 1:
        described = []
        for uid in uids:
            with _native_stderr_silenced():
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
    with _native_stderr_silenced():  # GDCM prints a line per file whose pixel data its codecs cannot parse
        files = list(reader.GetGDCMSeriesFileNames(str(folder), uid))
        others = {f for other in uids if other != uid for f in reader.GetGDCMSeriesFileNames(str(folder), other)}
    files, messages = check_dicom_slices(folder, files, others, allow_irregular)
    for message in messages:
        warnings.warn(message, stacklevel=3)
    if len(files) == 1:  # one file: a single slice, or an enhanced multi-frame volume (frames read as a volume)
        return _read_itk(Path(files[0]), ".dcm", allow_irregular)
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    _check_transfer_syntax(folder, header)
    reader.SetFileNames(files)
    if len(_rescales(files)) > 1:  # ITK takes the pixel type of one slice: integers would round the others
        reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        with _native_stderr_silenced():
            image = reader.Execute()
    except RuntimeError as err:
        raise FusionInputError(f"{folder}: cannot read DICOM series ({' '.join(str(err).split())[:200]})") from None
    return _from_itk(image, folder, header.get("Modality", None) or None)


def image_spatial_dims(path: str | Path) -> int | None:
    """The spatial dimensions an input will be read with (2 or 3), from its header only; ``None`` if unknown.

    Pictures are 2D; NIfTI, NRRD and MHA files and folders holding a DICOM series are volumes (a one-slice or
    2D file too: it carries a geometry, kept by reading it as a one-slice volume). A folder without DICOM is
    unknown (its reader names the problem).

    Args:
        path: an input file or DICOM series folder.

    Returns:
        ``2`` or ``3``, or ``None`` when the format is not recognised or the header cannot be read.
    """
    path = Path(path)
    suffix = _format_suffix(path)
    if path.is_dir():
        return 3 if _dicom_series_ids(path) else None
    if suffix in NIFTI_SUFFIXES:
        return 3
    if suffix in PICTURE_SUFFIXES:
        return 2
    if suffix in ITK_SUFFIXES and path.is_file():
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.SetImageIO(_ITK_IO[suffix])
        try:
            with _native_stderr_silenced():
                reader.ReadImageInformation()
        except RuntimeError:
            return None  # unreadable: its reader names the problem, not the output format
        return 3
    return None


def check_output_path(
    path: str | Path,
    overwrite: bool = False,
    inputs: tuple[str | Path, ...] = (),
    spatial_dims: int | None = None,
    probe: bool = True,
) -> Path:
    """Check an output path before any (long) work, with the messages :func:`write_image` would give at the end.

    Args:
        path: the output file.
        overwrite: an existing output may be replaced.
        inputs: the input files or folders; the output may never be one of them (not even with ``overwrite``).
        spatial_dims: 3 when the result will be a volume (pictures cannot hold it), 2 or ``None`` otherwise.
        probe: also check that the place can be written (:func:`check_writable`); a writer that writes at once
            (:func:`write_image`) leaves it to its own atomic write.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        FusionInputError: a folder, an extension without writer, a volume to a picture format, an input, an
            existing file without ``overwrite``, or a place that cannot be written (:func:`check_writable`).
    """
    path = Path(path)
    suffix = image_suffix(path)
    if len(os.fsencode(path.name)) > 255:
        raise FusionInputError(f"{path.name[:40]}...: output name of {len(os.fsencode(path.name))} bytes is longer "
                               "than file systems allow (255); choose a shorter name")
    if path.is_dir():
        raise FusionInputError(
            f"{path}: is a folder; give an output file name (e.g. {path / ('fused' + (suffix or '.nii.gz'))}), "
            "or use --mri-dir/--other-dir for a folder of pairs"
        )
    check_not_input(path, inputs)
    if suffix not in WRITABLE_SUFFIXES:
        raise FusionInputError(
            f"{path}: {'no file extension' if not suffix else f'unsupported output format {suffix!r}'}; "
            f"the extension picks the format: {', '.join(WRITABLE_SUFFIXES)}"
        )
    if spatial_dims == 3 and suffix in PICTURE_SUFFIXES:
        raise FusionInputError(f"{path}: a 3D volume cannot be written as '{suffix}'; use .nii.gz, .nrrd or .mha")
    if path.exists() and not overwrite:
        raise FusionInputError(f"{path}: output exists; pass --overwrite (overwrite=True) to replace it")
    if probe:
        check_writable(path)
    return path


#: meta key of a 2D picture whose rows are its columns, as MONAI's ``PILReader`` gives pictures ``(C, W, H)``:
#: :class:`~monai_lkcfusion.inferers.FusionInferer` shows the network the stored row order and returns this layout,
#: :func:`write_image` writes the stored order
ROWS_COLUMNS_SWAPPED = "rows_columns_swapped"


def write_image(
    img: torch.Tensor | np.ndarray,
    path: str | Path,
    overwrite: bool = False,
    affine: torch.Tensor | np.ndarray | None = None,
) -> Path:
    """Write a channel-first image with values in [0, 1]; the extension picks the format.

    Pictures (``.png``, ``.jpg``, ``.bmp``, ``.tif``) take ``(1|3, H, W)`` (``(1|3, W, H)`` under
    ``meta["rows_columns_swapped"]``, as MONAI's ``LoadImage`` reads pictures) and are stored as 8-bit gray/RGB; JPEG at
    quality 100 with full-resolution chroma (gray levels within about 2 of the image; the other formats are exact).
    Volumes (``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``) take ``(1|3, X, Y, Z)`` and are stored as float32 on
    ``affine`` (default: the MetaTensor's own), colour as a 3-component vector image; a gray one-slice image read
    from a 2D NIfTI (``meta["nifti_dims"]`` 2) is written to NIfTI as 2D again. NIfTI gets the affine as its qform
    and sform, or, for an affine with a shear (which a qform cannot hold), as its sform only, with a warning; their
    codes are those of the NIfTI the image was read from (``meta["qform_code"]``/``["sform_code"]``; e.g. 4, MNI
    template space; 0, no orientation), else 1 (scanner).

    Args:
        img: ``(C, *spatial)`` image; a MetaTensor carries its affine.
        path: output file.
        overwrite: replace an existing file.
        affine: 4x4 RAS affine for volumes, overriding the MetaTensor's.

    Returns:
        The written path.

    Raises:
        FusionInputError: unsupported extension, a volume to a picture format, wrong channel count, NaN/Inf
            values, or an existing file without ``overwrite``.
    """
    path = Path(path)
    suffix = image_suffix(path)
    if affine is None and isinstance(img, MetaTensor):
        affine = img.affine
    data = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    data = np.asarray(data, dtype=np.float32)
    check_output_path(path, overwrite=True, probe=False)  # a folder or an unknown extension (the rest: atomic_path)
    if data.ndim not in (3, 4) or data.shape[0] not in (1, 3):
        raise FusionInputError(f"{path}: cannot write an image of shape {data.shape}; need (1|3, *spatial)")
    if data.ndim == 3 and isinstance(img, MetaTensor) and bool(img.meta.get(ROWS_COLUMNS_SWAPPED, False)):
        data = np.swapaxes(data, 1, 2)  # (C, W, H) of MONAI's PILReader: written in the order its file stores
    nonfinite = int(data.size - np.isfinite(data).sum())
    if nonfinite:  # never an all-black picture or an all-NaN volume that looks like a result
        raise FusionInputError(f"{path}: the image holds {nonfinite} NaN/Inf values of {data.size}; nothing was written")
    if suffix in PICTURE_SUFFIXES:
        if data.ndim != 3:
            raise FusionInputError(f"{path}: a 3D volume cannot be written as '{suffix}'; use .nii.gz, .nrrd or .mha")
        pixels = np.round(np.clip(np.nan_to_num(data), 0.0, 1.0) * 255.0).astype(np.uint8)
        pixels = pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)
        from PIL import Image

        encoded = io.BytesIO()  # PIL's JPEG/BMP encoders ignored a short write: a full disk gave a cut file, "wrote"
        pil_format = _PIL_FORMATS[suffix]
        Image.fromarray(pixels).save(encoded, format=pil_format, **_PIL_OPTIONS.get(pil_format, {}))
        with atomic_path(path, overwrite) as tmp:
            Path(tmp).write_bytes(encoded.getvalue())  # raises on a short write (ENOSPC): the old file stays
        return path
    if data.ndim == 3:  # a 2D picture (C, H, W) as a one-slice volume, as ITK stores pictures: x along the columns,
        data = np.swapaxes(data, 1, 2)[..., None]  # y along the rows, LPS identity (what a viewer shows upright)
        affine = _LPS_TO_RAS
    matrix = np.eye(4) if affine is None else np.asarray(torch.as_tensor(affine).cpu(), dtype=np.float64)
    if matrix.shape != (4, 4):
        matrix = np.eye(4)
    voxels = data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)  # (X, Y, Z[, 3])
    two_d = isinstance(img, MetaTensor) and img.meta.get("nifti_dims") == 2  # read from a 2D NIfTI: keep its shape
    if two_d and suffix in NIFTI_SUFFIXES and voxels.ndim == 3 and voxels.shape[2] == 1:
        voxels = voxels[:, :, 0]  # (X, Y)
    sheared = suffix in NIFTI_SUFFIXES and _has_shear(matrix)  # no qform can hold it
    if sheared:
        warnings.warn(f"{path}: the affine has a shear, which a NIfTI qform cannot hold: written with the sform only "
                      "(nibabel, MONAI and FSL read it; ITK and 3D Slicer refuse it rather than misplace it; .nrrd "
                      "and .mha keep it)", stacklevel=2)
    meta = img.meta if isinstance(img, MetaTensor) else {}
    codes = _nifti_codes(meta)
    read_shape = tuple(int(n) for n in np.asarray(meta.get("spatial_shape", ())).reshape(-1))
    if codes == (0, 0) and read_shape != tuple(data.shape[1:])[:len(read_shape) or None]:  # cropped, padded, resized
        codes = (1, 1)  # since it was read without orientation: the affine is now the only record of its place
    with atomic_path(path, overwrite) as tmp:
        if suffix in NIFTI_SUFFIXES:
            _write_nifti(voxels, matrix, tmp, codes=(0 if sheared else codes[0], codes[1]))
        else:
            _write_itk(voxels, matrix, tmp)
    return path


_PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}
# JPEG is lossy: PIL's default (quality 75, chroma at a quarter resolution) moves the gray level of a fused colour
# slice by up to ~40 levels; quality 100 with full-resolution chroma keeps it within ~2 (PNG/BMP/TIFF are exact)
_PIL_OPTIONS = {"JPEG": {"quality": 100, "subsampling": 0}}


def _has_shear(affine: np.ndarray) -> bool:
    """Whether the axes of a 4x4 affine are not orthogonal (then no rotation and spacing, no qform, can hold it);
    beyond the rounding of oblique DICOM orientations (6 decimals flagged 13 of 2000 at a tolerance of 1e-6), which
    ITK accepts as sform-only up to about 1e-4."""
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return bool(np.abs(axes.T @ axes - np.eye(3)).max() > 1e-4)


def _nifti_codes(meta: Mapping) -> tuple[int, int]:
    """The ``(qform_code, sform_code)`` a NIfTI written on an image's grid gets: those of the NIfTI it was read
    from (``meta``, as this package's reader and MONAI's ``NibabelReader`` record them: an MNI template's sform stays
    code 4, a header without orientation stays without), else 1 and 1 (scanner coordinates)."""
    codes = []
    for key in ("qform_code", "sform_code"):
        try:
            code = int(np.asarray(meta.get(key, 1)).reshape(-1)[0])
        except (TypeError, ValueError, IndexError):
            code = 1
        codes.append(code if 0 <= code <= 4 else 1)
    return codes[0], codes[1]


def _write_nifti(voxels: np.ndarray, affine: np.ndarray, path: Path, codes: tuple[int, int] = (1, 1)) -> None:
    """Write a NIfTI with ``affine`` as its qform and sform under ``codes`` (``(qform_code, sform_code)``); a form
    of code 0 is not set (a sheared affine gets no qform: one would be an approximation up to 12 mm off, which ITK
    and 3D Slicer would place it by; a header read without orientation is written without while ``affine`` is still
    nibabel's placement of such a grid, so every reader places the result as it placed the input)."""
    import nibabel as nib

    if voxels.ndim == 4:
        voxels = voxels[:, :, :, None, :]  # NIfTI vector images keep components in the 5th dimension
    if codes == (0, 0):  # nibabel would store the affine as an "aligned" sform (code 2): only the voxel sizes
        nii = nib.Nifti1Image(voxels, None)
        zooms = list(nii.header.get_zooms())
        zooms[:min(3, len(zooms))] = np.linalg.norm(affine[:3, :3], axis=0)[:min(3, len(zooms))]
        nii.header.set_zooms(zooms)
        if not np.allclose(nii.header.get_base_affine(), affine, atol=1e-4):  # the grid was moved since it was read
            codes = (1, 1)  # (MONAI's Orientation or Spacing, a user's affine): a real place, written as such
    if codes != (0, 0):
        nii = nib.Nifti1Image(voxels, affine)
        nii.header.set_qform(affine if codes[0] else None, code=codes[0])
        nii.header.set_sform(affine if codes[1] else None, code=codes[1])
    nii.header.set_xyzt_units("mm")  # the affine is in millimetres (inputs in metres or microns are converted)
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
    try:
        with _native_stderr_silenced():
            sitk.WriteImage(image, str(path))
    except RuntimeError as err:  # ITK reports a full disk or an unwritable file as a RuntimeError
        text = " ".join(str(err).split())
        reason = "No space left on device" if "space" in text.lower() else text.split("ERROR:")[-1].strip()[:200]
        raise OSError(reason) from None
