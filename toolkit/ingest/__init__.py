"""Ingest: bring a center's data, or a downloaded public dataset, into the catalog.

- :func:`ingest_nifti`: a NIfTI folder (layouts, label maps, metadata sheets);
- :func:`ingest_dicom`: a DICOM export, converted with dcm2niix and classified;
- :func:`ingest_dataset`: a public dataset through its adapter (:data:`ADAPTERS`);
- :func:`ingest_labels`: NIfTI masks drawn on a DICOM center's series;
- :func:`set_sequence`: correct a scan's sequence by hand;
- :func:`read_keyed_sheet` + :func:`apply_sheet`: a DICOM center's clinical sheet keyed by
  MRN or accession number (:mod:`xds.ingest.clinical`).
"""

from xds.ingest.clinical import SheetReport, apply_sheet, read_keyed_sheet
from xds.ingest.common import IngestReport
from xds.ingest.datasets import ADAPTERS, ingest_dataset
from xds.ingest.dicom import DicomIngestReport, ingest_dicom, set_sequence
from xds.ingest.masks import ingest_labels
from xds.ingest.nifti import ingest_nifti

__all__ = [
    "ADAPTERS",
    "DicomIngestReport",
    "IngestReport",
    "SheetReport",
    "apply_sheet",
    "ingest_dataset",
    "ingest_dicom",
    "ingest_labels",
    "ingest_nifti",
    "read_keyed_sheet",
    "set_sequence",
]
