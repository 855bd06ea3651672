"""The catalog's commands: sql, build-cohort, cohorts, versions, migrate, verify."""

from __future__ import annotations

import sys

import click

from xds.cli.options import (
    apply_sql_limits,
    jobs_option,
    json_option,
    sql_limits_option,
)
from xds.cli.options import resolve_jobs as _jobs
from xds.cli.output import emit_json, print_kv, print_table, warn


@click.command()
@json_option
@click.pass_obj
def migrate(state, as_json):
    """Bring a catalog written by an older xds up to this version's schema.

    Additive: new tables and columns are added in one new catalog version; every earlier
    version stays readable.
    """
    from xds.catalog import migrate as migrate_catalog

    changes = migrate_catalog(state.catalog_path)
    if as_json:
        emit_json({"changes": changes})
    elif changes:
        for line in changes:
            click.echo(line)
    else:
        click.echo("catalog is up to date")


@click.command()
@click.argument("query")
@click.option("--at-version", type=int, help="Query this catalog version (time travel).")
@sql_limits_option
@json_option
@click.pass_obj
def sql(state, query, at_version, timeout, memory_limit, threads, temp_limit, as_json):
    """Run one read-only SELECT on the catalog (views: scan_view and every table).

    Anything else (COPY, ATTACH, INSTALL/LOAD, SET, PRAGMA, several statements, file
    functions such as read_csv, settings and metadata functions such as current_setting
    or duckdb_views) is refused with exit code 1. The query is stopped at the time limit,
    runs within the memory and thread limits and spills only to the catalog's scratch
    folder (see docs/security.md).
    """
    cat = state.catalog(version=at_version)
    table = apply_sql_limits(cat, timeout, memory_limit, threads, temp_limit).sql(query)
    rows = table.to_pylist()
    if as_json:
        emit_json(rows)
    else:
        print_table(rows, f"{len(rows)} row(s)", table.column_names)


@click.command("build-cohort")
@click.option(
    "--where",
    "where",
    required=True,
    help="SQL condition over scan_view, e.g. \"sequence='T2W' AND sex='F'\".",
)
@click.option("--name", required=True, help="New cohort name.")
@sql_limits_option
@json_option
@click.pass_obj
def build_cohort_cmd(state, where, name, timeout, memory_limit, threads, temp_limit, as_json):
    """Store the scans matching --where as a cohort pinned to the current catalog version.

    --where is one boolean expression over scan_view's columns; text that closes it and
    adds a UNION, ORDER BY or LIMIT is refused, and nothing is stored.
    """
    from xds.catalog import build_cohort

    cat = apply_sql_limits(state.catalog(), timeout, memory_limit, threads, temp_limit)
    cohort = build_cohort(cat, where, name)
    if as_json:
        emit_json({**cohort.summary(), "scan_ids": list(cohort.scan_ids)})
    else:
        print_kv(cohort.summary(), f"cohort {name}")


@click.command()
@json_option
@click.pass_obj
def cohorts(state, as_json):
    """List the stored cohorts."""
    from xds.catalog import list_cohorts

    rows = [c.summary() for c in list_cohorts(state.catalog())]
    emit_json(rows) if as_json else print_table(rows, "cohorts")


@click.command()
@json_option
@click.pass_obj
def versions(state, as_json):
    """List the catalog's versions (open an old one with `xds sql --at-version N`)."""
    rows = state.catalog().history()
    if as_json:
        emit_json(rows)
    else:
        print_table(rows, "catalog versions", ["catalog_version", "operation", "at"])


@click.command("verify")
@click.argument("exports", nargs=-1, type=click.Path(exists=True))
@click.option("--deny", multiple=True, help="A name, ID or other string that must appear "
              "nowhere (repeatable; case-insensitive).")  # fmt: skip
@click.option("--deny-list", type=click.Path(exists=True, dir_okay=False),
              help="A file of such strings, one per line.")  # fmt: skip
@click.option("--no-hashes", is_flag=True, help="Skip re-hashing every image and label.")
@click.option("--fix-gzip", is_flag=True, help="First rewrite the gzip headers of managed "
              "files that keep a file name or time (catalogs from older xds), then check.")
@jobs_option
@json_option
@click.pass_obj
def verify_cmd(state, exports, deny, deny_list, no_hashes, fix_gzip, jobs, as_json):
    """Check the catalog (and EXPORTS of it) before sharing: exit 1 on any finding.

    Re-hashes every image and label against the catalog, then reads every stored byte
    (gzip and NIfTI headers and extensions, sidecars, table cells, Delta logs, file
    names) looking for DICOM UIDs, date-like strings, the --deny names and the words of
    source folder and file names that ingest hid. One line per finding; findings name
    the file and the kind of problem, never the identifier.
    """
    from pathlib import Path

    from xds.io.integrity import clean_gzip_headers, verify

    if fix_gzip:
        fixed = clean_gzip_headers(state.catalog())
        warn(f"rewrote the gzip header of {len(fixed)} file(s)")
    names = list(deny)
    if deny_list:
        names += [ln.strip() for ln in Path(deny_list).read_text().splitlines() if ln.strip()]
    report = verify(state.catalog(), exports, deny=names, hashes=not no_hashes, jobs=_jobs(jobs))
    if as_json:
        emit_json(report.summary())
    else:
        for file, problem in report.findings:
            click.echo(f"{file}: {problem}")
        done = f"{report.files_scanned} files scanned, {report.images_checked} images re-hashed"
        warn(f"{done}: {len(report.findings)} finding(s)" if report.findings else f"{done}: ok")
    if report.findings:
        sys.exit(1)


COMMANDS = [migrate, sql, build_cohort_cmd, cohorts, versions, verify_cmd]
