"""Speed of one training step with direct, all-spectral (FFT) and measured-choice large-kernel convolutions.

A step is what ``SupervisedTrainer`` does per iteration: forward, ``FusionLoss``, backward and an Adam update, on a
batch of random source pairs. The three networks start from the same weights: ``direct`` is the plain network,
``spectral`` has every large-kernel convolution swapped (``use_spectral_convolutions(policy="all")``) and
``measured`` only those measured faster by FFT on this machine for this batch (``policy="measured"``, measured
afresh here, without the on-disk cache; its calibration time is printed). The paths run in this process,
alternately, after one warm-up step each, with the same drop-path draws, and the losses of their last steps are
compared. The machine line (CPU, extensions, threads, load average) is printed beside the figures.

Usage::

    python benchmarks/bench_training.py [--cases official:2x64 small:4x256] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from monai_lkcfusion.losses import FusionLoss
from monai_lkcfusion.machine import machine_summary
from monai_lkcfusion.networks import LKCFUNet, SpectralConv2d, use_spectral_convolutions


def _step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: FusionLoss, x: torch.Tensor) -> float:
    """One training step; returns the loss value."""
    torch.manual_seed(1)  # the same drop-path draws on every path
    optimizer.zero_grad()
    value = loss(net(x), x)  # (B, 1, H, W) fused against the (B, 2, H, W) sources
    value.backward()
    optimizer.step()
    return value.item()


def bench_case(preset: str, batch_size: int, size: int, repeats: int) -> None:
    """Time the three paths for one preset and batch (B, 2, size, size) and print one line per path."""
    torch.manual_seed(0)
    x = torch.rand(batch_size, 2, size, size)
    direct = LKCFUNet.from_preset(preset)
    start = time.perf_counter()
    measured = use_spectral_convolutions(copy.deepcopy(direct), policy="measured", sample_shape=x.shape, cache=False)
    calibration_s = time.perf_counter() - start
    paths = {"direct": direct, "spectral": use_spectral_convolutions(copy.deepcopy(direct)), "measured": measured}
    loss = FusionLoss()
    runs = {name: (net, torch.optim.Adam(net.parameters(), lr=1e-4)) for name, net in paths.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    last: dict[str, float] = {}
    for repeat in range(repeats + 1):
        for name, (net, optimizer) in runs.items():
            start = time.perf_counter()
            last[name] = _step(net, optimizer, loss, x)
            if repeat:  # the first step of each path warms up
                times[name].append(time.perf_counter() - start)

    print(f"preset {preset}, batch {batch_size} x 2 x {size} x {size}; calibration of 'measured' {calibration_s:.1f} s")
    for name, values in times.items():
        swapped = sum(isinstance(m, SpectralConv2d) for m in paths[name].modules())
        runs_s = ", ".join(f"{v:.2f}" for v in values)
        print(
            f"{name:>9}: {min(values):6.2f} s per step (min of {len(values)}; all {runs_s}), "
            f"{swapped} spectral layers, last-step loss {last[name]:.6f}"
        )
    direct_s = min(times["direct"])
    print(
        f"speed-up over direct: spectral {direct_s / min(times['spectral']):.2f}x, "
        f"measured {direct_s / min(times['measured']):.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases", nargs="+", default=["official:2x64", "small:4x256"], help="PRESET:BATCHxSIZE, e.g. small:4x256"
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per path after one warm-up step")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as configs/default_model*.json do
    print(machine_summary())
    for case in args.cases:
        preset, batch = case.split(":")
        batch_size, size = (int(v) for v in batch.split("x"))
        bench_case(preset, batch_size, size, args.repeats)
    print(machine_summary())


if __name__ == "__main__":
    main()
