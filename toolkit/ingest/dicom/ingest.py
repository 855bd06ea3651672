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

    planner = SeriesPlanner(catalog, root, report, run, dataset=dataset, center=center,
                            overrides=overrides, subject_of_path=subject_of_path,
                            min_slices=min_slices, max_voxels=max_voxels,
                            workroot=catalog.root / WORK_FOLDER / f"{run}-{os.getpid()}",
                            binary=binary)  # fmt: skip
    sweep_workdirs(catalog.root / WORK_FOLDER)
    work = planner.plan(relpaths, headers)
    committer = Committer(catalog, planner, commit_every)
    quarantine, workroot = planner.quarantine, planner.workroot

    try:
        results = progress_imap(convert_series, work, jobs=jobs, description=f"convert {center}")
        for job, result in zip(work, results, strict=True):
            committer.add(job, result)
        committer.flush()
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


class SeriesPlanner:
    """Headers -> conversion jobs, for one ingest run that may see its files in parts.

    Each :meth:`plan` call takes some files' headers (a whole folder, or one series a PACS
    sent): it groups them into series, derives the keyed subject and study pseudonyms,
    quarantines what cannot be a volume, skips series the catalog holds, and returns the
    :class:`SeriesJob` of the rest. Subjects and studies accumulate for the commits.
    """

    def __init__(self, catalog: Catalog, root: Path, report: DicomIngestReport, run: str, *,
                 dataset: str, center: str, overrides=(), subject_of_path=None,
                 min_slices: int = MIN_SLICES, max_voxels: int | None = None,
                 workroot: Path, binary: str):  # fmt: skip
        self.catalog, self.root, self.report, self.run = catalog, root, report, run
        self.dataset, self.center = dataset, center
        self.overrides, self.subject_of_path = list(overrides), subject_of_path
        self.min_slices, self.max_voxels = min_slices, max_voxels
        self.workroot, self.binary = workroot, binary
        self.secret = catalog.secret()
        self.quarantine = Quarantine(catalog, report, root, run)
        self.existing = ingested_series(catalog, dataset, center)
        self.subjects: dict[str, dict] = {}
        self.studies: dict[str, dict] = {}
        self.phi_of: dict[str, set[str]] = defaultdict(set)  # subject -> identifiers seen
        self.shown = scrubber(self.phi_of)

    def reject(self, rel: str, stage: str, error: str, files: int = 1) -> None:
        """Quarantine a file or series (``rel`` may end in `` [series ...]``)."""
        self.report.files_quarantined += files
        self.quarantine.add(rel.split(" [")[0], stage, error, shown=self.shown(rel))

    def plan(self, relpaths: list[str], headers: list[dict]) -> list[SeriesJob]:
        """The conversion jobs of these files' series (see the class doc)."""
        by_series: dict[str, list[dict]] = defaultdict(list)
        for h in headers:
            if not h.get("problem") and not h.get("annotation"):
                by_series[h["series_uid"]].append(h)
        # The series-level facts: the first header of each series read in full.
        head_of = {uid: next(h for h in files if "modality" in h)
                   for uid, files in by_series.items()}  # fmt: skip
        # Everything that identifies a person, to scrub from paths and descriptions.
        subject_of: dict[str, str] = {}
        phi_of = self.phi_of
        known = sum(map(len, phi_of.values()))
        for uid, head in head_of.items():
            key = (self.subject_of_path(head["rel"]) if self.subject_of_path else None
                   ) or subject_key(head)  # fmt: skip
            subject_of[uid] = pseudonym(self.secret, self.dataset, self.center, key)
            phi_of[subject_of[uid]].update(phi_strings(head))
        if sum(map(len, phi_of.values())) != known:  # a pull plans one series at a time
            self.shown = scrubber(phi_of)
        record_source_names(self.catalog, relpaths, self.quarantine.keep)
        for h in headers:
            if h.get("problem"):
                self.reject(h["rel"], *h["problem"])
        self.report.series_found += len(by_series)
        subjects, studies = subjects_and_studies(head_of, subject_of, self.dataset, self.center,
                                                 self.run, self.secret)  # fmt: skip
        for sid, row in subjects.items():
            self.subjects.setdefault(sid, row)
        for stid, row in studies.items():
            self.studies.setdefault(stid, row)
        work: list[SeriesJob] = []
        for uid, files in sorted(by_series.items(), key=lambda kv: kv[1][0]["rel"]):
            files.sort(key=lambda h: h["rel"])
            series_hash = pseudonym(self.secret, "series", uid, prefix="ser")
            label = f"{common_folder([h['rel'] for h in files])} [series {series_hash}]"
            if series_hash in self.existing:
                self.report.series_skipped += 1
                self.report.files_in_scans += len(files)
                continue
            first = head_of[uid]
            problem = series_problem(first, files, self.min_slices, voxel_limit(self.max_voxels))
            if problem:
                self.reject(label, *problem, len(files))
                continue
            subject_id = subject_of[uid]
            phi = tuple(sorted(phi_of[subject_id]))
            override, rule = match_override(self.overrides, uid, files, first)
            facts = series_facts(first, self.secret, subject_id, series_hash, phi)
            work.append(SeriesJob(str(self.root), tuple(h["rel"] for h in files),
                                  str(self.workroot / series_hash), str(self.catalog.root),
                                  self.dataset, subject_id, facts, phi, override, rule, label,
                                  self.binary, self.max_voxels))  # fmt: skip
        return work


