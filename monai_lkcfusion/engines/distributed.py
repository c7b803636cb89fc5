"""``torch.distributed`` helpers of the multi-process workflows (``bundle/configs/multi_gpu_*.json``, ``--nproc``).

Processes are started by ``torchrun`` (or ``torch.distributed.run``), which sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``. Every helper also works in a single, non-distributed process (rank 0 of 1), so the same code runs
with and without ``torchrun``. One process per device: ``cuda:<LOCAL_RANK>`` with the NCCL backend when CUDA is
available, else the CPU with Gloo.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import ignite.distributed as idist
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from ..errors import FusionInputError

__all__ = [
    "PEER_FAILED_MESSAGE",
    "BufferBroadcastHandler",
    "all_gather_objects",
    "barrier",
    "check_replicas",
    "destroy_distributed",
    "distributed_device",
    "distributed_network",
    "end_with_parent",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed_launch",
    "is_main_process",
    "main_process_logging",
    "peer_failed",
    "shard_items",
    "state_digest",
    "stop_with_launcher",
]

T = TypeVar("T")


def is_distributed_launch() -> bool:
    """Whether this process was started by ``torchrun`` (``LOCAL_RANK`` and ``WORLD_SIZE`` are set).

    Returns:
        ``True`` when both environment variables are set.
    """
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "NCCL communicator was aborted")
"""What Gloo and NCCL say in this process when another process of the run stopped during a collective."""


def peer_failed(error: BaseException) -> bool:
    """Whether ``error`` (or one it was raised from) means that another process of this distributed run stopped
    while this one waited for it in a collective: a consequence of that process's own failure, which it reports
    itself (a bad image read by one rank gave the others a 98-line Gloo traceback each).

    Args:
        error: the exception that ended this process's work.

    Returns:
        ``True`` when ``error`` or one in its ``__cause__``/``__context__`` chain says a peer's connection was lost;
        always ``False`` outside a ``torchrun`` launch.
    """
    if not is_distributed_launch():
        return False
    cause: BaseException | None = error
    while cause is not None:
        if any(text in str(cause) for text in _PEER_LOST):  # not every DistError: a rendezvous timeout is this one's
            return True
        cause = cause.__cause__ or cause.__context__
    return False


PEER_FAILED_MESSAGE = "stopped: another process of this distributed run failed (its own error is printed above)"
"""The one line a process prints instead of its traceback when :func:`peer_failed`."""


def end_with_parent() -> Callable[[], None] | None:
    """A call that makes the kernel send SIGTERM to the calling process when its parent dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``; ``None`` elsewhere). ``prctl`` is looked up here, so that a child between fork and
    exec (``preexec_fn``) only calls it. A ``torchrun`` worker calls it on itself: torchrun starts each worker in a
    session of its own, and a SIGKILLed torchrun left them training and writing checkpoints.

    Returns:
        a callable without arguments that sets ``PR_SET_PDEATHSIG`` to SIGTERM for the process calling it, or
        ``None`` on platforms other than Linux.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1
"""``prctl`` option (linux/prctl.h): the signal a process gets when its parent thread dies."""


def stop_with_launcher() -> None:
    """In a process started by ``torchrun``: end (SIGTERM) when torchrun ends, whatever ends it."""
    hook = end_with_parent()
    if hook is not None and is_distributed_launch():
        hook()
        if os.getppid() == 1:  # torchrun died before the call: nobody will stop this process
            os.kill(os.getpid(), signal.SIGTERM)


