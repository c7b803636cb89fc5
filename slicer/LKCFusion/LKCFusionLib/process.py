"""The module's background fusion process: ``python -m monai_lkcfusion.apps.worker`` driven over pipes.

Plain Python (no Slicer): the module's logic starts one :class:`FusionProcess`, submits jobs and polls its events
from a ``qt.QTimer`` (so the GUI thread never waits); tests poll it in a loop. The process keeps its predictor
between jobs; :meth:`FusionProcess.cancel` ends it (the next job starts a new one).
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["WORKER_MODULE", "FusionProcess"]

WORKER_MODULE = "monai_lkcfusion.apps.worker"
"""The module the background process runs (``python -m``)."""


class FusionProcess:
    """A long-lived fusion worker process: :meth:`submit` jobs, :meth:`poll` the events it printed.

    Args:
        python: the Python interpreter (in Slicer: ``PythonSlicer``, a launcher that sets up its environment).
        env: the environment to start it in (in Slicer: ``slicer.util.startupEnvironment()``, as
            ``slicer.util.launchConsoleProcess`` does); default: this process's.
        extra_env: variables added to it (e.g. ``{"CUDA_VISIBLE_DEVICES": ""}``).
    """

    def __init__(
        self, python: str, env: Mapping[str, str] | None = None, extra_env: Mapping[str, str] | None = None
    ) -> None:
        self.python = python
        self.env = {**(os.environ if env is None else env), **(extra_env or {})}
        self._proc: subprocess.Popen | None = None
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._log: list[str] = []
        self._ids = itertools.count(1)

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id (``None`` before the first job)."""
        return self._proc.pid if self._proc is not None else None

    def log(self) -> str:
        """The last lines the process wrote on standard error (library messages, tracebacks)."""
        return "\n".join(self._log[-40:])

    def start(self) -> None:
        """Start the process (done by :meth:`submit` when needed)."""
        if self.running:
            return
        self._events = queue.Queue()
        self._log = []
        self._proc = subprocess.Popen(
            [self.python, "-m", WORKER_MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            env=self.env,
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),  # no console window on Windows
            start_new_session=os.name == "posix",  # its own process group: Cancel ends what a launcher started too
        )
        threading.Thread(target=self._read_events, args=(self._proc, self._events), daemon=True).start()
        threading.Thread(target=self._read_log, args=(self._proc, self._log), daemon=True).start()

    def submit(self, job: dict[str, Any]) -> str:
        """Send one job (the fields of ``monai_lkcfusion.apps.worker.FusionJob``); start the process if needed.

        Args:
            job: the job; an ``id`` is added when missing.

        Returns:
            The job's id (repeated in its events).
        """
        self.start()
        job = {**job, "id": str(job.get("id") or next(self._ids))}
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(job) + "\n")
        self._proc.stdin.flush()
        return job["id"]

    def poll(self) -> list[dict[str, Any]]:
        """The events received since the last call, without waiting.

        When the process has ended and its output is read, a last ``{"event": "exit", "returncode": N}`` is
        added (a crash, or :meth:`cancel`); :meth:`log` then says why.
        """
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def cancel(self) -> None:
        """End the process now (the job in progress is lost); the next :meth:`submit` starts a new one.

        The whole process tree ends: ``PythonSlicer`` is a launcher that runs the interpreter as its child, and
        killing the launcher alone left the worker fusing the cancelled job, then waiting on its input for good.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _kill_tree(proc)

    def close(self, timeout: float = 10.0) -> None:
        """Ask the process to quit after its current job and wait for it (killing it after ``timeout`` s)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.write(json.dumps({"command": "quit"}) + "\n")
                proc.stdin.close()
            proc.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            _kill_tree(proc)

    @staticmethod
    def _read_events(proc: subprocess.Popen, events: queue.Queue) -> None:
        """Reader thread: parse the process's JSON lines into ``events``; an ``exit`` event at the end."""
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "message", "message": line}
            events.put(event if isinstance(event, dict) else {"event": "message", "message": line})
        events.put({"event": "exit", "returncode": proc.wait()})

    @staticmethod
    def _read_log(proc: subprocess.Popen, log: list[str]) -> None:
        """Reader thread: keep the process's standard error (so that a full pipe never blocks it)."""
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line.rstrip())
            del log[:-200]


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and every process it started (its process group on POSIX, ``taskkill /T`` on Windows), close
    its input, and wait for it."""
    if os.name == "posix":
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # already gone
            pass
    else:
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True,
                       creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    proc.kill()
    if proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:  # the pipe is broken once the process is gone
            pass
    proc.wait()
