"""Start a ``lkcfusion`` command in N processes on this machine with ``torch.distributed.run`` (``torchrun``).

Not a command itself: ``lkcfusion train --nproc N`` uses it. Each process runs ``python -m monai_lkcfusion
<command> ...`` without ``--nproc``; it sees ``LOCAL_RANK``/``WORLD_SIZE`` in its environment and runs the
distributed form of the workflow. Multi-node runs call ``torchrun`` directly (docs/training.md).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence

from ..engines.distributed import end_with_parent
from ..errors import as_count

__all__ = ["run_processes"]


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
        ``torchrun``'s exit code: 0 when every process succeeded.

    Raises:
        FusionInputError: ``nproc`` is not a whole number of at least 1.
        KeyboardInterrupt: after ``torchrun`` ended, when it was stopped by a SIGINT to this process.
    """
    as_count(nproc, "--nproc", unit="processes")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
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
