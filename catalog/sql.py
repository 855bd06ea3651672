"""Read-only SQL over a catalog version.

User SQL (``xds sql``, ``build-cohort --where``) runs on a fresh DuckDB connection that can
read exactly the Parquet files of one catalog version and nothing else:

- ``enable_external_access=false`` with ``allowed_paths`` set to that version's files, so
  ``read_csv('/etc/passwd')``, ``COPY ... TO`` and ``ATTACH`` cannot reach the file system;
- extension install/auto-load off and ``lock_configuration=true``, so ``SET``/``PRAGMA``
  cannot undo any of it;
- only a single SELECT-shaped statement (``SELECT``, ``WITH ... SELECT``, ``VALUES``) is
  accepted, checked with DuckDB's own parser before anything runs; its syntax tree is then
  searched for functions and tables that reveal the host (settings, file lists, the views'
  definitions with their absolute paths) or run SQL of their own (``query()``);
- a ``--where`` is parsed as one boolean expression over ``scan_view`` (:func:`check_where`):
  text that closes the clause and adds a ``UNION``, an ``ORDER BY`` or a ``LIMIT`` is refused;
- memory, threads, spill space and time are bounded (:class:`SqlLimits`); the spill files
  go to the catalog's own scratch folder, not to the current directory.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from xds.schemas.errors import SqlError, SqlRefusedError

_ALLOWED = {duckdb.StatementType.SELECT}

# Functions that read settings, files, metadata or run SQL given as text.
_DENIED_FUNCTIONS = {
    "current_setting", "getenv", "getvariable", "glob", "query", "query_table", "sniff_csv",
    "which_secret", "delta_scan", "iceberg_scan", "iceberg_metadata", "iceberg_snapshots",
    "checkpoint", "force_checkpoint", "enable_profiling", "current_database",
    "current_catalog", "current_schema", "current_schemas", "database_list", "show",
    "summary", "describe", "from_json_file",
}  # fmt: skip
_DENIED_PREFIXES = ("duckdb_", "pragma_", "read_", "parquet_", "sqlite_", "pg_", "test_")
_DENIED_SCHEMAS = {"information_schema", "pg_catalog", "system", "temp"}


@dataclass(frozen=True)
class SqlLimits:
    """Bounds on one user query. Each has an environment variable to raise it.

    Attributes:
        memory: DuckDB's ``memory_limit`` (``XDS_SQL_MEMORY``, default 4GB).
        threads: worker threads (``XDS_SQL_THREADS``, default 2).
        timeout_s: seconds before the query is interrupted (``XDS_SQL_TIMEOUT``, default 120).
        temp_size: the most a query may spill to disk (``XDS_SQL_TEMP_SIZE``, default 8GB).
    """

    memory: str = "4GB"
    threads: int = 2
    timeout_s: float = 120.0
    temp_size: str = "8GB"

    @classmethod
    def from_env(cls, **overrides) -> SqlLimits:
        """Defaults, then ``XDS_SQL_*`` variables, then the non-None ``overrides``."""
        env = {
            "memory": os.environ.get("XDS_SQL_MEMORY"),
            "threads": os.environ.get("XDS_SQL_THREADS"),
            "timeout_s": os.environ.get("XDS_SQL_TIMEOUT"),
            "temp_size": os.environ.get("XDS_SQL_TEMP_SIZE"),
        }
        values = {k: v for k, v in env.items() if v}
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            limits = cls(
                memory=str(values.get("memory", cls.memory)),
                threads=int(values.get("threads", cls.threads)),
                timeout_s=float(values.get("timeout_s", cls.timeout_s)),
                temp_size=str(values.get("temp_size", cls.temp_size)),
            )
        except ValueError as exc:
            raise SqlError(f"invalid SQL limit ({exc})") from None
        if limits.threads < 1 or limits.timeout_s <= 0:
            raise SqlError("SQL limits: threads must be >= 1 and the timeout > 0 s")
        for name, size in (("memory", limits.memory), ("temp size", limits.temp_size)):
            if not re.fullmatch(r"\s*\d+(\.\d+)?\s*[KMGT]i?B\s*", size, re.IGNORECASE):
                raise SqlError(f"SQL {name} limit {size!r}: use a size such as 4GB or 512MiB")
        return limits


_PARSER: duckdb.DuckDBPyConnection | None = None  # reads no table: parses text only
_PARSER_LOCK = threading.Lock()


def syntax_tree(query: str) -> dict:
    """DuckDB's own parse of ``query`` as JSON (``json_serialize_sql``).

    Raises:
        SqlError: the text does not parse.
    """
    with _PARSER_LOCK:
        global _PARSER
        if _PARSER is None:  # opening a database costs ~30 ms; parsing ~0.1 ms
            _PARSER = duckdb.connect(":memory:")
        text = _PARSER.execute("SELECT json_serialize_sql(?::VARCHAR)", [query]).fetchone()[0]
    tree = json.loads(text)
    if tree.get("error"):
        raise SqlError(f"SQL does not parse: {tree.get('error_message', 'syntax error')}")
    return tree


def check_read_only(query: str) -> None:
    """Refuse anything but one SELECT-shaped statement that keeps to the catalog's tables.

    Raises:
        SqlRefusedError: the text is not exactly one read-only query, or it calls a
            function or names a table that reveals the host or runs SQL text.
        SqlError: the text does not parse.
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
    _check_tree(syntax_tree(query))


