"""Ingest: bring a center's data into the catalog."""

from xds.ingest.nifti import IngestReport, ingest_nifti

__all__ = ["IngestReport", "ingest_nifti"]
