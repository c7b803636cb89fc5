"""Compare the model with classical baselines on pairs: fuse, score, and write tables, a summary and figures."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..data.atomic import remove_stale_temporaries, temporary_folder
from ..errors import FusionInputError, as_names
from ..inferers import FUSION_METHODS
from ..metrics.functional import PUBLISHED_METRICS

__all__ = ["compare_methods"]

EVALUATION_FILES = ("metrics.csv", "summary.csv", "summary.json", "overview.png", "metrics.png", "fused")
"""What :func:`compare_methods` writes into its output folder."""


def _pair_key(pair: dict[str, Any]) -> tuple[str, str]:
    """A pair's ``(task, name)``: given, or the other image's folder name and the MRI's file name.

    Raises:
        FusionInputError: a task or name holding a path separator (it would add a folder level to ``fused/``).
    """
    task = pair.get("task", Path(os.path.abspath(pair["other"])).parent.name)  # "x.png" in the current folder too
    key = str(task), str(pair.get("name", Path(pair["mri"]).name))
    if any(sep in part for part in key for sep in ("/", "\\")):
        raise FusionInputError(f"{pair['mri']}: task {key[0]!r} / name {key[1]!r}: a task or name is one folder or "
                               "file name, without '/'")
    return key


def _check_unique(pairs: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """The pairs' ``(task, name)``; two pairs whose fused files would be one (``a.png`` and ``a.jpg`` too) would
    share it and give rows no one could tell apart.

    Raises:
        FusionInputError: ``<mri>: task '<task>' already has a pair named '<name>' (<first mri>); ...``.
    """
    from ..data import output_name

    keys, first = [_pair_key(pair) for pair in pairs], {}
    for index, (key, pair) in enumerate(zip(keys, pairs)):
        seen = first.setdefault((key[0], output_name(key[1], suffix=".png")), index)
        if seen != index:
            raise FusionInputError(f"{pair['mri']}: task {key[0]!r} already has a pair named {keys[seen][1]!r} "
                                   f"({pairs[seen]['mri']}), whose fused image has the same file name; give the pairs "
                                   "distinct 'name' or 'task' values")
    return keys


def _not_evaluation_output(folder: Path) -> Path | None:
    """The first entry of ``fused/`` that :func:`compare_methods` does not write (only ``<method>/<task>/*.png``,
    real folders; a file manager's hidden index files, ``.DS_Store`` or ``Thumbs.db``, go with them), or ``None``."""

    def listed(path: Path) -> list[Path]:
        return [p for p in sorted(path.iterdir()) if not p.name.startswith(".") and p.name not in _INDEX_FILES]

    for method in listed(folder):
        if method.is_symlink() or not method.is_dir() or method.name not in FUSION_METHODS:
            return method
        for task in listed(method):
            if task.is_symlink() or not task.is_dir():
                return task
            for image in listed(task):
                if image.is_symlink() or not image.is_file() or image.suffix.lower() != ".png":
                    return image
    return None


_INDEX_FILES = ("Thumbs.db", "desktop.ini")
"""Files that Windows' file manager writes into folders it shows (macOS's are hidden: ``.DS_Store``)."""


def _earlier_results(out: Path, pairs: Sequence[dict[str, Any]]) -> list[Path]:
    """What an earlier evaluation wrote into ``out`` (its files of :data:`EVALUATION_FILES`, the folders
    ``fused/<method>``), which a new one replaces as a whole.

    Raises:
        FusionInputError: ``fused/`` holds something an evaluation does not write (the user's own images: never
            removed), or an input lies in what would be replaced.
    """
    found = [out / name for name in EVALUATION_FILES if name != "fused" and (out / name).exists()]
    fused = out / "fused"
    if fused.exists():
        foreign = _not_evaluation_output(fused) if fused.is_dir() else fused
        if foreign is not None:
            raise FusionInputError(f"{foreign}: not written by an evaluation, but {fused} is where one writes (and "
                                   "replaces) its fused images; choose another output folder")
        found += [p for p in sorted(fused.iterdir()) if p.name in FUSION_METHODS]
    replaced = [(path, path.resolve()) for path in found]
    for pair in pairs:
        for image in (Path(pair["mri"]).resolve(), Path(pair["other"]).resolve()):
            for path, resolved in replaced:
                if image == resolved or resolved in image.parents:
                    raise FusionInputError(f"{image}: an input lies in the earlier results {path}, which a new "
                                           "evaluation replaces; choose another output folder")
    return found


def compare_methods(
    pairs: Sequence[dict[str, Any]],
    output_dir: str | Path,
    methods: Sequence[str] = ("lkcfunet", "max", "mean", "dwt", "laplacian"),
    weights: str | Path | None = None,
    metric_names: Sequence[str] = PUBLISHED_METRICS,
    ssim_data_range: float = 2.0,
    device: str | torch.device | None = None,
    save_fused: bool = True,
    figure_rows: int = 4,
    overwrite: bool = False,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Fuse every pair with each method, score it and write the results.

    Sources are read as the literature's evaluators do (8-bit gray, colour as rounded BT.601 luma); a fused image
    is scored as it is saved (8-bit per channel, colour as rounded BT.601 luma).

    Writes into ``output_dir``: ``metrics.csv`` (one row per pair and method: ``task, pair, method, <metric>...``),
    ``summary.csv`` (one row per task, method and metric: ``task, method, metric, n, mean, std``),
    ``summary.json`` (the options used and ``means``/``std``/``n`` as ``{task: {method: {metric: value}}}``),
    ``overview.png`` (the first ``figure_rows`` pairs, all methods; not written for 0), ``metrics.png`` (bar chart
    of the means with ± std) and, with ``save_fused``, ``fused/<method>/<task>/<name>.png``.

    Args:
        pairs: dicts with ``"mri"`` and ``"other"`` file paths, optional ``"name"`` (default: the MRI's file name)
            and ``"task"`` (default: the other image's folder name); no two with one task and name.
        output_dir: where results go.
        methods: ``"lkcfunet"`` and/or baselines of :func:`monai_lkcfusion.baselines.fuse_baseline`.
        weights: LKC-FUNet weights (default: the bundle's model).
        metric_names: metrics to compute.
        ssim_data_range: SSIM data range: 2 as in the published CDDFuse/EMMA tables, 255 as LKC-FUNet's evaluator.
        device: where the network runs.
        save_fused: also write the fused images.
        figure_rows: pairs shown in the overview figure (0: no overview figure).
        overwrite: replace the results of an earlier evaluation in ``output_dir`` as a whole (its files of
            :data:`EVALUATION_FILES` and folders ``fused/<method>`` give way once the new results are complete: they
            are written into a hidden folder in ``output_dir`` first, so an interrupted or failed run leaves the
            earlier results as they were; otherwise they are kept and this is an error, found before any work).
            Anything else in ``fused/`` (e.g. images of ``lkcfusion fuse``), or an input among the earlier results,
            is refused either way: never removed.
        progress: show progress over the pairs (a bar on a terminal, a line every 10 s otherwise).

    Returns:
        The summary rows (as in ``summary.csv``), see :func:`monai_lkcfusion.metrics.tables.summarize`.

    Raises:
        FusionInputError: no pairs, an unknown method or metric, ``weights`` without ``"lkcfunet"``, two pairs of
            one task and name, an output folder that cannot be written, earlier results without ``overwrite`` (or
            that are not an evaluation's, or hold an input), or an unreadable pair or one whose images differ in
            size (all found before any work).
    """
    from ..data import check_writable
    from ..inference import build_predictor
    from ..metrics.folders import read_gray

    if not pairs:
        raise FusionInputError("no (MRI, other) pairs to evaluate")
    methods, metric_names = as_names(methods, "methods"), as_names(metric_names, "metrics")
    if weights is not None and "lkcfunet" not in methods:
        raise FusionInputError(f"weights {weights} given, but lkcfunet is not among the methods "
                               f"({', '.join(methods)}); add it or leave the weights out")
    keys = _check_unique(pairs)
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise FusionInputError(f"{out}: is a file; an evaluation writes a folder of results, choose another output")
    check_writable(out)
    earlier = _earlier_results(out, pairs)
    if earlier and not overwrite:
        raise FusionInputError(
            f"{earlier[0]}: results of an earlier evaluation are in {out}; pass --overwrite (overwrite=True) to "
            "replace them, or choose another folder"
        )
    for pair in pairs:  # every pair readable and on one grid before any work (and before earlier results go)
        mri, other = read_gray(pair["mri"]), read_gray(pair["other"])
        if mri.shape != other.shape:  # the metrics compare pixel by pixel: both sources must be one grid
            raise FusionInputError(
                f"{pair['other']}: size {tuple(other.shape)} differs from the MRI's {tuple(mri.shape)}; an evaluation "
                "scores pairs on one grid: resample or register it to the MRI first"
            )
    predictors = {m: build_predictor(None, m, weights=weights if m == "lkcfunet" else None, device=device)
                  for m in methods}
    fused_root = out / "fused"
    made = [folder for folder in (out, fused_root) if not os.path.lexists(folder)]  # removed again on a failure
    try:
        out.mkdir(parents=True, exist_ok=True)
        if save_fused:
            fused_root.mkdir(exist_ok=True)
    except OSError as err:  # a dangling link as fused/: found now, not after the work
        if fused_root.is_symlink() and not fused_root.exists():
            raise FusionInputError(f"{fused_root}: a link to {os.readlink(fused_root)}, which does not exist; create "
                                   "that folder or remove the link") from None
        raise FusionInputError(f"{err.filename or out}: cannot write here ({err.strerror or err})") from None
    stages = []
    try:
        for folder in (out, fused_root) if save_fused else (out,):  # a killed run's partial results go first
            remove_stale_temporaries(folder)
            stages.append(temporary_folder(folder, "evaluation"))  # hidden, on the disk of what it will hold
        try:
            summary = _evaluate_into(stages[0], stages[1] if save_fused else None, pairs, keys, predictors,
                                     metric_names, ssim_data_range, figure_rows, weights, progress)
        except FusionInputError as err:  # a full disk while staging: name the place the user chose
            message = str(err)
            for stage, final in zip(stages, (out, fused_root)):
                message = message.replace(str(stage), str(final))
            raise FusionInputError(message) from None
        _replace_results(earlier, stages, out, fused_root, overwrite)
    finally:  # an interrupted or failed run leaves the earlier results as they were, and no partial ones
        for stage in stages:
            shutil.rmtree(stage, ignore_errors=True)
        for folder in reversed(made):
            with contextlib.suppress(OSError):  # only an empty folder goes
                folder.rmdir()
    return summary


def _replace_results(earlier: Sequence[Path], stages: Sequence[Path], out: Path, fused_root: Path,
                     overwrite: bool) -> None:
    """Put a complete evaluation, staged in ``stages`` (tables in ``out``'s, fused images in ``fused_root``'s), in
    place of the ``earlier`` one, by renames on one file system each.

    The earlier results (with ``overwrite`` also what another run wrote meanwhile) are moved aside first (an
    earlier run's other methods, ``fused/mean``..., would stay beside), then the new ones are moved in, then the
    earlier ones are deleted. Ctrl-C is held back during the renames (it takes effect after them); when a step
    fails, what was moved is moved back, so ``out`` holds the earlier or the new evaluation, never a mix or
    neither; if even that fails, the earlier results are kept in the hidden ``.tmp-replaced`` folder and named.

    Raises:
        FusionInputError: without ``overwrite``, results that another evaluation wrote into ``out`` meanwhile.
    """
    new = [(entry, out / entry.name) for entry in sorted(stages[0].iterdir())]
    if len(stages) > 1:
        new += [(entry, fused_root / entry.name) for entry in sorted(stages[1].iterdir())]
    present = [out / name for name in EVALUATION_FILES if name != "fused" and os.path.lexists(out / name)]
    if fused_root.is_dir():  # an evaluation's folders, also those another run wrote meanwhile (one replaced whole)
        present += [entry for entry in sorted(fused_root.iterdir()) if entry.name in FUSION_METHODS]
    appeared = [path for path in present if path not in earlier]
    if appeared and not overwrite:
        raise FusionInputError(f"{appeared[0]}: written by another evaluation while this one ran; pass --overwrite "
                               "(overwrite=True) to replace it, or choose another folder")
    replaced = list(dict.fromkeys([*earlier, *present]))
    aside = {folder: temporary_folder(folder, "replaced") for folder in {out, *(p.parent for p in replaced)}}
    moved_out: list[tuple[Path, Path]] = []
    moved_in: list[tuple[Path, Path]] = []
    restored = True
    with _interrupts_held():
        try:
            for path in replaced:
                kept = aside[path.parent] / path.name
                moved_out.append((path, kept))  # recorded first: an interrupt cannot come between (held)
                if os.path.lexists(path):  # gone meanwhile: replaced by another run
                    os.replace(path, kept)
            for staged, final in new:
                moved_in.append((staged, final))
                os.replace(staged, final)  # a folder onto an existing, non-empty one fails: nothing is merged
        except BaseException:
            try:
                for staged, final in reversed(moved_in):
                    if os.path.lexists(staged):  # not moved: what lies at final is not this run's
                        continue
                    if final.is_dir() and not final.is_symlink():
                        shutil.rmtree(final)
                    else:
                        final.unlink()
                for path, kept in reversed(moved_out):
                    if os.path.lexists(kept):
                        os.replace(kept, path)
            except OSError:
                restored = False
                raise FusionInputError(f"{out}: replacing the earlier evaluation failed and it could not be put back; "
                                       f"it is kept in {', '.join(map(str, aside.values()))}") from None
            raise
        finally:
            if restored:
                for folder in aside.values():
                    shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold back SIGINT (Ctrl-C) in the block and deliver it after, on the main thread (elsewhere: nothing held)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _evaluate_into(
    out: Path,
    fused_dir: Path | None,
    pairs: Sequence[dict[str, Any]],
    keys: Sequence[tuple[str, str]],
    predictors: dict[str, Any],
    metric_names: Sequence[str],
    ssim_data_range: float,
    figure_rows: int,
    weights: str | Path | None,
    progress: bool,
) -> list[dict[str, Any]]:
    """Fuse, score and write the results of :func:`compare_methods`: tables and figures into the empty folder
    ``out``, fused images into ``fused_dir`` (``<method>/<task>/<name>.png``; ``None``: not written).

    Returns:
        The summary rows.
    """
    from ..data import output_name, read_image, write_image, write_text
    from ..inference import fuse
    from ..metrics import compute_fusion_metrics
    from ..metrics.folders import read_gray
    from ..metrics.tables import json_text, pivot, summarize, write_table
    from ..metrics.utils import gray8
    from ..progress import Progress
    from .figures import metrics_bar_chart, overview_figure

    bar = Progress(len(pairs), f"evaluating {len(predictors)} method(s)", "pairs", enabled=progress)
    records: list[dict[str, Any]] = []
    figure: list[dict[str, Any]] = []
    for pair, (task, name) in zip(pairs, keys):
        mri, other = read_gray(pair["mri"]), read_gray(pair["other"])
        fused_images, fused_metrics = {}, {}
        for method, predictor in predictors.items():
            fused = fuse(pair["mri"], pair["other"], model=predictor, progress=False)  # (1|3, H, W) in [0, 1]
            scores = compute_fusion_metrics(gray8(fused * 255.0), mri, other, names=metric_names,
                                            ssim_data_range=ssim_data_range)
            scores = {k: float(v) for k, v in scores.items()}
            records.append({"task": task, "pair": name, "method": method, **scores})
            fused_images[method], fused_metrics[method] = fused, scores
            if fused_dir is not None:
                write_image(fused, fused_dir / method / task / output_name(name, suffix=".png"), overwrite=True)
        bar.update()
        if len(figure) < figure_rows:
            shown = read_image(pair["other"])  # colour kept
            figure.append({"mri": mri / 255.0, "other": shown / (shown.meta.get("display_max", 1.0)),
                           "fused": fused_images, "metrics": fused_metrics, "name": f"{task} {name}",
                           "other_label": task.split("-", 1)[1] if task.upper().startswith("MRI-") else task})
    bar.close()
    write_table(records, out / "metrics.csv")
    summary = summarize(records, metric_names)
    write_table(summary, out / "summary.csv")
    options = {"ssim_data_range": ssim_data_range, "gray": "8-bit BT.601 luma, rounded",
               **({"weights": str(weights or "bundle default")} if "lkcfunet" in predictors else {})}
    stats = {key: pivot(summary, stat) for key, stat in (("means", "mean"), ("std", "std"), ("n", "n"))}
    write_text(out / "summary.json", json_text({"options": options, **stats}, indent=2), overwrite=True)
    if figure:
        overview_figure(figure, out / "overview.png", metric_names=metric_names,
                        title=f"MRI | other | fused per method (the first {len(figure)} of {len(pairs)} pairs)")
    counts = ", ".join(f"{task} n={max(max(by_method.values()) for by_method in per_task.values())}"
                       for task, per_task in stats["n"].items())
    metrics_bar_chart(stats["means"], out / "metrics.png", metric_names=metric_names, spread=stats["std"],
                      title=f"mean ± std over the pairs ({counts})"
                      + (f"; SSIM data range {ssim_data_range:g}" if "SSIM" in metric_names else ""))
    return summary
