"""Exceptions a user can cause; the CLI turns them into one line and exit code 2."""

from __future__ import annotations

import builtins
import re
from collections.abc import Sequence

__all__ = [
    "FusionInputError", "as_count", "as_flag", "as_names", "finish_pool_threads", "list_names", "one_line",
    "user_error",
]


class FusionInputError(ValueError):
    """An input (file, array, option or weights) that cannot be used, with a message saying what to do.

    The message names the offending file or option and the problem in one line, for example
    ``"mri.nii.gz: file not found"``.
    """


def as_flag(value: object, option: str) -> bool:
    """An on/off setting as a bool: ``True``/``False``, or the strings ``"true"``/``"false"`` in any case, which is
    what ``python -m monai.bundle run --overwrite false`` passes (a non-empty string would otherwise count as on).

    Args:
        value: the setting.
        option: its name, for the message.

    Returns:
        the bool.

    Raises:
        FusionInputError: anything else (e.g. ``"no"``, ``0``, ``None``).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise FusionInputError(f"{option} {value!r}: give true or false")


def as_count(value: object, option: str, minimum: int = 1, unit: str = "") -> int:
    """A count setting as an int: a whole number of at least ``minimum`` (``bool`` and ``"2"`` are not counts).

    Args:
        value: the setting.
        option: its name as the user wrote it, for the message (e.g. ``"batch_size"``, ``"--workers"``).
        minimum: the smallest allowed value (0 where 0 means "off").
        unit: what is counted, for the message (e.g. ``"epochs"``).

    Returns:
        the int.

    Raises:
        FusionInputError: ``<option> <value>: give a whole number [of <unit>] of at least <minimum>``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        counted = f" of {unit}" if unit else ""
        off = " (0: off)" if minimum == 0 else ""
        raise FusionInputError(f"{option} {value!r}: give a whole number{counted} of at least {minimum}{off}")
    return value


def as_names(names: Sequence[str] | str, option: str) -> tuple[str, ...]:
    """A list setting of names (methods, metrics) as a tuple: each name once, in the order first given.

    Args:
        names: the names; a string is one name.
        option: the setting's name as the user wrote it, for the message (e.g. ``"--metrics"``).

    Returns:
        the names without repeats.

    Raises:
        FusionInputError: ``<option>: give at least one name`` for no names (e.g. ``--methods ""``).
    """
    unique = tuple(dict.fromkeys([names] if isinstance(names, str) else names))
    if not unique:
        raise FusionInputError(f"{option}: give at least one name")
    return unique


def list_names(names: Sequence[str], limit: int = 5) -> str:
    """Format names for an error message: the first ``limit`` of them, then ``"and N more"``.

    Args:
        names: the names to list.
        limit: how many to show.

    Returns:
        e.g. ``"a, b, c and 7 more"``.
    """
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


def user_error(err: BaseException) -> FusionInputError | OSError | None:
    """The user's error inside MONAI's wrappers: ``Compose`` and datasets raise ``RuntimeError("applying transform
    ...")`` and the bundle parser ``RuntimeError("Failed to evaluate ...")`` *from* the error that explains it.

    Args:
        err: the error caught, e.g. from a ``Compose`` of this package's transforms or a ``Dataset`` item.

    Returns:
        The first :class:`FusionInputError` or :class:`OSError` (unwritable place, full disk) in the chain of causes
        (``err`` itself included); for an error a ``DataLoader`` worker process re-raised as text (PyTorch keeps
        only the type and the formatted traceback), a :class:`FusionInputError` with the message that traceback
        names; ``None`` when there is neither (a bug: keep the traceback).

    Example::

        try:
            item = dataset[0]  # a Dataset whose Compose holds LoadFusionImaged
        except RuntimeError as err:
            raise (user_error(err) or err) from None  # "mri.png: file not found"
    """
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, (FusionInputError, OSError)):
        cause = cause.__cause__
    text = str(cause if cause is not None else err)
    if "Original Traceback" in text:  # torch.utils.data's ExceptionWrapper: the worker's traceback as text
        return _worker_error(text)
    return cause


_CHAINED = re.compile(r"^(The above exception was the direct cause of the following exception:|"
                      r"During handling of the above exception, another exception occurred:)$", re.MULTILINE)
"""The lines that join the exceptions of a chained traceback: a direct cause, or an error while handling another."""

_OS_ERRORS = sorted(name for name, value in vars(builtins).items() if isinstance(value, type)
                    and issubclass(value, OSError))
_USER_ERRORS = re.compile(rf"(?:{re.escape(__name__)}\.FusionInputError|{'|'.join(_OS_ERRORS)}): (.+)")
"""The last line of a traceback whose exception is the user's: a :class:`FusionInputError` or an ``OSError``."""


def _worker_error(text: str) -> FusionInputError | None:
    """The user's error (:class:`FusionInputError`, or an ``OSError`` such as a full disk) of a ``DataLoader``
    worker's formatted traceback, found as :func:`user_error` finds one in a chain of causes: the last exception, or
    its direct causes; an exception raised while handling another is a bug of its own (``None``: keep the
    traceback)."""
    parts = _CHAINED.split(text)  # [exception, joiner, exception, joiner, ..., the one raised]
    for index in range(len(parts) - 1, -1, -2):
        lines = [line.strip() for line in parts[index].strip().splitlines() if line.strip()]
        found = _USER_ERRORS.fullmatch(lines[-1]) if lines else None
        if found:
            return FusionInputError(found.group(1))
        if index == 0 or not parts[index - 1].startswith("The above exception was the direct cause"):
            return None
    return None


def finish_pool_threads(timeout: float = 10.0) -> None:
    """Wait for the workers of terminated ``multiprocessing.pool.ThreadPool`` s still running a task, before the
    process exits with an error: MONAI's ``CacheDataset`` loads in a thread pool that an error terminates without
    joining its threads, and a worker still inside PyTorch's C++ code when the interpreter exits aborted it
    (``terminate called without an active exception``, exit 134 after the one-line error, under load about half the
    time). Workers of pools still open are idle, not waited for.

    Args:
        timeout: the longest wait in seconds, for all of them together.
    """
    import gc
    import multiprocessing.pool
    import time

    deadline = time.monotonic() + timeout
    # by type, not isinstance: that asks objects their __class__, and deprecated ones warn (torch's reduce_op)
    pools = [obj for obj in gc.get_objects() if issubclass(type(obj), multiprocessing.pool.ThreadPool)]
    for pool in pools:
        if getattr(pool, "_state", multiprocessing.pool.RUN) == multiprocessing.pool.RUN:
            continue
        for worker in list(getattr(pool, "_pool", ())):
            worker.join(max(deadline - time.monotonic(), 0.0))


def one_line(err: BaseException) -> str:
    """Collapse an exception message into a single line, as the command line and the Slicer worker show it.

    Args:
        err: the exception; an ``OSError`` with a file name is shown as ``file: reason``.

    Returns:
        The message without line breaks.
    """
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or err}"
    return " ".join(str(err).split())
