"""Centers in a PACS: ``xds pacs add|list|index`` and ``xds pull``."""

from __future__ import annotations

import click

from xds.cli.options import XdsGroup, jobs_option, json_option
from xds.cli.options import resolve_jobs as _jobs
from xds.cli.output import emit_json, print_kv, print_table, warn


@click.group(cls=XdsGroup)
def pacs():
    """Index a PACS's series in the catalog, then pull only the cohort a study needs.

    \b
    xds pacs add hosp --dicomweb https://pacs.example.org/dicom-web --center HospA
    xds pacs index hosp
    xds build-cohort t2 --where "status='remote' AND sequence='T2W' AND center='HospA'"
    xds pull t2 --dry-run && xds pull t2 -j 4
    """


@pacs.command("add")
@click.argument("name")
@click.option("--dicomweb", "url", help="DICOMweb base URL (QIDO-RS and WADO-RS root).")
@click.option("--dimse", "address", metavar="HOST:PORT", help="DIMSE peer (C-FIND, C-GET/MOVE).")
@click.option("--aet", help="With --dimse: the PACS's AE title.")
@click.option("--our-aet", default="XDS", show_default=True, help="With --dimse: our AE title.")
@click.option("--retrieve", type=click.Choice(["get", "move"]), default="get", show_default=True,
              help="With --dimse: C-GET, or C-MOVE to a Storage SCP xds starts.")  # fmt: skip
@click.option("--move-port", type=int, help="With --retrieve move: the port that SCP listens on "
              "(the PACS must know --our-aet at this host and port).")  # fmt: skip
@click.option("--center", help="Center the PACS's series belong to (default: NAME).")
@click.option("--dataset", help="Dataset name (default: the center's).")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds any one network call may take.")  # fmt: skip
@click.option("--retries", type=int, default=3, show_default=True,
              help="Tries after a call fails (timeouts, refused, 5xx), with backoff.")  # fmt: skip
@click.option("--replace", is_flag=True, help="Replace a stored connection of this name.")
@json_option
@click.pass_obj
def pacs_add_cmd(state, name, url, address, aet, our_aet, retrieve, move_port, center, dataset,
                 timeout, retries, replace, as_json):  # fmt: skip
    """Store a PACS connection. Credentials are never stored or printed.

    They come from XDS_PACS_<NAME>_USER and XDS_PACS_<NAME>_PASSWORD (or
    XDS_PACS_<NAME>_TOKEN, a bearer token) when a command runs, else from a netrc file
    (XDS_NETRC, else ~/.netrc) entry for the PACS's host.
    """
    from xds.pacs import add_pacs

    conn = add_pacs(state.catalog(create=True).root, name, dicomweb=url, dimse=address, aet=aet,
                    our_aet=our_aet, retrieve=retrieve, move_port=move_port, center=center,
                    dataset=dataset, timeout=timeout, retries=retries, replace=replace)  # fmt: skip
    stored = {"pacs": name, "kind": conn.kind, "address": conn.address, "center": conn.center,
              "dataset": conn.dataset}  # fmt: skip
    if as_json:
        emit_json(stored)
    else:
        print_kv(stored, "stored")


@pacs.command("list")
@json_option
@click.pass_obj
def pacs_list_cmd(state, as_json):
    """The stored PACS connections and where their last index stopped."""
    from xds.pacs import PacsStore

    store = PacsStore(state.catalog().root)
    rows = [{"pacs": c.name, "kind": c.kind, "address": c.address, "center": c.center,
             "dataset": c.dataset, "last_index": store.watermark(c.name).get("date")}
            for c in store.connections()]  # fmt: skip
    if as_json:
        emit_json(rows)
    else:
        print_table(rows, "PACS connections", ["pacs", "kind", "address", "center", "dataset",
                                               "last_index"])  # fmt: skip


@pacs.command("index")
@click.argument("name")
@click.option("--since", help="YYYY-MM-DD: studies dated then or later; 'last': what is new "
              "since the last index (Orthanc's change feed, else by date).")  # fmt: skip
