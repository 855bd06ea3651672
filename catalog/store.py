"""The catalog store: one Delta Lake table per catalog table, versioned together.

A catalog is a directory::

    catalog/
      subjects/ scans/ labels/ label_maps/ cohorts/ splits/ quarantine/   Delta tables
      _versions/          Delta table: one row per catalog version -> each table's version
      data/               managed image and label files, named by pseudonym
      .xds-secret         per-catalog key of the subject pseudonyms (never in a table)
      .xds.lock           writers' lock

Delta Lake makes each table's append atomic; the ``_versions`` row makes a *set* of appends
atomic: a reader sees catalog version N, i.e. the table versions recorded in row N, so a writer
that dies between two table appends leaves nothing visible. The next writer finds the orphan
table versions and restores those tables to their recorded version before it appends.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa
from deltalake import (
    DeltaTable,
    write_deltalake,
)
from filelock import FileLock

from xds.catalog import sql as _sql
from xds.catalog.deltas import (
    VERSIONS_SCHEMA,
    VERSIONS_TABLE,
    WRITER_PROPERTIES,
    append_version_row,
    commit_props,
    compact_if_fragmented,
    local_path,
    restore_orphans,
    schema_version,
    table_stamp,
    version_rows,
)
from xds.catalog.transaction import Transaction, sql_literal
from xds.catalog.views import VIEWS
from xds.schemas.errors import CatalogError, CatalogNotFoundError
from xds.schemas.tables import SCHEMA_VERSION, TABLES, schema_for

SECRET_FILE = ".xds-secret"
LOCK_FILE = ".xds.lock"


class Catalog:
    """One version of a catalog directory.

    A ``Catalog`` object is pinned to one catalog version; reads always see that version.
    Writes go through :meth:`transaction` and move the object to the version they create.

    >>> cat = Catalog.create(tmp / "catalog")  # doctest: +SKIP
    >>> cat.sql("SELECT count(*) AS n FROM scans").to_pylist()  # doctest: +SKIP
    [{'n': 0}]
    """

    def __init__(
        self, root: Path, version: int, table_versions: dict[str, int], *, legacy: bool = False
    ):
        self.root = root
        self.version = version
        self.table_versions = table_versions
        self.legacy = legacy  # a version from before a schema migration
        self._files: dict[str, list[str]] = {}
        self._reader_state = _ReaderState()
        self._pinned: dict[int, Catalog] = {}  # other versions read through at()
        self.sql_limits = _sql.SqlLimits.from_env()  # bounds on user SQL (xds sql, --where)

    def __getstate__(self) -> dict:
        # DuckDB connections do not pickle (worker processes open their own)
        return {**self.__dict__, "_reader_state": _ReaderState(), "_pinned": {}}

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def create(cls, root: str | os.PathLike) -> Catalog:
        """Create an empty catalog at ``root`` (a new or empty directory).

        Raises:
            CatalogError: ``root`` already holds a catalog or other files.
        """
        root = Path(root).resolve()
        if (root / VERSIONS_TABLE).exists():
            raise CatalogError(f"{root}: a catalog already exists here")
        if root.exists() and any(root.iterdir()):
            raise CatalogError(f"{root}: directory is not empty; choose a new catalog path")
        root.mkdir(parents=True, exist_ok=True)
        secret = root / SECRET_FILE
        secret.write_bytes(secrets.token_bytes(32))
        secret.chmod(0o600)
        with FileLock(str(root / LOCK_FILE)):
            for table in TABLES:
                DeltaTable.create(
                    str(root / table),
                    schema=schema_for(table),
                    name=table,
                    description=json.dumps(table_stamp(table)),
                    commit_properties=commit_props(table, "create"),
                )
            versions = {t: 0 for t in TABLES}
            DeltaTable.create(
                str(root / VERSIONS_TABLE),
                schema=VERSIONS_SCHEMA,
                description=json.dumps(table_stamp(VERSIONS_TABLE)),
            )
            append_version_row(root, 0, versions, "create")
        return cls(root, 0, versions)

    @classmethod
    def open(
        cls, root: str | os.PathLike, version: int | None = None, *, create: bool = False
    ) -> Catalog:
        """Open the catalog at ``root``, at its latest version or at ``version``.

        Args:
            root: the catalog directory.
            version: a catalog version to pin (time travel); latest when None.
            create: create an empty catalog when none exists yet.

        Raises:
            CatalogNotFoundError: no catalog at ``root`` (and ``create`` is False).
            CatalogError: ``version`` does not exist.
        """
        root = Path(root).resolve()
        if not (root / VERSIONS_TABLE).exists():
            if create:
                return cls.create(root)
            raise CatalogNotFoundError(
                f"{root}: no catalog here (create one with an ingest, or pass --catalog)"
            )
        rows = version_rows(root)
        found = schema_version(root, "scans")
        if found != SCHEMA_VERSION:
            if found.isdigit() and int(found) < int(SCHEMA_VERSION):
                raise CatalogError(
                    f"{root}: catalog has schema version {found}, this xds writes "
                    f"{SCHEMA_VERSION}; run `xds migrate` (adds columns, keeps every version)"
                )
            raise CatalogError(
                f"{root}: catalog has schema version {found}; this xds reads {SCHEMA_VERSION}"
                " (upgrade xds)"
            )
        if version is None:
            row = rows[-1]
        else:
            matches = [r for r in rows if r["catalog_version"] == version]
            if not matches:
                raise CatalogError(
                    f"{root}: catalog version {version} does not exist "
                    f"(latest is {rows[-1]['catalog_version']})"
                )
            row = matches[0]
        migrated = [r["catalog_version"] for r in rows if r["operation"].startswith("migrate")]
        legacy = any(v > row["catalog_version"] for v in migrated)
        return cls(root, row["catalog_version"], json.loads(row["table_versions"]), legacy=legacy)

    def at(self, version: int) -> Catalog:
        """The same catalog pinned at another version."""
        if version == self.version:  # a twin sharing this version's read connection
            twin = Catalog(self.root, self.version, self.table_versions, legacy=self.legacy)
            twin._files, twin._reader_state = self._files, self._reader_state
            return twin
        # versions are immutable: keep the objects that read old ones (a cohort's pinned
        # version is read again and again), unless one was moved by a write since
        pinned = self._pinned.get(version)
        if pinned is None or pinned.version != version:
            pinned = self._pinned[version] = Catalog.open(self.root, version)
        return pinned.at(version)

    def latest(self) -> Catalog:
        """The same catalog at its newest version."""
        return Catalog.open(self.root)

    def history(self) -> list[dict]:
        """Every catalog version: number, operation, time and table versions."""
        return version_rows(self.root)

    # -- reading ---------------------------------------------------------------------------

    def files(self, table: str) -> list[str]:
        """Absolute paths of the Parquet files of ``table`` at this catalog version."""
        if table not in self._files:
            schema_for(table)  # raises on an unknown table
            version = self.table_versions.get(table)
            if version is None:  # the table was added by a later schema migration
                self._files[table] = []
            else:
                dt = DeltaTable(str(self.root / table), version=version)
                self._files[table] = [local_path(uri) for uri in dt.file_uris()]
        return self._files[table]

    def connect(
        self, *, lock: bool = True, needs: Sequence[str] | None = None
    ) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with a view per table at this version, plus ``scan_view``.

        With ``lock`` (the default) the connection can read these files and nothing else.
        ``needs`` limits the views to the tables and views named (internal queries that
        know what they read skip listing the other tables' files).
        """
        tables = set(TABLES) if needs is None else _tables_for(needs)
        files = {t: self.files(t) for t in TABLES if t in tables}
        schemas = {t: schema_for(t) for t in files}
        views = [sql for deps, sql in VIEWS.values() if set(deps) <= tables]
        return _sql.connect(
            files,
            schemas,
            views,
            lock=lock,
            legacy=self.legacy,
            scratch=self._scratch() if lock else None,
            limits=self.sql_limits if lock else None,
        )

    def sql(self, query: str) -> pa.Table:
        """Run one read-only query (user SQL) against this version, within :attr:`sql_limits`.

        Raises:
            SqlRefusedError: the query is not a single SELECT or reaches outside the catalog.
            SqlError: the query failed or ran past a limit.
        """
        with self.connect() as con:
            return self.run_user_query(con, query)

    def run_user_query(self, con: duckdb.DuckDBPyConnection, query: str) -> pa.Table:
        """Run user SQL on a connection from :meth:`connect`, stopped at the time limit."""
        return _sql.run_user_query(con, query, timeout_s=self.sql_limits.timeout_s)

    def _scratch(self) -> Path:
        """Where user queries spill: the catalog's own scratch folder.

        A catalog that is read-only to this user gets a private temporary folder instead.
        """
        folder = self.root / ".xds-scratch" / "sql"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            import tempfile

            folder = Path(tempfile.gettempdir()) / f"xds-sql-{os.getuid()}"
            folder.mkdir(mode=0o700, exist_ok=True)
        return folder

    def read(self, table: str, where: str | None = None, params: Sequence = ()) -> pa.Table:
        """Rows of ``table`` (or a view) at this version; ``where`` is trusted internal SQL."""
        query = f"SELECT * FROM {table}" + (f" WHERE {where}" if where else "")
        with self._reader([table]) as con:
            return _sql.fetch(con, query, params)

    def rows_for(
        self, table: str, scan_ids: Sequence[str] | pa.Array, columns: Sequence[str] = ()
    ) -> pa.Table:
        """Rows of ``table`` (or a view) whose ``scan_id`` is among ``scan_ids``, by scan_id.

        The join runs in DuckDB, so only the matching rows (and ``columns``, when given)
        ever reach Python, however large the table.
        """
        ids = scan_ids if isinstance(scan_ids, pa.Array) else pa.array(scan_ids, pa.string())
        selected = ", ".join(f"t.{c}" for c in columns) if columns else "t.*"
        with self._reader([table]) as con:
            con.register("_ids", pa.table({"scan_id": ids}))
            query = f"SELECT {selected} FROM {table} t SEMI JOIN _ids USING (scan_id)"
            return _sql.fetch(con, query + " ORDER BY t.scan_id")

    def count(self, table: str) -> int:
        """Number of rows of ``table`` at this version."""
        with self._reader([table]) as con:
            return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    # -- files and secrets -----------------------------------------------------------------

    def resolve(self, uri: str) -> Path:
        """The path of a file the catalog references (relative URIs live under the root)."""
        path = Path(uri)
        return path if path.is_absolute() else self.root / path

    def secret(self) -> bytes:
        """The per-catalog key of the subject pseudonyms. Never print or store it."""
        try:
            return (self.root / SECRET_FILE).read_bytes()
        except FileNotFoundError:
            raise CatalogError(f"{self.root}: the pseudonym key {SECRET_FILE} is missing") from None

    # -- writing ---------------------------------------------------------------------------

    @contextmanager
    def transaction(self, operation: str) -> Iterator[Transaction]:
        """Group appends to several tables into one new catalog version.

        Nothing is visible to readers until the block exits without an exception; on an
        exception nothing is written at all. Rows appended with ``unique_by`` are checked
        against the newest version under the writers' lock, so two concurrent writers never
        add the same row twice. ``txn.written`` says how many rows each table received.
        """
        txn = Transaction()
        yield txn
        if txn.empty:
            return
        with FileLock(str(self.root / LOCK_FILE)):
            head = version_rows(self.root)[-1]
            recorded = json.loads(head["table_versions"])
            current = Catalog(self.root, head["catalog_version"], recorded)
            tables = {t: txn.pending(t, current) for t in txn.appends}
            tables = {t: data for t, data in tables.items() if data.num_rows}
            txn.written = {t: data.num_rows for t, data in tables.items()}
            if not tables and not txn.updates and not txn.replacements:
                self._move_to(current.version, recorded)
                return
            touched = set(tables) | {u[0] for u in (*txn.updates, *txn.replacements)}
            restore_orphans(self.root, {t: recorded[t] for t in touched})
            versions = dict(recorded)
            for table, key, values, changes in txn.updates:
                dt = DeltaTable(str(self.root / table))
                keys = ", ".join(sql_literal(v) for v in values)
                metrics = dt.update(
                    updates={column: sql_literal(v) for column, v in changes.items()},
                    predicate=f"{key} IN ({keys})",
                    commit_properties=commit_props(table, operation),
                    writer_properties=WRITER_PROPERTIES.get(table),
                )
                txn.written[table] = txn.written.get(table, 0) + metrics.get("num_updated_rows", 0)
                versions[table] = dt.version()
            for table, key, data, columns in txn.replacements:
                dt = DeltaTable(str(self.root / table))
                metrics = (
                    dt.merge(data, predicate=f"t.{key} = s.{key}", source_alias="s",
                             target_alias="t", writer_properties=WRITER_PROPERTIES.get(table),
                             commit_properties=commit_props(table, operation))  # fmt: skip
                    .when_matched_update(updates={c: f"s.{c}" for c in columns})
                    .execute()
                )
                txn.written[table] = txn.written.get(table, 0) + metrics.get(
                    "num_target_rows_updated", 0
                )
                versions[table] = dt.version()
            for table, data in tables.items():
                write_deltalake(
                    str(self.root / table),
                    data,
                    mode="append",
                    commit_properties=commit_props(table, operation),
                    writer_properties=WRITER_PROPERTIES.get(table),
                )
                versions[table] = compact_if_fragmented(self.root, table, operation)
            new_version = head["catalog_version"] + 1
            append_version_row(self.root, new_version, versions, operation)
            compact_if_fragmented(self.root, VERSIONS_TABLE, operation)
        self._move_to(new_version, versions)

    def _move_to(self, version: int, table_versions: dict[str, int]) -> None:
        """Pin this object to another version; forget what was cached for the old one."""
        self.version, self.table_versions, self._files = version, table_versions, {}
        self._reader_state = _ReaderState()  # other objects at the old version keep theirs

    def _reader(self, needs: Sequence[str]) -> duckdb.DuckDBPyConnection:
        """A cursor for trusted internal reads of ``needs`` at this version.

        Opening a DuckDB database costs about 30 ms, so one connection per version is kept
        and grows a view per table as reads need them; each call gets a cheap cursor on it.
        User SQL never runs here: it gets a fresh, locked connection from :meth:`connect`.
        """
        state = self._reader_state
        tables = _tables_for(needs)
        with state.lock:
            if state.con is None:
                state.con = _sql.new_connection()
            missing = sorted(tables - state.tables)
            if missing:
                files = {t: self.files(t) for t in missing}
                schemas = {t: schema_for(t) for t in missing}
                _sql.add_tables(state.con, files, schemas, legacy=self.legacy)
                state.tables.update(missing)
            for name, (deps, statement) in VIEWS.items():
                if name not in state.views and set(deps) <= state.tables:
                    state.con.execute(statement)
                    state.views.add(name)
            return state.con.cursor()


def _tables_for(needs: Sequence[str]) -> set[str]:
    """The tables that ``needs`` (table and view names) read."""
    tables = {t for t in needs if t in TABLES}
    for view in needs:
        tables.update(VIEWS.get(view, ((), ""))[0])
    return tables


class _ReaderState:
    """The cached read connection of one catalog version (see :meth:`Catalog._reader`)."""

    def __init__(self) -> None:
        self.con: duckdb.DuckDBPyConnection | None = None
        self.tables: set[str] = set()
        self.views: set[str] = set()
        self.lock = threading.Lock()
















