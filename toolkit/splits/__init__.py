"""Splits: leak-free patient-level protocols, stored splits, and the leakage audit.

- :mod:`~xds.splits.protocols`: the assignment algorithms (holdout, k-fold, leave-one-out,
  single-source, cross-dataset, semi-supervised), pure functions of arrays;
- :mod:`~xds.splits.store`: :func:`make_split` / :func:`split_cohort` and the ``splits`` table;
- :mod:`~xds.splits.audit`: :func:`audit_split`, metadata and image-level leaks, and fixes.
"""

from xds.splits.audit import AuditReport, apply_fix, audit_cohort, audit_split, propose_fix
from xds.splits.protocols import STRATEGIES
from xds.splits.store import Split, derive_split, get_split, list_splits, make_split, split_cohort

__all__ = [
    "STRATEGIES",
    "AuditReport",
    "Split",
    "apply_fix",
    "audit_cohort",
    "audit_split",
    "derive_split",
    "get_split",
    "list_splits",
    "make_split",
    "propose_fix",
    "split_cohort",
]
