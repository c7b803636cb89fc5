"""Train the shipped recipe on one CUDA GPU within ten minutes, then score the weights on the held-out subjects.

One command for a machine with a GPU (issue 13, "ready for a GPU"): ``lkcfusion train`` with the stage-7 recipe
from a random start (``configs/default_model_gpu.json`` layered over the configs of the shipped model: mixed
precision, direct convolutions, batch 16, a 540 s training limit, needs no earlier weights), then
``compare_methods`` on the subjects that ``configs/default_model_disjoint.json`` holds out (never trained on), against
pixel max, with the count the project ships by (metrics above pixel max by at least 0.5%, MRI-PET and MRI-SPECT).
Several presets (``--preset small base``) train at the same time, one process each on the same GPU.
Writes, under ``--output``, per preset: ``PRESET/train.log`` (the trainer's log), ``PRESET/model.pt`` (the best
weights by validation loss), ``PRESET/checkpoint_epoch=N.pt`` (every ``--keep-interval``-th epoch, to choose an
epoch by the held-out metrics: each is scored too, as ``PRESET/weights_epochNNN.pt``) and ``PRESET/eval/WEIGHTS/``
(``summary.json``, ``metrics.csv``, figures); and ``report.txt`` (what is printed here). ``--no-score`` trains
only (e.g. on a GPU machine); ``--score-only`` scores such a run's folder afterwards (e.g. on a CPU).

    .venv/bin/python benchmarks/train_gpu.py --dataset-dir ../shared/data -o runs/default_model_gpu [--preset small]
        [--device cuda] [--time-limit 540] [--max-epochs 30] [--keep-interval 0] [--no-score | --score-only]
        [--config FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from monai_lkcfusion.apps.evaluation import compare_methods
from monai_lkcfusion.data import harvard_datalist, split_by_subject
from monai_lkcfusion.engines import checkpoint_epochs, export_weights
from monai_lkcfusion.machine import machine_summary
from monai_lkcfusion.metrics import PUBLISHED_METRICS

REPO = Path(__file__).resolve().parents[1]
RECIPE = ["default_model_disjoint.json", "default_model_residual.json", "default_model_residual_continue.json",
          "default_model_gpu.json"]
MARGIN = 1.005


def device_summary(device: str) -> str:
    """The accelerator's name and memory, or the CPU line."""
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        return f"GPU {props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}"
    return machine_summary()


def train(args: argparse.Namespace, output: Path) -> float:
    """Run ``lkcfusion train`` with the recipe, one process per preset at the same time, each logging to
    ``output/PRESET/train.log``. Returns the wall seconds until the last one ends."""
    recipe = [str(REPO / "configs" / name) for name in RECIPE]
    settings = output / "run_settings.json"
    settings.write_text(json.dumps({"time_limit": args.time_limit, "max_epochs": args.max_epochs,
                                    "keep_checkpoint_interval": args.keep_interval}))
    start = time.perf_counter()
    runs = []
    for preset in args.preset:
        (output / preset).mkdir(parents=True, exist_ok=True)
        configs = [*recipe, str(settings), *args.config]
        command = [sys.executable, "-m", "monai_lkcfusion", "train", *(f"--config={c}" for c in configs),
                   "--dataset-dir", args.dataset_dir, "-o", str(output / preset), "--device", args.device,
                   "--preset", preset]
        log = open(output / preset / "train.log", "w")
        runs.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log, preset))
    for process, log, preset in runs:
        process.wait()
        log.close()
        if process.returncode:
            raise SystemExit(f"training {preset} failed (exit {process.returncode}): see {log.name}")
    return time.perf_counter() - start


def score(args: argparse.Namespace, weights: Path, eval_dir: Path) -> dict:
    """Means per task and method of ``weights`` and pixel max on the held-out subjects (tables in ``eval_dir``)."""
    held_out = json.loads((REPO / "configs" / "default_model_disjoint.json").read_text())["val_subjects"]
    items = [i for split in ("harvard_xg/train", "harvard_xg/test", "harvard_extra")
             for i in harvard_datalist(args.dataset_dir, split)]
    _, validation = split_by_subject(items, held_out)
    compare_methods(validation, eval_dir, methods=("lkcfunet", "max"), weights=weights, device=args.device,
                    save_fused=False, figure_rows=2, overwrite=True)
    return json.loads((eval_dir / "summary.json").read_text())["means"]


def candidates(run: Path) -> list[tuple[str, Path]]:
    """The weights of a preset's run to score: ``model.pt`` (best validation loss) and every kept epoch, exported
    from its ``checkpoint_epoch=N.pt`` to ``weights_epochNNN.pt``."""
    return [("best validation loss (model.pt)", run / "model.pt")] + [
        (f"epoch {epoch}", export_weights(checkpoint, run / f"weights_epoch{epoch:03d}.pt"))
        for epoch, checkpoint in checkpoint_epochs(run)
    ]


def report(means: dict) -> list[str]:
    """One line per task: the model's means, and the metrics above pixel max by the margin."""
    lines, count = [], 0
    for task, by_method in sorted(means.items()):
        model, pixel_max = by_method["lkcfunet"], by_method["max"]
        wins = [m for m in PUBLISHED_METRICS if model[m] > MARGIN * pixel_max[m]]
        count += len(wins) if task in ("MRI-PET", "MRI-SPECT") else 0
        values = " ".join(f"{m} {model[m]:.3f} ({model[m] / pixel_max[m]:.3f}x max)" for m in PUBLISHED_METRICS)
        lines.append(f"{task}: {values}; above pixel max by 0.5%: {len(wins)} {wins}")
    lines.append(f"MRI-PET + MRI-SPECT metrics above pixel max by 0.5%: {count} of 16 (the shipped 0.4.0: 12)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-dir", default="../shared/data", help="holds harvard_xg/ and harvard_extra/")
    parser.add_argument("-o", "--output", default="runs/default_model_gpu")
    parser.add_argument("--preset", nargs="+", default=["small"],
                        help="network preset(s), trained at the same time (small: the shipped one; base)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--time-limit", type=float, default=540.0, help="training seconds (no epoch starts past it)")
    parser.add_argument("--max-epochs", type=int, default=30, help="epochs of the cosine schedule (time allowing)")
    parser.add_argument("--keep-interval", type=int, default=0, help="keep every N-th epoch's checkpoint (0: none)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--no-score", action="store_true", help="train only (score the weights elsewhere)")
    mode.add_argument("--score-only", action="store_true",
                      help="score the weights of an earlier run in --output (e.g. trained elsewhere with --no-score)")
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="further train.json override file(s), layered last")
    args = parser.parse_args()

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    lines = [f"device: {device_summary(args.device)}"]
    if not args.score_only:
        seconds = train(args, output)
        for preset in args.preset:
            weights = output / preset / "model.pt"
            lines.append(f"trained {preset} in {seconds:.0f} s (limit {args.time_limit:.0f} s of training, presets "
                         f"{' '.join(args.preset)} at the same time), weights {weights.stat().st_size / 2**20:.2f} MB; "
                         f"log: {output / preset / 'train.log'}")
    for preset in [] if args.no_score else args.preset:
        for label, weights in candidates(output / preset):
            lines.append(f"{preset}, {label}:")
            lines += report(score(args, weights, output / preset / "eval" / weights.stem))
    text = "\n".join(lines)
    print(text)
    (output / "report.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
