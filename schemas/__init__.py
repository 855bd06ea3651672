"""Arrow table schemas and the error hierarchy of xds.

This layer imports nothing of xds: every other layer builds on it.
"""

from xds.schemas.errors import (
    CatalogError,
    CatalogNotFoundError,
    CohortError,
    EvaluationError,
    ExportError,
    IngestError,
    LeakageError,
    PacsError,
    SchemaError,
    SplitError,
    SqlError,
    SqlRefusedError,
    XdsError,
)
from xds.schemas.tables import SCHEMA_VERSION, TABLES, schema_for, to_table

__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "CatalogError",
    "CatalogNotFoundError",
    "CohortError",
    "EvaluationError",
    "ExportError",
    "IngestError",
    "LeakageError",
    "PacsError",
    "SchemaError",
    "SplitError",
    "SqlError",
    "SqlRefusedError",
    "XdsError",
    "schema_for",
    "to_table",
]
