"""``xds migrate``: bring an older catalog's tables to this schema, keeping every version."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
from deltalake import (
    DeltaTable,
    write_deltalake,
)
from filelock import FileLock

from xds.catalog.deltas import (
    WRITER_PROPERTIES,
    append_version_row,
    commit_props,
    restore_orphans,
    schema_version,
    table_stamp,
    version_rows,
)
from xds.catalog.store import LOCK_FILE, SECRET_FILE
from xds.schemas.errors import CatalogError
from xds.schemas.ids import acquisition_time_key
from xds.schemas.tables import SCHEMA_VERSION, TABLES, schema_for


def migrate(root: str | os.PathLike) -> list[str]:
    """Bring a catalog written by an older xds to :data:`SCHEMA_VERSION`; say what changed.

    Migrations are additive: new tables are created, new (nullable) columns are added and
    each changed table is rewritten once so its newest files carry every column (and no
    column the schema dropped: schema 5 turns ``scans.acquisition_time_s`` into its keyed
    hash, ``acquisition_time_key``; older versions keep their files as they were). The change
    is one new catalog version; older versions stay readable (their views fill the missing
    columns with nulls). A catalog already current is left alone.

    Raises:
        CatalogNotFoundError: no catalog at ``root``.
        CatalogError: the catalog is newer than this xds.
    """
    root = Path(root).resolve()
    with FileLock(str(root / LOCK_FILE)):
        head = version_rows(root)[-1]
        found = schema_version(root, "scans")
        if found == SCHEMA_VERSION:
            return []
        if not found.isdigit() or int(found) > int(SCHEMA_VERSION):
            raise CatalogError(f"{root}: schema version {found} is newer than this xds")
        versions = json.loads(head["table_versions"])
        restore_orphans(root, {t: v for t, v in versions.items() if (root / t).exists()})
        changes = []
        for table in TABLES:
            schema = schema_for(table)
            path = str(root / table)
            if not DeltaTable.is_deltatable(path):
                DeltaTable.create(
                    path,
                    schema=schema,
                    name=table,
                    description=json.dumps(table_stamp(table)),
                    commit_properties=commit_props(table, "migrate"),
                )
                versions[table] = 0
                changes.append(f"created table {table}")
                continue
            dt = DeltaTable(path, version=versions[table])
            have = set(dt.schema().to_arrow().names)
            missing = [f.name for f in schema if f.name not in have]
            if missing:
                data = dt.to_pyarrow_table()
                for name in missing:
                    derive = _DERIVED.get((table, name))
                    column = (
                        derive(data, root)
                        if derive is not None
                        else pa.nulls(len(data), schema.field(name).type)
                    )
                    data = data.append_column(schema.field(name), column)
                write_deltalake(
                    path,
                    data.select(schema.names).cast(schema),
                    mode="overwrite",
                    schema_mode="overwrite",
                    commit_properties=commit_props(
                        table, f"migrate schema {found} -> {SCHEMA_VERSION}"
                    ),
                    writer_properties=WRITER_PROPERTIES.get(table),
                )
                changes.append(f"{table}: added {', '.join(missing)}")
            DeltaTable(path).alter.set_table_description(json.dumps(table_stamp(table)))
            versions[table] = DeltaTable(path).version()
        append_version_row(
            root,
            head["catalog_version"] + 1,
            versions,
            f"migrate schema {found} -> {SCHEMA_VERSION}",
        )
    return changes


def _acquisition_time_keys(data: pa.Table, root: Path) -> pa.Array:
    """Schema 5: the keyed hash of each scan's time of day, from the raw seconds before."""
    if "acquisition_time_s" not in data.column_names:
        return pa.nulls(len(data), pa.string())
    secret = (root / SECRET_FILE).read_bytes()
    seconds = data.column("acquisition_time_s").to_pylist()
    return pa.array([acquisition_time_key(secret, s) for s in seconds], pa.string())


# Columns a migration computes from the old ones rather than filling with nulls.
_DERIVED = {("scans", "acquisition_time_key"): _acquisition_time_keys}
