"""Ingest a center's DICOM export (``xds ingest dicom``).

The pipeline, each stage parallel over ``jobs`` processes with a progress bar:

1. **walk** the folder (any layout; a DICOMDIR is read like any other file, and the images
   it indexes are found by the walk itself);
2. **headers**: read every file's header with pydicom (``stop_before_pixels``), check that
   pixel data is there and complete, and group files into series by SeriesInstanceUID;
3. **checks** per series: one orientation, one image size, evenly spaced slices without gaps;
4. **convert** each series with dcm2niix (its BIDS sidecar included), classify it
   (:mod:`xds.ingest.classify`), de-identify image, sidecar and metadata, store the files;
5. **commit** every ``commit_every`` series as one catalog transaction.

A file or series that fails any stage becomes a quarantine row with its stage and reason and
the rest goes on. A series already in the catalog (by its keyed series-UID hash) is skipped
before conversion, so a re-run, or a run after a crash or a ``kill -9``, does only what is
left; nothing is registered until its transaction commits.

De-identification: subject, study and series ids are keyed pseudonyms (HMAC under the
catalog's secret); dates are shifted per subject (:func:`xds.io.deid.date_shift_days`) after
the age is computed; names, IDs, addresses, accession numbers, institutions, physicians and
UIDs are read only to build pseudonyms and to scrub them from descriptions and paths. Images
are re-saved without header text; sidecars keep only acquisition technique fields.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from xds.catalog import Catalog, utcnow
from xds.ingest.clinical import apply_sheet, read_keyed_sheet
from xds.ingest.common import (
    IngestReport,
    Quarantine,
    check_source,
    run_id,
)
from xds.ingest.dicom.annotations import attach_annotations
from xds.ingest.dicom.convert import SeriesJob, convert_series, dcm2niix_path
from xds.ingest.dicom.headers import (
    phi_strings,
    scrubber,
    subject_key,
)
from xds.ingest.dicom.overrides import match_override, read_overrides
from xds.ingest.dicom.series import (
    MIN_SLICES,
    common_folder,
    ingested_series,
    series_facts,
    series_problem,
    subjects_and_studies,
)
from xds.ingest.dicom.walk import (
    HEADER_CHUNK,
    WORK_FOLDER,
    read_headers,
    sweep_workdirs,
    walk_files,
)
from xds.io.deid import pseudonym, record_source_names
from xds.io.images import max_voxels as voxel_limit
from xds.io.parallel import progress_imap, progress_map
from xds.schemas.errors import IngestError


@dataclass
class DicomIngestReport(IngestReport):
    """What one DICOM ingest did (on top of :class:`IngestReport`'s counts)."""

    series_found: int = 0
    series_skipped: int = 0  # already in the catalog
    files_in_scans: int = 0  # files of series that are (now or already) catalog scans
    files_quarantined: int = 0
    files_in_labels: int = 0  # DICOM SEG and RTSTRUCT files now labels of the catalog's scans
    rois_left_out: list[str] = field(default_factory=list)  # one line per ROI not taken
    studies_added: int = 0
    sequences: dict[str, int] = field(default_factory=dict)
    sheet: dict | None = None  # the clinical sheet's matched / unmatched counts


def ingest_dicom(
    catalog: Catalog,
    root: str | Path,
    *,
    center: str,
    dataset: str | None = None,
    jobs: int = 1,
    sequence_overrides: str | Path | None = None,
    commit_every: int = 64,
    exclude: tuple[str, ...] = (),
    subject_of_path: Callable[[str], str | None] | None = None,
    min_slices: int = MIN_SLICES,
    max_voxels: int | None = None,
    metadata: str | Path | None = None,
    key: str = "PatientID",
    key_column: str | None = None,
) -> DicomIngestReport:
    """Convert, classify, de-identify and register a center's DICOM series.

    Args:
        catalog: the catalog to write (moved to the version this run creates).
        root: the folder holding the center's DICOM files, in any layout.
        center: center name as it should appear in the catalog.
        dataset: dataset name (defaults to ``center``).
        jobs: worker processes for header reading and conversion.
        sequence_overrides: a CSV with a ``sequence`` column and one of ``series_uid``,
            ``path`` (a file or folder under ``root``) or ``series_description``; a match
            wins over the classifier and is recorded as ``manual``.
        commit_every: series per catalog transaction (a crash loses at most this many).
        exclude: glob patterns (``*.png``, ``*/Ground/*``) of files that are not DICOM and
            should be left alone rather than quarantined.
        subject_of_path: for datasets whose headers do not identify the patient (anonymized
            public sets): the subject key of a series from its first file's path, or None
            to use the headers.
        min_slices: series with fewer slices (frames) are quarantined as not a volume.
        max_voxels: series with more voxels are quarantined before conversion (default
            :data:`xds.io.images.MAX_VOXELS` or ``XDS_MAX_VOXELS``).
        metadata: a clinical sheet keyed by ``key`` (see :mod:`xds.ingest.clinical`),
            read before anything is converted and joined to the subjects once they are in.
        key: the DICOM attribute the sheet's key column holds: ``PatientID`` (an MRN) or
            ``AccessionNumber``.
        key_column: the key column's name when it is none of the usual ones.

    Raises:
        IngestError: the folder, names, override file or sheet are unusable as a whole.
    """
    root, dataset = check_source(root, center, dataset)
    sheet = (
        read_keyed_sheet(metadata, key, key_column=key_column, secret=catalog.secret(),
                         center=center, dataset=dataset)  # fmt: skip
        if metadata is not None
        else None
    )
    if commit_every < 1:
        raise IngestError("commit_every must be at least 1")
    overrides = read_overrides(sequence_overrides) if sequence_overrides else []
    binary = dcm2niix_path()
    run = run_id()
    relpaths = [r for r in walk_files(root) if not any(fnmatch(r, p) for p in exclude)]
    report = DicomIngestReport(dataset, center, run, "dicom", files_found=len(relpaths))
    secret = catalog.secret()

    chunks = [relpaths[i : i + HEADER_CHUNK] for i in range(0, len(relpaths), HEADER_CHUNK)]
    headers = [
        h
        for chunk in progress_map(
            read_headers,
            [(str(root), chunk) for chunk in chunks],
            jobs=jobs,
            description=f"headers {center}",
        )
        for h in chunk
    ]

    by_series: dict[str, list[dict]] = defaultdict(list)
    for h in headers:
        if not h.get("problem") and not h.get("annotation"):
            by_series[h["series_uid"]].append(h)
    # The series-level facts: the first header of each series read in full.
    head_of = {uid: next(h for h in files if "modality" in h) for uid, files in by_series.items()}
    # Everything that identifies a person, to scrub from paths and descriptions.
    subject_of: dict[str, str] = {}
    phi_of: dict[str, set[str]] = defaultdict(set)
    for uid, head in head_of.items():
        key = (subject_of_path(head["rel"]) if subject_of_path else None) or subject_key(head)
        subject_of[uid] = pseudonym(secret, dataset, center, key)
        phi_of[subject_of[uid]].update(phi_strings(head))
    shown = scrubber(phi_of)

    quarantine = Quarantine(catalog, report, root, run)
    record_source_names(catalog, relpaths, quarantine.keep)

    def reject(rel: str, stage: str, error: str, files: int = 1) -> None:
        report.files_quarantined += files
        quarantine.add(rel.split(" [")[0], stage, error, shown=shown(rel))

    for h in headers:
        if h.get("problem"):
            reject(h["rel"], *h["problem"])
    report.series_found = len(by_series)

    existing = ingested_series(catalog, dataset, center)
    subjects, studies = subjects_and_studies(head_of, subject_of, dataset, center, run, secret)
    work: list[SeriesJob] = []
    workroot = catalog.root / WORK_FOLDER / f"{run}-{os.getpid()}"
    sweep_workdirs(catalog.root / WORK_FOLDER)
    for uid, files in sorted(by_series.items(), key=lambda kv: kv[1][0]["rel"]):
        files.sort(key=lambda h: h["rel"])
        series_hash = pseudonym(secret, "series", uid, prefix="ser")
        label = f"{common_folder([h['rel'] for h in files])} [series {series_hash}]"
        if series_hash in existing:
            report.series_skipped += 1
            report.files_in_scans += len(files)
            continue
        first = head_of[uid]
        if problem := series_problem(first, files, min_slices, voxel_limit(max_voxels)):
            reject(label, *problem, len(files))
            continue
        subject_id = subject_of[uid]
        phi = tuple(sorted(phi_of[subject_id]))
        override, rule = match_override(overrides, uid, files, first)
        facts = series_facts(first, secret, subject_id, series_hash, phi)
        work.append(
            SeriesJob(
                str(root),
                tuple(h["rel"] for h in files),
                str(workroot / series_hash),
                str(catalog.root),
                dataset,
                subject_id,
                facts,
                phi,
                override,
                rule,
                label,
                binary,
                max_voxels,
            )
        )

    pending: list[tuple[SeriesJob, dict]] = []
    done_subjects: set[str] = set()
    done_studies: set[str] = set()

    def commit() -> None:
        rows = []
        for job, result in pending:
            rows.extend(result["scans"])
            if result["scans"]:
                report.files_in_scans += len(job.files)
                for rel, stage, error in result["problems"]:
                    reject(rel, stage, error, 0)
            else:
                for n, (rel, stage, error) in enumerate(result["problems"]):
                    reject(rel, stage, error, len(job.files) if n == 0 else 0)
        now = utcnow()
        for row in rows:
            row.update(dataset=dataset, center=center, added_at=now, source=run, status="ok")
        sids = {job.subject_id for job, _ in pending} - done_subjects
        stids = {r["study_id"] for r in rows} - done_studies
        with catalog.transaction(f"ingest dicom {dataset}/{center}") as txn:
            txn.append("subjects", [subjects[s] for s in sorted(sids)], unique_by=["subject_id"])
            txn.append("studies", [studies[s] for s in sorted(stids)], unique_by=["study_id"])
            txn.append("scans", rows, unique_by=["subject_id", "image_hash"])
            txn.append("quarantine", quarantine.take(), unique_by=["uri", "error"])
        done_subjects.update(sids)
        done_studies.update(stids)
        report.subjects_added += txn.written.get("subjects", 0)
        report.studies_added += txn.written.get("studies", 0)
        report.scans_added += txn.written.get("scans", 0)
        report.already_present += len(rows) - txn.written.get("scans", 0)
        for row in rows:
            report.sequences[row["sequence"]] = report.sequences.get(row["sequence"], 0) + 1
        pending.clear()

    try:
        results = progress_imap(convert_series, work, jobs=jobs, description=f"convert {center}")
        for job, result in zip(work, results, strict=True):
            pending.append((job, result))
            if len(pending) >= commit_every:
                commit()
        if pending or quarantine.rows:
            commit()
        annotations = [(h["rel"], h["annotation"]) for h in headers if h.get("annotation")]
        if annotations:
            labels, maps = attach_annotations(catalog, root, annotations, dataset=dataset,
                                              center=center, run=run, quarantine=quarantine,
                                              scratch=workroot / "annotations",
                                              notes=report.rois_left_out)  # fmt: skip
            with catalog.transaction(f"ingest dicom {dataset}/{center}: annotations") as txn:
                txn.append("label_maps", maps, unique_by=["label_map_id"])
                txn.append("labels", labels, unique_by=["label_id"])
                txn.append("quarantine", quarantine.take(), unique_by=["uri", "error"])
            report.labels_added += txn.written.get("labels", 0)
            report.files_in_labels = len(labels)
            report.files_quarantined += len(annotations) - len(labels)
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    if sheet is not None:
        report.sheet = apply_sheet(catalog, sheet, center=center, dataset=dataset).summary()
    report.catalog_version = catalog.version
    report.quarantined = len(report.problems)
    return report
