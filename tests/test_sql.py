"""User SQL is read-only and cannot reach files outside the catalog."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from xds.cli.main import cli

REFUSED = [
    "COPY (SELECT * FROM scans) TO '{out}/leak.csv'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM glob('/etc/*')",
    "ATTACH '{out}/other.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "PRAGMA enable_profiling",
    "SELECT 1; DROP TABLE scans",
    "DROP TABLE scans",
    "CREATE TABLE x AS SELECT 1",
    "DELETE FROM scans",
    "EXPORT DATABASE '{out}/dump'",
]


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("query", REFUSED)
def test_refused_with_exit_1_and_one_line(catalog, tmp_path, query):
    before = _snapshot(catalog.root)
    query = query.format(out=tmp_path)
    result = CliRunner().invoke(cli, ["--catalog", str(catalog.root), "sql", query])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("Error: SQL")
    assert _snapshot(catalog.root) == before
    assert not any(tmp_path.glob("leak*"))
    assert not (tmp_path / "other.duckdb").exists()


def test_read_only_queries_work(catalog):
    n = catalog.sql("WITH t AS (SELECT * FROM scan_view) SELECT count(*) AS n FROM t")
    assert n.column("n")[0].as_py() == catalog.count("scans")
    result = CliRunner().invoke(
        cli,
        ["--catalog", str(catalog.root), "sql", "SELECT DISTINCT center FROM scan_view", "--json"],
    )
    assert result.exit_code == 0
    assert '"center"' in result.output


def test_syntax_errors_are_one_line_too(catalog):
    result = CliRunner().invoke(cli, ["--catalog", str(catalog.root), "sql", "SELEC nope"])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1


# -- forged cohorts, host facts, runaway queries, printing ---------------------------------------

INJECTIONS = [
    "1=0) UNION ALL SELECT 'scn-fake', 'sub-fake' WHERE (1=1",
    "1=1 ORDER BY scan_id LIMIT 1",
    "1=1) OR (1=1) --",
    "sequence='T2W' GROUP BY scan_id, subject_id",
    "true) SELECT 'scn-fake', 'sub-fake' FROM (SELECT 1",
]


@pytest.mark.parametrize("where", INJECTIONS)
def test_a_where_that_is_not_one_expression_stores_nothing(catalog, where):
    before = catalog.count("cohorts")
    result = CliRunner().invoke(
        cli, ["--catalog", str(catalog.root), "build-cohort", "--where", where, "--name", "x"]
    )
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: SQL")
    assert len(result.output.strip().splitlines()) == 1
    assert catalog.latest().count("cohorts") == before


def test_where_clauses_with_subqueries_and_comments_still_work(catalog):
    from xds.catalog import build_cohort

    sub = "subject_id IN (SELECT subject_id FROM subjects WHERE sex = 'F') -- females"
    cohort = build_cohort(catalog, sub, "females")
    expected = catalog.sql(
        "SELECT count(*) AS n FROM scan_view v JOIN subjects s USING (subject_id) "
        "WHERE s.sex = 'F'"
    ).column("n")[0].as_py()
    assert cohort.n_scans == expected > 0


def test_a_clause_may_read_tables_scan_view_does_not(catalog):
    """Selections open only the tables a clause names, and any table it names is there."""
    from xds.catalog import build_cohort
    from xds.catalog.cohorts import select_scans

    where = "dataset IN (SELECT dataset FROM label_maps)"
    expected = catalog.sql(f"SELECT scan_id FROM scan_view WHERE {where} ORDER BY scan_id")
    assert expected.num_rows > 0
    assert select_scans(catalog, where).column("scan_id").equals(expected.column("scan_id"))
    assert build_cohort(catalog, where, "multi-series").n_scans == expected.num_rows


def test_a_forged_cohort_row_is_refused_by_split(catalog):
    """A cohort naming scans its pinned version lacks (written past the API) cannot be split."""
    import pyarrow as pa

    from xds.catalog import build_cohort
    from xds.schemas import CohortError
    from xds.schemas.tables import schema_for
    from xds.splits.store import split_cohort

    real = build_cohort(catalog, "sequence = 'T1W'", "t1")
    forged = {**real.summary(), "name": "forged", "cohort_id": "coh-forged"}
    row = {k: forged[k] for k in ("cohort_id", "name", "catalog_version", "n_scans",
                                   "n_subjects")}  # fmt: skip
    row.update(where_sql=real.where_sql, created_at=real.created_at)
    table = pa.Table.from_pylist([row]).append_column(
        "scan_ids", pa.array([["scn-fake", *real.scan_ids]], pa.list_(pa.string()))
    )
    with catalog.transaction("forge") as txn:
        txn.append("cohorts", table.select(schema_for("cohorts").names))
    with pytest.raises(CohortError, match="does not hold"):
        split_cohort(catalog, "forged")


HOST_FACTS = [
    "SELECT current_setting('allowed_paths')",
    "SELECT * FROM duckdb_settings()",
    "SELECT sql FROM duckdb_views()",
    "SELECT view_definition FROM information_schema.views",
    "SELECT * FROM duckdb_databases()",
    "SELECT * FROM query('SELECT 1')",
    "SELECT * FROM sqlite_master",
    "SELECT * FROM pragma_database_list",
    "SELECT getenv('HOME')",
    "SELECT * FROM system.main.duckdb_settings()",
    "SELECT (SELECT current_setting('temp_directory')) AS t",
    "SELECT * FROM parquet_metadata('x')",
]


@pytest.mark.parametrize("query", HOST_FACTS)
def test_settings_and_metadata_are_refused(catalog, query):
    result = CliRunner().invoke(cli, ["--catalog", str(catalog.root), "sql", query])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: SQL refused")
    assert str(catalog.root) not in result.output


def test_a_runaway_query_stops_at_the_time_limit(catalog):
    import time

    start = time.monotonic()
    result = CliRunner().invoke(
        cli,
        ["--catalog", str(catalog.root), "sql", "--timeout", "1.5",
         "SELECT sum(i % 7) FROM range(200000000000) t(i)"],
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert result.exit_code == 1, result.output
    assert "time limit" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert elapsed < 20


def test_memory_limit_and_spill_folder(catalog, tmp_path, monkeypatch):
    """A query past the memory limit fails in one line; nothing spills to the working folder."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        cli,
        ["--catalog", str(catalog.root), "sql", "--memory-limit", "64MB", "--temp-limit",
         "1MB", "SELECT list(i) AS l FROM range(50000000) t(i)"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / ".tmp").exists()
    with catalog.connect() as con:
        settings = dict(con.execute(
            "SELECT name, value FROM duckdb_settings() WHERE name IN "
            "('temp_directory', 'threads', 'memory_limit')").fetchall())  # fmt: skip
    assert settings["temp_directory"].startswith(str(catalog.root))
    assert settings["threads"] == "2"


def test_bad_limits_are_usage_errors(catalog):
    result = CliRunner().invoke(
        cli, ["--catalog", str(catalog.root), "sql", "--memory-limit", "lots", "SELECT 1"]
    )
    assert result.exit_code == 1
    assert "memory limit" in result.output


def test_bracketed_text_prints_intact(catalog):
    for text in ("[/x]", "[bold]not bold[/bold]", "a [b] c"):
        result = CliRunner().invoke(
            cli, ["--catalog", str(catalog.root), "sql", f"SELECT '{text}' AS v"]
        )
        assert result.exit_code == 0, result.output
        assert text in result.output
