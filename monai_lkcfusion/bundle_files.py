"""The MONAI Bundle that ships inside the package: where it is, which folder a running config belongs to, and
writing a standalone copy of it.

The repository's top-level ``bundle/`` folder is installed as the package data ``monai_lkcfusion.bundle``
(configs, default weights, model card, LICENSE); :func:`packaged_bundle` finds it with :mod:`importlib.resources`
in a wheel and in an editable install alike. :func:`write_bundle` copies it to a folder of the user's choice, and
the configs' ``bundle_root`` is :func:`bundle_root`, so that a copied bundle uses its own ``models/model.pt``.
"""

from __future__ import annotations

import ast
import inspect
import shutil
import sys
from importlib import resources
from os import PathLike
from pathlib import Path

from .errors import FusionInputError

__all__ = ["BUNDLE_ITEMS", "bundle_root", "packaged_bundle", "required_setting", "write_bundle"]

BUNDLE_PACKAGE = "monai_lkcfusion.bundle"
#: what a standalone bundle holds (MONAI model-zoo layout), relative to its root
BUNDLE_ITEMS = ("configs", "models", "docs", "LICENSE")


def packaged_bundle() -> Path:
    """The bundle folder installed with the package (the repository's ``bundle/`` in an editable install).

    Returns:
        The folder holding ``configs/``, ``models/``, ``docs/`` and ``LICENSE``.

    Raises:
        FusionInputError: the package is not installed as plain files (e.g. imported from a zip archive).
    """
    root = resources.files(BUNDLE_PACKAGE)
    if not isinstance(root, Path):
        raise FusionInputError(f"{root}: the bundle is not a folder on disk; install monai-lkcfusion unzipped")
    return root


def bundle_root() -> str:
    """The folder of the bundle whose config is being run, for the configs' ``"bundle_root"``.

    MONAI's ``ConfigWorkflow`` does not tell a config where it was read from, so this looks, in order, at

    1. the ``monai.bundle.ConfigWorkflow`` evaluating the config (``python -m monai.bundle run`` or
       ``run_workflow``, or ``ConfigWorkflow(config_file=...)`` in Python): the folder of its first config file;
    2. ``--config_file`` (else ``--meta_file``) of a ``python -m monai.bundle`` command that builds no workflow
       (e.g. ``verify_net_in_out``);
    3. the bundle inside the package (:func:`packaged_bundle`).

    A config folder named ``configs`` stands for its parent, the bundle root (as in ``ConfigWorkflow.run``).
    ``--bundle_root FOLDER`` (a config override) replaces this value altogether.

    Returns:
        The bundle root as a string (the configs join paths to it with ``+``).
    """
    config = _workflow_config_dir() or _command_line_config_dir()
    if config is None:
        return str(packaged_bundle())
    return str(config.parent if config.name == "configs" else config)


def _workflow_config_dir() -> Path | None:
    """``config_root_path`` of the innermost ``ConfigWorkflow`` on the call stack, or of the one whose parser is
    evaluating the config (``workflow.parser.get_parsed_content(...)`` called directly: no workflow method on the
    stack, and the packaged bundle's weights were taken and cached for the copy's run), if any."""
    import gc

    bundle = sys.modules.get("monai.bundle")
    workflow_type, parser_type = getattr(bundle, "ConfigWorkflow", None), getattr(bundle, "ConfigParser", None)
    if workflow_type is None:
        return None
    parser = None
    frame = inspect.currentframe()
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, workflow_type) and getattr(owner, "config_root_path", None) is not None:
            return Path(owner.config_root_path).absolute()
        if parser is None and parser_type is not None and isinstance(owner, parser_type):
            parser = owner
        frame = frame.f_back
    if parser is not None:  # the workflow holds its parser itself, or through its __dict__
        holders = gc.get_referrers(parser)
        for workflow in [*holders, *(w for h in holders if isinstance(h, dict) for w in gc.get_referrers(h))]:
            if isinstance(workflow, workflow_type) and getattr(workflow, "parser", None) is parser \
                    and getattr(workflow, "config_root_path", None) is not None:
                return Path(workflow.config_root_path).absolute()
    return None


def _command_line_config_dir() -> Path | None:
    """Folder of the first ``--config_file`` (else ``--meta_file``) of a running ``python -m monai.bundle``."""
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if main_spec is None or main_spec.name != "monai.bundle.__main__":
        return None
    args = sys.argv[1:]
    for option in ("config_file", "meta_file"):
        for i, arg in enumerate(args):
            name, _, value = arg.partition("=")
            if not name.startswith("--") or name[2:].replace("-", "_") != option:
                continue
            value = value or (args[i + 1] if i + 1 < len(args) else "")
            try:  # fire also takes a Python list of files: "['a.json', 'b.json']"
                parsed = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                parsed = value
            first = parsed[0] if isinstance(parsed, (list, tuple)) and parsed else parsed
            if isinstance(first, str) and first:
                return Path(first).absolute().parent
    return None


def write_bundle(dest: str | PathLike, overwrite: bool = False) -> Path:
    """Write the packaged bundle as a standalone MONAI Bundle folder.

    ``dest`` gets ``configs/``, ``models/model.pt``, ``docs/README.md`` and ``LICENSE``; its configs read
    ``dest/models/model.pt`` wherever ``dest`` is moved to (see :func:`bundle_root`).

    Args:
        dest: the folder to write; created when missing.
        overwrite: write into a folder that is not empty, replacing files of the same names (other files stay).

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        FusionInputError: ``dest`` is a file, or a non-empty folder and ``overwrite`` is false, or the installed
            bundle is incomplete.
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise FusionInputError(f"{dest}: not a folder")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise FusionInputError(f"{dest}: folder is not empty; pass --overwrite (overwrite=True) to write into it")
    source = packaged_bundle()
    missing = [name for name in BUNDLE_ITEMS if not (source / name).exists()]
    if missing:
        raise FusionInputError(f"{source}: installed bundle lacks {', '.join(missing)}; reinstall monai-lkcfusion")
    dest.mkdir(parents=True, exist_ok=True)
    for name in BUNDLE_ITEMS:
        if (source / name).is_dir():
            shutil.copytree(
                source / name, dest / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copyfile(source / name, dest / name)
    return dest


def required_setting(name: str, hint: str) -> None:
    """Config default of a setting the user must give (e.g. ``"dataset_dir"`` of train.json).

    Args:
        name: the config id.
        hint: what to pass after ``--name``, e.g. ``"FOLDER (Harvard layout: FOLDER/train/<task>/MRI/<name>)"``.

    Raises:
        FusionInputError: always, naming the override to pass.
    """
    dashed = name.replace("_", "-")
    cli = f" (lkcfusion: --{dashed})" if dashed != name else ""
    raise FusionInputError(f"{name} is not set: pass --{name} {hint}{cli}")
