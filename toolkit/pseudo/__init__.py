"""Pseudo-labels: gates that accept or reject a teacher's label, and the writer that stores them.

- :mod:`~xds.pseudo.gates`: :class:`Gates`, measures against the labelled scans' reference,
  :func:`judge_case`;
- :mod:`~xds.pseudo.writer`: :class:`PseudoLabelWriter`, files and ``labels`` rows per round.

The teachers and the round loop that use them are in :mod:`xds.trainers.students`.
"""

from xds.pseudo.gates import CaseResult, Gates, Reference, judge_case, measure
from xds.pseudo.writer import PseudoLabelWriter, pseudo_label_map

__all__ = [
    "CaseResult",
    "Gates",
    "PseudoLabelWriter",
    "Reference",
    "judge_case",
    "measure",
    "pseudo_label_map",
]
