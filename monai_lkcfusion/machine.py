"""What CPU this is and how busy it is: named beside every measured figure and used to key measured choices.

Speed ratios measured on one CPU (an AMD EPYC without AMX, an Intel Xeon with AVX-512 and AMX) do not carry over to
another, so benchmarks print :func:`machine_summary` with each figure, and per-layer choices measured at run time
(:mod:`monai_lkcfusion.networks.calibration`) are cached under :func:`machine_key`.
"""

from __future__ import annotations

import os
import platform
import re

import torch

__all__ = ["available_cores", "cpu_features", "cpu_model", "machine_key", "machine_summary"]

_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`), e.g. ``AMD EPYC 9B14``.

    Returns:
        the model name with runs of spaces collapsed; :func:`platform.machine` when nothing else is known.
    """
    match = re.search(r"^model name\s*:\s*(.+)$", _cpuinfo(), re.MULTILINE)
    return " ".join(match.group(1).split()) if match else platform.processor() or platform.machine()


def cpu_features() -> tuple[str, ...]:
    """The vector/matrix extensions that decide which kernels are fast: a subset of AVX2, AVX-512, AVX512-BF16, AMX.

    Returns:
        the ``/proc/cpuinfo`` flags among ``avx2``, ``avx512f``, ``avx512_bf16``, ``amx_tile``, ``amx_bf16``, in
        that order; empty where ``/proc/cpuinfo`` is missing.
    """
    match = re.search(r"^flags\s*:\s*(.+)$", _cpuinfo(), re.MULTILINE)
    flags = set(match.group(1).split()) if match else set()
    return tuple(f for f in _FEATURES if f in flags)


def available_cores() -> int:
    """Logical cores this process may run on (its CPU affinity where the OS tells it, else the machine's count).

    Returns:
        the number of cores, at least 1.
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def machine_key() -> str:
    """A key for results that hold only on this kind of CPU and this PyTorch: model, extensions, torch version.

    Returns:
        ``"<model> [<extensions> or baseline] torch <version>"``.
    """
    return f"{cpu_model()} [{' '.join(cpu_features()) or 'baseline'}] torch {torch.__version__}"


def machine_summary() -> str:
    """One line naming the CPU, its extensions, the cores, torch's thread count and the 1-minute load average.

    Returns:
        the line (the load average is ``nan`` where the OS has none).
    """
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"CPU {cpu_model()} ({', '.join(cpu_features()) or 'no AVX2'}), {available_cores()} cores, "
        f"torch {torch.__version__} with {torch.get_num_threads()} thread(s), load average {load:.2f}"
    )
