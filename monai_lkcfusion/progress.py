"""Progress a person can see during long work: a tqdm bar on a terminal, periodic lines otherwise (logs, CI); and
for long steps that cannot be counted (reading, resampling, registering a volume), a line while they last."""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any

__all__ = ["Progress", "Stage"]

STAGE_INTERVAL = 10.0
"""Seconds between the lines of a :class:`Stage` (the first one after this long): steps shorter than this print
nothing."""


class Progress:
    """Count steps of a long job and show them: a tqdm bar when ``stream`` is a terminal, else one line at most
    every ``interval`` seconds (``lkcfusion: fusing mri.nii.gz: 40/120 slices (33%), 25 s``), the first one after
    ``interval`` seconds, so that short jobs print nothing.

    Args:
        total: the number of steps.
        label: what is counted, e.g. ``"fusing mri.nii.gz"``.
        unit: name of a step (``"slices"``).
        interval: seconds between lines when ``stream`` is not a terminal.
        stream: where to write (default ``sys.stderr``).
        enabled: ``False`` shows nothing (``--quiet``).

    Example::

        with Progress(len(pairs), "evaluating", "pairs") as bar:
            for pair in pairs:
                ...
                bar.update()
    """

    def __init__(self, total: int, label: str, unit: str = "steps", interval: float = 10.0,
                 stream: IO[str] | None = None, enabled: bool = True) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.unit = unit
        self.interval = interval
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.done = 0
        self.start = self.last = time.monotonic()
        self.bar: Any = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=self.total, desc=label, unit=f" {unit}", file=self.stream, leave=False)
            except ImportError:
                self.bar = None

    def update(self, steps: int = 1) -> None:
        """Count ``steps`` more steps done.

        Args:
            steps: steps finished since the last call; the count stops at ``total``.
        """
        self.done = min(self.done + steps, self.total)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(steps)
            return
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            print(f"lkcfusion: {self.label}: {self.done}/{self.total} {self.unit} ({self.done / self.total:.0%}), "
                  f"{now - self.start:.0f} s", file=self.stream, flush=True)

    def close(self) -> None:
        """Remove the bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Stage:
    """Say what a long step without a count is doing while it runs: one line every ``interval`` seconds
    (``lkcfusion: reading and preparing mri.nii.gz and ct.nii.gz, 10 s``), the first one after ``interval``
    seconds, so that short steps print nothing. The lines come from a daemon thread; the step runs undisturbed.

    Args:
        label: what is being done, e.g. ``"reading and preparing mri.nii.gz and ct.nii.gz"``.
        interval: seconds between lines; default :data:`STAGE_INTERVAL`.
        stream: where to write (default ``sys.stderr``).
        enabled: ``False`` shows nothing (``--quiet``).

    Example::

        with Stage("registering ct.nii.gz to mri.nii.gz"):
            transform = register(fixed, moving)
    """

    def __init__(self, label: str, interval: float | None = None, stream: IO[str] | None = None,
                 enabled: bool = True) -> None:
        self.label = label
        self.interval = STAGE_INTERVAL if interval is None else interval
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def _report(self) -> None:
        """Print a line every ``interval`` seconds until the step ends."""
        start = time.monotonic()
        while not self._done.wait(self.interval):
            print(f"lkcfusion: {self.label}, {time.monotonic() - start:.0f} s", file=self.stream, flush=True)

    def __enter__(self) -> Stage:
        if self.enabled:
            self._thread = threading.Thread(target=self._report, name="lkcfusion-stage", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
