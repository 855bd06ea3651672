"""Quality control of a center's scans and labels before they reach training (``xds qc``).

- :mod:`~xds.qc.metrics`: per-scan measures (geometry, intensity, labels), :func:`scan_measures`;
- :mod:`~xds.qc.outliers`: flags with reasons against each scan's peers, :func:`flag_scans`;
- :mod:`~xds.qc.run`: :func:`run_qc`, measuring a cohort or center into the ``qc`` table;
- :mod:`~xds.qc.page`: :func:`write_qc_page`, the HTML page of a center's QC.

Defects to test it with are written by :mod:`xds.phantoms.defects`.
"""

from xds.qc.metrics import scan_measures
from xds.qc.outliers import FLAGS, flag_scans
from xds.qc.run import QC_VERSION, QcReport, run_qc

__all__ = ["FLAGS", "QC_VERSION", "QcReport", "flag_scans", "run_qc", "scan_measures",
           "write_qc_page"]  # fmt: skip


def __getattr__(name: str):
    if name == "write_qc_page":  # matplotlib and pandas: only when a page is written
        from xds.qc.page import write_qc_page

        return write_qc_page
    raise AttributeError(name)
