"""Ingest: bring a center's data into the catalog."""

from xds.ingest.dicom import DicomIngestReport, ingest_dicom, set_sequence
from xds.ingest.nifti import IngestReport, ingest_nifti

__all__ = ["DicomIngestReport", "IngestReport", "ingest_dicom", "ingest_nifti", "set_sequence"]
