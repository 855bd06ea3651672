"""``xds pull``: retrieve a cohort's remote series, check them whole, ingest them.

The cohort's ``remote`` series that no scan holds yet are retrieved ``jobs`` at a time
(threads: a retrieval waits on the network), each into its own folder under the catalog's
work folder, one file per instance named by its place in the index's instance list, so an
instance sent twice is written once. A series is complete when the SOP Instance UIDs that
arrived are exactly those the index listed (or, where the PACS would not list them all,
as many as it counted); otherwise it is quarantined with what is missing and stays remote.
Each complete series goes through the DICOM ingest's own steps as soon as it is whole
(:class:`~xds.ingest.dicom.ingest.SeriesPlanner`: checks, keyed pseudonyms, quarantine;
``convert_series`` in a pool of ``jobs`` processes that lives as long as the pull: dcm2niix,
classification, de-identification; :class:`~xds.ingest.dicom.ingest.Committer`: one catalog
transaction per ``batch`` converted series) while later series are still arriving:
retrieval and conversion overlap. A series that arrived whole and that the ingest refused
(too few slices, a gap, a conversion error: the reason is in quarantine) is marked
``refused`` and not pulled again; an incomplete one stays remote, for the next pull.

A pull killed at any moment leaves the catalog at its last committed batch; the next pull
sweeps the dead pull's folder and retrieves only series no scan holds, so pulling again
ends where an uninterrupted pull would, and a pull after a complete one moves nothing.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from xds.catalog import Catalog, get_cohort
from xds.ingest.common import quarantine_row, run_id
from xds.ingest.dicom.convert import convert_series, dcm2niix_path
from xds.ingest.dicom.headers import header_of_dataset, read_header
from xds.ingest.dicom.ingest import Committer, DicomIngestReport, SeriesPlanner
from xds.ingest.dicom.series import ingested_series
from xds.ingest.dicom.walk import WORK_FOLDER, sweep_workdirs
from xds.io.parallel import process_pool, progress_bar
from xds.pacs.remote import open_remote
from xds.pacs.store import PacsStore
from xds.schemas.errors import PacsError

DEFAULT_BATCH = 16
"""Series per catalog transaction: what a kill can lose. Each commit costs tens of
milliseconds (one Delta append per table), so a pull of small series commits rarely."""


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
        batch: converted series per catalog transaction (default :data:`DEFAULT_BATCH`):
            what a kill can lose; at most ``2 * batch + jobs`` series wait on disk.
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
    batch = batch or DEFAULT_BATCH
    staging = work / f"pull-{run_id()[7:]}-{os.getpid()}"
    try:
        for group in report.by_center:
            rows = [r for r in todo if (r["pacs"], r["dataset"], r["center"]) ==
                    (group["pacs"], group["dataset"], group["center"])]  # fmt: skip
            _pull_group(catalog, store.connection(group["pacs"]), rows, private, staging,
                        report, jobs=jobs, batch=batch)  # fmt: skip
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        from xds.pacs.dimse import stop_move_receivers

        stop_move_receivers()
    report.seconds = round(time.perf_counter() - start, 3)
    return report


def _pull_group(catalog, conn, rows, private, staging, report, *, jobs, batch) -> None:
    """Pull one connection's series of one center: retrieval, conversion, commits at once.

    Retrieval threads write each series and read each instance's header once, as it
    arrives (:func:`_retrieve`); the main thread plans each whole series with the
    DICOM ingest's planner, hands its jobs to one pool of conversion processes that lives
    as long as the pull, and commits every ``batch`` converted series with the ingest's
    committer. At most ``2 * batch + jobs`` series wait on disk at any time.
    """
    incoming = staging / "incoming"
    run = run_id()
    ingest = DicomIngestReport(conn.dataset, conn.center, run, "pacs")
    planner = SeriesPlanner(catalog, incoming, ingest, run, dataset=conn.dataset,
                            center=conn.center, workroot=staging / "convert",
                            binary=dcm2niix_path())  # fmt: skip
    refused: list[str] = []  # whole series the planner or a conversion refused

    def mark(txn, pairs) -> None:
        gone = refused + [job.facts["series_uid_hash"] for job, result in pairs
                          if not result["scans"]]  # fmt: skip
        txn.update("remote_series", "series_uid_hash", sorted(set(gone)), {"pull_state": "refused"})
        report.series_refused += len(set(gone))
        refused.clear()

    committer = Committer(catalog, planner, batch, also=mark)
    room = threading.Semaphore(2 * batch + jobs)
    local = threading.local()

    def fetch(row: dict):
        room.acquire()
        if not hasattr(local, "remote"):
            local.remote = open_remote(conn)
        entry = private.get(row["series_uid_hash"])
        if entry is None:
            return row["series_uid_hash"], "the private store does not know this series: " \
                "index the PACS again", 0, 0, []  # fmt: skip
        return _retrieve(local.remote, entry, incoming / row["series_uid_hash"])

    converting: list[tuple[object, Future]] = []
    jobs_left: dict[str, int] = {}  # series folder -> its conversions still running

    def harvest(wait: bool) -> None:
        while converting and (wait or converting[0][1].done()):
            job, future = converting.pop(0)
            committer.add(job, future.result())
            folder = Path(job.files[0]).parts[0]
            jobs_left[folder] -= 1
            if not jobs_left[folder]:  # its last conversion: the folder and its room go
                shutil.rmtree(incoming / folder, ignore_errors=True)
                room.release()

    def arrived(pool, series_hash, problem, n, size, headers) -> None:
        if problem is not None:
            shutil.rmtree(incoming / series_hash, ignore_errors=True)
            room.release()
            uri = f"pacs/{conn.name}/{series_hash}"
            planner.quarantine.rows.append(
                quarantine_row(uri, conn.dataset, conn.center, "retrieve", problem, run)
            )
            report.problems.append((uri, problem))
            report.series_quarantined += 1
            return
        report.series_retrieved += 1
        report.instances_retrieved += n
        report.bytes_retrieved += size
        headers.sort(key=lambda h: h["rel"])
        work = planner.plan([h["rel"] for h in headers], headers)
        if not work:  # refused before conversion (the quarantine says why)
            refused.append(series_hash)
            shutil.rmtree(incoming / series_hash, ignore_errors=True)
            room.release()
        jobs_left[series_hash] = len(work)
        converting.extend((job, pool.submit(convert_series, job)) for job in work)

    with progress_bar() as bar, ThreadPoolExecutor(max_workers=max(1, jobs)) as threads, \
            process_pool(jobs, convert_series.__module__) as pool:  # fmt: skip
        task = bar.add_task(f"pull {conn.name}", total=len(rows))
        waiting = {threads.submit(fetch, r) for r in rows}
        while waiting:
            # a short wait: conversions must be harvested (freeing room) while retrievals run
            done, waiting = wait(waiting, timeout=0.05, return_when=FIRST_COMPLETED)
            for future in done:
                arrived(pool, *future.result())
                bar.advance(task)
            harvest(wait=False)
        harvest(wait=True)
        if refused or planner.quarantine.rows or committer.pending:
            committer.commit()
    report.scans_added += ingest.scans_added
    report.ingest_quarantined += len(ingest.problems)
    report.problems.extend(ingest.problems)


def _retrieve(remote, entry: dict, folder: Path):
    """Retrieve one series into ``folder``: (hash, problem or None, instances, bytes, headers).

    Each instance is written as it arrives (as the PACS sent it, where the protocol gives
    the bytes) and its header read once, as :func:`~xds.ingest.dicom.headers.read_header`
    reads a file's: the geometry of every instance, the series' facts from the first.
    """
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    place = {sop: k for k, (sop, _) in enumerate(entry["instances"])}
    numbers = {sop: number for sop, number in entry["instances"]}
    received: dict[str, dict] = {}
    lock = threading.Lock()
    size, arrivals = [0], [0]
    series_only = {entry["series_uid"]}  # geometry only: the facts are read once, below

    def store(item) -> None:
        with lock:
            arrivals[0] += 1
            temporary = f"{folder.name}/.{arrivals[0]}.part"
        path = folder.parent / temporary
        if isinstance(item, bytes | bytearray):  # a Part-10 file, byte for byte
            path.write_bytes(item)
            header = read_header(folder.parent, temporary, set(series_only))
        else:  # a dataset (DIMSE)
            item.save_as(path, enforce_file_format=True)
            header = header_of_dataset(item, temporary, set(series_only))
        sop = header.get("sop_uid") or f"unnamed-{temporary}"
        with lock:
            k = place.get(sop)
            if k is None:  # not in the index's list: named after its order of arrival
                k = len(place)
                place[sop] = k
            rel = f"{folder.name}/{k:06d}.dcm"
            os.replace(path, folder.parent / rel)
            received[sop] = {**header, "rel": rel}  # a second copy replaces the first
            size[0] += (folder.parent / rel).stat().st_size

    hash_ = entry["series_hash"]
    try:
        remote.retrieve(entry["study_uid"], entry["series_uid"], store)
    except PacsError as exc:
        return hash_, str(exc), 0, 0, []
    listed = set(numbers)
    n = entry["n_instances"]
    missing = listed - set(received) if entry["listed_all"] else set()
    if missing or len(received) < n:
        shown = sorted(str(numbers[s]) for s in missing)
        which = f" (InstanceNumber {', '.join(shown[:10])}{' ...' if len(shown) > 10 else ''})"
        gone = max(len(missing), n - len(received))
        return hash_, (f"incomplete: {gone} of {n} indexed instances did not arrive"
                       f"{which if shown else ''}"), len(received), size[0], []  # fmt: skip
    if len(received) > n or (entry["listed_all"] and set(received) - listed):
        why = (f"changed since the index: {len(received)} instances arrived, the index lists "
               f"{n}; run xds pacs index again")  # fmt: skip
        return hash_, why, len(received), size[0], []
    headers = sorted(received.values(), key=lambda h: h["rel"])
    headers[0] = read_header(folder.parent, headers[0]["rel"])  # with the series' facts
    return hash_, None, len(received), size[0], headers