def get_rank() -> int:
    """This process's global rank; 0 without an initialised process group.

    Returns:
        the rank, ``0`` without a process group.
    """
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """The number of processes; 1 without an initialised process group.

    Returns:
        the world size, ``1`` without a process group.
    """
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Whether this process writes the run's files (global rank 0).

    Returns:
        ``True`` on global rank 0, and always without a process group.
    """
    return get_rank() == 0


def distributed_device(device_type: str | None = None) -> torch.device:
    """The device of this process: ``cuda:<LOCAL_RANK>`` (one GPU per process) or the CPU.

    Args:
        device_type: ``"cuda"`` or ``"cpu"``; default CUDA when available. A ``torch.device`` or a string such as
            ``"cuda:1"`` counts by its type: the index always comes from ``LOCAL_RANK``.

    Returns:
        The device.

    Raises:
        FusionInputError: CUDA is asked for but not available, or has fewer GPUs than ``LOCAL_RANK`` needs.
    """
    kind = torch.device(device_type).type if device_type else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind != "cuda":
        return torch.device(kind)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
        raise FusionInputError(
            f"process {local_rank} of this node needs cuda:{local_rank}, but {torch.cuda.device_count()} GPU(s) "
            "are visible (use --nproc_per_node <= the GPU count, or the CPU)"
        )
    return torch.device("cuda", local_rank)


def init_distributed(device: str | torch.device | None = None, timeout_s: float | None = None) -> bool:
    """Join the process group that ``torchrun`` set up: NCCL for a CUDA ``device``, Gloo otherwise.

    Does nothing in a process not started by ``torchrun`` or when the group is already initialised. For CUDA it
    also makes ``device`` the current device, so that NCCL and ``torch.cuda`` calls use this process's GPU.

    Args:
        device: this process's device (see :func:`distributed_device`); default :func:`distributed_device`.
        timeout_s: collective timeout in seconds; default PyTorch's.

    Returns:
        Whether a process group is initialised afterwards.
    """
    if dist.is_initialized():
        return True
    if not is_distributed_launch():
        return False
    device = torch.device(device) if device is not None else distributed_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = {}
    if timeout_s is not None:
        from datetime import timedelta

        kwargs["timeout"] = timedelta(seconds=timeout_s)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", **kwargs)
    # Ignite sets up its own view of the group (idist, used by its Checkpoint and metrics) on first use with a
    # collective new_group: do it here on every process, not later in a handler that only rank 0 builds
    idist.sync()
    return True


def barrier() -> None:
    """Wait until every process reaches this point (nothing without a process group)."""
    if dist.is_initialized():
        dist.barrier()


def destroy_distributed() -> None:
    """Leave and destroy the process group (nothing without one)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_gather_objects(obj: T) -> list[T]:
    """Every process's ``obj`` (any picklable object), in rank order; ``[obj]`` without a process group.

    A collective: every process of the group must call it.

    Args:
        obj: this process's object; it must be picklable.

    Returns:
        a list of ``world_size`` objects, rank 0's first; ``[obj]`` without a process group.
    """
    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def shard_items(items: Sequence[T], allow_empty: bool = False, what: str = "item(s)") -> list[T]:
    """This process's contiguous share of ``items``: each item in exactly one shard, in the original order.

    Shard sizes differ by at most one (the first ``len(items) % world_size`` ranks take one more). Contiguous
    shards keep the order: concatenating what the ranks gather (rank 0 first) gives ``items`` again, so tables
    gathered after a distributed evaluation list the pairs as a single-process run does.

    Args:
        items: the whole datalist (the same on every process).
        allow_empty: permit a process without items (more processes than items).
        what: the items' name in the refusal, e.g. ``"test pair(s)"``.

    Returns:
        The items of this rank; all of them without a process group.

    Raises:
        FusionInputError: fewer items than processes and ``allow_empty`` is off.
    """
    rank, world = get_rank(), get_world_size()
    if len(items) < world and not allow_empty:
        raise FusionInputError(f"{len(items)} {what} cannot be shared by {world} processes: use fewer processes")
    base, extra = divmod(len(items), world)
    start = rank * base + min(rank, extra)
    return list(items[start : start + base + (rank < extra)])


def distributed_network(network: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    """``network`` wrapped in ``DistributedDataParallel`` for training (unchanged without a process group).

    Only the trainer uses the wrapper; checkpoints, validation and export use ``network`` itself, so saved state
    dicts carry no ``module.`` prefix and load with :func:`monai_lkcfusion.networks.load_network`.

    Args:
        network: the network, already on ``device``.
        device: this process's device (``device_ids`` for CUDA; none on the CPU).

    Returns:
        The wrapped network (its parameters are broadcast from rank 0 when it is built).
    """
    if not dist.is_initialized():
        return network
    device = torch.device(device)
    ids = [device] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(network, device_ids=ids, output_device=ids and ids[0])


class BufferBroadcastHandler:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process when the attached engine starts.

    ``DistributedDataParallel`` averages gradients, so parameters stay identical, and broadcasts buffers at each
    training forward pass; the running statistics each process then updates from its own batch differ again by
    the end of an epoch. Attached to the validator, this makes every process validate (and keep) rank 0's network,
    which is the one rank 0 saves.

    Args:
        network: the (unwrapped) network.
        src: the rank whose buffers are copied.
    """

    def __init__(self, network: torch.nn.Module, src: int = 0) -> None:
        self.network = network
        self.src = src

    def attach(self, engine: Engine) -> None:
        """Broadcast at ``Events.STARTED`` of ``engine``.

        Args:
            engine: the engine (usually the validator) whose start triggers the broadcast.
        """
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        """Broadcast the floating-point and integer buffers from ``src`` (nothing without a process group)."""
        if not dist.is_initialized():
            return
        with torch.no_grad():
            for buffer in self.network.buffers():
                dist.broadcast(buffer, src=self.src)


def state_digest(network: torch.nn.Module) -> str:
    """SHA-256 of a network's state dict (names, dtypes, shapes and values of parameters and persistent buffers).

    Args:
        network: the network; its tensors are copied to the CPU to be hashed.

    Returns:
        the hexadecimal digest (64 characters), independent of the device and of the order of the entries.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.view(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def check_replicas(network: torch.nn.Module) -> str:
    """Check that every process holds the same network (state dict digest) after distributed training.

    Args:
        network: this process's (unwrapped) network.

    Returns:
        The digest, the same on every process.

    Raises:
        RuntimeError: the processes' networks differ.
    """
    digests = all_gather_objects(state_digest(network))
    if len(set(digests)) > 1:
        raise RuntimeError(f"the {len(digests)} processes hold different networks: digests {digests}")
    if len(digests) > 1 and is_main_process():
        logging.getLogger(__name__).info(f"network identical on {len(digests)} processes (sha256 {digests[0][:16]})")
    return digests[0]


def main_process_logging(*engines: Engine) -> None:
    """Log INFO messages of ``engines`` on rank 0 only (WARNING and above on the other processes).

    Args:
        engines: the Ignite engines whose loggers' levels are set.
    """
    for engine in engines:
        engine.logger.setLevel(logging.INFO if is_main_process() else logging.WARNING)
