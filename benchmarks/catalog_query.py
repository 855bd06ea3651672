"""build-cohort --where on a 1,000,000-scan catalog vs bare DuckDB over the same Parquet files.

Both sides answer the same question: the scan ids of ``scan_view`` rows matching the clause
(scans x subjects x label availability). xds additionally opens the catalog at its latest
version (Delta log -> file list), guards the SQL, and writes the cohort row. The baseline's
Parquet file lists are read from the Delta logs before any timing, so its timer holds only
DuckDB's work. Both sides are warmed up, then timed in alternating rounds
(benchmarks/timing.py).

    python -m benchmarks.catalog_query [--scans 1000000] [--rounds 5] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from xds.catalog import Catalog, build_cohort
from xds.catalog.cohorts import select_scans
from xds.catalog.sql import SqlLimits
from xds.catalog.views import SCAN_VIEW
from xds.schemas.tables import schema_for

from .timing import MIN_ROUNDS, Side, compare, timed_report

CENTERS = np.array(["NYU", "MCF", "MCA", "NU", "AHN", "IU", "EMC", "IH"])
SEQUENCES = np.array(["T1W", "T2W", "OOP"])
CLASSES = ["pancreas", "liver", "spleen", "kidney_left", "kidney_right"]


def _ids(prefix: str, idx: np.ndarray) -> pa.Array:
    return pa.array(np.char.add(prefix, idx.astype(str)))


def _list(values: np.ndarray, width: int, type_) -> pa.Array:
    offsets = pa.array(np.arange(0, len(values) + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values, type=type_))


def make_chunk(start: int, n: int, rng: np.random.Generator) -> dict[str, pa.Table]:
    idx = np.arange(start, start + n)
    subj = idx // 4
    now = datetime.now(timezone.utc)
    ts = pa.array([now] * n, pa.timestamp("us", tz="UTC"))
    scans = {
        "scan_id": _ids("scn-", idx),
        "subject_id": _ids("sub-", subj),
        "study_id": _ids("stu-", subj),
        "series_uid_hash": _ids("ser-", idx),
        "dataset": pa.array(np.full(n, "bench")),
        "center": pa.array(CENTERS[subj % len(CENTERS)]),
        "modality": pa.array(np.full(n, "MR")),
        "sequence": pa.array(SEQUENCES[rng.integers(0, 3, n)]),
        "sequence_source": pa.array(np.full(n, "rule")),
        "vendor": pa.array(np.full(n, "SIEMENS")),
        "scanner_model": pa.array(np.full(n, "Aera")),
        "field_strength": pa.array(rng.choice([1.5, 3.0], n)),
        "spacing": _list(np.tile([1.25, 1.25, 3.0], n), 3, pa.float64()),
        "shape": _list(np.tile([256, 256, 48], n).astype(np.int32), 3, pa.int32()),
        "orientation": pa.array(np.full(n, "RAS")),
        "image_uri": _ids("data/bench/", idx),
        "image_hash": _ids("h", idx),
        "acquired_on": pa.array(np.full(n, None), pa.date32()),
        "added_at": ts,
        "source": pa.array(np.full(n, "bench")),
        "status": pa.array(np.full(n, "ok")),
    }
    first = idx[idx % 4 == 0]
    m = len(first)
    subjects = {
        "subject_id": _ids("sub-", first // 4),
        "dataset": pa.array(np.full(m, "bench")),
        "center": pa.array(CENTERS[(first // 4) % len(CENTERS)]),
        "sex": pa.array(rng.choice(["F", "M"], m)),
        "age": pa.array(rng.uniform(18, 90, m)),
        "age_bin": pa.array(np.full(m, "50-59")),
        "race": pa.array(np.full(m, None), pa.string()),
        "ethnicity": pa.array(np.full(m, None), pa.string()),
        "diagnosis": pa.array(rng.choice(["normal", "ipmn", "pdac"], m)),
        "extra": pa.array([None] * m, pa.map_(pa.string(), pa.string())),
        "added_at": pa.array([now] * m, pa.timestamp("us", tz="UTC")),
        "source": pa.array(np.full(m, "bench")),
    }
    labels = {
        "label_id": _ids("lbl-", idx),
        "scan_id": _ids("scn-", idx),
        "uri": _ids("data/bench/l", idx),
        "hash": _ids("lh", idx),
        "label_map": pa.array(np.full(n, "bench:map")),
        "origin": pa.array(np.full(n, "manual")),
        "classes_present": _list(np.array(CLASSES * n)[: 2 * n], 2, pa.string()),
        "round": pa.array(np.full(n, None), pa.int32()),
        "teacher_run": pa.array(np.full(n, None), pa.string()),
        "quality": pa.array([None] * n, pa.map_(pa.string(), pa.float64())),
        "created_at": ts,
        "source": pa.array(np.full(n, "bench")),
    }
    return {
        name: _complete(pa.table(cols), schema_for(name))
        for name, cols in (("scans", scans), ("subjects", subjects), ("labels", labels))
    }


def _complete(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The table with the schema's other (nullable) columns added as nulls."""
    for f in schema:
        if f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table.select(schema.names).cast(schema)