class Committer:
    """Converted series into the catalog, ``commit_every`` at a time, one transaction each.

    ``also(txn, pairs)``, when given, adds to each transaction (a pull marks its refused
    series in the same commit as the rest of the batch).
    """

    def __init__(self, catalog: Catalog, planner: SeriesPlanner, commit_every: int,
                 also: Callable | None = None):  # fmt: skip
        self.catalog, self.planner, self.commit_every = catalog, planner, commit_every
        self.also = also
        self.pending: list[tuple[SeriesJob, dict]] = []
        self.done_subjects: set[str] = set()
        self.done_studies: set[str] = set()

    def add(self, job: SeriesJob, result: dict) -> None:
        """One conversion's result; commits when ``commit_every`` are waiting."""
        self.pending.append((job, result))
        if len(self.pending) >= self.commit_every:
            self.commit()

    def flush(self) -> None:
        """Commit what waits (results, or quarantine rows alone)."""
        if self.pending or self.planner.quarantine.rows:
            self.commit()

    def commit(self) -> None:
        """One transaction: the waiting scans, their subjects and studies, quarantine."""
        planner, report = self.planner, self.planner.report
        rows = []
        for job, result in self.pending:
            rows.extend(result["scans"])
            if result["scans"]:
                report.files_in_scans += len(job.files)
                for rel, stage, error in result["problems"]:
                    planner.reject(rel, stage, error, 0)
            else:
                for n, (rel, stage, error) in enumerate(result["problems"]):
                    planner.reject(rel, stage, error, len(job.files) if n == 0 else 0)
        now = utcnow()
        for row in rows:
            row.update(dataset=planner.dataset, center=planner.center, added_at=now,
                       source=planner.run, status="ok")  # fmt: skip
        sids = {job.subject_id for job, _ in self.pending} - self.done_subjects
        stids = {r["study_id"] for r in rows} - self.done_studies
        with self.catalog.transaction(f"ingest dicom {planner.dataset}/{planner.center}") as txn:
            txn.append("subjects", [planner.subjects[s] for s in sorted(sids)],
                       unique_by=["subject_id"])  # fmt: skip
            txn.append("studies", [planner.studies[s] for s in sorted(stids)],
                       unique_by=["study_id"])  # fmt: skip
            txn.append("scans", rows, unique_by=["subject_id", "image_hash"])
            txn.append("quarantine", planner.quarantine.take(), unique_by=["uri", "error"])
            if self.also is not None:
                self.also(txn, list(self.pending))
        self.done_subjects.update(sids)
        self.done_studies.update(stids)
        report.subjects_added += txn.written.get("subjects", 0)
        report.studies_added += txn.written.get("studies", 0)
        report.scans_added += txn.written.get("scans", 0)
        report.already_present += len(rows) - txn.written.get("scans", 0)
        for row in rows:
            report.sequences[row["sequence"]] = report.sequences.get(row["sequence"], 0) + 1
        self.pending.clear()
