"""The ``lkcfusion`` command line: one small module per command, each a thin front over library functions.

A command module ``monai_lkcfusion/cli/<name>.py`` (command ``lkcfusion <name>`` with ``-`` for ``_``) holds ``HELP``
(one line for ``lkcfusion --help``), ``DESCRIPTION``, an optional ``EPILOG``, ``add_arguments(parser)`` and
``run(args) -> int``; it imports the library only inside ``run``, so that ``lkcfusion --help`` stays fast. To add
a command, write its module and name it in :data:`COMMANDS`, which orders ``lkcfusion --help``.
Errors a user can cause (:class:`~monai_lkcfusion.errors.FusionInputError`, missing files) are printed as one line on
stderr with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from importlib import import_module
from typing import NoReturn

from .. import __version__
from ..errors import FusionInputError, finish_pool_threads, one_line, user_error
from ..progress import Stage

__all__ = ["COMMANDS", "add_names_argument", "build_parser", "main", "names_given", "one_line", "print_warnings",
           "run_command"]

COMMANDS = ("fuse", "demo", "evaluate", "metrics", "train", "export", "bundle", "label_app")
"""The command modules, in the order of ``lkcfusion --help`` (the everyday ones first)."""

_DESCRIPTION = """\
LKC-FUNet multimodal medical image fusion: one fused image from an anatomical MRI and a second modality
(CT, PET or SPECT), 2D slices or 3D volumes, on the MRI's grid.
"""

_EPILOG = """\
examples:
  lkcfusion demo -o outputs/demo                     fuse the shipped demo data
  lkcfusion fuse mri.nii.gz pet.nii.gz -o fused.nii.gz
  lkcfusion fuse --mri-dir MRI/ --other-dir PET/ -o fused/
  lkcfusion evaluate --mri-dir MRI/ --other-dir PET/ -o eval/
  lkcfusion <command> --help                         options of one command
