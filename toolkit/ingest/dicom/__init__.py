"""A center's DICOM export into the catalog (``xds ingest dicom``), stage by stage.

:mod:`~xds.ingest.dicom.walk` (files) -> :mod:`~xds.ingest.dicom.headers` (one header each)
-> :mod:`~xds.ingest.dicom.series` (grouped, checked) -> :mod:`~xds.ingest.dicom.convert`
(dcm2niix, classify, de-identify, store) -> commit in :mod:`~xds.ingest.dicom.ingest`;
:mod:`~xds.ingest.dicom.overrides` holds the sequences set by hand.
"""

from xds.ingest.dicom.convert import dcm2niix_path
from xds.ingest.dicom.headers import localizer_reason, projection_reason, read_header
from xds.ingest.dicom.ingest import DicomIngestReport, ingest_dicom
from xds.ingest.dicom.overrides import read_overrides, set_sequence
from xds.ingest.dicom.series import MIN_SLICES, check_series_geometry
from xds.ingest.dicom.walk import walk_files

__all__ = [
    "MIN_SLICES",
    "DicomIngestReport",
    "check_series_geometry",
    "dcm2niix_path",
    "ingest_dicom",
    "localizer_reason",
    "projection_reason",
    "read_header",
    "read_overrides",
    "set_sequence",
    "walk_files",
]