@click.option("--where-tags", "tags", multiple=True, metavar="KEYWORD=VALUE",
              help="Filter the PACS applies, e.g. ModalitiesInStudy=MR or "
              "SeriesDescription=*t2*; repeatable.")  # fmt: skip
@jobs_option
@json_option
@click.pass_obj
def pacs_index_cmd(state, name, since, tags, jobs, as_json):
    """Register a PACS's image series as status 'remote': metadata only, no pixels.

    \b
    Per series: keyed subject/study/series pseudonyms (the ones ingest gives), modality,
    cleaned description, body part, vendor, model, field strength, echo/repetition times,
    shifted dates, instance count, estimated size and a provisional sequence from the
    header rules. Raw UIDs stay in the catalog's private store (0600), never in a table.
    Answers capped by the PACS (LimitFindResults, page sizes) are made whole by splitting
    the date range. Run it again any time: known series are not registered twice.
    """
    import datetime as dt

    from xds.pacs import index_pacs
    from xds.schemas.errors import PacsError

    filters = {}
    for tag in tags:
        key, sep, value = tag.partition("=")
        if not sep or not key.isidentifier():
            raise PacsError(f"--where-tags {tag!r}: expected KEYWORD=VALUE")
        filters[key] = value
    if since not in (None, "last"):
        try:
            since = dt.date.fromisoformat(since)
        except ValueError:
            raise PacsError(f"--since {since!r}: expected YYYY-MM-DD or 'last'") from None
    report = index_pacs(state.catalog(), name, since=since, where_tags=filters,
                        jobs=_jobs(jobs) * 2)  # fmt: skip
    summary = report.summary()
    if as_json:
        emit_json(summary)
        return
    summary["left_out"] = ", ".join(f"{v} {k}" for k, v in summary["left_out"].items()) or "none"
    print_kv(summary, f"index {name}")


@click.command("pull")
@click.argument("cohort")
@click.option("--dry-run", is_flag=True, help="Print series, instances and bytes; fetch nothing.")
@click.option("--batch", type=int, help="Converted series per commit (default 16).")
@jobs_option
@json_option
@click.pass_obj
def pull_cmd(state, cohort, dry_run, batch, jobs, as_json):
    """Retrieve a cohort's remote series, check each is whole, and ingest it.

    \b
    WADO-RS, C-GET or C-MOVE per series, -j at a time, into the catalog's work folder;
    the SOP Instance UIDs that arrived must be those the index listed, else the series is
    quarantined with what is missing and stays remote. Each whole series goes through the
    DICOM ingest's steps (checks, dcm2niix, classification, de-identification) in -j
    processes while the next ones arrive; every --batch converted series are one commit.
    Killed, it resumes: pulling again fetches only what no scan holds. Build the cohort
    again afterwards (its remote ids become scans).
    """
    from xds.pacs import pull_cohort

    report = pull_cohort(state.catalog(), cohort, jobs=_jobs(jobs), batch=batch, dry_run=dry_run)
    summary = report.summary()
    if as_json:
        emit_json(summary)
        return
    for series, error in report.problems:
        warn(f"quarantined {series}: {error}")
    if report.by_center:
        print_table(report.by_center, "to pull" if dry_run else "pulled",
                    ["pacs", "center", "series", "instances", "estimated_bytes"])  # fmt: skip
    keys = (["series_planned", "instances_planned", "estimated_bytes", "already_here"] if dry_run
            else ["series_planned", "series_retrieved", "series_quarantined", "instances_retrieved",
                  "bytes_retrieved", "scans_added", "ingest_quarantined", "series_refused",
                  "already_here",
                  "seconds"])  # fmt: skip
    print_kv({k: summary[k] for k in keys}, f"pull {cohort}" + (" (dry run)" if dry_run else ""))


COMMANDS = (pacs, pull_cmd)
