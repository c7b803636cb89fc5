"""Choices measured on this machine at first use and cached on disk, so that no speed constant comes from another CPU.

Which of several equivalent computations is fastest (a direct or an FFT convolution, which tile size, which memory
format) depends on the CPU (AVX-512, AMX, cache sizes), the thread count and the PyTorch build. :func:`fastest`
times the candidates; :class:`ChoiceCache` keeps the winners in a JSON file under :func:`cache_dir`, one section per
:func:`~monai_lkcfusion.machine.machine_key`, so that the next process on the same kind of machine reuses them
without measuring again. A cache that cannot be read or written is ignored (the choice is measured again and kept in
memory): a cache never changes a result, only how fast it comes.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from monai_lkcfusion.machine import machine_key

__all__ = ["ChoiceCache", "cache_dir", "fastest", "synchronize"]

CACHE_ENV = "LKCFUSION_CACHE_DIR"
"""Environment variable naming the cache folder (default ``$XDG_CACHE_HOME/monai-lkcfusion`` or
``~/.cache/monai-lkcfusion``)."""


def cache_dir() -> Path:
    """The folder of the measured-choice caches: ``$LKCFUSION_CACHE_DIR``, else ``$XDG_CACHE_HOME/monai-lkcfusion``,
    else ``~/.cache/monai-lkcfusion``.

    Returns:
        the folder's path (it may not exist yet).
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "monai-lkcfusion"


class ChoiceCache:
    """Measured choices of one kind (e.g. convolution plans), in ``<cache_dir>/<name>.json``, per machine key.

    The file holds ``{machine_key: {choice_key: value}}``; :meth:`put` merges with what other processes wrote since
    and replaces the file atomically. Thread-safe within a process.

    Args:
        name: file stem, e.g. ``"inference_plans"``.
        folder: cache folder (default :func:`cache_dir`, read when the cache is first used).
    """

    def __init__(self, name: str, folder: str | Path | None = None) -> None:
        self.name = name
        self.folder = Path(folder) if folder is not None else None
        self._memory: dict[str, object] = {}
        self._lock = threading.Lock()
        self._warned = False

    def __deepcopy__(self, memo: dict) -> ChoiceCache:
        return self  # a shared store: copies of a network keep using the same cache

    @property
    def path(self) -> Path:
        """The cache file.

        Returns:
            ``<folder>/<name>.json``, with :func:`cache_dir` as the folder when none was given.
        """
        return (self.folder or cache_dir()) / f"{self.name}.json"

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            content = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # missing, unreadable or corrupt: start afresh
            return {}
        return content if isinstance(content, dict) else {}

    def get(self, key: str) -> object | None:
        """The cached value of ``key`` on this machine, or ``None``.

        A key not in memory is looked up on disk again, so a long-lived process uses what other processes measured
        after it first read the file (two processes fusing the same input then run the same plans).

        Args:
            key: the choice's key.

        Returns:
            the value stored for ``key`` under this machine's :func:`~monai_lkcfusion.machine.machine_key`, or
            ``None``.
        """
        with self._lock:
            if key not in self._memory:
                section = self._read().get(machine_key(), {})
                # this process's own choices stay as they are (its networks already run them)
                self._memory = {**(section if isinstance(section, dict) else {}), **self._memory}
            return self._memory.get(key)

    def put(self, key: str, value: object) -> None:
        """Remember ``value`` for ``key`` on this machine, in memory and (where writable) on disk.

        A cache folder that cannot be written gives one warning per cache, not an error.

        Args:
            key: the choice's key.
            value: a JSON-serialisable value.
        """
        with self._lock:
            self._memory[key] = value
            content = self._read()
            section = content.get(machine_key())
            content[machine_key()] = {**(section if isinstance(section, dict) else {}), key: value}
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile("w", dir=self.path.parent, suffix=".tmp", delete=False) as handle:
                    json.dump(content, handle, indent=1, sort_keys=True)
                os.replace(handle.name, self.path)
            except OSError as err:
                if not self._warned:
                    warnings.warn(f"{self.path}: measured choices are not cached ({err}); set {CACHE_ENV}", stacklevel=2)
                    self._warned = True


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA runs them asynchronously), so that a timing is complete.

    Args:
        device: the device; nothing is done for devices other than CUDA.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fastest(candidates: Mapping[str, Callable[[], object]], repeats: int = 3, margin: float = 1.25) -> str:
    """The name of the fastest of ``candidates`` (functions without arguments), by wall-clock time.

    Every candidate runs once (its first call may also build caches, so it is not counted) and once timed; the
    candidates within ``margin`` of the fastest are timed ``repeats - 1`` more times and compared by their minimum,
    which is the least disturbed by other work on the machine.

    Args:
        candidates: name -> function; the result is discarded.
        repeats: timed calls of the close candidates.
        margin: candidates slower than this factor times the fastest after one timed call are dropped.

    Returns:
        the fastest candidate's name.
    """

    def timed(fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    best: dict[str, float] = {}
    for name, fn in candidates.items():
        fn()
        best[name] = timed(fn)
    lead = min(best.values())
    for name in [name for name, t in best.items() if t <= margin * lead]:
        best[name] = min(best[name], *(timed(candidates[name]) for _ in range(repeats - 1)))
    return min(best, key=best.__getitem__)