def _check_tree(node) -> None:
    """Walk a syntax tree; refuse denied functions, table functions and system tables."""
    if isinstance(node, list):
        for item in node:
            _check_tree(item)
        return
    if not isinstance(node, dict):
        return
    name = node.get("function_name")
    if isinstance(name, str) and _denied_function(name):
        raise SqlRefusedError(f"SQL refused: function {name}() is not available here")
    if node.get("type") == "BASE_TABLE":
        schema = (node.get("schema_name") or "").lower()
        catalog = (node.get("catalog_name") or "").lower()
        table = (node.get("table_name") or "").lower()
        if (
            schema in _DENIED_SCHEMAS
            or catalog in _DENIED_SCHEMAS
            or table.startswith(_DENIED_PREFIXES)
            or table in _DENIED_SCHEMAS
        ):
            shown = ".".join(p for p in (catalog, schema, table) if p)
            raise SqlRefusedError(f"SQL refused: system table {shown} is not available here")
    for value in node.values():
        if isinstance(value, dict | list):
            _check_tree(value)


def _denied_function(name: str) -> bool:
    low = name.lower()
    return low in _DENIED_FUNCTIONS or low.startswith(_DENIED_PREFIXES)


def check_where(where: str, view: str = "scan_view") -> None:
    """Refuse a ``--where`` that is anything but one boolean expression over ``view``.

    The clause is parsed inside ``SELECT * FROM view WHERE ...``; the parse must be that
    select and nothing more: no set operation (``1=0) UNION ALL SELECT ...``), no
    ``ORDER BY``/``LIMIT``, grouping, window clauses or common table expressions.

    Raises:
        SqlRefusedError: the text is not a single boolean expression, or does not parse.
    """
    if not where or not where.strip():
        raise SqlRefusedError("SQL refused: --where is empty")
    try:
        tree = syntax_tree(f"SELECT * FROM {view} WHERE {where}")
    except SqlError as exc:
        raise SqlRefusedError(
            f"SQL refused: --where must be one boolean expression ({str(exc)[5:]})"
        ) from None
    statements = tree.get("statements", [])
    node = statements[0].get("node", {}) if len(statements) == 1 else {}
    source = node.get("from_table") or {}
    plain = (
        len(statements) == 1
        and node.get("type") == "SELECT_NODE"
        and not node.get("modifiers")
        and not (node.get("cte_map") or {}).get("map")
        and not node.get("group_expressions")
        and not node.get("group_sets")
        and node.get("having") is None
        and node.get("qualify") is None
        and node.get("sample") is None
        and source.get("type") == "BASE_TABLE"
        and source.get("table_name") == view
        and not source.get("alias")
        and [item.get("class") for item in node.get("select_list", [])] == ["STAR"]
        and node.get("where_clause") is not None
    )
    if not plain:
        raise SqlRefusedError(
            "SQL refused: --where must be one boolean expression over "
            f"{view}'s columns (no UNION, ORDER BY, LIMIT or GROUP BY)"
        )
    _check_tree(node.get("where_clause"))


