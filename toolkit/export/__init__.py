"""Exports of a cohort to the formats training tools read."""

from xds.export.nnunet import NnunetExport, export_nnunet

__all__ = ["NnunetExport", "export_nnunet"]
