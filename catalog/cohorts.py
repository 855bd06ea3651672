"""Cohorts: named, version-pinned selections of scans.

A cohort stores its ``WHERE`` clause, the catalog version it was evaluated on and the scan
ids it selected. Re-running the clause on that pinned version gives the same ids, whatever
was ingested since (:func:`rematerialize`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

import pyarrow as pa
import pyarrow.compute as pc

from xds.catalog.deltas import utcnow
from xds.catalog.sql import fetch, where_sql
from xds.catalog.store import Catalog
from xds.catalog.views import VIEWS
from xds.schemas.errors import CohortError
from xds.schemas.ids import stable_id
from xds.schemas.tables import TABLES, schema_for


@dataclass(frozen=True)
class Cohort:
    """A stored cohort (one row of the ``cohorts`` table)."""

    cohort_id: str
    name: str
    where_sql: str
    catalog_version: int
    scan_id_array: pa.Array = field(repr=False)  # sorted scan ids, kept in Arrow
    n_scans: int
    n_subjects: int
    created_at: datetime

    @cached_property
    def scan_ids(self) -> tuple[str, ...]:
        """The cohort's scan ids, sorted."""
        return tuple(self.scan_id_array.to_pylist())

    @classmethod
    def from_row(cls, row: dict) -> Cohort:
        """Build from a ``cohorts`` row (a dict, scan_ids as a list or Arrow array)."""
        ids = row["scan_ids"]
        ids = ids if isinstance(ids, pa.Array) else pa.array(ids, pa.string())
        return cls(**{k: v for k, v in row.items() if k != "scan_ids"}, scan_id_array=ids)

    def summary(self) -> dict:
        """JSON-ready description (without the scan id list)."""
        return {
            "cohort_id": self.cohort_id,
            "name": self.name,
            "where": self.where_sql,
            "catalog_version": self.catalog_version,
            "n_scans": self.n_scans,
            "n_subjects": self.n_subjects,
            "created_at": self.created_at.isoformat(),
        }


def _reads(where: str) -> list[str]:
    """The views and tables a clause reads: ``scan_view`` and any it names (in a subquery).

    A connection with just these skips listing every other table's files, the larger part
    of a selection's fixed cost; naming a word that is also a table only adds that table.
    """
    words = set(re.findall(r"[a-z_][a-z0-9_]*", where.lower()))
    return ["scan_view", *sorted(words & (set(TABLES) | set(VIEWS)))]


def _selection_sql(where: str) -> str:
    """The selection ``where`` makes; refused unless it is one boolean expression."""
    return where_sql(where, "scan_id, subject_id")


def select_scans(catalog: Catalog, where: str) -> pa.Table:
    """``scan_id`` and ``subject_id`` of the scans ``where`` selects from ``scan_view``.

    ``where`` is user SQL: it runs read-only, sorted by scan_id so the result is stable.

    Raises:
        SqlRefusedError: the clause tries anything but reading.
        SqlError: the clause is not valid SQL over ``scan_view``'s columns.
    """
    with catalog.connect(needs=_reads(where)) as con:
        return catalog.run_user_query(con, _selection_sql(where) + " ORDER BY scan_id")