def where_sql(where: str, columns: str, view: str = "scan_view") -> str:
    """The query selecting ``columns`` of ``view`` rows that a checked ``where`` keeps."""
    check_where(where, view)
    # Own lines: a trailing "-- comment" in the clause cannot swallow the parenthesis.
    return f"SELECT {columns} FROM {view} WHERE (\n{where}\n)"


def connect(
    files: Mapping[str, Sequence[str]],
    schemas: Mapping[str, pa.Schema],
    views: Sequence[str] = (),
    *,
    lock: bool = True,
    legacy: bool = False,
    scratch: Path | None = None,
    limits: SqlLimits | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection whose views read the given Parquet files and nothing else.

    Args:
        files: table name -> the Parquet files of that table at one version.
        schemas: table name -> Arrow schema, used for tables with no file yet.
        views: extra ``CREATE VIEW``/``CREATE MACRO`` statements run after the tables.
        lock: disable external access and lock the configuration (for user SQL).
        legacy: the files may predate a schema migration and lack columns; each view then
            fills the missing columns with nulls of the current type.
        scratch: a folder for the query's spill files (created on demand).
        limits: memory, thread and spill bounds (the timeout is applied per query).
    """
    allowed = sorted({f for paths in files.values() for f in paths})
    con = new_connection()
    if limits is not None:
        con.execute(f"SET memory_limit = '{limits.memory}'")
        con.execute(f"SET threads = {int(limits.threads)}")
        con.execute(f"SET max_temp_directory_size = '{limits.temp_size}'")
    if scratch is not None:
        con.execute("SET temp_directory = ?", [str(scratch)])
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


def run_user_query(
    con: duckdb.DuckDBPyConnection, query: str, *, timeout_s: float | None = None
) -> pa.Table:
    """Check ``query`` and run it on a locked connection; errors become one line.

    Args:
        con: a connection from :func:`connect` with ``lock=True``.
        query: the user's SQL.
        timeout_s: interrupt the query after this many seconds.

    Raises:
        SqlRefusedError: the query is not read-only, or tried to reach outside the catalog.
        SqlError: the query is read-only but failed (syntax, unknown column, a limit).
    """
    check_read_only(query)
    timer = None
    stopped = threading.Event()
    if timeout_s:

        def interrupt() -> None:
            stopped.set()
            con.interrupt()

        timer = threading.Timer(timeout_s, interrupt)
        timer.daemon = True
        timer.start()
    try:
        return fetch(con, query)
    except duckdb.PermissionException as exc:
        raise SqlRefusedError(f"SQL refused: {_first_line(exc)}") from None
    except duckdb.OutOfMemoryException as exc:
        raise SqlError(
            f"SQL stopped: {_first_line(exc)} (raise the limit with XDS_SQL_MEMORY or "
            "--memory-limit)"
        ) from None
    except (duckdb.InterruptException, duckdb.Error) as exc:
        if stopped.is_set():
            raise SqlError(
                f"SQL stopped after the {timeout_s:g} s time limit (raise it with "
                "XDS_SQL_TIMEOUT or --timeout)"
            ) from None
        raise SqlError(f"SQL failed: {_first_line(exc)}") from None
    finally:
        if timer is not None:
            timer.cancel()


def fetch(con: duckdb.DuckDBPyConnection, query: str, params: Sequence = ()) -> pa.Table:
    """Run ``query`` (trusted SQL) with positional ``params`` and return an Arrow table."""
    return con.sql(query, params=list(params) or None).to_arrow_table()


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_PATH = re.compile(r"(?<![\w.])/[^\s'\"`,;()\[\]]+")


def _first_line(exc: BaseException) -> str:
    """The first line of an error, absolute paths (the catalog's files) masked."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return _PATH.sub("<path>", line)
