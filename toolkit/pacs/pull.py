"""``xds pull``: retrieve a cohort's remote series, check them whole, ingest them.

The cohort's ``remote`` series that no scan holds yet are retrieved ``jobs`` at a time
(threads: a retrieval waits on the network), each into its own folder under the catalog's
work folder, one file per instance named by its place in the index's instance list, so an
instance sent twice is written once. A series is complete when the SOP Instance UIDs that
arrived are exactly those the index listed (or, where the PACS would not list them all,
as many as it counted); otherwise it is quarantined with what is missing and stays remote.
Complete series go, a batch at a time, through the DICOM ingest
(:func:`xds.ingest.dicom.ingest_dicom`: checks, dcm2niix, classification, de-identification,
one catalog transaction per batch), while the next batch is being retrieved: retrieval and
conversion overlap. A series that arrived whole and that the ingest refused (too few slices,
a gap, a conversion error: the reason is in quarantine) is marked ``refused`` and not
pulled again; an incomplete one stays remote, to be tried by the next pull.

A pull killed at any moment leaves the catalog at its last committed batch; the next pull
sweeps the dead pull's folder and retrieves only series no scan holds, so pulling again
ends where an uninterrupted pull would, and a pull after a complete one moves nothing.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from xds.catalog import Catalog, get_cohort
from xds.ingest.common import quarantine_row, run_id
from xds.ingest.dicom.ingest import ingest_dicom
from xds.ingest.dicom.series import ingested_series
from xds.ingest.dicom.walk import WORK_FOLDER, sweep_workdirs
from xds.pacs.remote import open_remote
from xds.pacs.store import PacsStore
from xds.schemas.errors import PacsError


@dataclass
class PullReport:
    """What a pull did (or, for a dry run, would do)."""

    cohort: str
    dry_run: bool
    series_planned: int = 0
    instances_planned: int = 0
    estimated_bytes: int = 0
    already_here: int = 0  # cohort members already scans
    series_retrieved: int = 0
    series_quarantined: int = 0  # incomplete or failed retrievals
    instances_retrieved: int = 0
    bytes_retrieved: int = 0
    scans_added: int = 0
    ingest_quarantined: int = 0  # files or series the ingest refused
    series_refused: int = 0  # retrieved whole, refused by the ingest: not pulled again
    seconds: float = 0.0
    by_center: list[dict] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> dict:
        """JSON-ready counts (problems as ``{"series", "error"}``)."""
        out = {k: v for k, v in self.__dict__.items() if k != "problems"}
        out["problems"] = [{"series": s, "error": e} for s, e in self.problems]
        return out


def plan_pull(catalog: Catalog, cohort: str) -> tuple[PullReport, list[dict]]:
    """The cohort's remote series that no scan holds yet, and the plan's counts."""
    found = get_cohort(catalog, cohort)
    latest = catalog.latest()
    ids = [s for s in found.scan_ids if s.startswith("rmt-")]
    report = PullReport(cohort, dry_run=True, already_here=len(found.scan_ids) - len(ids))
    rows = latest.rows_for("remote_series", ids).to_pylist() if ids else []
    here: dict[tuple[str, str], set[str]] = {}
    todo = []
    for row in sorted(rows, key=lambda r: r["scan_id"]):
        if row["pull_state"] is not None:  # pulled whole and refused by the ingest
            continue
        key = (row["dataset"], row["center"])
        if key not in here:
            here[key] = ingested_series(latest, *key)
        if row["series_uid_hash"] in here[key]:
            report.already_here += 1
        else:
            todo.append(row)
    groups: dict[tuple, dict] = {}
    for row in todo:
        g = groups.setdefault((row["pacs"], row["dataset"], row["center"]),
                              {"pacs": row["pacs"], "dataset": row["dataset"],
                               "center": row["center"], "series": 0, "instances": 0,
                               "estimated_bytes": 0})  # fmt: skip
        g["series"] += 1
        g["instances"] += row["n_instances"]
        g["estimated_bytes"] += row["estimated_bytes"] or 0
    report.by_center = list(groups.values())
    report.series_planned = len(todo)
    report.instances_planned = sum(r["n_instances"] for r in todo)
    report.estimated_bytes = sum(r["estimated_bytes"] or 0 for r in todo)
    return report, todo


def pull_cohort(catalog: Catalog, cohort: str, *, jobs: int = 2, batch: int | None = None,
                dry_run: bool = False) -> PullReport:  # fmt: skip
    """Retrieve, check and ingest a cohort's remote series (see the module doc).

    Args:
        catalog: the catalog.
        cohort: a cohort built over ``status = 'remote'`` series (others are left alone).
        jobs: series retrieved at once, and conversion workers.
        batch: series per ingest batch and catalog transaction (default ``2 * jobs``,
            at least 4): what a kill can lose, and the unit of overlap.
        dry_run: only count what would be retrieved.

    Raises:
        PacsError: a connection the cohort needs is not stored.
    """
    report, todo = plan_pull(catalog, cohort)
    report.dry_run = dry_run
    if dry_run:
        return report
    work = catalog.root / WORK_FOLDER
    sweep_workdirs(work)  # what a killed pull left, even when nothing is left to pull
    if not todo:
        return report
    start = time.perf_counter()
    store = PacsStore(catalog.root)
    private = store.series([r["series_uid_hash"] for r in todo])
    batch = batch or max(4, 2 * jobs)
    staging = work / f"pull-{run_id()[7:]}-{os.getpid()}"
    try:
        for group in report.by_center:
            rows = [r for r in todo if (r["pacs"], r["dataset"], r["center"]) ==
                    (group["pacs"], group["dataset"], group["center"])]  # fmt: skip
            _pull_group(catalog, store.connection(group["pacs"]), rows, private, staging,
                        report, jobs=jobs, batch=batch)  # fmt: skip
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        from xds.pacs.dimse import _MoveReceiver

        _MoveReceiver.stop_all()
    report.seconds = round(time.perf_counter() - start, 3)
    return report


def _pull_group(catalog, conn, rows, private, staging, report, *, jobs, batch) -> None:
    """Pull one connection's series of one center, retrieval overlapping ingest."""
    local = threading.local()
    run = run_id().replace("ingest-", "pull-")

    def fetch(row: dict) -> tuple[str, str | None, int, int]:
        if not hasattr(local, "remote"):
            local.remote = open_remote(conn)
        entry = private.get(row["series_uid_hash"])
        if entry is None:
            return row["series_uid_hash"], "the private store does not know this series: " \
                "index the PACS again", 0, 0  # fmt: skip
        return _retrieve(local.remote, entry, staging / "incoming" / row["series_uid_hash"])

    batches = [rows[i : i + batch] for i in range(0, len(rows), batch)]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        pending: list[list[Future]] = []
        for k in range(min(2, len(batches))):  # this batch and the next: the overlap
            pending.append([pool.submit(fetch, r) for r in batches[k]])
        for k in range(len(batches)):
            results = [f.result() for f in pending[k]]
            if k + 2 < len(batches):
                pending.append([pool.submit(fetch, r) for r in batches[k + 2]])
            folder = staging / f"batch-{k}"
            folder.mkdir(parents=True, exist_ok=True)
            failed, whole = [], []
            for series_hash, problem, n, size in results:
                if problem is None:
                    os.replace(staging / "incoming" / series_hash, folder / series_hash)
                    whole.append(series_hash)
                    report.series_retrieved += 1
                    report.instances_retrieved += n
                    report.bytes_retrieved += size
                else:
                    shutil.rmtree(staging / "incoming" / series_hash, ignore_errors=True)
                    failed.append((series_hash, problem))
            if any(folder.iterdir()):
                done = ingest_dicom(catalog, folder, center=conn.center, dataset=conn.dataset,
                                    jobs=jobs, commit_every=max(1, len(results)))  # fmt: skip
                report.scans_added += done.scans_added
                report.ingest_quarantined += done.quarantined
                report.problems.extend(done.problems)
                here = ingested_series(catalog.latest(), conn.dataset, conn.center)
                refused = [h for h in whole if h not in here]
                if refused:  # whole, and still no scan: the ingest said why (quarantine)
                    with catalog.transaction(f"pull {report.cohort}: refused series") as txn:
                        txn.update("remote_series", "series_uid_hash", refused,
                                   {"pull_state": "refused"})  # fmt: skip
                    report.series_refused += len(refused)
            if failed:
                quarantine = [
                    quarantine_row(f"pacs/{conn.name}/{h}", conn.dataset, conn.center,
                                   "retrieve", why, run)
                    for h, why in failed
                ]  # fmt: skip
                with catalog.transaction(f"pull {report.cohort}: incomplete series") as txn:
                    txn.append("quarantine", quarantine, unique_by=["uri", "error"])
                report.series_quarantined += len(failed)
                report.problems.extend((f"pacs/{conn.name}/{h}", why) for h, why in failed)
            shutil.rmtree(folder, ignore_errors=True)


