"""A fusion worker for GUI applications: jobs in, fused files out, one loaded predictor kept between jobs.

3D Slicer must not fuse on its GUI thread, and a MONAI Label server must not load the network per request. Both
run :class:`FusionWorker`, which fuses with the package's one pipeline (:func:`~monai_lkcfusion.inference.fuse`,
the same call ``lkcfusion fuse`` makes) and keeps the predictor that
:func:`~monai_lkcfusion.inferers.build_predictor` made for the last job.

``python -m monai_lkcfusion.apps.worker`` is the long-lived background process of the Slicer module: it reads one
JSON job per line on standard input and writes JSON events, one per line, on standard output (everything else
the libraries print goes to standard error)::

    -> {"id": "1", "mri": "mri.nrrd", "other": "pet.nrrd", "output": "fused.nrrd", "method": "lkcfunet"}
    <- {"event": "ready", "pid": 1234}                                  (once, after start-up)
    <- {"event": "started", "id": "1"}
    <- {"event": "progress", "id": "1", "done": 8, "total": 72}          (slices fused so far, after each call)
    <- {"event": "done", "id": "1", "output": "fused.nrrd", "shape": [1, 145, 181, 72], "seconds": 4.2,
        "predictor_seconds": 1.9, "predictor_reused": false}
    <- {"event": "error", "id": "1", "message": "pet.nrrd: file not found"}

A job's keys are the fields of :class:`FusionJob`. The process ends at the end of its input or on
``{"command": "quit"}``; cancelling a job means ending the process (the next job starts a new one).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import FusionInputError, as_count

__all__ = ["FusionJob", "FusionWorker", "check_job_values", "main", "serve"]

Event = dict[str, Any]
ProgressCallback = Callable[[int, int], None]


@dataclass
class FusionJob:
    """One fusion: the arguments of ``lkcfusion fuse MRI OTHER -o OUTPUT`` as fields.

    Args:
        mri: MRI file or DICOM series folder (or an image :func:`~monai_lkcfusion.inference.fuse` accepts).
        other: CT/PET/SPECT file or DICOM folder; any grid (resampled onto the MRI's).
        output: file to write; the extension picks the format (``.nrrd``, ``.nii.gz``, ``.png``, ...).
        id: the caller's name for the job, repeated in every event.
        method: ``"lkcfunet"`` or a baseline (``"max"``, ``"mean"``, ``"dwt"``, ``"laplacian"``).
        weights: LKC-FUNet weights file; ``None``: the package default.
        device: torch device; ``None``: CUDA when available.
        axis: voxel axis to slice volumes along; ``None``: the MRI's axial axis.
        modality: modality of ``other`` (``"CT"``, ``"PET"``, ``"SPECT"``, ``"MR"``); ``None``: from the data.
        batch_size: slices per network call.
        color: keep a colour PET/SPECT's colour (``False``: the fused luma only, as ``--gray``).
        mask_background: 0 where both inputs are 0 (``False``: as ``--no-mask-background``).
        tta: flip test-time augmentation (as ``--tta``).
        register: ``"rigid"`` or ``"affine"``: register ``other`` to the MRI before fusing (as ``--register``);
            ``"none"``: trust the files' world coordinates.
    """

    mri: Any
    other: Any
    output: str
    id: str = ""
    method: str = "lkcfunet"
    weights: str | None = None
    device: str | None = None
    axis: int | None = None
    modality: str | None = None
    batch_size: int = 8
    color: bool = True
    mask_background: bool = True
    tta: bool = False
    register: str = "none"

    @classmethod
    def from_dict(cls, request: dict[str, Any]) -> FusionJob:
        """A job from a decoded JSON request.

        Args:
            request: the job's fields; ``mri``, ``other`` and ``output`` are required.

        Returns:
            The job.

        Raises:
            FusionInputError: a missing required field, an unknown one, or a value of the wrong type or range.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(request) - names)
        if unknown:
            raise FusionInputError(f"job: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        missing = [name for name in ("mri", "other", "output") if not request.get(name)]
        if missing:
            raise FusionInputError(f"job: missing {', '.join(missing)}")
        check_job_values(request)
        return cls(**request)


def check_job_values(values: dict[str, Any], source: str = "job") -> None:
    """Refuse values of :class:`FusionJob` fields of the wrong JSON type or range (``"axis": "2"`` reached
    :func:`~monai_lkcfusion.inference.fuse` and failed there with a message that contradicted itself).

    Args:
        values: field names and values, as decoded from JSON; names that are not fields are not checked.
        source: what gave them, for the message (``"job"``, a label app's ``"params"``).

    Raises:
        FusionInputError: ``<source>: <field> <value>: give <what>``.
    """
    for name, value in values.items():
        kind = _FIELD_TYPES.get(name)
        optional = name in ("weights", "device", "axis", "modality")
        if kind is None or value is None and optional:
            continue
        if not isinstance(value, kind) or kind is int and isinstance(value, bool):
            wanted = {int: "a whole number", bool: "true or false", str: "a string"}[kind]
            raise FusionInputError(f"{source}: {name} {value!r}: give {wanted}")
    if values.get("axis") not in (None, 0, 1, 2):
        raise FusionInputError(f"{source}: axis {values['axis']}: a volume has axes 0, 1, 2")
    if "batch_size" in values:
        as_count(values["batch_size"], f"{source}: batch_size")


_FIELD_TYPES = {"mri": str, "other": str, "output": str, "id": str, "method": str, "weights": str, "device": str,
                "axis": int, "modality": str,
                "batch_size": int, "color": bool, "mask_background": bool, "tta": bool, "register": str}
"""The JSON type of each field of a :class:`FusionJob` request (a file path for ``mri``/``other``; a job built in
Python may hold anything ``fuse`` takes)."""


class FusionWorker:
    """Runs :class:`FusionJob` s with the package's inference pipeline, keeping the last job's predictor.

    The predictor of a job (network loaded from its weights file and optimised, or a baseline) is built by
    :func:`~monai_lkcfusion.inferers.build_predictor` and kept: the next job with the same method, weights file
    (same path, modification time and size) and device uses it without loading or optimising anything.
    """

    def __init__(self) -> None:
        self._predictor: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._key: tuple | None = None
        self.loads = 0
        """How many predictors this worker has built (1 after any number of jobs with the same model)."""

    def predictor(
        self, method: str = "lkcfunet", weights: str | None = None, device: str | None = None
    ) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
        """The predictor for ``method``/``weights``/``device``, built on first use and kept.

        Args:
            method: fusion method.
            weights: weights file (``None``: the package default).
            device: torch device.

        Returns:
            The predictor and whether it is the one the previous job used (nothing loaded, nothing optimised).

        Raises:
            FusionInputError: what :func:`~monai_lkcfusion.inferers.build_predictor` raises (unknown method,
                missing weights, unusable device).
        """
        from ..inferers import build_predictor

        key = _model_key(method, weights, device)
        if self._predictor is not None and key == self._key:
            return self._predictor, True
        self._predictor, self._key = build_predictor(None, method, weights, device, optimize=True), key
        self.loads += 1
        return self._predictor, False

    def run(self, job: FusionJob, progress: ProgressCallback | None = None) -> Event:
        """Fuse one job and write its output (replacing an existing file, never an input), as ``lkcfusion fuse`` does.

        Args:
            job: what to fuse.
            progress: called with ``(slices done, slices in all)`` after each network call (one slice per call
                on the CPU, where slice workers fuse one slice each).

        Returns:
            ``{"output", "shape", "seconds", "predictor_seconds", "predictor_reused"}``.

        Raises:
            FusionInputError: an output that is an input file (checked first), or what
                :func:`~monai_lkcfusion.inference.fuse` raises for unusable inputs.
        """
        from ..data import read_image, write_image
        from ..data.atomic import check_not_input
        from ..inference import fuse
        from ..transforms.spatial import slicing_axis

        check_not_input(job.output, [image for image in (job.mri, job.other) if isinstance(image, (str, Path))])
        start = time.perf_counter()
        predictor, reused = self.predictor(job.method, job.weights, job.device)
        predictor_seconds = time.perf_counter() - start
        mri = read_image(job.mri) if isinstance(job.mri, (str, Path)) else job.mri
        model = predictor
        if progress is not None:
            spatial = tuple(mri.shape[1:])
            axis = None if len(spatial) == 2 else job.axis if job.axis is not None else slicing_axis(mri.affine, spatial)
            total = (spatial[axis] if axis is not None else 1) * (4 if job.tta else 1)  # a picture: one call
            model = _counting(predictor, total, progress)
        registration = {"register": job.register} if job.register != "none" else {}  # fuse()'s default otherwise
        fused = fuse(
            mri, job.other, model=model, device=job.device, optimize=False, progress=False, axis=job.axis,
            modality=job.modality, batch_size=job.batch_size, color=job.color, mask_background=job.mask_background,
            tta=job.tta, **registration,
        )
        write_image(fused, job.output, overwrite=True)
        return {
            "output": str(job.output),
            "shape": list(fused.shape),
            "seconds": round(time.perf_counter() - start, 3),
            "predictor_seconds": round(predictor_seconds, 3),
            "predictor_reused": reused,
        }


def _model_key(method: str, weights: str | None, device: str | None) -> tuple:
    """What identifies a predictor: the method, the weights file as it is now (for the network) and the device."""
    if method != "lkcfunet":
        return (method, device)
    from ..networks import default_weights_path

    path = Path(weights) if weights else default_weights_path()
    stat = path.stat() if path.is_file() else None
    return (method, str(path.resolve()), stat and (stat.st_mtime_ns, stat.st_size), device)


def _counting(
    predictor: Callable[[torch.Tensor], torch.Tensor], total: int, progress: ProgressCallback
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``predictor`` reporting the slices it has fused so far (capped at ``total``) after each call.

    The fusion's slice workers call it from several threads (one slice each): counting and reporting hold a lock,
    so no slice is lost and reports are not interleaved.
    """
    done = 0
    lock = threading.Lock()

    def predict(x: torch.Tensor) -> torch.Tensor:
        nonlocal done
        out = predictor(x)
        with lock:
            done += int(x.shape[0])
            progress(min(done, total), total)
        return out

    predict.fusion_method = getattr(predictor, "fusion_method", "model")  # type: ignore[attr-defined]
    return predict


def serve(requests: Iterable[str], emit: Callable[[Event], None], worker: FusionWorker | None = None) -> int:
    """Run the jobs of ``requests`` (JSON lines) one after the other, reporting each step with ``emit``.

    Args:
        requests: lines of JSON: a :class:`FusionJob`'s fields, or ``{"command": "quit"}``.
        emit: receives the events (see the module docstring).
        worker: the worker to use (default: a new one).

    Returns:
        0 (a failed job is an ``error`` event, not a failed worker).
    """
    from ..errors import one_line

    worker = worker or FusionWorker()
    emit({"event": "ready", "pid": os.getpid()})
    for line in requests:
        if not line.strip():
            continue
        job_id = ""
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise FusionInputError(f"job: expected a JSON object, got {type(request).__name__}")
            if request.get("command") == "quit":
                break
            job_id = str(request.get("id", ""))
            job = FusionJob.from_dict(request)
            emit({"event": "started", "id": job_id})
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = worker.run(
                    job, lambda done, total, job_id=job_id: emit(
                        {"event": "progress", "id": job_id, "done": done, "total": total}
                    ),
                )
            for w in caught:
                emit({"event": "warning", "id": job_id, "message": one_line(Exception(str(w.message)))})
            emit({"event": "done", "id": job_id, **result})
        except Exception as err:  # noqa: BLE001 - any failure of one job is its error event; the worker goes on
            expected = isinstance(err, (FusionInputError, OSError))
            emit({"event": "error", "id": job_id, "message": one_line(err) if expected
                  else f"{type(err).__name__}: {one_line(err)}"})
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m monai_lkcfusion.apps.worker``: serve JSON jobs from standard input (see the module docstring).

    Args:
        argv: unused (the worker takes no options); present for symmetry with the command line.

    Returns:
        The exit code (0).
    """
    del argv
    events = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # prints of libraries must not mix with the events
    sys.stdout = sys.stderr

    def emit(event: Event) -> None:
        events.write(json.dumps(event) + "\n")
        events.flush()

    return serve(sys.stdin, emit)


if __name__ == "__main__":
    sys.exit(main())