def build_cohort(catalog: Catalog, where: str, name: str) -> Cohort:
    """Select scans with ``where`` at the catalog's current version and store the cohort.

    Args:
        catalog: the catalog, at the version to pin (usually its latest).
        where: a SQL boolean expression over ``scan_view`` columns, e.g. ``sequence='T2W'``.
        name: a new cohort name (letters, digits, ``-``, ``_``, ``.``).

    Raises:
        CohortError: the name is taken or invalid, or nothing matches.
        SqlRefusedError: the clause tries anything but reading.
        SqlError: the clause is not valid SQL over ``scan_view``'s columns.
    """
    _check_name(name)
    version = catalog.version
    # One pass: the sorted id list and the subject count come back as a single row.
    query = (
        f"SELECT list(scan_id ORDER BY scan_id) AS scan_ids, "
        f"count(DISTINCT subject_id) AS n_subjects FROM ({_selection_sql(where)})"
    )
    with catalog.connect(needs=[*_reads(where), "cohorts"]) as con:
        if fetch(con, "SELECT 1 FROM cohorts WHERE name = ? LIMIT 1", [name]).num_rows:
            raise CohortError(f"cohort {name!r} already exists; choose another --name")
        selected = catalog.run_user_query(con, query)
    scan_ids = selected.column("scan_ids").combine_chunks()
    n_scans = len(scan_ids.values) if scan_ids.null_count == 0 else 0
    if n_scans == 0:
        raise CohortError(f"no scan matches --where {where!r} at catalog version {version}")
    # Every id is a scan_view row of this version: check_where admits nothing but
    # "SELECT * FROM scan_view WHERE <one expression>", so no UNION can add another.
    row = {
        "cohort_id": stable_id("coh", name, where, version),
        "name": name,
        "where_sql": where,
        "catalog_version": version,
        "n_scans": n_scans,
        "n_subjects": selected.column("n_subjects")[0].as_py(),
        "created_at": utcnow(),
    }
    table = pa.Table.from_pylist([row]).append_column("scan_ids", scan_ids)
    with catalog.transaction(f"build-cohort {name}") as txn:
        # Checked again under the writers' lock: another build may have taken the name.
        txn.append("cohorts", table.select(schema_for("cohorts").names), unique_by=["name"])
    if not txn.written.get("cohorts"):
        raise CohortError(f"cohort {name!r} already exists; choose another --name")
    return Cohort.from_row({**row, "scan_ids": scan_ids.values})


def list_cohorts(catalog: Catalog) -> list[Cohort]:
    """All cohorts at the catalog's version, oldest first."""
    return _cohorts_from(catalog.read("cohorts").sort_by("created_at"))


def _cohorts_from(table: pa.Table) -> list[Cohort]:
    if not table.num_rows:
        return []
    ids = table.column("scan_ids").combine_chunks()  # stays in Arrow: one slice per cohort
    rows = table.drop_columns(["scan_ids"]).to_pylist()
    return [Cohort.from_row({**r, "scan_ids": ids[i].values}) for i, r in enumerate(rows)]


def get_cohort(catalog: Catalog, name: str) -> Cohort:
    """The cohort called ``name`` (or with that cohort_id).

    Raises:
        CohortError: no such cohort.
    """
    table = catalog.read("cohorts", "name = ? OR cohort_id = ?", (name, name))
    if table.num_rows:
        return _cohorts_from(table)[0]
    known = ", ".join(c.name for c in list_cohorts(catalog)) or "none yet"
    raise CohortError(f"no cohort named {name!r} (known: {known})")


def rematerialize(catalog: Catalog, cohort: Cohort) -> tuple[str, ...]:
    """Re-run a cohort's clause on its pinned catalog version; equals ``cohort.scan_ids``."""
    pinned = catalog.at(cohort.catalog_version)
    return tuple(select_scans(pinned, cohort.where_sql).column("scan_id").to_pylist())


def cohort_scans(catalog: Catalog, cohort: Cohort, *, remote: bool = False) -> pa.Table:
    """``scan_view`` rows of a cohort's scans as of its pinned version, sorted by scan_id.

    Args:
        catalog: the catalog.
        cohort: the cohort.
        remote: also accept series a PACS index registered and no pull has brought yet
            (``status = 'remote'``, no image): what ``xds pull`` reads. Everything that
            needs the images (splits, export, training, evaluation) leaves it False.

    Raises:
        CohortError: the cohort names scans its pinned version does not hold, or (unless
            ``remote``) series that are not pulled yet.
    """
    rows = catalog.at(cohort.catalog_version).rows_for("scan_view", cohort.scan_id_array)
    missing = len(cohort.scan_id_array) - rows.num_rows
    if missing:  # a row written past build_cohort: refuse rather than split a subset
        raise CohortError(
            f"cohort {cohort.name!r} names {missing} scan id(s) that catalog version "
            f"{cohort.catalog_version} does not hold"
        )
    if not remote:
        waiting = pc.sum(pc.equal(rows.column("status"), "remote")).as_py() or 0
        if waiting:
            raise CohortError(
                f"cohort {cohort.name!r} has {waiting} of {rows.num_rows} series not pulled "
                f"from their PACS yet (status 'remote', no image): run `xds pull "
                f"{cohort.name}`, then build the cohort again"
            )
    return rows


def _check_name(name: str) -> None:
    if not name or not all(ch.isalnum() or ch in "-_." for ch in name):
        raise CohortError(f"invalid cohort name {name!r}: use letters, digits, '-', '_', '.'")
