"""Rigid and affine registration of the other modality to the MRI (SimpleITK, Mattes mutual information).

Fusion assumes the two images show the same anatomy at the same place. :func:`register` finds the rigid (rotation
and shift) or affine motion that aligns the second image (CT, PET, SPECT) with the MRI: multi-resolution
gradient descent on Mattes mutual information (multi-modal), initialised from the images' world coordinates or
their centres of mass (whichever matches better), with a fixed sampling seed so that a run is reproducible.
2D slices and 3D volumes; a colour image is registered on its BT.601 luma.

Transforms are kept as ``(n + 1) x (n + 1)`` homogeneous matrices in ITK's convention: they map a point of the MRI
(fixed image) to the corresponding point of the other image (moving image), in ITK's physical frame (LPS
millimetres for volumes; ``(x, y) = (column, row)`` times the pixel spacing for 2D pictures, as SimpleITK reads a
PNG). :func:`write_transform` / :func:`read_transform` exchange them as ITK transform files (``.tfm``/``.txt``,
readable by SimpleITK, 3D Slicer, ANTs); :func:`moved_affine` applies one to an image's affine, so that MONAI's
affine-aware resampling (:class:`~monai_lkcfusion.transforms.ResampleToReference`) puts the image in place.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from .errors import FusionInputError, as_count
from .transforms.color import BT601_LUMA

__all__ = [
    "REGISTRATION_KINDS",
    "RegistrationResult",
    "alignment_preview",
    "check_preview_name",
    "check_transform_file",
    "foreground_mask",
    "itk_image",
    "mean_displacement",
    "moved_affine",
    "read_transform",
    "register",
    "resample_image",
    "save_alignment_preview",
    "transform_from_matrix",
    "transform_matrix",
    "write_transform",
]

REGISTRATION_KINDS = ("none", "rigid", "affine")
"""Values of ``register`` / ``--register``: no registration, rotation + shift, or a general affine map."""

TRANSFORM_SUFFIXES = (".tfm", ".txt", ".mat", ".h5", ".hdf5")
"""ITK transform file formats SimpleITK reads and writes."""

@dataclass
class RegistrationResult:
    """What :func:`register` found, and how well.

    Attributes:
        matrix: ``(n + 1, n + 1)`` homogeneous map from MRI (fixed) points to other-image (moving) points, ITK frame.
        kind: ``"rigid"`` or ``"affine"``.
        metric: final Mattes mutual information (negative; lower is a better match), on the images reduced to
            about 64 voxels per axis (cheap, and comparable between the start and the end).
        initial_metric: the same before optimisation (after initialisation).
        initialization: ``"world"`` (the images' own coordinates) or ``"moments"`` (centres of mass).
        iterations: optimiser iterations at the last (full-resolution) level.
        stop_condition: the optimiser's reason for stopping at the last level.
        converged: the last level stopped on a small step or gradient, not on the iteration limit.
        overlap: fraction of the MRI's foreground inside the moved image's field of view.
        seconds: wall time of the registration.
        rotation_degrees: the rotation the transform applies (of its rotation part, for affine), against the
            images' own coordinates.
        shift: how far the MRI's grid centre moves, in the images' physical units (mm for volumes, pixels for
            2D pictures, which carry no spacing).
        warnings: one-line warnings (not converged, small overlap, no metric improvement, a metric worse than at
            the start, a rotation over 30 degrees).
    """

    matrix: np.ndarray
    kind: str
    metric: float
    initial_metric: float
    initialization: str
    iterations: int
    stop_condition: str
    converged: bool
    overlap: float
    seconds: float
    rotation_degrees: float
    shift: float
    warnings: list[str] = field(default_factory=list)

    def as_meta(self) -> dict[str, Any]:
        """The result as plain values for a ``MetaTensor``'s metadata (the matrix as nested lists).

        Returns:
            ``{field: value}`` of every field except ``stop_condition``, with ``matrix`` as nested lists.
        """
        return {
            "kind": self.kind, "matrix": self.matrix.tolist(), "metric": self.metric,
            "initial_metric": self.initial_metric, "initialization": self.initialization,
            "iterations": self.iterations, "converged": self.converged, "overlap": self.overlap,
            "seconds": self.seconds, "rotation_degrees": self.rotation_degrees, "shift": self.shift,
            "warnings": list(self.warnings),
        }


def _frame(ndim: int) -> np.ndarray:
    """Change of world frame between MONAI's affines and ITK's physical space (its own inverse).

    3D: RAS to LPS. 2D: (row, column) to ITK's (x, y) = (column, row), as SimpleITK reads pictures.
    """
    if ndim == 3:
        return np.diag([-1.0, -1.0, 1.0, 1.0])
    return np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def _affine_nd(affine: Any, ndim: int) -> np.ndarray:
    """An image's affine as ``(ndim + 1, ndim + 1)`` float64 (MONAI keeps 2D affines as 3x3 or 4x4)."""
    matrix = np.asarray(torch.as_tensor(affine).detach().cpu(), dtype=np.float64)
    if matrix.shape[0] == ndim + 1:
        return matrix
    out = np.eye(ndim + 1)
    out[:ndim, :ndim] = matrix[:ndim, :ndim]
    out[:ndim, ndim] = matrix[:ndim, -1]
    return out


def _luma(img: torch.Tensor) -> np.ndarray:
    """Spatial float32 array of a ``(1|3, *spatial)`` image: the channel itself or the BT.601 luma of RGB."""
    data = torch.as_tensor(img).detach().cpu().float()
    if data.shape[0] == 3:
        data = sum(w * data[c] for c, w in enumerate(BT601_LUMA))[None]
    return np.nan_to_num(data[0].numpy().astype(np.float32, copy=False))


def itk_image(img: torch.Tensor) -> sitk.Image:
    """A channel-first image (its luma for RGB) as a SimpleITK image with its geometry in ITK's frame.

    Args:
        img: ``(1|3, *spatial)`` tensor; a ``MetaTensor``'s affine gives the geometry (identity otherwise).

    Returns:
        A float32 ``sitk.Image`` whose index ``k`` is the tensor's spatial axis ``k``.
    """
    array = _luma(img)
    ndim = array.ndim
    affine = getattr(img, "affine", None)
    world = _frame(ndim) @ (_affine_nd(affine, ndim) if affine is not None else np.eye(ndim + 1))
    spacing = np.linalg.norm(world[:ndim, :ndim], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.T))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((world[:ndim, :ndim] / spacing).flatten().tolist())
    image.SetOrigin(world[:ndim, ndim].tolist())
    return image


