"""Start a ``lkcfusion`` command in N processes on this machine with ``torch.distributed.run`` (``torchrun``).

Not a command itself: ``lkcfusion train --nproc N`` uses it. Each process runs ``python -m monai_lkcfusion
<command> ...`` without ``--nproc``; it sees ``LOCAL_RANK``/``WORLD_SIZE`` in its environment and runs the
distributed form of the workflow. Multi-node runs call ``torchrun``, or this module in its place (docs/training.md).

``python -m monai_lkcfusion.cli.launch ARGS`` is ``torchrun ARGS`` with its failures as one line (:func:`torchrun`);
:func:`run_processes` starts it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ..engines.distributed import end_with_parent
from ..errors import as_count

__all__ = ["failure_summary", "run_processes", "torchrun"]


def run_processes(command_argv: Sequence[str], nproc: int) -> int:
    """Run ``lkcfusion <command_argv>`` in ``nproc`` processes with ``torchrun --standalone`` and wait.

    Args:
        command_argv: the command and its arguments, e.g. ``["train", "--epochs", "2"]`` (no ``--nproc``).
        nproc: processes on this machine (one per GPU with CUDA, else CPU processes with Gloo).

    A SIGTERM, SIGHUP or SIGINT to this process (a job scheduler's stop, a closed terminal, Ctrl-C or an IDE's stop
    button) is passed on to ``torchrun``, which stops its workers, and this process waits for them: they must not
    train on, and write into the run folder, after the command has ended (a SIGINT to this process alone left
    them training). On Linux ``torchrun`` also gets SIGTERM if this process dies without a word (SIGKILL).

    Returns:
        ``torchrun``'s exit code (:func:`torchrun`): 0 when every process succeeded, 2 when one stopped on the user's
        error.

    Raises:
        FusionInputError: ``nproc`` is not a whole number of at least 1.
        KeyboardInterrupt: after ``torchrun`` ended, when it was stopped by a SIGINT to this process.
    """
    as_count(nproc, "--nproc", unit="processes")
    launcher = [sys.executable, "-m", "monai_lkcfusion.cli.launch", "--standalone", f"--nproc_per_node={nproc}"]
    process = subprocess.Popen([*launcher, "-m", "monai_lkcfusion", *command_argv], preexec_fn=end_with_parent())
    received: list[int] = []

    def forward(number: int, _frame: object) -> None:
        received.append(number)
        process.send_signal(number)

    forwarded = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGINT") if hasattr(signal, name)]
    previous = {number: signal.signal(number, forward) for number in forwarded}
    try:
        code = process.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if signal.SIGINT in received:
        raise KeyboardInterrupt
    return code


def failure_summary(failures: Mapping[int, Any]) -> tuple[str | None, int]:
    """The one line and exit code for the failed processes of a ``torchrun`` launch.

    torchrun stops the other processes with SIGTERM once one fails, and those whose peer vanished inside a
    collective exit 1 (``peer_failed``), so the cause is chosen by kind before time (failure times are whole
    seconds, and a process stopped by torchrun's SIGTERM was the first by rank in a tie): a process that stopped on
    the user's error (exit code 2) has printed its one line, and the launch exits 2 as a single process would; else
    the earliest process ended by a signal other than SIGTERM (SIGKILL: killed from outside or by the
    out-of-memory killer; SIGSEGV) is named, else the earliest that exited with an error, else one ended by SIGTERM.

    Args:
        failures: global rank to ``torch.distributed.elastic.multiprocessing.errors.ProcessFailure``
            (``ChildFailedError.failures``: ``exitcode``, negative for a signal, ``signal_name()`` and ``timestamp``).

    Returns:
        the line to print (``None`` when the failed process printed its own) and the exit code.
    """
    if any(failure.exitcode == 2 for failure in failures.values()):
        return None, 2

    def order(rank: int) -> tuple[bool, bool, float, int]:  # other signals, then exit codes, then SIGTERM
        code = failures[rank].exitcode
        return code == -signal.SIGTERM, code > 0, failures[rank].timestamp, rank

    rank = min(failures, key=order)
    code = failures[rank].exitcode
    if code < 0:
        cause = f"was ended by {failures[rank].signal_name()}"
        cause += " (killed from outside, or out of memory)" if -code == signal.SIGKILL else ""
        return f"the process of rank {rank} {cause}; torchrun stopped the others", 1
    return f"the process of rank {rank} failed with exit code {code} (its error is printed above)", 1


def torchrun(argv: Sequence[str]) -> int:
    """``torchrun ARGV`` (``torch.distributed.run``) in this process, its end as one line and an exit code.

    torchrun ends a launch whose process failed with its ``ChildFailedError`` traceback and a failure report (40
    lines for a damaged image that the failed process had named in one), and a launch stopped by a signal (a
    scheduler's SIGTERM, Ctrl-C) with the traceback of its ``SignalException``; both exit 1.

    Args:
        argv: torchrun's arguments, e.g. ``["--standalone", "--nproc_per_node=2", "-m", "monai_lkcfusion", ...]``.

    Returns:
        0 when every process succeeded; see :func:`failure_summary` for a failed process; 128 + the signal number
        when torchrun was stopped by a signal (it stops its processes first).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(list(argv)))
    except ChildFailedError as error:
        line, code = failure_summary(error.failures)
        if line is not None:
            print(f"lkcfusion: error: {line}", file=sys.stderr)
        return code
    except SignalException as stop:
        return 128 + int(stop.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(torchrun(sys.argv[1:]))
