"""Speed of one training step with direct and with spectral (FFT) large-kernel convolutions.

A step is what ``SupervisedTrainer`` does per iteration: forward, ``FusionLoss``, backward and an Adam update, on a
batch of random source pairs. The two networks start from the same weights; the spectral one is the direct one after
``use_spectral_convolutions``. Both run in this process, alternately, after one warm-up step each, with the same
drop-path draws, and the loss of the last step of each path is compared.

Usage::

    python benchmarks/bench_training.py [--preset small] [--batch-size 4] [--size 256] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from monai_lkcfusion.losses import FusionLoss
from monai_lkcfusion.networks import LKCFUNet, use_spectral_convolutions


def _step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: FusionLoss, x: torch.Tensor) -> float:
    """One training step; returns the loss value."""
    torch.manual_seed(1)  # the same drop-path draws on both paths
    optimizer.zero_grad()
    value = loss(net(x), x)  # (B, 1, H, W) fused against the (B, 2, H, W) sources
    value.backward()
    optimizer.step()
    return value.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as train.json does

    torch.manual_seed(0)
    x = torch.rand(args.batch_size, 2, args.size, args.size)
    direct = LKCFUNet.from_preset(args.preset)
    paths = {"direct": direct, "spectral": use_spectral_convolutions(copy.deepcopy(direct))}
    loss = FusionLoss()
    runs = {name: (net, torch.optim.Adam(net.parameters(), lr=1e-4)) for name, net in paths.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    last: dict[str, float] = {}
    for repeat in range(args.repeats + 1):
        for name, (net, optimizer) in runs.items():
            start = time.perf_counter()
            last[name] = _step(net, optimizer, loss, x)
            if repeat:  # the first step of each path warms up
                times[name].append(time.perf_counter() - start)

    print(f"preset {args.preset}, batch {args.batch_size} x 2 x {args.size} x {args.size}, {args.threads} thread(s)")
    for name, values in times.items():
        print(f"{name:>9}: {min(values):.2f} s per step (min of {len(values)}; all {', '.join(f'{v:.2f}' for v in values)})")
    speedup = min(times["direct"]) / min(times["spectral"])
    print(f"speed-up {speedup:.1f}x; last-step losses {last['direct']:.6f} / {last['spectral']:.6f}")


if __name__ == "__main__":
    main()
