"""Applications over the library core: model-vs-baseline evaluation reports and their figures.

The core (networks, losses, metrics, transforms, data, engines, inference) never imports this package; the
``lkcfusion`` command line (:mod:`monai_lkcfusion.cli`) does.
"""

from __future__ import annotations

from .evaluation import compare_methods
from .figures import DEFAULT_OVERVIEW_METRICS, metrics_bar_chart, overview_figure

__all__ = ["DEFAULT_OVERVIEW_METRICS", "compare_methods", "metrics_bar_chart", "overview_figure"]