def transform_matrix(transform: sitk.Transform, ndim: int) -> np.ndarray:
    """The homogeneous matrix of a linear SimpleITK transform (Euler, versor, similarity, affine, composite).

    Args:
        transform: the transform (fixed point to moving point).
        ndim: 2 or 3.

    Returns:
        ``(ndim + 1, ndim + 1)`` float64 matrix.

    Raises:
        FusionInputError: the transform is not linear (a displacement field or B-spline: non-rigid).
    """
    if not transform.IsLinear():  # by type: a B-spline whose grid misses the probe points below would look linear
        raise FusionInputError(
            f"{transform.GetName()}: not a linear (rigid/affine) transform; non-rigid is not supported"
        )
    origin = np.array(transform.TransformPoint((0.0,) * ndim))
    matrix = np.eye(ndim + 1)
    matrix[:ndim, ndim] = origin
    for axis in range(ndim):
        unit = np.zeros(ndim)
        unit[axis] = 100.0
        matrix[:ndim, axis] = (np.array(transform.TransformPoint(unit.tolist())) - origin) / 100.0
    probe = np.array([37.0, -53.0, 71.0][:ndim])
    if not np.allclose(transform.TransformPoint(probe.tolist()), matrix[:ndim, :ndim] @ probe + origin, atol=1e-4):
        raise FusionInputError(
            f"{transform.GetName()}: not a linear (rigid/affine) transform; non-rigid is not supported"
        )
    return matrix