"""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other error of the command line."""

    def error(self, message: str) -> NoReturn:
        """Print ``lkcfusion: error: <command>: <message>`` and where the options are listed; exit with code 2.

        Args:
            message: argparse's description of the problem (an unknown option, a bad value, a missing argument).
        """
        command = self.prog.removeprefix("lkcfusion").strip()
        where = f"{command}: " if command else ""
        self.exit(2, f"lkcfusion: error: {where}{message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every command of :data:`COMMANDS`.

    Returns:
        The top-level parser; each subparser carries its runner as the ``func`` default and itself as
        ``command_parser`` (which reports options it does not know).
    """
    parser = _Parser(
        prog="lkcfusion",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="<command>")
    for name in COMMANDS:
        command = import_module(f".{name}", __name__)
        sub = subparsers.add_parser(
            name.replace("_", "-"), help=command.HELP, description=command.DESCRIPTION,
            epilog=getattr(command, "EPILOG", None),
        )
        command.add_arguments(sub)
        sub.set_defaults(func=command.run, command_parser=sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lkcfusion`` command line.

    Args:
        argv: arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The exit code: 0 on success, 2 for a problem with the user's input, 1 for a failed batch.
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    if "LOCAL_RANK" in os.environ:  # a torchrun worker: it must not outlive torchrun
        from ..engines.distributed import stop_with_launcher

        stop_with_launcher()

    def command() -> int | None:
        _refuse_empty_values(args)
        quiet = getattr(args, "quiet", False) or os.environ.get("RANK", "0") != "0"
        with Stage("loading PyTorch and MONAI", enabled=not quiet):  # 5-30 s of silence on a busy CPU otherwise
            import_module("monai")
        return args.func(args)

    return run_command(command)


def run_command(command: Callable[[], int | None]) -> int:
    """Run a command with the command line's exit codes and one-line errors (``lkcfusion`` and ``python -m
    monai_lkcfusion.run_bundle`` alike).

    A :class:`~monai_lkcfusion.errors.FusionInputError` or ``OSError`` (missing, unwritable or full paths), also
    inside MONAI's wrappers (:func:`~monai_lkcfusion.errors.user_error`), is printed as ``lkcfusion: error:
    <message>``; in a distributed run, the error of a process whose peer failed (which reports its own) as one line
    naming that; Ctrl-C as ``lkcfusion: interrupted``. Other errors keep their traceback.

    Args:
        command: what to run; its return value is the exit code (``None``: 0).

    Returns:
        The exit code: the command's, 2 for the user's error, 1 when another process of a distributed run failed,
        130 when interrupted.

    Raises:
        Exception: any other error of ``command`` (a bug), re-raised with its traceback; ``SystemExit`` passes too.
    """
    try:
        try:
            return int(command() or 0)
        except BaseException:
            finish_pool_threads()  # a data-loading thread an error left running must not abort the exit
            raise
    except KeyboardInterrupt:  # as one line, not a traceback of wherever it landed
        print("lkcfusion: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        message = _user_message(err)
        if message is not None:
            print(f"lkcfusion: error: {message}", file=sys.stderr)
            return 2
        from ..engines.distributed import PEER_FAILED_MESSAGE, peer_failed

        if not peer_failed(err):  # a bug: its traceback
            raise
        print(f"lkcfusion: error: {PEER_FAILED_MESSAGE}", file=sys.stderr)
        return 1

def _user_message(err: Exception) -> str | None:
    """The one line of the user's error in ``err`` (see :func:`~monai_lkcfusion.errors.user_error`), or ``None``.

    Only the text leaves this function: a reference to the error kept in :func:`run_command`'s frame would form a
    cycle (frame, error, traceback) that holds what the failed write had open, e.g. the file a full disk could not
    take, until the garbage collector runs.
    """
    user = user_error(err)
    return None if user is None else one_line(user)


def _refuse_empty_values(args: argparse.Namespace) -> None:
    """Refuse an option or argument given as an empty string (``-o ""``: a batch ended in a traceback, ``evaluate``
    wrote to the working folder and said ``/metrics.csv``, ``metrics --json ""`` wrote nothing without a word).

    Raises:
        FusionInputError: ``<option>: an empty value; ...``.
    """
    for action in args.command_parser._actions:
        value = getattr(args, action.dest, None)
        if any(isinstance(item, str) and not item.strip() for item in (value if isinstance(value, list) else [value])):
            name = "/".join(action.option_strings) or str(action.metavar or action.dest).upper()
            raise FusionInputError(f"{name}: an empty value; give one, or leave the option out")


def add_names_argument(parser: argparse.ArgumentParser, option: str, help: str) -> None:
    """Add an option that takes names (metrics, methods) in one form for every command: separated by commas, by
    spaces, or both (``EN,SD``, ``EN SD``, ``EN, SD``), the option given once or several times.

    ``lkcfusion metrics`` took ``--metrics EN SD`` and ``lkcfusion evaluate`` only ``--metrics EN,SD``; each refused
    the other's form (``unknown metric(s) ['EN,SD']``, ``unrecognized arguments: SD``).

    Args:
        parser: the command's parser.
        option: the option, e.g. ``"--metrics"``; read the names back with :func:`names_given`.
        help: the option's help text.
    """
    parser.add_argument(option, nargs="+", action="extend", metavar="NAME", help=help)


def names_given(values: Sequence[str] | None, option: str) -> list[str] | None:
    """The names of an option added with :func:`add_names_argument`, split at commas, blanks dropped.

    Args:
        values: the option's values as argparse collected them (``None``: the option was not given).
        option: the option, e.g. ``"--metrics"``, for the message.

    Returns:
        The names in the order given, or ``None`` when the option was not given.

    Raises:
        FusionInputError: only commas or blanks were given (``--metrics ,``).
    """
    if values is None:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if not names:
        raise FusionInputError(f"{option}: give at least one name (separated by commas or spaces)")
    return names


def print_warnings(messages: Iterable[str | warnings.WarningMessage]) -> None:
    """Show warnings as the CLI does: one ``lkcfusion: warning: ...`` line each, on stderr.

    Args:
        messages: warning texts, or warnings caught with ``warnings.catch_warnings(record=True)``.
    """
    for message in messages:
        text = str(message.message) if isinstance(message, warnings.WarningMessage) else message
        print(f"lkcfusion: warning: {one_line(Exception(text))}", file=sys.stderr)

