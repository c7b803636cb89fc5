"""``python -m monai_lkcfusion.run_bundle run --config_file ...``: ``python -m monai.bundle`` with clean errors.

Takes exactly the arguments of ``python -m monai.bundle`` (``run``, ``--config_file``, ``--meta_file``,
``--logging_file``, ``--key value`` overrides) and runs MONAI's command; a problem with the user's input (a
missing or wrongly laid out input folder, an unreadable image, an unwritable output) is printed as one line,
``lkcfusion: error: ...``, with exit code 2 instead of MONAI's traceback. See
:func:`monai_lkcfusion.engines.workflow.run_bundle_command`.

Note that ``--key value`` overrides are config syntax: a value starting with ``$`` is Python code that runs, as
in a config file; pass only values you would put in a config you trust.
"""

from __future__ import annotations

import sys

from .engines.workflow import run_bundle_command

if __name__ == "__main__":
    sys.exit(run_bundle_command())
