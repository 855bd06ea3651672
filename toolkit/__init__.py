"""xds: a data-centric toolkit for multi-center medical image segmentation datasets."""

__version__ = "0.2.0"

__all__ = ["__version__", "cohort_subjects"]


def __getattr__(name: str):
    # xds.cohort_subjects without importing the export modules (and their catalog stack)
    # every time `import xds` runs
    if name == "cohort_subjects":
        from xds.export.torchio import cohort_subjects

        return cohort_subjects
    raise AttributeError(f"module 'xds' has no attribute {name!r}")
