"""Read-only SQL over a catalog version.

User SQL (``xds sql``, ``build-cohort --where``) runs on a fresh DuckDB connection that can
read exactly the Parquet files of one catalog version and nothing else:

- ``enable_external_access=false`` with ``allowed_paths`` set to that version's files, so
  ``read_csv('/etc/passwd')``, ``COPY ... TO`` and ``ATTACH`` cannot reach the file system;
- extension install/auto-load off and ``lock_configuration=true``, so ``SET``/``PRAGMA``
  cannot undo any of it;
- only a single SELECT-shaped statement (``SELECT``, ``WITH ... SELECT``, ``VALUES``) is
  accepted, checked with DuckDB's own parser before anything runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import duckdb
import pyarrow as pa

from xds.schemas.errors import SqlError, SqlRefusedError

_ALLOWED = {duckdb.StatementType.SELECT}


def check_read_only(query: str) -> None:
    """Refuse anything but one SELECT-shaped statement.

    Raises:
        SqlRefusedError: the text is not exactly one read-only query.
    """
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise SqlError(f"SQL does not parse: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise SqlRefusedError(f"SQL refused: expected exactly one statement, got {len(statements)}")
    kind = statements[0].type
    if kind not in _ALLOWED:
        name = getattr(kind, "name", str(kind))
        raise SqlRefusedError(f"SQL refused: only SELECT queries are allowed, not {name}")


def connect(
    files: Mapping[str, Sequence[str]],
    schemas: Mapping[str, pa.Schema],
    views: Sequence[str] = (),
    *,
    lock: bool = True,
    legacy: bool = False,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection whose views read the given Parquet files and nothing else.

    Args:
        files: table name -> the Parquet files of that table at one version.
        schemas: table name -> Arrow schema, used for tables with no file yet.
        views: extra ``CREATE VIEW``/``CREATE MACRO`` statements run after the tables.
        lock: disable external access and lock the configuration (for user SQL).
        legacy: the files may predate a schema migration and lack columns; each view then
            fills the missing columns with nulls of the current type.
    """
    allowed = sorted({f for paths in files.values() for f in paths})
    con = new_connection()
    if allowed:
        con.execute("SET allowed_paths = ?", [allowed])
    add_tables(con, files, schemas, legacy=legacy)
    for statement in views:
        con.execute(statement)
    if lock:
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    return con


def new_connection() -> duckdb.DuckDBPyConnection:
    """An empty in-memory DuckDB database that loads no extension by itself."""
    config = {
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
        "allow_unsigned_extensions": False,
    }
    return duckdb.connect(":memory:", config=config)


def add_tables(
    con: duckdb.DuckDBPyConnection,
    files: Mapping[str, Sequence[str]],
    schemas: Mapping[str, pa.Schema],
    *,
    legacy: bool = False,
) -> None:
    """A view per table over its Parquet files (see :func:`connect`)."""
    for table, paths in files.items():
        file_list = ", ".join(_quote(p) for p in paths)
        if paths and not legacy:
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet([{file_list}])")
            continue
        # a table, not a registered Arrow object: cursors on this connection see it too
        con.register("_arrow", schemas[table].empty_table())
        con.execute(f"CREATE TABLE _empty_{table} AS SELECT * FROM _arrow")
        con.unregister("_arrow")
        if paths:  # UNION BY NAME keeps the empty table's columns and types, nulls for gaps
            con.execute(
                f"CREATE VIEW {table} AS SELECT * FROM _empty_{table} UNION ALL BY NAME "
                f"SELECT * FROM read_parquet([{file_list}], union_by_name=true)"
            )
        else:
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM _empty_{table}")


def run_user_query(con: duckdb.DuckDBPyConnection, query: str) -> pa.Table:
    """Check ``query`` and run it on a locked connection; errors become one line.

    Raises:
        SqlRefusedError: the query is not read-only, or tried to reach outside the catalog.
        SqlError: the query is read-only but failed (syntax, unknown column).
    """
    check_read_only(query)
    try:
        return fetch(con, query)
    except duckdb.PermissionException as exc:
        raise SqlRefusedError(f"SQL refused: {_first_line(exc)}") from None
    except duckdb.Error as exc:
        raise SqlError(f"SQL failed: {_first_line(exc)}") from None


def fetch(con: duckdb.DuckDBPyConnection, query: str, params: Sequence = ()) -> pa.Table:
    """Run ``query`` (trusted SQL) with positional ``params`` and return an Arrow table."""
    return con.sql(query, params=list(params) or None).to_arrow_table()


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
