"""The error hierarchy.

Every error xds raises on purpose derives from :class:`XdsError` and also from the builtin
exception a caller would expect, so ``except ValueError`` keeps working. The CLI turns any
``XdsError`` into one line on stderr and exit code 1 (see ``xds.cli.main``).
"""


class XdsError(Exception):
    """Base class of every error raised on purpose by xds."""


class SchemaError(XdsError, ValueError):
    """A table or a row does not fit its Arrow schema."""


class CatalogError(XdsError, RuntimeError):
    """The catalog cannot be created, opened or written."""


class CatalogNotFoundError(CatalogError, FileNotFoundError):
    """No catalog exists at the given location."""


class SqlError(XdsError, ValueError):
    """A query failed (syntax, unknown column, ...)."""


class SqlRefusedError(SqlError, PermissionError):
    """A user's SQL was refused: it is not a single read-only query."""


class IngestError(XdsError, ValueError):
    """A source file cannot be ingested (it is quarantined with this reason)."""


class CohortError(XdsError, ValueError):
    """A cohort cannot be built or found."""


class SplitError(XdsError, ValueError):
    """A split cannot be made or found."""


class LeakageError(XdsError, ValueError):
    """A split puts one subject (or one image) on two sides."""


class ExportError(XdsError, ValueError):
    """A cohort cannot be exported to the requested format."""


class EvaluationError(XdsError, ValueError):
    """Predictions and references cannot be compared (geometry, labels, missing cases)."""


class SynthError(XdsError, ValueError):
    """Synthetic data cannot be generated as asked (no usable templates, bad options)."""


class DeviceError(XdsError, ValueError):
    """The requested compute device is not available here."""


class RunError(XdsError, ValueError):
    """A training run cannot be made or used as asked."""


class MissingDependencyError(XdsError, ImportError):
    """An optional dependency a feature needs is not installed (the message names the extra)."""


class PacsError(XdsError, RuntimeError):
    """A PACS connection cannot be stored, reached or queried, or a pull cannot start."""
