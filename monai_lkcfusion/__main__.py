"""``python -m monai_lkcfusion`` runs the ``lkcfusion`` command line."""

import sys

from .cli import main

sys.exit(main())