def transform_from_matrix(matrix: np.ndarray) -> sitk.AffineTransform:
    """A SimpleITK ``AffineTransform`` from a homogeneous matrix (see :func:`transform_matrix`).

    Args:
        matrix: ``(D + 1, D + 1)`` homogeneous matrix in ITK's physical frame (D = 2 or 3).

    Returns:
        a D-dimensional ``AffineTransform`` with the matrix's linear part and translation (centre at the origin).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    ndim = matrix.shape[0] - 1
    transform = sitk.AffineTransform(ndim)
    transform.SetMatrix(matrix[:ndim, :ndim].flatten().tolist())
    transform.SetTranslation(matrix[:ndim, ndim].tolist())
    return transform


def check_transform_file(path: str | Path, overwrite: bool) -> None:
    """Refuse to replace an existing transform file unless ``overwrite``: checked before the work by
    :func:`~monai_lkcfusion.inference.fuse` and before writing by ``RegisterToReference``.

    Args:
        path: the transform file to be written.
        overwrite: an existing file may be replaced.

    Raises:
        FusionInputError: ``<path>: transform file exists; pass --overwrite to replace it``.
    """
    if Path(path).is_file() and not overwrite:
        raise FusionInputError(f"{path}: transform file exists; pass --overwrite to replace it")


def write_transform(matrix: np.ndarray, path: str | Path, overwrite: bool = True) -> Path:
    """Write a transform as an ITK transform file (``AffineTransform_double_N_N``), atomically.

    Args:
        matrix: homogeneous fixed-to-moving matrix in ITK's frame (:attr:`RegistrationResult.matrix`).
        path: ``.tfm`` or ``.txt`` (ITK text), ``.mat`` (ITK/Matlab binary), ``.h5`` (HDF5).
        overwrite: replace an existing file (otherwise that is an error).

    Returns:
        The written path.

    Raises:
        FusionInputError: an unknown extension or an unwritable path.
        OSError: the file written does not read back as ``matrix`` (ITK does not report a short write: on a full disk
            an empty file was "written", and replaced a good one); the earlier file is kept.
    """
    import errno

    from .data.atomic import atomic_path

    path = Path(path)
    if path.suffix.lower() not in TRANSFORM_SUFFIXES:
        raise FusionInputError(f"{path}: transform files end in {', '.join(TRANSFORM_SUFFIXES)}")
    with atomic_path(path, overwrite) as tmp:
        sitk.WriteTransform(transform_from_matrix(matrix), str(tmp))
        try:
            whole = np.allclose(read_transform(tmp, matrix.shape[0] - 1), matrix, rtol=1e-9, atol=1e-9)
        except FusionInputError:
            whole = False
        if not whole:
            raise OSError(errno.EIO, "the transform does not read back whole: is the disk full?", str(path))
    return path


def read_transform(path: str | Path, ndim: int) -> np.ndarray:
    """Read a linear ITK transform file (written by :func:`write_transform`, SimpleITK, Slicer or ANTs).

    Args:
        path: the transform file.
        ndim: the images' dimensionality (2 or 3), which the transform must have.

    Returns:
        The homogeneous fixed-to-moving matrix in ITK's frame.

    Raises:
        FusionInputError: missing or unreadable file, another dimensionality, or a non-linear transform.
    """
    path = Path(path)
    if not path.is_file():
        raise FusionInputError(f"{path}: transform file not found")
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError:
        raise FusionInputError(f"{path}: not a readable ITK transform file") from None
    if transform.GetDimension() != ndim:
        raise FusionInputError(f"{path}: a {transform.GetDimension()}D transform for {ndim}D images")
    try:
        return transform_matrix(transform, ndim)
    except FusionInputError as err:
        raise FusionInputError(f"{path}: {err}") from None


def moved_affine(affine: Any, matrix: np.ndarray) -> np.ndarray:
    """The affine that puts an image where a registration says it belongs in the MRI's world.

    A voxel ``v`` of the moving image sits at ITK point ``q = F A v``; the MRI point that corresponds to it is
    ``M^-1 q``, so the new affine is ``F M^-1 F A`` (``F`` the change of frame, its own inverse).

    Args:
        affine: the moving image's affine (MONAI convention, index to RAS world; 2D: index to (row, column)).
        matrix: fixed-to-moving homogeneous matrix in ITK's frame.

    Returns:
        The new ``(n + 1, n + 1)`` affine.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    ndim = matrix.shape[0] - 1
    frame = _frame(ndim)
    return frame @ np.linalg.inv(matrix) @ frame @ _affine_nd(affine, ndim)


def foreground_mask(image: sitk.Image) -> np.ndarray:
    """Boolean array (ITK index order reversed, as ``GetArrayFromImage``) of voxels above 10% of the 99th percentile.

    Args:
        image: a scalar SimpleITK image.

    Returns:
        ``True`` where a voxel exceeds 0.1 times the 99th percentile of the positive voxels; all ``False`` for an
        image without positive voxels.
    """
    array = sitk.GetArrayViewFromImage(image)
    positive = array[array > 0]
    if positive.size == 0:
        return np.zeros(array.shape, dtype=bool)
    return array > 0.1 * float(np.percentile(positive, 99))


def mean_displacement(matrix: np.ndarray, reference_matrix: np.ndarray, fixed: torch.Tensor) -> float:
    """Mean distance, in voxels of ``fixed``, between two transforms' images of the MRI's foreground voxels.

    How far a found registration is from a known one (tests, benchmarks) or from another run.

    Args:
        matrix: fixed-to-moving homogeneous matrix (ITK frame).
        reference_matrix: the other one.
        fixed: the MRI ``(1|3, *spatial)``; its foreground (:func:`foreground_mask`) gives the points.

    Returns:
        The mean Euclidean displacement difference, in voxel units of the MRI grid.
    """
    image = itk_image(fixed)
    ndim = image.GetDimension()
    index = np.argwhere(foreground_mask(image))[:, ::-1].astype(np.float64)  # ITK index order
    grid = np.array(image.GetDirection()).reshape(ndim, ndim) * np.array(image.GetSpacing())
    points = index @ grid.T + np.array(image.GetOrigin())
    difference = (np.asarray(matrix) - np.asarray(reference_matrix))[:ndim]
    shift = points @ difference[:, :ndim].T + difference[:, ndim]
    return float(np.linalg.norm(np.linalg.solve(grid, shift.T), axis=0).mean()) if len(points) else 0.0


def _label(img: torch.Tensor, role: str) -> str:
    """How an error names an image: ``"<file>: <role>"`` when a ``MetaTensor`` knows its file, else ``role``."""
    name = getattr(img, "meta", {}).get("filename_or_obj")
    return f"{name}: {role}" if name else role


def _check_images(fixed: sitk.Image, moving: sitk.Image, labels: tuple[str, str]) -> None:
    """Refuse pairs that cannot be registered, with one line each that names the image at fault.

    Args:
        fixed: the MRI.
        moving: the other image.
        labels: the two images as errors name them (:func:`_label`).
    """
    for label, image in zip(labels, (fixed, moving)):
        array = sitk.GetArrayViewFromImage(image)
        if float(array.max()) <= float(array.min()):
            raise FusionInputError(f"{label} is a constant image, nothing to register")
        if image.GetDimension() == 3 and min(image.GetSize()) == 1:  # a 2D NIfTI/NRRD/MHA is read as one
            raise FusionInputError(
                f"{label} is a one-slice volume, size {image.GetSize()}; registration needs at least 8 voxels per "
                "axis: register whole volumes, or the slices as 2D pictures (PNG, TIFF), or fuse without --register"
            )
        if min(image.GetSize()) < 8:
            raise FusionInputError(f"{label} is too small to register, size {image.GetSize()} (at least 8 per axis)")


