"""The catalog: versioned Delta Lake tables, DuckDB views and read-only SQL."""

from xds.catalog.cohorts import Cohort, build_cohort, cohort_scans, get_cohort, list_cohorts
from xds.catalog.deltas import utcnow
from xds.catalog.migrations import migrate
from xds.catalog.store import Catalog
from xds.catalog.transaction import Transaction

__all__ = [
    "Catalog",
    "Cohort",
    "Transaction",
    "build_cohort",
    "cohort_scans",
    "get_cohort",
    "list_cohorts",
    "migrate",
    "utcnow",
]
