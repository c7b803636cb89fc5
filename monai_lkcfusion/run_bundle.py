"""``python -m monai_lkcfusion.run_bundle run --config_file ...``: ``python -m monai.bundle`` with clean errors.

Takes exactly the arguments of ``python -m monai.bundle`` (``run``, ``--config_file``, ``--meta_file``,
``--logging_file``, ``--key value`` overrides) and runs MONAI's command; a problem with the user's input (a
missing or wrongly laid out input folder, an unreadable image, an unwritable output) is printed as one line,
``lkcfusion: error: ...``, with exit code 2 instead of MONAI's traceback (:func:`run_bundle_command`).

Note that ``--key value`` overrides are config syntax: a value starting with ``$`` is Python code that runs, as
in a config file; pass only values you would put in a config you trust.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["check_command_overrides", "run_bundle_command"]


def run_bundle_command(argv: Sequence[str] | None = None) -> int:
    """``python -m monai.bundle`` with the user's errors as one line, as the ``lkcfusion`` command shows them.

    MONAI's command line shows a 60-line traceback for a missing input folder; this runs the same command under
    :func:`monai_lkcfusion.cli.run_command`: a :class:`~monai_lkcfusion.errors.FusionInputError` or ``OSError``
    anywhere in the chain of causes is printed as ``lkcfusion: error: <message>`` with exit code 2; other errors
    keep their traceback. ``--key value`` overrides that no config reads are refused first
    (:func:`check_command_overrides`).

    Args:
        argv: the arguments after the program name (``run --config_file ...``); ``None`` reads ``sys.argv``.

    Returns:
        The exit code: 0, 2 for the user's error, 1 when another process of a distributed run failed (it prints
        its own error), 130 when interrupted (Ctrl-C).
    """
    import runpy

    from .cli import run_command
    from .engines.distributed import stop_with_launcher

    stop_with_launcher()
    saved = sys.argv
    sys.argv = ["python -m monai.bundle", *(sys.argv[1:] if argv is None else argv)]

    def command() -> None:
        check_command_overrides(sys.argv[1:])
        runpy.run_module("monai.bundle", run_name="__main__", alter_sys=False)

    try:
        return run_command(command)
    finally:
        sys.argv = saved


def check_command_overrides(argv: Sequence[str]) -> None:
    """Refuse ``--key value`` overrides of ``run --config_file ...`` that no config reads (e.g. ``--datset_dir``).

    Args:
        argv: the command's arguments; anything but ``run`` with ``--config_file`` (and without ``--args_file``,
            whose overrides MONAI reads itself) is left to MONAI, as are config files it cannot read.

    Raises:
        FusionInputError: see :func:`~monai_lkcfusion.engines.check_known_settings`.
    """
    import ast
    import inspect

    from monai.bundle import ConfigParser, scripts

    from .engines.workflow import check_known_settings

    options: dict[str, str] = {}
    for i, token in enumerate(argv):
        if token.startswith("--"):
            name, given, value = token[2:].partition("=")
            options[name] = value if given else (argv[i + 1] if i + 1 < len(argv) else "")
    if not argv or argv[0] != "run" or "config_file" not in options or "args_file" in options:
        return
    files: Any = options["config_file"]
    try:
        config = ConfigParser.load_config_files(ast.literal_eval(files) if files.lstrip().startswith("[") else files)
    except Exception:  # noqa: BLE001 - MONAI reports its own input problems in its own way
        return
    overrides = {key: value for key, value in options.items() if key not in inspect.signature(scripts.run).parameters}
    source = Path(str(files).strip("[]'\" ").split(",")[0]).name
    check_known_settings(config, overrides, source, json.dumps([config, overrides], default=str), config)


if __name__ == "__main__":
    sys.exit(run_bundle_command())
