"""Run the bundle's configs (``bundle/configs/*.json``) as MONAI ``ConfigWorkflow`` s from Python or the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import FusionInputError

__all__ = ["bundle_config", "run_bundle_workflow"]


def bundle_config(name: str) -> Path:
    """Path of a config shipped with the bundle, e.g. ``bundle_config("train.json")``.

    Raises:
        FusionInputError: the bundle folder or the config is missing.
    """
    from ..networks import default_weights_path

    path = default_weights_path().parents[1] / "configs" / name
    if not path.is_file():
        raise FusionInputError(f"{path}: bundle config not found (is the package installed from its repository?)")
    return path


def run_bundle_workflow(
    config: str,
    overrides_files: Sequence[str | Path] = (),
    workflow_type: str = "train",
    **overrides: Any,
) -> Any:
    """Initialise, run and finalise one bundle config with override files and ``id=value`` overrides.

    Args:
        config: the bundle config name (``"train.json"``, ``"evaluate.json"``, ``"inference.json"``).
        overrides_files: further JSON/YAML files merged over it in order (e.g. ``configs/mri_pet.json``).
        workflow_type: ``"train"`` or ``"infer"`` (the MONAI property set checked before running).
        overrides: config ids and their new values, e.g. ``max_epochs=10``, ``output_dir="runs/x"``.

    Returns:
        The finished ``monai.bundle.ConfigWorkflow``.

    Raises:
        FusionInputError: an override file is missing, the config lacks required properties, or the run failed on
            the user's input or an unwritable/full output folder.
    """
    from monai.bundle import ConfigWorkflow

    files = [str(bundle_config(config))]
    for extra in overrides_files:
        if not Path(extra).is_file():
            raise FusionInputError(f"{extra}: config file not found")
        files.append(str(extra))
    try:
        workflow = ConfigWorkflow(
            config_file=files,
            meta_file=str(bundle_config("metadata.json")),
            logging_file=str(bundle_config("logging.conf")),
            workflow_type=workflow_type,
            **overrides,
        )
    except ValueError as err:  # not JSON/YAML, or a syntax error in it
        raise FusionInputError(f"{', '.join(files)}: cannot read config ({' '.join(str(err).split())})") from None
    try:  # check_properties instantiates the workflow's components, run and finalize evaluate expressions
        workflow.initialize()
        missing = workflow.check_properties()
        if missing:
            raise FusionInputError(f"{config}: missing required bundle properties {missing}")
        workflow.run()
        workflow.finalize()
    except RuntimeError as err:  # MONAI wraps errors of config items; surface the user's one in a line
        user = _user_error(err)
        if user is None:
            raise
        raise user from None
    return workflow


def _user_error(err: RuntimeError) -> FusionInputError | None:
    """The user's error inside MONAI's "Failed to evaluate/instantiate" wrappers, as a :class:`FusionInputError`.

    A :class:`FusionInputError` or an :class:`OSError` (unwritable folder, full disk) in the chain of causes is
    returned as a :class:`FusionInputError`; ``None`` when there is neither.
    """
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, FusionInputError):
            return cause
        if isinstance(cause, OSError):
            where = f"{cause.filename}: " if cause.filename else ""
            return FusionInputError(f"{where}{cause.strerror or cause}")
        cause = cause.__cause__
    return None
