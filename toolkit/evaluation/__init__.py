"""Evaluation: metrics per case, scores stored in the catalog, subgroup statistics, reports.

- :mod:`~xds.evaluation.metrics`: Dice, NSD, HD95, ASSD, Set Dice;
- :mod:`~xds.evaluation.scoring`: :func:`evaluate`, a prediction folder scored against a
  cohort's reference labels;
- :mod:`~xds.evaluation.stats`, :mod:`~xds.evaluation.plots`, :mod:`~xds.evaluation.report`:
  confidence intervals, paired tests, figures and the HTML report (the ``eval`` extra:
  pandas, statsmodels, matplotlib), imported when first used.
"""

from importlib import import_module

from xds.evaluation.metrics import compare_label_maps, compare_masks, set_dice
from xds.evaluation.scoring import Evaluation, evaluate

_LATER = {"Report": "report", "build_report": "report", "load_metrics": "report"}

__all__ = ["Evaluation", "compare_label_maps", "compare_masks", "evaluate", "set_dice", *_LATER]


def __getattr__(name: str):
    # the report's stack (pandas, matplotlib) only when a report is asked for
    if name in _LATER:
        return getattr(import_module(f"{__name__}.{_LATER[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
