"""``xds pacs index``: register a PACS's series in the catalog before any image is pulled.

Per study (found whole, :mod:`~xds.pacs.listing`), its series; per image series, its
instance list and one instance's header. The header goes through the same code an ingest
uses: the same keyed subject, study and series pseudonyms (so a later pull, or an ingest of
the same files, lands on the same ids), shifted dates, a description cleaned of the
patient's identifiers, the classifier's provisional sequence. The rows go to the
``remote_series`` table (``scan_view`` shows them with ``status = 'remote'``), with their
subjects and studies; the raw UIDs a retrieval needs go to the private store
(:mod:`~xds.pacs.store`) first, so no committed row lacks them.

Incremental: ``since="last"`` asks only for what is new since the last index: Orthanc's
change feed where the PACS is an Orthanc (exact), else studies dated from the day before the
last index on. A series already registered or already in ``scans`` is never registered
twice, so an index can always be run again in full.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from xds.catalog import Catalog, utcnow
from xds.ingest.classify import classify
from xds.ingest.common import run_id
from xds.ingest.dicom.convert import acquisition_columns
from xds.ingest.dicom.headers import (
    MODALITIES,
    dataset_facts,
    localizer_reason,
    phi_strings,
    projection_reason,
    subject_key,
)
from xds.ingest.dicom.series import ingested_series, series_facts, subjects_and_studies
from xds.io.deid import pseudonym
from xds.io.parallel import thread_map
from xds.pacs.listing import all_studies, study_series
from xds.pacs.orthanc import changed_studies, last_change
from xds.pacs.remote import SERIES_LEVEL, Remote, open_remote
from xds.pacs.store import Connection, PacsStore
from xds.schemas.ids import stable_id

HEADER_BYTES = 4096
"""What one instance's header is assumed to add to its pixels in a size estimate."""


@dataclass
class IndexReport:
    """What one index run found and registered."""

    pacs: str
    center: str
    dataset: str
    since: str | None
    studies_found: int = 0
    series_found: int = 0
    series_registered: int = 0
    series_known: int = 0  # already registered, or already scans
    instances_registered: int = 0
    subjects_added: int = 0
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> series
    catalog_version: int = 0

    def summary(self) -> dict:
        """JSON-ready counts."""
        return dict(self.__dict__)


def remote_scan_id(series_hash: str) -> str:
    """The ``scan_id`` a remote series has until it is pulled."""
    return stable_id("rmt", series_hash)


def registered_series(catalog: Catalog, dataset: str, center: str) -> set[str]:
    """Series hashes of a center already registered as remote."""
    rows = catalog.latest().read("remote_series", "dataset = ? AND center = ?", [dataset, center])
    return set(rows.column("series_uid_hash").to_pylist())


def index_pacs(
    catalog: Catalog,
    name: str,
    *,
    since: str | dt.date | None = None,
    where_tags: dict[str, str] | None = None,
    jobs: int = 4,
) -> IndexReport:
    """Find a PACS's image series and register them as ``remote`` (see the module doc).

    Args:
        catalog: the catalog to write.
        name: a connection stored with ``xds pacs add``.
        since: None for everything; a date (studies dated then or later); ``"last"``
            for what is new since the last index of this PACS.
        where_tags: DICOM attribute -> value the PACS filters on (wildcards as the PACS
            supports); series-level attributes (Modality, SeriesDescription, ...) filter
            series, the others studies.
        jobs: studies asked about at once.

    Raises:
        PacsError: the PACS cannot be reached or answers wrongly (one line).
    """
    store = PacsStore(catalog.root)
    conn = store.connection(name)
    tags = dict(where_tags or {})
    study_filters = {k: v for k, v in tags.items() if k not in SERIES_LEVEL}
    series_filters = {k: v for k, v in tags.items() if k in SERIES_LEVEL}
    started = utcnow().date()
    mark = store.watermark(name)
    # Where the change feed stands before anything is listed: what arrives during this
    # index is found again by the next --since last rather than missed.
    seq_before = last_change(conn)
    remote = open_remote(conn)
    feed = None
    try:
        if since == "last":
            feed = changed_studies(conn, mark)
            since_date = None if feed is not None or not mark.get("date") else (
                dt.date.fromisoformat(mark["date"]) - dt.timedelta(days=1))  # fmt: skip
        else:
            since_date = dt.date.fromisoformat(since) if isinstance(since, str) else since
        if feed is not None:
            studies = [
                s for uid in feed[0]
                for s in remote.find_studies({**study_filters, "StudyInstanceUID": uid})
            ]  # fmt: skip
        else:
            studies = all_studies(remote, study_filters, since_date)
    finally:
        remote.close()
    shown_since = "change feed" if feed is not None else (str(since_date) if since_date else None)
    report = IndexReport(name, conn.center, conn.dataset, shown_since,
                         studies_found=len(studies))  # fmt: skip
    known = ingested_series(catalog, conn.dataset, conn.center) | registered_series(
        catalog, conn.dataset, conn.center
    )
    local = threading.local()

    def remote_here() -> Remote:
        if not hasattr(local, "remote"):
            local.remote = open_remote(conn)
        return local.remote

    found = thread_map(
        lambda study: _study(remote_here(), study, series_filters, catalog.secret(), known),
        studies, jobs=jobs, description=f"index {name}",
    )  # fmt: skip
    heads, private, reasons = [], [], Counter()
    for series in found:
        for entry in series:
            report.series_found += 1
            if entry.get("known"):
                report.series_known += 1
            elif entry.get("left_out"):
                reasons[entry["left_out"]] += 1
            else:
                heads.append(entry["head"])
                private.append(entry["private"])
    report.left_out = dict(reasons)
    rows, subjects, studies_rows = _rows(catalog, conn, heads)
    store.put_series([{**p, "pacs": name} for p in private])  # before the rows that need them
    with catalog.transaction(f"pacs index {name}") as txn:
        txn.append("subjects", subjects, unique_by=["subject_id"])
        txn.append("studies", studies_rows, unique_by=["study_id"])
        txn.append("remote_series", rows, unique_by=["series_uid_hash"])
    report.series_registered = txn.written.get("remote_series", 0)
    report.subjects_added = txn.written.get("subjects", 0)
    report.instances_registered = sum(r["n_instances"] for r in rows)
    report.catalog_version = catalog.version
    state = {"date": started.isoformat()}
    seq = feed[1] if feed is not None else seq_before
    if seq is not None:
        state["change_seq"] = seq
    store.set_watermark(name, {**mark, **state})
    return report


