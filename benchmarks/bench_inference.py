"""Time the plain eager fp32 LKC-FUNet forward against ``optimize_for_inference`` on this machine.

For each preset (default: ``official`` and ``small``) and each path (plain eager fp32, optimised), a fresh
subprocess builds the network from the same seed, times a 256x256 slice (best of ``--repeats``; the optimised path
after one first call, timed separately, that measures the layer choices (with an empty measured-choice cache,
as on a new machine, unless ``--keep-cache``) and builds the kernel spectra) and a volume of
``--volume-slices`` slices fused in batches of ``--batch-size``, and reports its peak RSS. A plain volume whose
per-slice estimate exceeds ``--max-volume-seconds`` is extrapolated from the slice time instead of run (marked in
the table). The table, with the multiply-accumulate count of the network, this machine's measured fp32 matmul peak
(and bf16 where the CPU has bf16 instructions), the CPU model, its extensions and the load, and the maximum output
difference, is printed and written into ``docs/performance.md`` between the ``bench_inference`` markers.

    .venv/bin/python benchmarks/bench_inference.py [--presets official small] [--volume-slices 64] [--no-doc]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from monai_lkcfusion.machine import cpu_features, machine_summary
from monai_lkcfusion.networks import LKCFUNet, optimize_for_inference

DOC = Path(__file__).resolve().parents[1] / "docs" / "performance.md"
BEGIN, END = "<!-- bench_inference:begin -->", "<!-- bench_inference:end -->"


def count_macs(net: nn.Module, size: int) -> int:
    """Multiply-accumulates of the convolutions of one forward pass on a (1, 2, size, size) input (meta device)."""
    macs = 0

    def hook(module: nn.Conv2d, _: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        macs += out.numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]

    meta = LKCFUNet(**{k: v for k, v in net.config.items()}).to("meta").eval()
    handles = [m.register_forward_hook(hook) for m in meta.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        meta(torch.empty(1, 2, size, size, device="meta"))
    for handle in handles:
        handle.remove()
    return macs


def matmul_peak(dtype: torch.dtype, n: int = 4096, repeats: int = 3) -> float:
    """GFLOP/s of the best of ``repeats`` (n x n) @ (n x n) products in ``dtype``."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _pair(batch: int, size: int, seed: int) -> torch.Tensor:
    """A smooth synthetic MRI/other pair batch in [0, 1]: (batch, 2, size, size)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 2, size // 16, size // 16, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (smooth + 0.05 * torch.rand(batch, 2, size, size, generator=gen)).clamp(0, 1)


def worker(preset: str, optimized: bool, args: argparse.Namespace, out_dir: Path) -> dict:
    """Time one preset on one path; save its outputs under ``out_dir``; return the timings."""
    torch.manual_seed(0)
    net = LKCFUNet.from_preset(preset).eval()
    start = time.perf_counter()
    model = optimize_for_inference(net, enabled=optimized)
    result = {"prepare_s": time.perf_counter() - start}
    slice_input = _pair(1, args.size, seed=1)
    with torch.no_grad():
        result["first_call_s"] = _timed(lambda: model(slice_input))
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = model(slice_input)
            times.append(time.perf_counter() - start)
    # the plain path has nothing to warm up, so its first call is a valid sample too
    result["slice_s"] = min(times if optimized else [*times, result["first_call_s"]])
    torch.save(out, out_dir / f"{preset}_{optimized}_slice.pt")
    volume = _pair(args.volume_slices, args.size, seed=2)
    estimate = result["slice_s"] * args.volume_slices
    if not optimized and estimate > args.max_volume_seconds:
        result["volume_s"], result["volume_extrapolated"] = estimate, True
    else:
        with torch.no_grad():
            if optimized:  # plan the batch shapes (full and last batch) outside the timing
                for size in {min(args.batch_size, args.volume_slices), args.volume_slices % args.batch_size} - {0}:
                    model(volume[:size])
            start = time.perf_counter()
            fused = torch.cat([model(batch) for batch in volume.split(args.batch_size)])
            result["volume_s"], result["volume_extrapolated"] = time.perf_counter() - start, False
        torch.save(fused, out_dir / f"{preset}_{optimized}_volume.pt")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _relative_difference(out_dir: Path, preset: str, part: str) -> float | None:
    plain, fast = (out_dir / f"{preset}_{flag}_{part}.pt" for flag in (False, True))
    if not (plain.is_file() and fast.is_file()):
        return None
    ref, out = (torch.load(f, map_location="cpu", weights_only=True) for f in (plain, fast))
    return ((out - ref).abs().max() / (ref.max() - ref.min())).item()


def table(args: argparse.Namespace, rows: dict, out_dir: Path) -> str:
    """The results as a Markdown section."""
    f32 = matmul_peak(torch.float32)
    # without bf16 instructions PyTorch emulates bf16: a 4096^3 product then takes minutes and says nothing
    bf16 = (f"{matmul_peak(torch.bfloat16):.0f} GFLOP/s"
            if {"avx512_bf16", "amx_bf16"} & set(cpu_features()) else "not measured (no bf16 instructions)")
    lines = [
        f"Measured on {time.strftime('%Y-%m-%d %H:%M')}: {machine_summary()} (at the end); "
        f"`{' '.join(sys.argv)}`. Measured matmul peak (4096^3): fp32 {f32:.0f} GFLOP/s, bf16 {bf16}. "
        "Times are the best of the repeats, each path in a fresh process (the optimised one with "
        "`retain_freed_memory()`, the plain one with the default allocator)"
        + ("." if args.keep_cache else "; the optimised first call measured every choice (empty cache)."),
        "",
        f"| preset | conv GMAC / {args.size}^2 slice | path | slice s | speed-up | volume ({args.volume_slices} "
        f"slices, batch {args.batch_size}) s | speed-up | first call s | peak RSS MB | max diff / range |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for preset in args.presets:
        gmac = count_macs(LKCFUNet.from_preset(preset), args.size) / 1e9
        plain = rows[(preset, False)]
        for optimized in (False, True):
            r = rows[(preset, optimized)]
            volume = f"{r['volume_s']:.1f}" + (" (extrapolated)" if r["volume_extrapolated"] else "")
            diff = _relative_difference(out_dir, preset, "slice")
            vol_diff = _relative_difference(out_dir, preset, "volume")
            diffs = "-" if not optimized else f"{diff:.1e}" + (f" (volume {vol_diff:.1e})" if vol_diff else "")
            lines.append(
                f"| {preset} | {gmac:.1f} | {'optimised' if optimized else 'plain eager fp32'} | {r['slice_s']:.2f} | "
                f"{plain['slice_s'] / r['slice_s']:.1f}x | {volume} | {plain['volume_s'] / r['volume_s']:.1f}x | "
                f"{r['first_call_s']:.1f} | {r['peak_rss_mb']:.0f} | {diffs} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["official", "small"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--volume-slices", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-volume-seconds", type=float, default=600.0)
    parser.add_argument("--no-doc", action="store_true", help="print the table without writing docs/performance.md")
    parser.add_argument("--keep-cache", action="store_true",
                        help="use this machine's measured-choice cache (default: an empty one, as on a new machine)")
    parser.add_argument("--worker", nargs=3, metavar=("PRESET", "OPTIMIZED", "OUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        preset, optimized, out_dir = args.worker
        print(json.dumps(worker(preset, optimized == "1", args, Path(out_dir))))
        return
    print(machine_summary(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ} if args.keep_cache else {**os.environ, "LKCFUSION_CACHE_DIR": str(Path(tmp) / "cache")}
        rows = {}
        for preset in args.presets:
            for optimized in (False, True):
                command = [sys.executable, __file__, "--worker", preset, str(int(optimized)), tmp, *sys.argv[1:]]
                done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
                rows[(preset, optimized)] = json.loads(done.stdout.strip().splitlines()[-1])
                print(preset, "optimised" if optimized else "plain", rows[(preset, optimized)], flush=True)
        section = table(args, rows, Path(tmp))
    print(section)
    if not args.no_doc:
        text = DOC.read_text() if DOC.is_file() else f"# Performance\n\n{BEGIN}\n{END}\n"
        head, rest = text.split(BEGIN, 1)
        DOC.write_text(f"{head}{BEGIN}\n{section}\n{END}{rest.split(END, 1)[1]}")


if __name__ == "__main__":
    main()
