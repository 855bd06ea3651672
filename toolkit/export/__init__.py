"""Exports of a cohort to the formats training tools read.

``export_nnunet`` (nnU-Net v2 raw), ``export_datalist`` (MONAI / Decathlon datalist),
``export_hf`` (Hugging Face ``datasets``) write files; ``cohort_subjects`` hands TorchIO
subjects to a training loop without writing any. Which scans and labels go where is decided once, in
:func:`xds.labels.plan_export`; :mod:`~xds.export.files` places the files.
"""

from xds.export.datalist import DatalistExport, export_datalist
from xds.export.hf import HfExport, export_hf
from xds.export.nnunet import NnunetExport, export_nnunet
from xds.export.torchio import cohort_subjects

__all__ = [
    "DatalistExport",
    "HfExport",
    "NnunetExport",
    "cohort_subjects",
    "export_datalist",
    "export_hf",
    "export_nnunet",
]
