"""What one catalog transaction stages: appends deduplicated by key, and updates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xds.schemas.errors import CatalogError
from xds.schemas.tables import schema_for, to_table

if TYPE_CHECKING:
    from xds.catalog.store import Catalog


class Transaction:
    """Appends collected by :meth:`Catalog.transaction`."""

    def __init__(self) -> None:
        self.appends: dict[str, list[pa.Table]] = {}
        self.unique: dict[str, tuple[str, ...]] = {}
        self.updates: list[tuple[str, str, list, dict]] = []
        self.replacements: list[tuple[str, str, pa.Table, tuple[str, ...]]] = []
        self.written: dict[str, int] = {}

    @property
    def empty(self) -> bool:
        """Nothing to write."""
        return not (self.appends or self.updates or self.replacements)

    def update(self, table: str, key: str, values: Sequence, changes: dict) -> None:
        """Set ``changes`` (column -> value) where ``key`` is in ``values``, at commit.

        The update lands in the same new catalog version as the appends. Earlier versions
        keep the old values (time travel), so a correction never erases what was there.
        """
        schema = schema_for(table)
        for column in (key, *changes):
            if column not in schema.names:
                raise CatalogError(f"{table}: no column {column!r}")
        if values:
            self.updates.append((table, key, list(values), dict(changes)))

    def replace(self, table: str, key: str, rows: list[dict], columns: Sequence[str]) -> None:
        """Set ``columns`` of the rows whose ``key`` matches one of ``rows``, at commit.

        Each row brings its own values (one Delta MERGE for all of them), where
        :meth:`update` sets one value everywhere. Rows whose key the table lacks are
        ignored; earlier versions keep the old values.
        """
        schema = schema_for(table)
        for column in (key, *columns):
            if column not in schema.names:
                raise CatalogError(f"{table}: no column {column!r}")
        if rows:
            fields = [schema.field(c) for c in (key, *columns)]
            data = pa.Table.from_pylist([{c: r.get(c) for c in (key, *columns)} for r in rows],
                                        schema=pa.schema(fields))  # fmt: skip
            self.replacements.append((table, key, data, tuple(columns)))

    def append(
        self, table: str, rows: list[dict] | pa.Table, *, unique_by: Sequence[str] = ()
    ) -> None:
        """Queue rows for ``table``; dicts are checked against its schema now.

        Args:
            table: a catalog table.
            rows: dicts or an Arrow table.
            unique_by: key columns; rows whose key the catalog already holds when the
                transaction commits are dropped (idempotent re-runs).
        """
        if isinstance(rows, pa.Table):
            data = rows.cast(schema_for(table))
        else:
            if not rows:
                return
            data = to_table(table, rows)
        if unique_by:
            self.unique[table] = tuple(unique_by)
        if data.num_rows:
            self.appends.setdefault(table, []).append(data)

    def pending(self, table: str, head: Catalog) -> pa.Table:
        """The rows to write to ``table`` on top of ``head``: new keys only, once each."""
        data = pa.concat_tables(self.appends[table])
        keys = self.unique.get(table)
        if not keys:
            return data
        # Only the key columns are read, straight from the version's files.
        files = head.files(table)
        existing = (
            pq.read_table(files, columns=list(keys))
            if files
            else schema_for(table).empty_table().select(list(keys))
        )
        new_keys = _key_column(data, keys)
        keep = pc.invert(pc.is_in(new_keys, value_set=_key_column(existing, keys)))
        data = data.filter(keep)
        # Keep the first row of each key within this transaction too.
        _, first = np.unique(np.asarray(_key_column(data, keys)), return_index=True)
        return data.take(pa.array(np.sort(first)))


def sql_literal(value) -> str:
    """A value as a SQL literal for Delta's update expressions."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def _key_column(table: pa.Table, keys: Sequence[str]) -> pa.Array:
    columns = [pc.cast(table.column(k), pa.string()).fill_null("\x01") for k in keys]
    if len(columns) == 1:
        return columns[0].combine_chunks()
    return pc.binary_join_element_wise(*columns, "\0").combine_chunks()