def _initial_transform(
    fixed: sitk.Image, moving: sitk.Image, kind: str, init: str, label: str = "the other image"
) -> tuple[sitk.Transform, str]:
    """Rigid/affine transform centred on the MRI's centre of mass: world coordinates or centres of mass (``init``
    ``"auto"``: the better of the two on a coarse metric; ``label`` names the other image if neither overlaps)."""
    ndim = fixed.GetDimension()
    base = (sitk.Euler3DTransform() if ndim == 3 else sitk.Euler2DTransform()) if kind == "rigid" \
        else sitk.AffineTransform(ndim)
    moments = sitk.CenteredTransformInitializer(fixed, moving, base, sitk.CenteredTransformInitializerFilter.MOMENTS)
    world = sitk.Transform(moments).Downcast()
    world.SetTranslation((0.0,) * ndim)  # same centre, no shift: the images' own coordinates
    candidates = {"world": world, "moments": moments}
    if init != "auto":
        return candidates[init], init
    method = _method(fixed, 1, (1,), (0.0,), 20_000, 1)
    coarse = [_coarse(image) for image in (fixed, moving)]
    scores = {}
    for name, transform in candidates.items():
        method.SetInitialTransform(transform, inPlace=False)
        try:
            scores[name] = method.MetricEvaluate(*coarse)
        except RuntimeError:  # ITK: no sample of the MRI maps into the other image from this start
            continue
    if not scores:
        raise FusionInputError(f"{label}: registration failed, the images do not overlap from either start "
                               "(world coordinates or centres of mass); check that both show the same anatomy")
    best = min(scores, key=scores.get)
    return candidates[best], best


