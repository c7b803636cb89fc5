"""The fusion inferer: a MONAI :class:`~monai.inferers.Inferer` over one cached, optimised predictor.

:class:`FusionInferer` maps the network's pair ``(B, 2, *spatial)`` (channel 0 MRI) to the fused luma
``(B, 1, *spatial)``: a 2D slice in one piece, a large slice in overlapping tiles (MONAI's
:class:`~monai.inferers.SlidingWindowInferer`), a volume slice by slice (MONAI's
:class:`~monai.inferers.SliceInferer`), optionally averaged over flips (test-time augmentation).

The network is turned into a predictor by :func:`build_predictor`, which is built once and reused: an optimised
copy (:func:`~monai_lkcfusion.networks.optimize_for_inference`, seconds and gigabytes for the released network) is
cached per network object and device, and rebuilt only when the network's parameters change in place (training
steps, ``load_state_dict``); a weights file is loaded once while it stays the most recently used one.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer
from monai.utils.type_conversion import convert_to_dst_type

from .baselines import BASELINE_METHODS, fuse_baseline
from .data.io import ROWS_COLUMNS_SWAPPED
from .errors import FusionInputError, as_count, as_flag
from .machine import available_cores
from .transforms.spatial import slice_layout, slicing_axis

__all__ = ["FUSION_METHODS", "FusionInferer", "build_predictor", "check_tta", "resolve_device", "worker_policy"]

FUSION_METHODS = ("lkcfunet", *BASELINE_METHODS)
Predictor = Callable[[torch.Tensor], torch.Tensor]

# network object -> {(device, ...): (parameter versions, optimised predictor)}; entries die with the network
_OPTIMIZED: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, tuple[tuple, Predictor]]] = (
    weakref.WeakKeyDictionary()
)
# the most recently loaded weights file: (path, mtime, size, device) -> network
_LOADED: dict[tuple, torch.nn.Module] = {}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device to run on (default CUDA when available, else CPU); an unusable one is the user's error.

    Args:
        device: a device name (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``), a ``torch.device``, or ``None``.

    Returns:
        the device; ``cpu:0`` becomes ``cpu``.

    Raises:
        FusionInputError: an unknown device name, a device type other than CPU, CUDA and (where available) MPS
            (``meta`` ended in a traceback, ``xla`` blamed the weights file), a CPU index, or CUDA (a GPU index) or
            MPS that this machine lacks.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise FusionInputError(f"device {device}: {' '.join(str(err).split())}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise FusionInputError(f"device {device}: CUDA is not available on this machine; use cpu")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise FusionInputError(f"device {device}: this machine has {torch.cuda.device_count()} GPU(s), "
                               f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise FusionInputError(f"device {device}: Apple's MPS is not available on this machine; use cpu")
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise FusionInputError(f"device {device}: not a device this package runs on; use cpu or cuda (cuda:N)")
    if resolved.type == "cpu" and resolved.index not in (None, 0):
        raise FusionInputError(f"device {device}: the CPU has no device index; use cpu (threads and workers share "
                               "out its cores)")
    return torch.device("cpu") if resolved.type == "cpu" else resolved  # cpu:0 failed loading the weights


def build_predictor(
    model: torch.nn.Module | Predictor | None,
    method: str = "lkcfunet",
    weights: str | Path | None = None,
    device: str | torch.device | None = None,
    optimize: bool = True,
) -> Predictor:
    """A function ``(B, 2, H, W) -> (B, 1, H, W)`` in [0, 1] for a network or a baseline method.

    Optimised predictors are cached: calling this again with the same network object (parameters unchanged) and
    device returns the same predictor without optimising again; a weights file is loaded once while it is the
    most recently used one (same path, modification time and size).

    Args:
        model: a network; a predictor made by this function (returned unchanged); ``None`` loads ``weights`` for
            ``"lkcfunet"`` or makes the baseline ``method``.
        method: see :data:`FUSION_METHODS`.
        weights: weights file for ``"lkcfunet"`` (default: the bundle's ``models/model.pt``).
        device: device of the network.
        optimize: apply :func:`~monai_lkcfusion.networks.optimize_for_inference` to the network.

    Returns:
        The predictor, with ``fusion_method`` naming what it runs.

    Raises:
        FusionInputError: unknown method, no weights file for ``"lkcfunet"``, or weights for a baseline.
    """
    if model is not None and not isinstance(model, torch.nn.Module):
        return model
    if model is None and method in BASELINE_METHODS:
        if weights is not None:  # a weights file for a method that has none would be ignored without a word
            raise FusionInputError(f"--weights {weights}: the method '{method}' uses no weights; they are for "
                                   "--method lkcfunet")
        return _named(lambda x: fuse_baseline(x[:, :1], x[:, 1:], method), method)
    if model is None and method != "lkcfunet":
        raise FusionInputError(f"unknown fusion method '{method}'; choose from {', '.join(FUSION_METHODS)}")
    device = resolve_device(device)
    if model is None:
        return _named(_network_predictor(_load_weights(weights, device), device, optimize), method)
    return _named(_network_predictor(model, device, optimize), type(model).__name__)


def _load_weights(weights: str | Path | None, device: torch.device) -> torch.nn.Module:
    """The network of a weights file (default: the bundle's), loaded once while it is the latest one used."""
    from .networks import default_weights_path, load_network

    path = Path(weights) if weights is not None else default_weights_path()
    if not path.is_file():
        raise FusionInputError(
            f"{path}: no LKC-FUNet weights file; pass --weights FILE (weights=...) or a baseline --method max"
        )
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(device))
    if key not in _LOADED:
        network = load_network(path, map_location=device)
        config = getattr(network, "config", {})
        if (config.get("in_channels"), config.get("out_channels")) not in ((2, 1), (None, None)):
            raise FusionInputError(
                f"{path}: weights are for {config['in_channels']} input and {config['out_channels']} output channel(s); "
                "fusion needs 2 inputs (MRI, other) and 1 output: these are not fusion weights"
            )
        _LOADED.clear()  # keep one network alive, not every file ever used
        _LOADED[key] = network
    return _LOADED[key]


def _network_predictor(model: torch.nn.Module, device: torch.device, optimize: bool) -> Predictor:
    """``model`` on ``device`` run in eval mode (optimised and cached when ``optimize``) as a clamped predictor; the
    caller's module keeps its own mode, as MONAI's inferers leave it."""
    net = model.to(device)
    if optimize:
        from .networks import optimize_for_inference

        versions = tuple((t.data_ptr(), t._version) for t in (*net.parameters(), *net.buffers()))
        cached = _OPTIMIZED.setdefault(model, {}).get(str(device))
        if cached is not None and cached[0] == versions:
            return cached[1]
        net = optimize_for_inference(net)

    def predict(x: torch.Tensor) -> torch.Tensor:
        training = net.training and not optimize  # the caller's module; an optimised copy is inference only
        if training:
            net.eval()  # dropout off, norms on their running statistics; the mode is given back afterwards
        try:
            with torch.no_grad():
                return net(x.to(device)).clamp(0.0, 1.0)
        finally:
            if training:
                net.train()

    predict.size_divisible = int(getattr(model, "size_divisible", 4))  # type: ignore[attr-defined]
    if optimize:  # the optimised copy holds no reference to ``model``, so the weak cache entry can die with it
        _OPTIMIZED[model][str(device)] = (versions, predict)
    return predict


def check_tta(tta: bool, predictor: Predictor) -> None:
    """Refuse test-time augmentation for a baseline method, where it would be silently meaningless.

    Args:
        tta: whether the flip ensemble was asked for.
        predictor: made by :func:`build_predictor`.

    Raises:
        FusionInputError: ``tta`` with a baseline method (``max``, ``mean``, ``dwt``, ``laplacian``).
    """
    method = getattr(predictor, "fusion_method", None)
    if tta and method in BASELINE_METHODS:
        raise FusionInputError(f"--tta (tta=True) averages the network over image flips; the method '{method}' has no "
                               "network: leave it off, or use --method lkcfunet")


def _named(predict: Predictor, name: str) -> Predictor:
    """Tag a predictor with the method it runs (recorded as ``fusion_method`` in the output's meta)."""
    predict.fusion_method = name  # type: ignore[attr-defined]
    return predict


def worker_policy(workers: int | None, threads: int | None, device: torch.device) -> tuple[int, int | None]:
    """How many slices to fuse at once (``workers``) and with how many intra-op threads each.

    On the CPU the default is one worker per available core with one thread each: measured on 2-core AMD EPYC and
    Intel Xeon CPUs, two one-thread workers fuse a volume faster than one two-thread worker, and unlike two threads on
    one slice (whose OpenMP barriers wait for a descheduled thread) they keep their share of the CPU when other jobs
    compete for it (docs/performance.md). Given one of the two, the other fills the available cores; the product
    never exceeds them unless both are given. Under ``torchrun`` the cores are shared out among the processes of
    the machine (``LOCAL_WORLD_SIZE``). ``workers=1`` alone leaves PyTorch's thread count as it is (the plain
    reference path of ``lkcfusion fuse --no-optimize``). On CUDA there is one worker and the thread count is not
    changed.

    Args:
        workers: slices (or tiles) fused concurrently, or ``None`` for the default.
        threads: intra-op threads per worker, or ``None`` for the default.
        device: where the network runs.

    Returns:
        ``(workers, threads)``; threads ``None`` means "leave PyTorch's setting".

    Raises:
        FusionInputError: a count below 1, or above 4 per core of the machine.
    """
    most = 4 * max(os.cpu_count() or 1, available_cores())  # beyond it only slower; 20000 threads crashed OpenMP
    for name, value in (("workers", workers), ("threads", threads)):
        if value is not None and as_count(value, name) > most:
            raise FusionInputError(f"{name} {value}: more than 4 per core of this machine ({most // 4} cores); "
                                   f"give at most {most}")
    if device.type != "cpu":
        return 1, None
    # processes started together on this machine (torchrun's LOCAL_WORLD_SIZE) share its cores
    cores = max(1, available_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))
    if workers is None:
        threads = threads or 1
        return max(1, cores // threads), threads
    if workers == 1:
        return 1, threads
    return workers, threads or max(1, cores // workers)


@contextmanager
def _intra_op_threads(threads: int | None) -> Iterator[None]:
    """Set PyTorch's intra-op thread count (process-wide) for the block, and restore it after."""
    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _in_workers(predict: Predictor, pool: ThreadPoolExecutor) -> Predictor:
    """``predict`` on a batch one sample at a time, the samples shared out among ``pool``'s threads.

    PyTorch releases the GIL inside its operators, so the samples run in parallel (each without autograd: the grad
    mode is per thread). One sample per call was measured fastest per worker (the activations of one slice stay in
    the cache). A sample shape seen for the first time runs alone first, so that measured choices of the optimised
    network are timed without interference.
    """
    seen: set[tuple[int, ...]] = set()

    def one(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return predict(x)

    def parallel(x: torch.Tensor) -> torch.Tensor:  # (B, 2, H, W) -> (B, 1, H, W)
        samples = list(x.split(1))
        first = []
        if tuple(samples[0].shape) not in seen:
            seen.add(tuple(samples[0].shape))
            first = [one(samples.pop(0))]
        return torch.cat([*first, *pool.map(one, samples)])

    return parallel


def _flip_ensemble(predict: Predictor) -> Predictor:
    """The mean of ``predict`` over the four flips of the image plane (identity, left-right, up-down, both)."""

    def ensemble(x: torch.Tensor) -> torch.Tensor:
        total = predict(x)
        for dims in ((-1,), (-2,), (-2, -1)):
            total = total + predict(x.flip(dims)).flip(dims)
        return total / 4.0

    return ensemble


def _at_least(predict: Predictor, min_size: int) -> Predictor:
    """``predict`` on slices padded (replicate, bottom/right) to at least ``min_size`` a side, cropped back.

    Networks that halve the image several times break on tiny slices (a normalisation over one pixel at the
    deepest level); padding makes any size from 1x1 work.
    """

    def padded(x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height >= min_size and width >= min_size:
            return predict(x)
        grown = torch.nn.functional.pad(x, [0, max(min_size - width, 0), 0, max(min_size - height, 0)],
                                        mode="replicate")
        return predict(grown)[..., :height, :width]

    return padded


def _item_flags(value: object, count: int) -> list[bool]:
    """A metadata flag per item of a batch of ``count``: one value for all, or MONAI's collated list or tensor."""
    values = value.flatten().tolist() if isinstance(value, (torch.Tensor, np.ndarray)) else value
    return [bool(v) for v in values] if isinstance(values, (list, tuple)) else [bool(values)] * count


def _transpose_items(batch: torch.Tensor, swapped: list[bool]) -> torch.Tensor:
    """``(B, C, H, W)`` with the rows and columns of the items flagged in ``swapped`` exchanged (its own inverse)."""
    if not any(swapped):
        return batch
    if all(swapped):
        return batch.transpose(-1, -2)
    return torch.stack([item.transpose(-1, -2) if flag else item for item, flag in zip(batch, swapped)])


class FusionInferer(Inferer):
    """Fuse the network's pair ``(B, 2, *spatial)`` (channel 0 MRI, 1 other, in [0, 1]) to ``(B, 1, *spatial)``.

    2D slices up to ``tile_size`` go through the network whole (it pads to its stride and crops back); larger
    slices in overlapping tiles blended with Gaussian weights; volumes ``(B, 2, X, Y, Z)`` slice by slice along
    ``axis``. ``network`` is an ``nn.Module`` (turned into a cached predictor by :func:`build_predictor`, so
    calling the inferer many times with one network optimises it once) or a predictor/baseline callable.
    On the CPU, the slices (or tiles) of a batch are fused by ``workers`` threads with ``threads`` intra-op threads
    each (see :func:`worker_policy`; the thread count is set for the call and restored after).
    The result is on the CPU and carries ``inputs``' metadata plus ``fusion_method``.

    Args:
        tile_size: largest slice side fused in one piece.
        batch_size: slices (or tiles) per network call.
        overlap: overlap of neighbouring tiles.
        axis: voxel axis to slice volumes along; ``None`` takes the axial axis of ``inputs``' affine (else 2).
        tta: test-time augmentation: average the predictions over the four flips of the image plane.
        device: where the network runs (default CUDA when available, else CPU).
        optimize: optimise an ``nn.Module`` for inference (see :func:`build_predictor`).
        progress: show progress over tiles/slices: a bar on a terminal, a line every 10 s otherwise.
        workers: slices or tiles fused concurrently on the CPU (default: one per available core divided by
            ``threads``); see :func:`worker_policy`.
        threads: intra-op threads per worker (default: 1; the cores left per worker when ``workers`` > 1 is given;
            PyTorch's own setting with ``workers=1``).

    Raises:
        FusionInputError: a batch or tile size below 1, an ``axis`` other than 0, 1, 2, a worker or thread count
            below 1 or above 4 per core, a ``tta`` other than true or false (see
            :func:`~monai_lkcfusion.errors.as_flag`), or an unusable device.
    """

    def __init__(
        self,
        tile_size: int = 1024,
        batch_size: int = 8,
        overlap: float = 0.25,
        axis: int | None = None,
        tta: bool = False,
        device: str | torch.device | None = None,
        optimize: bool = True,
        progress: bool = False,
        workers: int | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__()
        for option, value in (("batch_size (--batch-size)", batch_size), ("tile_size", tile_size)):
            as_count(value, option)
        self.tile_size = tile_size
        self.batch_size = batch_size
        self.overlap = overlap
        if axis is not None and (not isinstance(axis, int) or isinstance(axis, bool) or axis not in (0, 1, 2)):
            raise FusionInputError(f"--axis {axis!r}: a volume has axes 0, 1, 2")  # also when only pictures come
        self.axis = axis
        self.tta = as_flag(tta, "tta")
        self.device = resolve_device(device)
        self.optimize = optimize
        self.progress = progress
        self.workers, self.threads = worker_policy(workers, threads, self.device)

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: torch.nn.Module | Predictor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Fused luma ``(B, 1, *spatial)`` in [0, 1] for the pair ``inputs`` ``(B, 2, *spatial)``.

        Raises:
            FusionInputError: a network output with NaN/Inf values (an ``axis`` other than 0, 1, 2 is refused when
                the inferer is built).
        """
        predictor = build_predictor(network, device=self.device, optimize=self.optimize)
        # a network that halves the image n times needs 2 * 2^n pixels a side (LKCFUNet: size_divisible = 2^n)
        min_size = 2 * int(getattr(predictor, "size_divisible", getattr(network, "size_divisible", 4)))
        predict = _at_least(_flip_ensemble(predictor) if self.tta else predictor, min_size)
        pair = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        spatial = pair.shape[2:]
        with _intra_op_threads(self.threads), ThreadPoolExecutor(self.workers) as pool:
            if self.workers > 1:
                predict = _in_workers(predict, pool)
            name = Path(str(getattr(inputs, "meta", {}).get("filename_or_obj", "image"))).name
            if len(spatial) == 3:
                fused = self._volume(inputs, pair, predict, name)
            else:  # pictures in their stored row order (MONAI's PILReader swaps rows and columns), given back as came
                swapped = _item_flags(getattr(inputs, "meta", {}).get(ROWS_COLUMNS_SWAPPED, False), pair.shape[0])
                shown = _transpose_items(pair, swapped)
                whole = max(shown.shape[2:]) <= self.tile_size
                fused = _transpose_items(predict(shown).cpu() if whole else self._windowed(shown, predict, -1, name),
                                         swapped)
        nonfinite = int((~torch.isfinite(fused)).sum())
        if nonfinite:  # clamp keeps NaN: a broken network would give an all-black or all-NaN image
            raise FusionInputError(
                f"the network ({getattr(predictor, 'fusion_method', 'model')}) gave {nonfinite} NaN/Inf values of "
                f"{fused.numel()}; its weights are broken (NaN/Inf) or do not fit: nothing was written"
            )
        out = convert_to_dst_type(fused.clone(), inputs)[0]  # (B, 1, *spatial), a normal tensor again
        if isinstance(out, MetaTensor):
            out.meta["fusion_method"] = getattr(predictor, "fusion_method", "model")
        return out

    def _volume(self, inputs: torch.Tensor, pair: torch.Tensor, predict: Predictor, name: str) -> torch.Tensor:
        """Each volume of the batch sliced along ``axis`` (default :func:`~monai_lkcfusion.transforms.slicing_axis`)
        in the anatomical layout of the training pictures (:func:`~monai_lkcfusion.transforms.slice_layout`, from
        its own affine), fused and put back in its voxel order."""
        affines = inputs.affine if isinstance(inputs, MetaTensor) else None
        placed = _item_flags(getattr(inputs, "meta", {}).get("has_geometry", True), pair.shape[0])  # arrays: no anatomy
        fused = []
        for item in range(pair.shape[0]):  # a collated batch may mix orientations: each by its own affine
            affine = None if affines is None else affines[item] if affines.ndim == 3 else affines
            affine = affine if placed[item] else None
            axis = self.axis if self.axis is not None else slicing_axis(affine, tuple(pair.shape[2:]))
            (rows, columns), flipped = slice_layout(affine, axis)
            order = (rows, columns, axis)
            dims = [2 + order.index(voxel) for voxel in flipped]
            shown = pair[item:item + 1].permute(0, 1, *(2 + voxel for voxel in order))  # (1, 2, rows, columns, slices)
            out = self._windowed(shown.flip(dims) if dims else shown, predict, 2, name)
            out = out.flip(dims) if dims else out
            fused.append(out.permute(0, 1, *(2 + order.index(voxel) for voxel in range(3))))  # (1, 1, X, Y, Z)
        return torch.cat(fused)

    def _windowed(self, pair: torch.Tensor, predict: Predictor, axis: int, name: str = "image") -> torch.Tensor:
        """Tiles of a large 2D pair, or slices of a volume along ``axis``, with :class:`~monai_lkcfusion.progress.
        Progress` (a bar on a terminal, a line every 10 s otherwise) when ``progress``."""
        from monai.data.utils import dense_patch_slices
        from monai.inferers.utils import _get_scan_interval

        from .progress import Progress

        spatial = pair.shape[2:]
        plane = [s for i, s in enumerate(spatial) if len(spatial) == 2 or i != axis]
        roi = tuple(min(s, self.tile_size) for s in plane)
        options = {
            "roi_size": roi,
            "sw_batch_size": self.batch_size,
            "overlap": self.overlap,
            "mode": "constant" if list(roi) == plane else "gaussian",  # blend only where tiles overlap
            "progress": False,
            "sw_device": self.device,
            "device": "cpu",
        }
        interval = _get_scan_interval(plane, roi, len(plane), (self.overlap,) * len(plane))
        tiles = len(dense_patch_slices(plane, roi, interval))
        total = tiles * (spatial[axis] if len(spatial) == 3 else 1) * (pair.shape[0])
        unit = "slices" if len(spatial) == 3 and tiles == 1 else "tiles"
        progress = Progress(total, f"fusing {name}", unit, enabled=self.progress)

        def counted(x: torch.Tensor) -> torch.Tensor:
            out = predict(x)
            progress.update(x.shape[0])
            return out

        inferer = SlidingWindowInferer(**options) if len(spatial) == 2 else SliceInferer(spatial_dim=axis, **options)
        with torch.no_grad(), progress:
            return inferer(pair, counted)
