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