def _coarse(image: sitk.Image) -> sitk.Image:
    """The image averaged down to about 64 voxels per axis (at most 4x), for a quick coarse search."""
    return sitk.BinShrink(image, [min(4, max(1, size // 64)) for size in image.GetSize()])


def _search(fixed: sitk.Image, smoothed: Sequence[sitk.Image], transform: sitk.Transform, seed: int) -> None:
    """Exhaustive coarse search over the rotation (and, in 2D, the shift) of a rigid transform (in place).

    Gradient descent on mutual information stops in local optima when the start is off by 10 degrees or more (in
    2D a few degrees or pixels away; in 3D a CT-like volume rotated by about 20 degrees on three axes ended 7.5 mm
    off, "converged"), so a grid on the images reduced to ~64 voxels per axis picks the basin of the global optimum
    first: in 2D 9 rotations in +-12 degrees x 9 x 9 shifts in +-12% of the field of view (every pixel); in 3D
    5 x 5 x 5 rotations in +-20 degrees about the three axes at the start's shift (20,000 random points, ``seed``).
    While the best position lies on the grid's edge (the optimum may lie beyond it), the grid is searched again
    around it, at most :data:`_SEARCH_ROUNDS` times in all: a CT rotated by (30, -30, 30) degrees ended 19 mm off,
    "converged", after one grid.

    Args:
        fixed: the MRI at full resolution (its field of view sizes the 2D shifts).
        smoothed: the MRI and the other image reduced (:func:`_coarse`) and smoothed by one coarse voxel.
        transform: the rigid start, searched in place.
        seed: sampling seed of the 3D metric.
    """
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetInterpolator(sitk.sitkLinear)
    if fixed.GetDimension() == 2:
        max_shift = 0.12 * min(s * n for s, n in zip(fixed.GetSpacing(), fixed.GetSize()))
        steps, scales = [4, 4, 4], [np.deg2rad(12.0) / 4, max_shift / 4, max_shift / 4]
    else:
        steps, scales = [2, 2, 2, 0, 0, 0], [np.deg2rad(20.0) / 2] * 3 + [1.0] * 3
        voxels = float(np.prod(smoothed[0].GetSize()))
        if voxels > _SEARCH_SAMPLES:
            method.SetMetricSamplingStrategy(method.RANDOM)
            method.SetMetricSamplingPercentage(_SEARCH_SAMPLES / voxels, seed)
    method.SetOptimizerAsExhaustive(steps)
    method.SetOptimizerScales(scales)
    edge = np.asarray(steps) * np.asarray(scales)  # the grid's half-width per parameter (0: not searched)
    method.SetInitialTransform(transform, inPlace=True)
    for _ in range(_SEARCH_ROUNDS):
        centre = np.asarray(transform.GetParameters())
        try:
            method.Execute(*smoothed)
        except RuntimeError:  # ITK: a grid position where no sample maps into the other image; keep the last centre
            transform.SetParameters(tuple(centre))
            return
        moved = np.abs(np.asarray(transform.GetParameters()) - centre)
        if not (moved[edge > 0] > 0.999 * edge[edge > 0]).any():
            return


_SEARCH_SAMPLES = 20_000
"""Metric sample points of each grid position of the 3D search (a 64^3 volume has 262,144 voxels)."""
_SEARCH_ROUNDS = 4
"""Most grids searched, each centred on the previous one's best position when that lay on its edge (in 3D up to
80 degrees about each axis from the start)."""


def _as_affine(rigid: sitk.Transform) -> sitk.AffineTransform:
    """The same map as a centred rigid transform, as an affine transform with the same centre."""
    affine = sitk.AffineTransform(rigid.GetDimension())
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    return affine


def _method(
    fixed: sitk.Image, iterations: int, shrink: tuple[int, ...], sigmas: tuple[float, ...], max_samples: float,
    seed: int, bins: int = 32,
) -> sitk.ImageRegistrationMethod:
    """Mattes MI, regular-step gradient descent with physical-shift scales, linear interpolation, per-level sampling."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    if seed < 1:
        raise FusionInputError(f"register: seed must be at least 1 (0 means a clock seed in SimpleITK), not {seed}")
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricUseFixedImageGradientFilter(False)  # gradients at the sample points only: fast on volumes
    method.SetMetricUseMovingImageGradientFilter(False)
    n_voxels = float(np.prod(fixed.GetSize()))
    samples = [max_samples * (1.0 if level == len(shrink) - 1 else 0.4) for level in range(len(shrink))]
    fractions = [min(1.0, n / (n_voxels / f ** fixed.GetDimension())) for n, f in zip(samples, shrink)]
    if min(fractions) >= 0.5:  # small images (2D slices): every voxel, a smooth deterministic metric
        method.SetMetricSamplingStrategy(method.NONE)
    else:
        method.SetMetricSamplingPercentagePerLevel(fractions, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=iterations, relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-8,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel(list(sigmas))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


@contextmanager
def _sitk_threads(threads: int | None) -> Iterator[None]:
    """SimpleITK's global default thread count set to ``threads`` (``None``: left as it is) inside the block.

    A registration method's own ``SetNumberOfThreads`` does not reach every filter it runs: with it at 1 and the
    global default at 2, two identical calls ended up to 3.9 mm apart on a 2D slice. Only the global default makes
    one thread mean one thread.
    """
    if threads is None:
        yield
        return
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(as_count(threads, "register: num_threads"))
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def register(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    kind: str = "rigid",
    init: str = "auto",
    shrink_factors: tuple[int, ...] = (4, 2, 1),
    smoothing_sigmas: tuple[float, ...] = (2.0, 1.0, 0.0),
    iterations: int = 200,
    max_samples: int = 50_000,
    seed: int = 1,
    num_threads: int | None = 1,
    min_overlap: float = 0.5,
    search: bool = True,
) -> RegistrationResult:
    """Register ``moving`` (CT/PET/SPECT) to ``fixed`` (the MRI): rigid (rotation + shift) or affine.

    Mattes mutual information (32 bins) on every voxel of small images (2D slices) and on ``max_samples`` random
    points per level of larger ones (fixed ``seed``), regular-step gradient descent with scales from the physical
    shift, a coarse-to-fine pyramid, and a rotation centre at the MRI's centre of mass. The start is the images'
    world coordinates or the alignment of their centres of mass, whichever matches better (``init="auto"``); a
    coarse grid of rotations (and in 2D shifts) is searched first (``search``).

    Args:
        fixed: the MRI, ``(1|3, *spatial)`` (a ``MetaTensor``'s affine gives its geometry); 2D or 3D.
        moving: the other image in the same form (its own grid, size and affine); RGB is registered on its luma.
        kind: ``"rigid"`` or ``"affine"``.
        init: ``"auto"``, ``"world"`` or ``"moments"``.
        shrink_factors: down-sampling per pyramid level (coarse to fine).
        smoothing_sigmas: Gaussian smoothing per level, in voxels.
        iterations: most optimiser iterations per level.
        max_samples: metric sample points at full resolution (40% of it on the coarser levels, where most
            iterations happen; all voxels when a level has fewer).
        seed: sampling seed, at least 1 (SimpleITK takes 0 as "seed from the clock").
        num_threads: SimpleITK threads for every filter of the call. The default, 1, makes the same call give the
            same transform bit for bit; with more, the order of multi-threaded sums varies and the optimiser can
            take another path (2D slices: repeats differed by up to a few tenths of a pixel, sometimes more).
            ``None``: SimpleITK's global default (all cores).
        min_overlap: warn when less of the MRI's foreground lies in the moved image's field of view.
        search: first search a coarse grid of rigid poses: in 2D rotations (+-12 degrees) and shifts (+-12% of
            the field of view), in 3D rotations about the three axes (+-20 degrees), searched again around a best
            pose on the grid's edge (at most 4 grids); default on (about a second in 2D, a few in 3D). 2D rigid
            with ``init="auto"``: the search and the pyramid run from both starts (world and centres of mass). 3D
            rigid and affine: the pyramid runs from the start and, if the search moved it, from the pose found (on
            near-spherical content a rotation of the coarse grid can match better and lead astray). The best final
            metric wins.

    Returns:
        The :class:`RegistrationResult`.

    Raises:
        FusionInputError: an unknown ``kind``/``init``, 2D against 3D, a constant or tiny image, or no overlap.
    """
    if kind not in ("rigid", "affine"):
        raise FusionInputError(f"register: unknown kind {kind!r}; use rigid or affine (or none to skip)")
    if init not in ("auto", "world", "moments"):
        raise FusionInputError(f"register: unknown init {init!r}; use auto, world or moments")
    if fixed.ndim != moving.ndim:
        raise FusionInputError(f"register: {moving.ndim - 1}D image but the MRI is {fixed.ndim - 1}D")
    with _sitk_threads(num_threads):  # every SimpleITK filter of the call, not only the methods'
        start = time.perf_counter()
        fixed_image, moving_image = itk_image(fixed), itk_image(moving)
        labels = (_label(fixed, "the MRI"), _label(moving, "the other image"))
        _check_images(fixed_image, moving_image, labels)
        transform, initialization = _initial_transform(fixed_image, moving_image, kind, init, labels[1])
        starts = [(transform, initialization)]
        coarse = [_coarse(image) for image in (fixed_image, moving_image)]  # the search's images and the metric's
        smoothed = [sitk.SmoothingRecursiveGaussian(image, image.GetSpacing()[0]) for image in coarse] if search else []
        if search and (kind == "affine" or fixed_image.GetDimension() == 3):
            # the pose found is a second start beside the start itself: on near-spherical content a rotation of the
            # coarse grid can match better and lead astray; for affine, the rigid search's pose
            rigid = transform if kind == "rigid" else _initial_transform(fixed_image, moving_image, "rigid",
                                                                         initialization)[0]
            found = sitk.Transform(rigid).Downcast()
            _search(fixed_image, smoothed, found, seed)
            if found.GetParameters() != rigid.GetParameters():
                starts.append((found if kind == "rigid" else _as_affine(found), initialization))
        elif search:  # 2D rigid, searched in place from both starts
            if init == "auto":  # the better start on the coarse metric is not always the better end (partial slices)
                starts.append(_initial_transform(fixed_image, moving_image, kind,
                                                 "moments" if initialization == "world" else "world"))
            for candidate, _ in starts:
                _search(fixed_image, smoothed, candidate, seed)
        evaluate = _method(fixed_image, 1, (1,), (0.0,), 20_000, seed)
        runs, failure = [], ""
        ndim = fixed_image.GetDimension()
        start_matrix, start_name = transform_matrix(transform, ndim), initialization  # where the initial metric is
        try:
            evaluate.SetInitialTransform(transform, inPlace=False)
            initial_metric = evaluate.MetricEvaluate(*coarse)
        except RuntimeError as err:  # ITK: "All samples map outside moving image buffer", too few samples
            failure, starts = " ".join(str(err).split()[-12:]), []
        for candidate, name in starts:  # a second start that does not overlap (headers far apart) is skipped
            method = _method(fixed_image, iterations, tuple(shrink_factors), tuple(smoothing_sigmas), max_samples,
                             seed)
            try:
                method.SetInitialTransform(candidate, inPlace=True)
                method.Execute(fixed_image, moving_image)
                evaluate.SetInitialTransform(candidate, inPlace=False)
                runs.append((evaluate.MetricEvaluate(*coarse), candidate, name, method))
            except RuntimeError as err:
                failure = " ".join(str(err).split()[-12:])
        if not runs:
            raise FusionInputError(f"{labels[1]}: registration failed, the images do not overlap enough ({failure})")
        final_metric, transform, initialization, method = min(runs, key=lambda run: run[0])
        matrix = transform_matrix(transform, ndim)
        overlap = _overlap(fixed_image, moving_image, transform)
        stop = method.GetOptimizerStopConditionDescription()
        converged = "Maximum number of iterations" not in stop
        warnings = []
        if not converged:
            warnings.append(f"registration did not converge within {iterations} iterations at the finest level (the "
                            "optimiser was still moving); check the result (--preview)")
        if overlap < min_overlap:
            warnings.append(f"only {overlap:.0%} of the MRI's foreground lies in the registered image's field of view")
        centre = fixed_image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed_image.GetSize()])
        rotation, shift = _motion(matrix, np.asarray(centre))
        if final_metric > _LOW_MI:
            warnings.append(f"mutual information stayed low ({initial_metric:.3f} -> {final_metric:.3f}): the images "
                            "share little structure (not the same anatomy, or mostly empty); the alignment found is "
                            "doubtful; check the result (--preview)")
        elif final_metric > initial_metric + _WORSE and _kept(np.linalg.solve(start_matrix, matrix), centre,
                                                              max(fixed_image.GetSpacing())):
            # barely moved from the start: right if that was the alignment (on one grid the start samples voxel
            # centres exactly and scores a little higher than any near pose), wrong if the headers are off by a
            # local optimum (a flip)
            kept = "the files' own alignment" if start_name == "world" else "the alignment of the centres of mass"
            warnings.append(f"registration kept {kept} it started from (mutual information {initial_metric:.3f} -> "
                            f"{final_metric:.3f}): right if that was the alignment, else check the result (--preview)")
        elif final_metric > initial_metric + _WORSE:  # it ended where the images match less than at the start
            warnings.append(f"mutual information got worse than at the start ({initial_metric:.3f} -> "
                            f"{final_metric:.3f}): the alignment found is doubtful; check the result (--preview)")
        stretch = np.linalg.svd(matrix[:ndim, :ndim], compute_uv=False)  # 1 for a rigid map
        if max(stretch.max(), 1 / stretch.min(), stretch.max() / stretch.min()) > _STRETCH:
            warnings.append(f"it scales the other image by {' x '.join(f'{v:.2f}' for v in stretch)} along its "
                            "principal axes: unless the two images show the anatomy at different sizes (another zoom "
                            "or voxel size), the alignment is likely wrong; check the result (--preview)")
        extent = np.asarray(fixed_image.GetSize()) * np.asarray(fixed_image.GetSpacing())  # mm along each axis
        if ndim == 3 and extent.min() < _SLAB * extent.max():
            warnings.append(f"the MRI is a slab ({extent.min():.0f} mm thick, {extent.max():.0f} mm across): rotations "
                            "that tilt it are weakly determined by mutual information, and a wrong tilt can score "
                            "better than the truth; check the result (--preview), or register whole volumes")
        if rotation > _LARGE_ROTATION:
            warnings.append(f"it rotates the other image by {rotation:.0f} degrees: unless its header is known to be "
                            "that far off, the alignment is likely wrong (a flipped or mirrored image?); check the "
                            "result (--preview)")
        return RegistrationResult(
            matrix=matrix, kind=kind, metric=float(final_metric), initial_metric=float(initial_metric),
            initialization=initialization, iterations=int(method.GetOptimizerIteration()), stop_condition=stop.strip(),
            converged=converged, overlap=overlap, seconds=time.perf_counter() - start, rotation_degrees=rotation,
            shift=shift, warnings=warnings,
        )


_WORSE = 1e-4
"""A final mutual information above the starting one by more than this is reported (the values are negative)."""
_LOW_MI = -0.05
"""A final mutual information above this (the values are negative) means the images share little structure."""
_STRETCH = 1.25
"""An affine result that scales by more than this (or less than its inverse), or stretches one axis this much more
than another, is reported: on aligned Harvard pairs affine stays within 0.81-1.04 (anisotropy under 1.21), while a
PET picture at 0.7x the MRI's scale ended 56 px off, stretched 1.31 x 0.99, without a word."""
_SLAB = 0.3
"""A 3D MRI thinner than this fraction of its widest extent is a slab, and its registration is reported as doubtful:
an oblique 18-slice slab (54 of 256 mm) against its CT, moved by (3, -2, 10) degrees and 8 mm, ended 7.9 mm off,
tilted 4.7 degrees instead of 10, converged, better by mutual information and covering 97% of the MRI."""
_LARGE_ROTATION = 30.0
"""Rotations (degrees) beyond which a found alignment is reported as likely wrong: scanners' headers rarely disagree
that much, and the optimiser's failures (a flipped image, a local optimum) end there."""


def _kept(relative: np.ndarray, centre: np.ndarray, voxel: float) -> bool:
    """Whether a map relative to the start (``start^-1 @ found``) rotates under 1 degree and moves ``centre`` under
    one voxel."""
    rotation, shift = _motion(relative, centre)
    return rotation < 1.0 and shift < voxel


def _motion(matrix: np.ndarray, centre: np.ndarray) -> tuple[float, float]:
    """Rotation angle (degrees) of a homogeneous ``(n + 1, n + 1)`` map's linear part (its nearest rotation, by
    SVD) and the distance (in the matrix's units) it moves ``centre``."""
    ndim = matrix.shape[0] - 1
    u, _, vt = np.linalg.svd(matrix[:ndim, :ndim])
    rotation = u @ vt
    if ndim == 2:
        angle = np.arctan2(rotation[1, 0], rotation[0, 0])
    else:
        angle = np.arccos(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0))
    moved = matrix[:ndim, :ndim] @ centre + matrix[:ndim, ndim]
    return float(abs(np.degrees(angle))), float(np.linalg.norm(moved - centre))


def _overlap(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Fraction of the fixed image's foreground that maps inside the moving image's field of view."""
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    inside = sitk.Resample(ones, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    mask = foreground_mask(fixed)
    return float(sitk.GetArrayViewFromImage(inside)[mask].mean()) if mask.any() else 0.0


def alignment_preview(mri: torch.Tensor, other: torch.Tensor, tiles: int = 8) -> np.ndarray:
    """A picture for checking an alignment by eye: checkerboard (left) and the MRI's edges over the other (right).

    Both images must lie on the same grid (the other one after registration and resampling onto the MRI's). In
    the checkerboard, squares alternate between the MRI and the other image: edges that continue across squares
    mean a good alignment. On the right, the MRI's edges (red) are drawn over the other image (gray). Volumes show
    three slices through the middle of the MRI's foreground (one per voxel axis), side by side.

    Args:
        mri: ``(1|3, *spatial)`` in [0, 1] (RGB shown as luma).
        other: the other image on the same grid.
        tiles: checkerboard squares along the longer side.

    Returns:
        ``(H, W, 3)`` uint8 RGB picture.

    Raises:
        FusionInputError: the two images are not on the same grid (their shapes differ).
    """
    mri_array, other_array = _luma(mri), _luma(other)
    if mri_array.shape != other_array.shape:
        raise FusionInputError(f"preview: images on different grids {mri_array.shape} and {other_array.shape}")
    if mri_array.ndim == 2:
        planes = [(mri_array, other_array)]
    else:
        centre = [int(round(float(c))) for c in np.argwhere(mri_array > 0.1 * mri_array.max()).mean(axis=0)]
        planes = [(np.take(mri_array, centre[a], axis=a), np.take(other_array, centre[a], axis=a)) for a in range(3)]
    rows = []
    for m, o in planes:
        m, o = _display(m), _display(o)
        size = max(m.shape) // tiles or 1
        yy, xx = np.indices(m.shape)
        board = np.where((yy // size + xx // size) % 2 == 0, m, o)
        gradient = np.hypot(*np.gradient(m))
        edges = gradient > max(np.percentile(gradient, 90), 1e-6)
        overlay = np.stack([o, o, o], axis=-1)
        overlay[edges] = (1.0, 0.0, 0.0)
        gap = np.ones((m.shape[0], 4, 3))
        rows.append(np.concatenate([np.stack([board] * 3, axis=-1), gap, overlay], axis=1))
    width = max(row.shape[1] for row in rows)
    rows = [np.pad(row, ((0, 4), (0, width - row.shape[1]), (0, 0)), constant_values=1.0) for row in rows]
    return (np.concatenate(rows, axis=0)[:-4] * 255 + 0.5).astype(np.uint8)


def _display(plane: np.ndarray) -> np.ndarray:
    """A slice scaled to [0, 1] by its 99.5th percentile, shown with rows as the picture's rows."""
    top = float(np.percentile(plane, 99.5)) if plane.size else 0.0
    return np.clip(plane / top, 0.0, 1.0) if top > 0 else np.zeros_like(plane)


def check_preview_name(path: str | Path) -> Path:
    """Refuse a preview file that is not a ``.png`` picture: checked by :func:`~monai_lkcfusion.inference.fuse`
    before the work (it was found after the registration and the fusion, which were lost) and before writing.

    Args:
        path: the preview file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        FusionInputError: ``<path>: the preview is a .png picture``.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise FusionInputError(f"{path}: the preview is a .png picture")
    return path


def save_alignment_preview(mri: torch.Tensor, other: torch.Tensor, path: str | Path, overwrite: bool = True) -> Path:
    """Write :func:`alignment_preview` as a PNG, atomically.

    Args:
        mri: the MRI ``(1|3, *spatial)``.
        other: the other image on the MRI's grid.
        path: the ``.png`` file.
        overwrite: replace an existing file.

    Returns:
        The written path.

    Raises:
        FusionInputError: ``path`` does not end in ``.png``, the images are on different grids, or the file cannot
            be written (see :func:`~monai_lkcfusion.data.atomic.atomic_path`).
    """
    from PIL import Image

    from .data.atomic import atomic_path

    path = check_preview_name(path)
    with atomic_path(path, overwrite) as tmp:
        Image.fromarray(alignment_preview(mri, other)).save(tmp, format="PNG")
    return path


def resample_image(img: torch.Tensor, matrix: np.ndarray, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Resample every channel of an image through a transform (ITK convention), e.g. to move it by a known motion.

    ``out(p) = img(M p)`` for each point ``p`` of the reference grid (linear interpolation, 0 outside): so moving
    an aligned image with ``M`` makes :func:`register` find ``M^-1``. The fusion pipeline does not use this (it
    moves the affine, see :class:`~monai_lkcfusion.transforms.RegisterToReference`); tests and simulations do.

    Args:
        img: ``(C, *spatial)`` image (a ``MetaTensor``'s affine gives its geometry).
        matrix: homogeneous reference-to-image map in ITK's frame.
        reference: the output grid (default: the image's own).

    Returns:
        ``(C, *spatial of reference)`` float32, a ``MetaTensor`` with the reference's affine (and the image's meta).
    """
    from monai.data import MetaTensor

    grid = itk_image((reference if reference is not None else img)[:1])
    transform = transform_from_matrix(matrix)
    channels = [sitk.GetArrayFromImage(sitk.Resample(itk_image(img[c:c + 1]), grid, transform, sitk.sitkLinear, 0.0))
                for c in range(img.shape[0])]
    data = torch.as_tensor(np.stack([c.T for c in channels]).copy(), dtype=torch.float32)
    source = reference if reference is not None else img
    meta = dict(getattr(img, "meta", {}))
    meta = {key: value for key, value in meta.items() if key != "affine"}
    return MetaTensor(data, affine=getattr(source, "affine", None), meta=meta)