def _study(remote: Remote, study: dict, filters: dict, secret: bytes, known: set[str]) -> list:
    """One study's series: ``{"known"}``, ``{"left_out": reason}`` or header + private row."""
    out = []
    study_uid = study["StudyInstanceUID"]
    for series in study_series(remote, study, filters):
        uid = series["SeriesInstanceUID"]
        series_hash = pseudonym(secret, "series", uid, prefix="ser")
        modality = series["Modality"].upper()
        if series_hash in known:
            out.append({"known": True})
            continue
        if modality not in MODALITIES:
            out.append({"left_out": f"modality {modality or 'missing'} is not MR, CT or PT"})
            continue
        instances = remote.find_instances(study_uid, uid)
        if not instances:
            out.append({"left_out": "no instances listed"})
            continue
        instances.sort(key=lambda i: (_number(i["InstanceNumber"]), i["SOPInstanceUID"]))
        listed = int(series.get("NumberOfSeriesRelatedInstances") or 0) or len(instances)
        ds = remote.header(study_uid, uid, instances[0]["SOPInstanceUID"])
        head = {**dataset_facts(ds), "rel": series_hash, "series_uid": uid}
        if localizer_reason(head) or projection_reason(head):
            kind = "localizer" if localizer_reason(head) else "projection image"
            out.append({"left_out": f"{kind}, not a volume"})
            continue
        n = max(listed, len(instances))
        pixels = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0)
        pixels *= int(ds.get("BitsAllocated", 16) or 16) // 8
        pixels *= int(ds.get("NumberOfFrames", 1) or 1)
        head.update(n_instances=n, estimated_bytes=n * (pixels + HEADER_BYTES),
                    series_hash=series_hash)  # fmt: skip
        out.append({
            "head": head,
            "private": {"series_hash": series_hash, "study_uid": study_uid, "series_uid": uid,
                        "n_instances": n, "listed_all": len(instances) >= n,
                        "instances": [(i["SOPInstanceUID"], i["InstanceNumber"])
                                      for i in instances]},
        })  # fmt: skip
    return out


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("inf")


def _rows(catalog: Catalog, conn: Connection, heads: list[dict]):
    """``remote_series``, ``subjects`` and ``studies`` rows of the new series' headers."""
    secret, run = catalog.secret(), run_id().replace("ingest-", "index-")
    head_of = {h["series_uid"]: h for h in heads}
    subject_of = {uid: pseudonym(secret, conn.dataset, conn.center, subject_key(h))
                  for uid, h in head_of.items()}  # fmt: skip
    phi_of: dict[str, set[str]] = defaultdict(set)
    for uid, h in head_of.items():
        phi_of[subject_of[uid]].update(phi_strings(h))
    subjects, studies = subjects_and_studies(head_of, subject_of, conn.dataset, conn.center, run,
                                             secret)  # fmt: skip
    now, rows = utcnow(), []
    for uid, h in sorted(head_of.items(), key=lambda kv: kv[1]["series_hash"]):
        sid = subject_of[uid]
        facts = series_facts(h, secret, sid, h["series_hash"], tuple(sorted(phi_of[sid])))
        found = classify(facts)
        rows.append({
            "scan_id": remote_scan_id(h["series_hash"]), "subject_id": sid,
            **acquisition_columns(facts),
            "dataset": conn.dataset, "center": conn.center, "pacs": conn.name,
            "sequence": found.sequence, "sequence_source": "rule",
            "sequence_rule": found.rule, "sequence_confidence": round(found.confidence, 3),
            "n_instances": h["n_instances"], "estimated_bytes": h["estimated_bytes"],
            "added_at": now, "source": run,
        })  # fmt: skip
    return rows, list(subjects.values()), list(studies.values())