def _retrieve(remote, entry: dict, folder: Path) -> tuple[str, str | None, int, int]:
    """Retrieve one series into ``folder``: (hash, problem or None, instances, bytes)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    place = {sop: k for k, (sop, _) in enumerate(entry["instances"])}
    numbers = {sop: number for sop, number in entry["instances"]}
    received: set[str] = set()
    lock = threading.Lock()
    size = [0]

    def store(ds) -> None:
        sop = str(ds.get("SOPInstanceUID", ""))
        with lock:
            k = place.get(sop)
            if k is None:  # not in the index's list: named after its order of arrival
                k = len(place)
                place[sop] = k
            received.add(sop)
        path = folder / f"{k:06d}.dcm"
        part = path.with_suffix(".part")
        ds.save_as(part, enforce_file_format=True)
        os.replace(part, path)
        with lock:
            size[0] += path.stat().st_size

    try:
        remote.retrieve(entry["study_uid"], entry["series_uid"], store)
    except PacsError as exc:
        return entry["series_hash"], str(exc), 0, 0
    listed = set(numbers)
    n = entry["n_instances"]
    missing = listed - received if entry["listed_all"] else set()
    if missing or len(received) < n:
        shown = sorted(str(numbers[s]) for s in missing)
        which = f" (InstanceNumber {', '.join(shown[:10])}{' ...' if len(shown) > 10 else ''})"
        gone = max(len(missing), n - len(received))
        return entry["series_hash"], (
            f"incomplete: {gone} of {n} indexed instances did not arrive"
            f"{which if shown else ''}"
        ), len(received), size[0]
    if len(received) > n or (entry["listed_all"] and received - listed):
        return entry["series_hash"], (
            f"changed since the index: {len(received)} instances arrived, the index lists "
            f"{n}; run xds pacs index again"
        ), len(received), size[0]
    return entry["series_hash"], None, len(received), size[0]
