import datetime as dt

import pyarrow as pa
import pytest

from xds.schemas import (
    SCHEMA_VERSION,
    TABLES,
    CatalogError,
    SchemaError,
    SqlRefusedError,
    XdsError,
    schema_for,
    to_table,
)


def test_every_table_carries_name_and_version():
    assert set(TABLES) >= {"subjects", "scans", "labels", "cohorts", "splits", "quarantine"}
    for table in TABLES:
        meta = schema_for(table).metadata
        assert meta[b"xds.table"] == table.encode()
        assert meta[b"xds.schema_version"] == SCHEMA_VERSION.encode()


def test_unknown_table_is_a_schema_error():
    with pytest.raises(SchemaError, match="unknown table"):
        schema_for("patients")


def test_to_table_rejects_unknown_columns_and_wrong_types():
    now = dt.datetime.now(dt.timezone.utc)
    row = {"uri": "a.nii.gz", "stage": "read", "error": "x", "at": now, "source": "run"}
    assert to_table("quarantine", [row]).num_rows == 1
    with pytest.raises(SchemaError, match="unknown column"):
        to_table("quarantine", [{**row, "patient_name": "DOE"}])
    with pytest.raises(SchemaError):
        to_table("quarantine", [{**row, "at": "yesterday"}])


def test_errors_subclass_builtins():
    assert issubclass(SchemaError, ValueError)
    assert issubclass(SchemaError, XdsError)
    assert issubclass(SqlRefusedError, PermissionError)
    assert issubclass(CatalogError, RuntimeError)


def test_schemas_use_arrow_types_the_catalog_needs():
    scans = schema_for("scans")
    assert scans.field("spacing").type == pa.list_(pa.float64())
    assert scans.field("acquired_on").type == pa.date32()
    assert schema_for("cohorts").field("catalog_version").type == pa.int64()
