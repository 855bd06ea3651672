"""Options and state shared by the CLI's command modules."""

from __future__ import annotations

from functools import wraps

import click

from xds.schemas.errors import XdsError


class XdsGroup(click.Group):
    """A group that turns every :class:`XdsError` into exit code 1 with one line."""

    def invoke(self, ctx: click.Context):
        """Run the command; domain errors become ``Error: <one line>`` and exit 1."""
        try:
            return super().invoke(ctx)
        except XdsError as exc:
            raise click.ClickException(str(exc)) from None
        except FileExistsError as exc:
            raise click.ClickException(str(exc)) from None


class State:
    """What the global options set: the catalog location."""

    def __init__(self, catalog: str):
        self.catalog_path = catalog

    def catalog(self, *, create: bool = False, version: int | None = None):
        """Open the catalog (creating it on first ingest)."""
        from xds.catalog import Catalog

        return Catalog.open(self.catalog_path, version, create=create)


def json_option(fn):
    """Add ``--json`` (machine-readable output) to a command."""

    @click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
    @wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


def center_source(fn):
    """Add a center's source folder, ``--center`` and ``--dataset`` (the ingest commands)."""
    fn = click.option("--dataset", help="Dataset name (default: the center name).")(fn)
    fn = click.option("--center", required=True, help="Center name as stored in the catalog.")(fn)
    return click.argument("directory", type=click.Path(exists=True, file_okay=False))(fn)


def sql_limits_option(fn):
    """Add the bounds on user SQL.

    ``--timeout``, ``--memory-limit``, ``--threads`` and ``--temp-limit``, each also an
    ``XDS_SQL_*`` environment variable.
    """
    options = [
        click.option("--timeout", type=float, help="Seconds before the query is stopped "
                     "(env XDS_SQL_TIMEOUT; default 120)."),
        click.option("--memory-limit", help="DuckDB memory limit such as 4GB (env "
                     "XDS_SQL_MEMORY; default 4GB)."),
        click.option("--threads", type=click.IntRange(1), help="Query threads (env "
                     "XDS_SQL_THREADS; default 2)."),
        click.option("--temp-limit", help="Most a query may spill to the catalog's scratch "
                     "folder (env XDS_SQL_TEMP_SIZE; default 8GB)."),
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return fn


def apply_sql_limits(catalog, timeout, memory_limit, threads, temp_limit):
    """Set the command's bounds on ``catalog`` (the environment's where a flag is absent)."""
    from xds.catalog.sql import SqlLimits

    catalog.sql_limits = SqlLimits.from_env(
        timeout_s=timeout, memory=memory_limit, threads=threads, temp_size=temp_limit
    )
    return catalog


def max_voxels_option(fn):
    """Add ``--max-voxels``: refuse bigger images before decoding them."""
    return click.option(
        "--max-voxels",
        type=click.IntRange(1),
        help="Quarantine images with more voxels, before decoding them (env XDS_MAX_VOXELS; "
        "default 536870912 = 512 x 512 x 2048).",
    )(fn)


def show_paths_option(fn):
    """Add ``--show-paths``: name quarantined files by their real source paths."""
    return click.option(
        "--show-paths",
        is_flag=True,
        help="Print quarantined files by their real paths (on your own machine only). By "
        "default they are shown relative to DIRECTORY with identifier-like names hashed, "
        "as the catalog stores them.",
    )(fn)


def jobs_option(fn):
    """Add ``--jobs`` (worker processes) to a command."""
    return click.option(
        "--jobs",
        "-j",
        type=click.IntRange(1),
        default=None,
        help="Worker processes (default: all usable CPUs).",
    )(fn)


def resolve_jobs(jobs: int | None) -> int:
    """The worker count to use: the option's, or every usable CPU."""
    from xds.io.parallel import default_jobs

    return jobs or default_jobs()


def csv_list(text: str | None) -> list[str] | None:
    """A comma-separated option as a list (blanks dropped), None when not given."""
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def key_options(fn):
    """Add ``--key`` and ``--key-column``: which hospital identifier keys a clinical sheet."""
    fn = click.option(
        "--key-column", help="The key column's name, when it is none of the usual ones "
        "(PatientID, MRN, patient_id... / AccessionNumber, accession...).",
    )(fn)  # fmt: skip
    return click.option(
        "--key",
        type=click.Choice(["PatientID", "AccessionNumber"]),
        default="PatientID",
        show_default=True,
        help="The DICOM attribute the sheet's key column holds (an MRN is the PatientID).",
    )(fn)
