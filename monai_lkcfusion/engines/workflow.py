"""Run the bundle's configs (``bundle/configs/*.json``) as MONAI ``ConfigWorkflow`` s from Python or the CLI."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import FusionInputError, as_count, user_error

__all__ = [
    "bundle_config",
    "check_bundle_workflow",
    "check_known_settings",
    "check_literal_overrides",
    "check_run_record",
    "check_training_settings",
    "check_validation_items",
    "run_bundle_workflow",
]

_CONFIG_SYNTAX = ("$", "@", "%")  # MONAI ConfigParser: expression (Python code), reference, macro


def check_training_settings(
    batch_size: Any,
    samples_per_image: Any,
    learning_rate: Any,
    max_epochs: Any,
    val_interval: Any,
    device: Any,
    keep_checkpoint_interval: Any = 0,
    output_dir: Any = None,
    resume: Any = False,
    early_stop_patience: Any = 0,
    key_metric: Any = "val_loss",
    val_metrics: Any = (),
) -> None:
    """Refuse training settings a run cannot use, before the data and the network are built (train.json's first
    ``initialize`` step), where they otherwise end in a traceback, some after a whole epoch (``val_interval`` 0).

    Args:
        batch_size, samples_per_image, max_epochs, val_interval: whole numbers >= 1.
        learning_rate: a finite number > 0.
        device: a ``torch.device`` or a name such as ``"cpu"``, ``"cuda:0"`` that this machine has
            (:func:`~monai_lkcfusion.inferers.resolve_device`).
        keep_checkpoint_interval: a whole number >= 0 (0: only the newest checkpoint is kept).
        early_stop_patience: a whole number >= 0 (0: no early stopping).
        key_metric: ``"val_loss"`` or a fusion metric's name (:data:`~monai_lkcfusion.metrics.ALL_METRICS`).
        val_metrics: fusion metrics' names (an unknown one was refused after ``run.json`` and a TensorBoard file
            were written, the file then mixed into the corrected run's logs).
        output_dir, resume: the run's folder must not be a file, nor hold an earlier run unless it is resumed
            (:func:`~monai_lkcfusion.engines.handlers.check_earlier_run`); ``None``: not checked.

    Raises:
        FusionInputError: ``<setting> <value>: <what it needs>``.
    """
    from ..inferers import resolve_device
    from ..metrics import ALL_METRICS
    from .handlers import LOSS_METRIC

    if isinstance(val_metrics, str):  # the evaluator took it letter by letter: "Qabf" -> unknown Q, a, b, f
        raise FusionInputError(f"val_metrics {val_metrics!r}: give a list of names, e.g. [{val_metrics!r}]")
    names = list(val_metrics or ())
    unknown = [name for name in names if name not in ALL_METRICS]
    if unknown:
        raise FusionInputError(f"val_metrics: unknown {unknown}; choose from {', '.join(ALL_METRICS)}")
    if key_metric != LOSS_METRIC and key_metric not in ALL_METRICS:
        raise FusionInputError(f"key_metric {key_metric!r}: not a metric; choose {LOSS_METRIC} or one of "
                               f"{', '.join(ALL_METRICS)}")
    for name, value in (("batch_size", batch_size), ("samples_per_image", samples_per_image),
                        ("max_epochs", max_epochs), ("val_interval", val_interval)):
        as_count(value, name)
    as_count(keep_checkpoint_interval, "keep_checkpoint_interval", minimum=0, unit="epochs")
    as_count(early_stop_patience, "early_stop_patience", minimum=0, unit="validations")
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or not (
        math.isfinite(learning_rate) and learning_rate > 0
    ):
        raise FusionInputError(f"learning_rate {learning_rate!r}: needs a positive number, e.g. 0.0002")
    resolve_device(device)  # the rule inference uses: a GPU this machine lacks is refused here, not mid-run
    if output_dir is not None:
        from .handlers import check_earlier_run

        if Path(output_dir).exists() and not Path(output_dir).is_dir():  # found only after the data were loaded
            raise FusionInputError(f"{output_dir}: is a file; give a folder for the run's checkpoints and logs")
        check_earlier_run(output_dir, resume)


def check_validation_items(dataset: Sequence[dict[str, Any]]) -> None:
    """Refuse validation items that are not 2D slices ``(C, H, W)`` before training (train.json's ``initialize``):
    the network fuses slices, and a volume reached it only at the first validation, after a whole epoch, as a
    135-line traceback (``Padding size 4 is not supported for 5D input``).

    Args:
        dataset: the validation dataset (its items with ``"image"``, as ``validate#preprocessing`` makes them; a
            MONAI dataset's ``data`` names the pair's MRI in the message).

    Raises:
        FusionInputError: ``<file>: a validation item of shape (C, X, Y, Z) ...; slice volumes first ...``.
    """
    for index in range(len(dataset)):
        image = dataset[index]["image"]
        if image.ndim != 3:
            listed = getattr(dataset, "data", None)  # MONAI datasets keep their items: name the pair's MRI
            item = listed[index] if listed is not None and index < len(listed) else None
            name = item.get("mri", f"validation item {index}") if isinstance(item, dict) else f"validation item {index}"
            raise FusionInputError(
                f"{name}: a validation item of shape {tuple(image.shape)}, where the network fuses 2D slices "
                "(C, H, W); slice volumes in validate#preprocessing (RandSliced(position=0.5), as "
                "configs/own_volumes.json does)"
            )


RUN_RECORD = "run.json"
"""The file in a run's folder that records what a resumed run must keep (see :func:`check_run_record`)."""
_RESUMABLE_NETWORK = ("dropout",)
"""Network settings a resumed run may change (regularisation, not the architecture the weights belong to)."""


def _pair_names(split: Sequence[Sequence[dict[str, Any]]]) -> list[list[str]]:
    """The items of each part of ``split`` as the paths of their two files relative to the folder that holds them
    all: the same after the dataset moves or is renamed, and for relative and absolute paths alike."""
    import os

    paths = [[[os.path.abspath(str(item[key])) for key in ("mri", "other")] for item in part] for part in split]
    every = [path for part in paths for pair in part for path in pair]
    root = os.path.commonpath(every) if every else ""
    root = os.path.dirname(root) if root in every else root  # one file given for both images
    return [sorted("|".join(os.path.relpath(path, root) for path in pair) for pair in part) for part in paths]


def check_run_record(
    output_dir: str | Path, resume: Any, network: Any, split: Sequence[Sequence[dict[str, Any]]], key_metric: str,
    write: bool = True, loss: Any = None, early_stop_patience: Any = 0, max_epochs: Any = None,
) -> None:
    """Refuse to resume a run with settings that would silently change its meaning, and record them for a resume.

    The record (``run.json`` in ``output_dir``): the network's configuration (a preset's fields; ``dropout`` may
    change), the training and validation pairs (relative to the folder that holds them all, so a moved dataset still
    matches), and ``key_metric``. A resume from a checkpoint compares them with the record beside that
    checkpoint: another seed, ``val_fraction``, task or dataset moved validation pairs into training (the validation
    then measured fitting and chose the best model on pairs it trained on), another ``key_metric`` compared the new
    metric with the old one's best value, another loss (its weights or terms, recorded when it has a ``config``)
    compared ``val_loss`` values of two kinds when ``val_loss`` picks the best model (all weights 0.1 "improved" it
    tenfold and replaced ``best_model.pt``), and another preset failed with a long traceback. Then what the run's
    checkpoint loader would refuse (:func:`~monai_lkcfusion.engines.handlers.check_resume`). Only a new run writes
    the record: a resumed run's stays as the run began (a run without one, an older version's, is resumed as before
    and gets none). ``learning_rate``, ``max_epochs`` and the like may change: the schedule is the resumed run's
    (:class:`~monai_lkcfusion.engines.ResumeCheckpointLoader`).

    Args:
        output_dir: the run's folder.
        resume: the ``resume`` setting (see :func:`~monai_lkcfusion.engines.resume_option`).
        network: the network before training (a :class:`~monai_lkcfusion.networks.LKCFUNet` records its config).
        split: ``(training items, validation items)``.
        key_metric: the validation metric that picks the best model.
        write: write the record (``False``: only check, as a launcher does before it starts the processes).
        loss: the training loss (a :class:`~monai_lkcfusion.losses.FusionLoss` records its ``config``).
        early_stop_patience, max_epochs: the run's, for :func:`~monai_lkcfusion.engines.handlers.check_resume`.

    Raises:
        FusionInputError: ``<output_dir>: resumed with other settings than the run's (<what differs>); ...``, or
            what :func:`~monai_lkcfusion.engines.handlers.check_resume` raises.
    """
    from ..data.atomic import write_text
    from .distributed import is_main_process
    from .handlers import LOSS_METRIC, check_resume, last_checkpoint, resume_option

    resume = resume_option(resume)
    config = getattr(network, "config", None)
    train_pairs, validation_pairs = _pair_names(split)
    loss_config = getattr(loss, "config", None)
    record = json.loads(json.dumps({
        "network": dict(config) if isinstance(config, dict) else None,
        "train_pairs": train_pairs, "validation_pairs": validation_pairs, "key_metric": key_metric,
        "loss": dict(loss_config) if isinstance(loss_config, dict) else None,
    }))
    checkpoint = resume if isinstance(resume, Path) else last_checkpoint(output_dir) if resume else None
    earlier = Path(checkpoint).parent / RUN_RECORD if checkpoint is not None else None
    if earlier is not None and earlier.is_file():
        before = json.loads(earlier.read_text())
        changed = []
        now = record["network"] or {}
        fields = [f"{k} {now.get(k)!r} (was {v!r})" for k, v in (before.get("network") or {}).items()
                  if now and k not in _RESUMABLE_NETWORK and now.get(k) != v]
        if fields:
            changed.append(f"network {', '.join(fields)}")
        for key in ("validation_pairs", "train_pairs"):
            gone = len(set(before.get(key, [])) - set(record[key]))
            if gone or len(before.get(key, [])) != len(record[key]):
                changed.append(f"{gone} of the run's {len(before.get(key, []))} {key.replace('_', ' ')} not among "
                               f"these {len(record[key])}: seed, val_fraction, tasks or the data changed")
        if before.get("key_metric") != record["key_metric"]:
            changed.append(f"key_metric {record['key_metric']} (was {before.get('key_metric')})")
        elif record["key_metric"] == LOSS_METRIC and before.get("loss") and record["loss"]:
            fields = [f"{k} {record['loss'].get(k)!r} (was {v!r})" for k, v in before["loss"].items()
                      if record["loss"].get(k) != v]
            if fields:
                changed.append(f"loss {', '.join(fields)}: val_loss, which picks the best model, would compare "
                               "losses of two kinds")
        if changed:
            raise FusionInputError(f"{output_dir}: resumed with other settings than the run's ({'; '.join(changed)}); "
                                   f"resume with the run's settings, or start a new run in another folder (if only "
                                   f"where the files lie changed, delete {earlier} to resume anyway)")
    check_resume(output_dir, resume, network, early_stop_patience, max_epochs)  # before anything is written
    if write and is_main_process() and checkpoint is None:
        write_text(Path(output_dir) / RUN_RECORD, json.dumps(record, indent=1) + "\n", overwrite=True)


def check_known_settings(
    known: Iterable[str], keys: Iterable[str] | Mapping[str, Any], source: str, config_text: str,
    config: dict[str, Any] | None = None,
) -> None:
    """Refuse settings that nothing in a bundle config reads: MONAI adds an unknown id to the config and goes on, so a
    misspelt ``--datset_dir`` fused the demo data instead of the user's folder, and ``"roi_sise"`` in an override
    file trained with the default size, both with exit code 0.

    A key ``a#b#c`` is known when its first part ``a`` is an id of the config it overrides, is referenced as ``@a``
    anywhere in the merged configs (a new id an override file defines and uses), or starts with ``_`` (``_desc_``,
    ``_disabled_``, ...). With ``config``, a key whose last part is an argument of a component (an item with
    ``_target_``, e.g. ``loss#ssim_weigth``) must be one the component has or takes: a misspelt argument ended in
    MONAI's ``Failed to instantiate component`` traceback once the run reached it; the component is the one the
    settings leave (``loss#_target_`` and ``loss#reduction`` given together: the new target's arguments).

    Args:
        known: the top-level ids of the config being overridden.
        keys: the settings given (a mapping of them to their values with ``config``).
        source: where they come from, for the message (a file name, ``"--key"`` options).
        config_text: the merged configs and overrides as text, searched for ``@a`` references.
        config: the config being overridden (the merged configs before ``keys``), to check components' arguments.

    Raises:
        FusionInputError: ``<source>: unknown setting '<key>' ...`` naming the closest known id or argument.
    """
    import difflib
    import re

    known = set(known)
    after = _with_settings(config, keys) if config is not None and isinstance(keys, Mapping) else config
    for key in keys:
        parts = str(key).replace("::", "#").split("#")
        top = parts[0]
        if top.startswith("_") or top in known or re.search(rf"@{re.escape(top)}(?![\w])", config_text):
            if config is not None:
                _check_component_argument(config, after, parts, key, source)
            continue
        close = difflib.get_close_matches(top, sorted(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise FusionInputError(f"{source}: unknown setting '{key}'{hint}; nothing in the config reads it, so it "
                               "would be ignored")


def _with_settings(config: dict[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with ``settings`` (ids ``a#b#0``) set as MONAI's ``ConfigParser`` merges config files;
    a setting whose parent is not there is left out (:func:`check_known_settings` judges it)."""
    import copy

    from monai.bundle import ConfigParser

    parser = ConfigParser(copy.deepcopy(config))
    for key, value in settings.items():
        try:
            parser[str(key)] = value
        except (KeyError, IndexError, TypeError, ValueError):
            continue
    return parser.get()


def _config_item(config: Any, parts: Sequence[str]) -> Any:
    """The item of ``config`` at the id ``parts`` (dict keys, list indices), or ``None`` when there is none."""
    item = config
    for part in parts:
        if isinstance(item, dict) and part in item:
            item = item[part]
        elif isinstance(item, list) and part.isdigit() and int(part) < len(item):
            item = item[int(part)]
        else:
            return None
    return item


def _passes_kwargs_on(function: Any) -> bool:
    """Whether ``function`` (a class's ``__init__`` with ``**kwargs``) hands its ``**kwargs`` to
    ``super().__init__``, as MONAI's ``DataLoader`` does to torch's; ``LoadImaged`` gives them to its reader."""
    import inspect
    import re

    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return False
    keywords = [p.name for p in inspect.signature(function).parameters.values() if p.kind is p.VAR_KEYWORD]
    handed = rf"super\(\w*,?\s*\w*\)\.__init__\([^)]*\*\*{keywords[0]}\b" if keywords else None
    return handed is not None and re.search(handed, source) is not None


def _check_component_argument(
    config: dict[str, Any], after: dict[str, Any], parts: Sequence[str], key: str, source: str
) -> None:
    """Refuse ``key`` (split into ``parts``) when it sets an argument that its component (the item at ``parts[:-1]``
    in ``after``, with ``_target_``) neither holds in ``config`` nor takes; anything else (no such item, no
    component, a target that cannot be located or takes ``**kwargs`` it does not hand to its base) is left to MONAI.

    Args:
        config: the config before the settings being checked.
        after: ``config`` with those settings (:func:`_with_settings`): the components they leave.
        parts: ``key`` split at ``#``.
        key: the setting, for the message.
        source: where it comes from, for the message.

    Raises:
        FusionInputError: ``<source>: unknown setting '<key>': <Class> takes no argument '<name>'``.
    """
    import difflib
    import inspect
    from pydoc import locate

    from monai.bundle import ConfigComponent

    item, before = _config_item(after, parts[:-1]), _config_item(config, parts[:-1])
    name = parts[-1]
    if len(parts) < 2 or not ConfigComponent.is_instantiable(item) or name.startswith("_") or (
            isinstance(before, dict) and name in before):
        return
    try:
        target = ConfigComponent(item).resolve_module_name()
        target = locate(target) if isinstance(target, str) else target
        # a class whose __init__ passes **kwargs on (MONAI's DataLoader to torch's) takes its bases' arguments too
        callables = [klass.__init__ for klass in target.__mro__ if "__init__" in vars(klass)] if isinstance(
            target, type) else [target]
        parameters: dict[str, inspect.Parameter] = {}
        for function in callables:
            own = inspect.signature(function).parameters
            parameters.update(own)
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.values()):
                break
            if function is not object.__init__ and not _passes_kwargs_on(function):
                return  # its **kwargs go elsewhere (a reader, a sub-network): any argument may be read
        else:
            return  # every **kwargs is taken (or ends at object): any argument may be read
    except (ImportError, AttributeError, TypeError, ValueError):
        return
    if name in parameters:
        return
    close = difflib.get_close_matches(name, [p for p in parameters if p not in ("self", "args", "kwargs")], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise FusionInputError(f"{source}: unknown setting '{key}': {str(item['_target_']).rsplit('.', 1)[-1]} takes no "
                           f"argument '{name}'{hint}; it would stop the run when the component is built")


def check_overrides_are_read(
    contents: Sequence[dict[str, Any]], files: Sequence[str], overrides: dict[str, Any]
) -> None:
    """Refuse a setting given on the command line that the base config reads but that an override file made unread
    by replacing what read it: ``--preset small`` with a config whose ``network_def`` loads ``init_weights``
    trained the weights' own network, ``--tasks MRI-PET`` with one whose ``split`` lists its own pairs trained on
    every task, both with exit code 0.

    A setting is read when the workflow's steps (``initialize``, ``run``, ``finalize``) reach it through ``@``
    references; a reference from an entry nothing reaches (a ``datalist`` that a replaced ``split`` no longer uses)
    does not count. MONAI's own required settings (:data:`_MONAI_READS`) are always read.

    Args:
        contents: the base config and the override files, in merge order.
        files: their paths, for the message.
        overrides: the settings given (command-line options, ``--key value`` arguments).

    Raises:
        FusionInputError: ``--<key>: nothing reads it once <file> is merged ...``.
    """
    merged: dict[str, Any] = {}
    reached = []  # after each file is merged
    for content in contents:
        merged.update(content)
        reached.append(_reached_ids(merged))
    for key in overrides:
        if "#" in key or key in _MONAI_READS or key not in reached[0] or key in reached[-1]:
            continue
        culprit = next(f for f, ids in zip(files[1:], reached[1:]) if key not in ids)
        raise FusionInputError(f"--{key}: nothing reads it once {culprit} is merged (it replaces what read it), so it "
                               "would be ignored; leave it out or set what that config uses instead")


_MONAI_READS = ("bundle_root", "dataset_dir", "device")
"""Settings MONAI's bundle workflow requires by name, whatever the config's entries reference."""


def _reached_ids(config: dict[str, Any]) -> set[str]:
    """The top-level ids of ``config`` that its steps (``initialize``, ``run``, ``finalize``) reach by ``@`` references
    (``@a#b`` reaches ``a``; an ``a#b`` override key belongs to ``a``)."""
    import re

    refs: dict[str, set[str]] = {}
    for key, value in config.items():
        top = str(key).replace("::", "#").split("#")[0]
        refs.setdefault(top, set()).update(re.findall(r"@([A-Za-z_]\w*)", json.dumps(value, default=str)))
    reached: set[str] = set()
    todo = [step for step in ("initialize", "run", "finalize") if step in refs]
    while todo:
        key = todo.pop()
        if key not in reached:
            reached.add(key)
            todo.extend(refs.get(key, ()))
    return reached


def bundle_config(name: str) -> Path:
    """Path of a config shipped with the bundle, e.g. ``bundle_config("train.json")``.

    Args:
        name: the config's file name in the bundle's ``configs`` folder.

    Returns:
        the config's path (beside the bundle's ``models`` folder that holds the default weights).

    Raises:
        FusionInputError: the bundle folder or the config is missing.
    """
    from ..networks import default_weights_path

    path = default_weights_path().parents[1] / "configs" / name
    if not path.is_file():
        raise FusionInputError(f"{path}: bundle config not found (is the package installed from its repository?)")
    return path


def check_literal_overrides(overrides: dict[str, Any]) -> None:
    """Refuse override values that MONAI's config parser would not take as data.

    In a bundle config a string starting with ``$`` is a Python expression that is evaluated (``"$__import__('os')
    .system(...)"`` runs), ``@`` a reference and ``%`` a macro. Values that come from a command line (paths, names)
    must reach the config as data, so such values are refused here; a path that really starts with one of these
    characters can be given as ``./$name``.

    Args:
        overrides: config id -> value (strings, numbers, lists, dicts of them).

    Raises:
        FusionInputError: naming the override and the character.
    """

    def strings(value: Any) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, (list, tuple)):
            return [s for v in value for s in strings(v)]
        return []

    for key, value in overrides.items():
        for text in strings(value):
            if text.startswith(_CONFIG_SYNTAX):
                raise FusionInputError(
                    f"{key} {text[:60]!r}: a value starting with '{text[0]}' would be read as config code by the "
                    f"bundle ('$' runs Python, '@' and '%' refer to other items); refused. For a path that starts "
                    f"with it, write ./{text[:20]}"
                )


def run_bundle_workflow(
    config: str,
    overrides_files: Sequence[str | Path] = (),
    workflow_type: str = "train",
    allow_expressions: bool = True,
    **overrides: Any,
) -> Any:
    """Initialise, run and finalise one bundle config with override files and ``id=value`` overrides.

    Args:
        config: the bundle config name (``"train.json"``, ``"evaluate.json"``, ``"inference.json"``).
        overrides_files: further JSON/YAML files merged over it in order (e.g. ``configs/mri_pet.json``).
        workflow_type: ``"train"`` or ``"infer"`` (the MONAI property set checked before running).
        allow_expressions: let override strings be config syntax (``"$..."`` Python expressions, ``"@id"``
            references), as MONAI does; ``False`` for values that come from a user (the command line passes
            ``False``): such strings are then refused (see :func:`check_literal_overrides`) and values are data.
        overrides: config ids and their new values, e.g. ``max_epochs=10``, ``output_dir="runs/x"``.

    Returns:
        The finished ``monai.bundle.ConfigWorkflow``.

    Raises:
        FusionInputError: an override file is missing, the config lacks required properties, or the run failed on
            the user's input or an unwritable/full output folder.
    """
    workflow = _config_workflow(config, overrides_files, workflow_type, allow_expressions, overrides)
    with _user_errors():  # check_properties instantiates the workflow's components, run and finalize evaluate
        workflow.initialize()
        missing = workflow.check_properties()
        if missing:
            raise FusionInputError(f"{config}: missing required bundle properties {missing}")
        workflow.run()
        workflow.finalize()
    return workflow


def check_bundle_workflow(
    config: str,
    overrides_files: Sequence[str | Path] = (),
    ids: Sequence[str] = ("initialize#0", "split", "network_def"),
    allow_expressions: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Evaluate a few items of a bundle config, as :func:`run_bundle_workflow` would, without running it: what a
    launcher checks before it starts processes that would each fail on the same input (``lkcfusion train
    --nproc N`` before ``torchrun``).

    Args:
        config, overrides_files, allow_expressions, overrides: as for :func:`run_bundle_workflow`.
        ids: the config items to evaluate; train.json's defaults are its settings check (the first ``initialize``
            item), the data ``split`` (the dataset folder is listed and paired, nothing is loaded) and the network
            (its preset, or the weights it starts from).

    Returns:
        The evaluated items by id (e.g. ``"split"``: the training and validation items).

    Raises:
        FusionInputError: as :func:`run_bundle_workflow`, for the files and these items.
    """
    workflow = _config_workflow(config, overrides_files, "train", allow_expressions, overrides)
    with _user_errors():
        return {item: workflow.parser.get_parsed_content(item) for item in ids}


def _config_workflow(
    config: str, overrides_files: Sequence[str | Path], workflow_type: str, allow_expressions: bool,
    overrides: dict[str, Any],
) -> Any:
    """The ``ConfigWorkflow`` of the bundle config ``config`` with the override files and values (nothing run)."""
    from monai.bundle import ConfigParser, ConfigWorkflow

    if not allow_expressions:
        check_literal_overrides(overrides)
    files = [str(bundle_config(config))]
    for extra in overrides_files:
        if not Path(extra).is_file():
            raise FusionInputError(f"{extra}: config file not found")
        files.append(str(extra))
    import yaml

    try:
        contents = [ConfigParser.load_config_file(extra) for extra in files]
    except (ValueError, yaml.YAMLError) as err:  # not JSON/YAML, or a syntax error in it
        raise FusionInputError(f"{', '.join(files)}: cannot read config ({' '.join(str(err).split())})") from None
    for extra, content in zip(files[1:], contents[1:]):  # valid JSON that is a list or a string: a traceback
        if not isinstance(content, dict):
            raise FusionInputError(f"{extra}: a config holds settings as an object ({{\"name\": value, ...}}), "
                                   f"not a {type(content).__name__}")
    text = json.dumps([*contents, overrides], default=str)
    known, merged = set(contents[0]), dict(contents[0])
    for extra, content in zip(files[1:], contents[1:]):
        check_known_settings(known, content, extra, text, merged)
        known |= set(content)
        merged = _with_settings(merged, content)
    check_known_settings(known, overrides, config, text, merged)
    check_overrides_are_read(contents, files, overrides)
    return ConfigWorkflow(
        config_file=files,
        meta_file=str(bundle_config("metadata.json")),
        logging_file=str(bundle_config("logging.conf")),
        workflow_type=workflow_type,
        **overrides,
    )


@contextmanager
def _user_errors() -> Iterator[None]:
    """MONAI wraps errors of config items in RuntimeError: surface the user's one (see :func:`_user_error`)."""
    try:
        yield
    except RuntimeError as err:
        user = _user_error(err)
        if user is None:
            raise
        raise user from None


def _user_error(err: RuntimeError) -> FusionInputError | None:
    """The user's error inside MONAI's "Failed to evaluate/instantiate" wrappers, as a :class:`FusionInputError`.

    A :class:`FusionInputError` or an :class:`OSError` (unwritable folder, full disk) in the chain of causes is
    returned as a :class:`FusionInputError`; ``None`` when there is neither.
    """
    cause = user_error(err)
    if isinstance(cause, OSError):
        where = f"{cause.filename}: " if cause.filename else ""
        return FusionInputError(f"{where}{cause.strerror or cause}")
    return cause
