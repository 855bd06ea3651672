"""Labels: which label of a scan to use, how its classes map, harmonized copies, cases.

- :mod:`~xds.labels.selection`: the best label per scan (manual > revised > pseudo);
- :mod:`~xds.labels.mapping`: the one class-mapping path, through the vocabulary;
- :mod:`~xds.labels.harmonization`: ``xds harmonize``, labels rewritten in a shared class set;
- :mod:`~xds.labels.cases`: a cohort's split resolved into cases (:func:`plan_export`), what
  exports, trainers and teachers read.
"""

from xds.labels.cases import ExportCase, ExportPlan, plan_export
from xds.labels.harmonization import HarmonizeReport, harmonize, resolve_class_set
from xds.labels.mapping import IGNORE, choose_classes, lookup_table, remap_label
from xds.labels.selection import REFERENCE_ORIGINS, best_labels, label_maps

__all__ = [
    "IGNORE",
    "REFERENCE_ORIGINS",
    "ExportCase",
    "ExportPlan",
    "HarmonizeReport",
    "best_labels",
    "choose_classes",
    "harmonize",
    "label_maps",
    "lookup_table",
    "plan_export",
    "remap_label",
    "resolve_class_set",
]