def build(root: Path, n_scans: int, chunk: int = 250_000) -> Catalog:
    cat = Catalog.create(root)
    rng = np.random.default_rng(0)
    for start in range(0, n_scans, chunk):
        tables = make_chunk(start, min(chunk, n_scans - start), rng)
        with cat.transaction("bench load") as txn:
            for name, table in tables.items():
                txn.append(name, table)
    return cat


def bare_connection(files: dict[str, list[str]]) -> duckdb.DuckDBPyConnection:
    """DuckDB over Parquet file lists prepared before timing: views only, nothing read yet."""
    limits = SqlLimits.from_env()  # the same threads and memory as xds's guarded connection
    con = duckdb.connect(config={"threads": limits.threads,
                                 "memory_limit": limits.memory})  # fmt: skip
    for table, paths in files.items():
        listed = ", ".join(f"'{f}'" for f in paths)
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet([{listed}])")
    con.execute(SCAN_VIEW)
    return con


def bare_duckdb(files: dict[str, list[str]], where: str) -> pa.Table:
    con = bare_connection(files)
    try:
        return con.sql(
            f"SELECT scan_id, subject_id FROM scan_view WHERE ({where}) ORDER BY scan_id"
        ).to_arrow_table()
    finally:
        con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS)
    parser.add_argument("--quick", action="store_true", help="100,000 scans")
    parser.add_argument("--where", default="sequence='T2W'")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.scans = min(args.scans, 100_000)
    tmp = Path(args.out or tempfile.mkdtemp(prefix="xds-bench-"))
    root = tmp / "catalog"
    if root.exists():
        shutil.rmtree(root)
    t = time.perf_counter()
    build(root, args.scans)
    print(f"built a {args.scans:,}-scan catalog in {time.perf_counter() - t:.1f} s at {root}")
    # The baseline's file lists, read from the Delta logs before any timing.
    files = {t: Catalog.open(root).files(t) for t in ("scans", "subjects", "labels")}
    count = iter(range(10**6))
    sides = {
        "build": Side("xds build_cohort: open the latest version, views, guarded query, "
                      "commit the cohort", lambda: build_cohort(
                          Catalog.open(root), args.where, f"bench-{next(count)}").scan_ids),
        "query": Side("xds query path: open the latest version, views, guarded query",
                      lambda: select_scans(Catalog.open(root), args.where)),
        "bare": Side("DuckDB read_parquet over the same files (listed before timing), "
                     "same view and query", lambda: bare_duckdb(files, args.where)),
    }  # fmt: skip
    compare(sides, rounds=args.rounds)
    expected = sides["bare"].result.column("scan_id").to_pylist()
    assert sides["query"].result.column("scan_id").to_pylist() == expected
    assert list(sides["build"].result) == expected, "xds and bare DuckDB disagree"
    print(f"matched scans: {len(expected):,} of {args.scans:,}")
    one = f"one process, {SqlLimits.from_env().threads} DuckDB threads on both sides"
    timed_report("catalog_query", f"build-cohort vs bare DuckDB ({args.scans:,} scans)",
                 sides["build"], sides["bare"], goal="<= 1.2", parallelism=one)  # fmt: skip
    timed_report("catalog_query", f"query path vs bare DuckDB ({args.scans:,} scans)",
                 sides["query"], sides["bare"], goal=None, parallelism=one)  # fmt: skip
    if args.out is None:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
