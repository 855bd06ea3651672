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
catalog's secret); dates are shifted per subject (:func:`xds.deid.date_shift_days`) after
the age is computed; names, IDs, addresses, accession numbers, institutions, physicians and
UIDs are read only to build pseudonyms and to scrub them from descriptions and paths. Images
are re-saved without header text; sidecars keep only acquisition technique fields.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from xds.catalog import Catalog, utcnow
from xds.deid import age_bin, cap_age, clean_sidecar, clean_text, date_shift_days, pseudonym
from xds.executors import progress_imap, progress_map, set_parent_death_signal
from xds.imageio import max_voxels as voxel_limit
from xds.imageio import process_alive, read_volume, store_volume
from xds.ingest.classify import classify, mentions_contrast
from xds.ingest.common import (
    IngestReport,
    Quarantine,
    check_source,
    record_source_names,
    run_id,
)
from xds.ingest.sheets import parse_age
from xds.schemas.errors import IngestError
from xds.schemas.ids import acquisition_time_key, stable_id
from xds.schemas.tables import SEQUENCES

_DICOMDIR_SOP = "1.2.840.10008.1.3.10"
_MODALITIES = ("MR", "CT", "PT")
_TMP = ".xds-tmp"
_HEADER_CHUNK = 256
MIN_SLICES = 5
"""Series with fewer slices are no volume (localizers, scouts, screenshots): quarantined."""
_LOCALIZER = re.compile(
    r"locali[sz]er|scout|survey|topogram|surview|scanogram|pilot|3[ _-]?plane|"
    r"(^|[^a-z])loc([^a-z]|$)|aahead|aascout",
    re.IGNORECASE,
)
_PROJECTION = {"PROJECTION IMAGE", "MIP", "CSA MIP", "MINIP", "MNIP", "VOLUME RENDERING"}


def localizer_reason(head: dict) -> str | None:
    """Why a series is a localizer (the tag that says so), or None.

    ImageType's third value is LOCALIZER on Siemens and others; GE and Philips name them in
    the series description or protocol ("3-plane loc", "Survey", "SURVIEW", "Topogram").
    """
    image_type = [str(v).upper() for v in head.get("image_type") or []]
    if "LOCALIZER" in image_type:
        return "ImageType " + "\\".join(image_type)
    for key, tag in (("description", "SeriesDescription"), ("protocol_name", "ProtocolName")):
        if (text := head.get(key)) and _LOCALIZER.search(text):
            return f"{tag} names a localizer"
    return None


def projection_reason(head: dict) -> str | None:
    """Why a series is a projection (MIP, rendering), not slices of a volume, or None.

    ImageType says so (``DERIVED\\SECONDARY\\PROJECTION IMAGE``, Siemens ``CSA MIP``): each
    image sums or maxes a whole slab, so no voxel of it is a place in the body.
    """
    image_type = [str(v).upper().strip() for v in head.get("image_type") or []]
    if _PROJECTION & set(image_type):
        return "ImageType " + "\\".join(image_type)
    return None


@dataclass
class DicomIngestReport(IngestReport):
    """What one DICOM ingest did (on top of :class:`IngestReport`'s counts)."""

    series_found: int = 0
    series_skipped: int = 0  # already in the catalog
    files_in_scans: int = 0  # files of series that are (now or already) catalog scans
    files_quarantined: int = 0
    studies_added: int = 0
    sequences: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _SeriesJob:
    root: str
    files: tuple[str, ...]
    workdir: str
    catalog_root: str
    dataset: str
    subject_id: str
    facts: dict
    phi: tuple[str, ...]
    override: str | None
    override_rule: str | None
    label: str  # how problems name the series (scrubbed of PHI before it is stored)
    dcm2niix: str  # the converter, found once by the parent
    max_voxels: int | None = None


def dcm2niix_path() -> str:
    """The dcm2niix executable: the one the ``dcm2niix`` Python package ships, else PATH's.

    Raises:
        IngestError: neither is installed.
    """
    try:
        import dcm2niix

        path = Path(dcm2niix.bin_path if hasattr(dcm2niix, "bin_path") else dcm2niix.bin)
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("dcm2niix")
    if not found:
        raise IngestError("dcm2niix not found: pip install dcm2niix")
    return found


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
            :data:`xds.imageio.MAX_VOXELS` or ``XDS_MAX_VOXELS``).

    Raises:
        IngestError: the folder, names or override file are unusable as a whole.
    """
    root, dataset = check_source(root, center, dataset)
    if commit_every < 1:
        raise IngestError("commit_every must be at least 1")
    overrides = read_overrides(sequence_overrides) if sequence_overrides else []
    binary = dcm2niix_path()
    run = run_id()
    relpaths = [r for r in walk_files(root) if not any(fnmatch(r, p) for p in exclude)]
    report = DicomIngestReport(dataset, center, run, "dicom", files_found=len(relpaths))
    secret = catalog.secret()

    chunks = [relpaths[i : i + _HEADER_CHUNK] for i in range(0, len(relpaths), _HEADER_CHUNK)]
    headers = [
        h
        for chunk in progress_map(
            _read_headers,
            [(str(root), chunk) for chunk in chunks],
            jobs=jobs,
            description=f"headers {center}",
        )
        for h in chunk
    ]

    by_series: dict[str, list[dict]] = defaultdict(list)
    for h in headers:
        if not h.get("problem"):
            by_series[h["series_uid"]].append(h)
    # The series-level facts: the first header of each series read in full.
    head_of = {uid: next(h for h in files if "modality" in h) for uid, files in by_series.items()}
    # Everything that identifies a person, to scrub from paths and descriptions.
    subject_of: dict[str, str] = {}
    phi_of: dict[str, set[str]] = defaultdict(set)
    for uid, head in head_of.items():
        key = (subject_of_path(head["rel"]) if subject_of_path else None) or _subject_key(head)
        subject_of[uid] = pseudonym(secret, dataset, center, key)
        phi_of[subject_of[uid]].update(_phi_strings(head))
    # One pass of one regex (longest strings first) however many subjects the center has.
    sid_of = {p.lower(): sid for sid, values in phi_of.items() for p in values if len(p) >= 3}
    phi_pattern = (
        re.compile("|".join(re.escape(p) for p in sorted(sid_of, key=len, reverse=True)), re.I)
        if sid_of
        else None
    )

    def shown(rel: str) -> str:
        if phi_pattern is None:
            return rel
        return phi_pattern.sub(lambda m: sid_of[m.group(0).lower()], rel)

    quarantine = Quarantine(catalog, report, root, run)
    record_source_names(catalog, relpaths, quarantine.keep)

    def reject(rel: str, stage: str, error: str, files: int = 1) -> None:
        report.files_quarantined += files
        quarantine.add(rel.split(" [")[0], stage, error, shown=shown(rel))

    for h in headers:
        if h.get("problem"):
            reject(h["rel"], *h["problem"])
    report.series_found = len(by_series)

    existing = _ingested_series(catalog, dataset, center)
    subjects, studies = _subjects_and_studies(head_of, subject_of, dataset, center, run, secret)
    work: list[_SeriesJob] = []
    workroot = catalog.root / _TMP / f"{run}-{os.getpid()}"
    _sweep_workdirs(catalog.root / _TMP)
    for uid, files in sorted(by_series.items(), key=lambda kv: kv[1][0]["rel"]):
        files.sort(key=lambda h: h["rel"])
        series_hash = pseudonym(secret, "series", uid, prefix="ser")
        label = f"{_common_folder([h['rel'] for h in files])} [series {series_hash}]"
        if series_hash in existing:
            report.series_skipped += 1
            report.files_in_scans += len(files)
            continue
        first = head_of[uid]
        modality = (first.get("modality") or "").upper()
        if modality not in _MODALITIES:
            error = f"modality {modality or 'missing'} is not MR, CT or PT"
            reject(label, "series", error, len(files))
            continue
        if reason := localizer_reason(first):
            reject(label, "series", f"localizer, not a volume ({reason})", len(files))
            continue
        if reason := projection_reason(first):
            reject(label, "series", f"projection image, not a volume ({reason})", len(files))
            continue
        if error := check_series_geometry(files):
            reject(label, "geometry", error, len(files))
            continue
        slices = sum(h["frames"] for h in files)
        if slices < min_slices:
            error = f"not a volume: {slices} slice(s), fewer than the minimum of {min_slices}"
            reject(label, "series", error, len(files))
            continue
        rows, columns = files[0]["size"]
        if rows * columns * slices > voxel_limit(max_voxels):
            error = (
                f"{rows * columns * slices:,} voxels, over the limit of "
                f"{voxel_limit(max_voxels):,} (raise it with --max-voxels or XDS_MAX_VOXELS)"
            )
            reject(label, "series", error, len(files))
            continue
        subject_id = subject_of[uid]
        phi = tuple(sorted(phi_of[subject_id]))
        override, rule = _match_override(overrides, uid, files, first)
        facts = _series_facts(first, secret, subject_id, series_hash, phi)
        work.append(
            _SeriesJob(
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

    pending: list[tuple[_SeriesJob, dict]] = []
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
        results = progress_imap(_convert_series, work, jobs=jobs, description=f"convert {center}")
        for job, result in zip(work, results, strict=True):
            pending.append((job, result))
            if len(pending) >= commit_every:
                commit()
        if pending or quarantine.rows:
            commit()
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    report.catalog_version = catalog.version
    report.quarantined = len(report.problems)
    return report


# -- headers ---------------------------------------------------------------------------------


def walk_files(root: Path) -> list[str]:
    """Every non-hidden file under ``root`` (relative, sorted), following linked folders once."""
    out, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(folder).relative_to(root)
        out.extend(
            (rel / f).as_posix()
            for f in files
            if not f.startswith(".") and os.path.isfile(os.path.join(folder, f))
        )
    return sorted(out)


def _read_headers(args: tuple[str, list[str]]) -> list[dict]:
    root, rels = args
    seen: set[str] = set()
    with warnings.catch_warnings():  # pydicom warns on every odd value; problems are returned
        warnings.simplefilter("ignore")
        return [read_header(Path(root), rel, seen) for rel in rels]


def read_header(root: Path, rel: str, seen: set[str] | None = None) -> dict:
    """The facts of one file's header, or ``{"rel", "problem": (stage, reason)}``.

    Pixel data is not read: the file position after the header tells whether it is there
    and, for uncompressed transfer syntaxes, whether the file holds all of it. When
    ``seen`` holds the file's series UID, only the per-slice geometry is extracted (the
    series-level facts come from the first file of the series; converting every value of
    every header was two thirds of the header time).
    """
    try:
        return _read_header(root, rel, seen if seen is not None else set())
    except Exception as exc:  # a value pydicom read but cannot be interpreted
        return {"rel": rel, "problem": ("read", f"malformed header ({_short(exc)})")}


def _read_header(root: Path, rel: str, seen: set[str]) -> dict:
    path = root / rel
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            try:
                ds = pydicom.dcmread(fh, stop_before_pixels=True)
            except InvalidDicomError:
                fh.seek(0)
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
                if "SOPClassUID" not in ds and "Modality" not in ds:
                    return {"rel": rel, "problem": ("read", "not a DICOM file")}
            rest = size - fh.tell()
    except Exception as exc:  # pydicom raises many types for broken files
        return {"rel": rel, "problem": ("read", f"unreadable DICOM ({_short(exc)})")}
    sop = str(
        ds.get("SOPClassUID", "") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", "")
    )
    if sop == _DICOMDIR_SOP or "DirectoryRecordSequence" in ds:
        return {
            "rel": rel,
            "problem": ("read", "DICOMDIR index (its images are read from the tree)"),
        }
    sop_name = pydicom.uid.UID(sop).name if sop else "unknown SOP class"
    if "Rows" not in ds or "Columns" not in ds:
        if "Image" in sop_name:
            return {
                "rel": rel,
                "problem": ("read", f"image header without Rows/Columns ({sop_name})"),
            }
        return {"rel": rel, "problem": ("read", f"not an image ({sop_name})")}
    if rest < 8:
        return {"rel": rel, "problem": ("read", "no pixel data (an image header only)")}
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and not syntax.is_compressed:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = (
            int(ds.Rows)
            * int(ds.Columns)
            * int(ds.get("SamplesPerPixel", 1))
            * int(ds.get("BitsAllocated", 16))
            // 8
            * frames
        )
        if rest - 8 < expected and rest - 12 < expected:
            return {
                "rel": rel,
                "problem": ("read", f"truncated: {rest} bytes of pixel data, expected {expected}"),
            }
    series_uid = str(ds.get("SeriesInstanceUID") or "") or _series_key(rel, ds)
    geometry = {
        "series_uid": series_uid,
        "iop": [round(float(v), 4) for v in ds.ImageOrientationPatient]
        if "ImageOrientationPatient" in ds
        else None,
        "ipp": [float(v) for v in ds.ImagePositionPatient]
        if "ImagePositionPatient" in ds
        else None,
        "size": (int(ds.Rows), int(ds.Columns)),
        "frames": int(ds.get("NumberOfFrames", 1) or 1),
    }
    if series_uid in seen:
        return {"rel": rel, **geometry}
    seen.add(series_uid)
    return {"rel": rel, **geometry, **_header_facts(ds, sop_name)}


def _series_key(rel: str, ds) -> str:
    """A stand-in series UID for files whose SeriesInstanceUID was stripped.

    Careless anonymizers do that. The key is the folder, study, series number, description,
    image size and echo time, which files of one series share; it is hashed like any UID and
    never stored.
    """
    parts = [
        str(Path(rel).parent),
        *(str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesNumber", "SeriesDescription",
                                         "Rows", "Columns", "EchoTime")),
    ]  # fmt: skip
    return "no-uid:" + "|".join(parts)


def _enhanced(ds, sequence: str, keyword: str):
    """A value of an enhanced (multi-frame) object's functional groups: shared, else frame 1."""
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        try:
            value = ds[groups][0][sequence][0].get(keyword)
        except (KeyError, IndexError, TypeError, AttributeError):
            continue
        if value not in (None, ""):
            return value
    return None


def _header_facts(ds, sop_name: str) -> dict:
    def text(keyword):
        value = ds.get(keyword)
        return None if value is None or value == "" else str(value).strip()

    def number(keyword, sequence=None):
        value = ds.get(keyword)
        if (value is None or value == "") and sequence:
            value = _enhanced(ds, sequence, keyword)
        try:
            return None if value is None or value == "" else float(value)
        except (TypeError, ValueError):
            return None

    def values(keyword):
        value = ds.get(keyword)
        if value is None or value == "":
            return []
        if isinstance(value, str | bytes):
            return [str(value).strip()]
        return [str(v).strip() for v in value]

    b_value = number("DiffusionBValue")
    for private in ((0x0019, 0x100C), (0x0043, 0x1039)):  # Siemens, GE
        if b_value is None and private in ds:
            try:
                raw = ds[private].value
                raw = raw[0] if isinstance(raw, list | tuple | pydicom.multival.MultiValue) else raw
                b_value = float(raw.decode() if isinstance(raw, bytes) else raw)
            except (TypeError, ValueError, IndexError, UnicodeDecodeError):
                pass
    return {
        "sop_class": sop_name,
        "study_uid": text("StudyInstanceUID"),
        "patient_id": text("PatientID"),
        "patient_name": text("PatientName"),
        "birth_date": text("PatientBirthDate"),
        "sex": text("PatientSex"),
        "age": text("PatientAge"),
        "study_date": text("StudyDate"),
        "series_date": text("SeriesDate") or text("AcquisitionDate"),
        "acquisition_time": text("AcquisitionTime") or text("SeriesTime"),
        "accession": text("AccessionNumber"),
        "other_phi": [
            v
            for k in (
                "InstitutionName",
                "InstitutionAddress",
                "ReferringPhysicianName",
                "OperatorsName",
                "PerformingPhysicianName",
                "StationName",
                "DeviceSerialNumber",
                "PatientAddress",
                "OtherPatientIDs",
            )
            if (v := text(k))
        ],
        "modality": text("Modality"),
        "manufacturer": text("Manufacturer"),
        "model": text("ManufacturerModelName"),
        "field_strength": number("MagneticFieldStrength"),
        "description": text("SeriesDescription"),
        "protocol_name": text("ProtocolName"),
        "sequence_name": text("SequenceName") or text("PulseSequenceName"),
        "body_part": text("BodyPartExamined"),
        "image_type": values("ImageType"),
        "acquisition_contrast": text("AcquisitionContrast")
        or _enhanced(ds, "MRImageFrameTypeSequence", "AcquisitionContrast"),
        "scanning_sequence": values("ScanningSequence")
        or {"GRADIENT": ["GR"], "SPIN": ["SE"], "BOTH": ["SE", "GR"]}.get(
            str(ds.get("EchoPulseSequence") or "").upper(), []
        ),
        "sequence_variant": values("SequenceVariant"),
        "scan_options": values("ScanOptions"),
        "mr_acquisition_type": text("MRAcquisitionType"),
        "te": number("EchoTime") or number("EffectiveEchoTime", "MREchoSequence"),
        "tr": number("RepetitionTime", "MRTimingAndRelatedParametersSequence"),
        "ti": number("InversionTime"),
        "flip": number("FlipAngle", "MRTimingAndRelatedParametersSequence"),
        "b_value": b_value,
        "contrast_agent": text("ContrastBolusAgent"),
        "series_number": text("SeriesNumber"),
    }


def _subject_key(h: dict) -> str:
    """What links a subject's series: the patient ID, else name + birth date, else the study."""
    if h.get("patient_id"):
        return "id:" + h["patient_id"]
    if h.get("patient_name") or h.get("birth_date"):
        return f"name:{h.get('patient_name')}|{h.get('birth_date')}"
    return "study:" + str(h.get("study_uid") or h["series_uid"])


def _phi_strings(h: dict) -> set[str]:
    out = {h.get("patient_id"), h.get("birth_date"), h.get("accession"), h.get("study_date")}
    name = h.get("patient_name") or ""
    out |= {name, *re.split(r"[\^ ]+", name)}
    out |= set(h.get("other_phi") or ())
    return {v for v in out if v and len(v) >= 2}


# -- series checks ---------------------------------------------------------------------------


def check_series_geometry(files: list[dict]) -> str | None:
    """Why a series cannot become one volume, or None when it can.

    Checks one image size and one orientation, and that slice positions along the slice
    normal are evenly spaced with no gap (each position may repeat the same number of times,
    as multi-echo series do). Multi-frame files are left to dcm2niix.
    """
    sizes = {h["size"] for h in files}
    if len(sizes) > 1:
        return f"mixed image sizes in one series: {sorted(sizes)}"
    if any(h["frames"] > 1 for h in files):
        return None
    lacking = sum(1 for h in files if not h.get("iop") or not h.get("ipp"))
    if lacking:
        return (
            f"no geometry: {lacking} of {len(files)} image(s) lack ImagePositionPatient or "
            "ImageOrientationPatient"
        )
    values = np.array([[*h["iop"][:6], *h["ipp"][:3]] for h in files], float)
    if values.shape[1] != 9 or not np.isfinite(values).all():
        return "no geometry: ImagePositionPatient/ImageOrientationPatient hold non-numbers"
    iops = {tuple(np.round(h["iop"], 3)) for h in files}
    if len(iops) > 1:
        return f"mixed orientations: {len(iops)} image planes in one series"
    iop = np.array(next(iter(iops)), float)
    normal = np.cross(iop[:3], iop[3:])
    if np.linalg.norm(normal) < 0.5:
        return "no geometry: ImageOrientationPatient does not give two orthogonal unit axes"
    if len(files) < 3:
        return None
    positions = np.round([np.dot(normal, h["ipp"]) for h in files], 2)
    unique, counts = np.unique(positions, return_counts=True)
    if len(set(counts.tolist())) > 1:
        return "unequal number of images per slice position (missing or duplicated files)"
    if len(unique) < 3:
        return None
    steps = np.diff(unique)
    step = float(np.median(steps))
    if step <= 0:
        return None
    if steps.max() > 1.5 * step:
        k = int(np.argmax(steps))
        missing = round(float(steps[k]) / step) - 1
        return (
            f"slice gap: {missing} slice(s) missing between {unique[k]:.2f} and "
            f"{unique[k + 1]:.2f} mm (spacing {step:.2f} mm)"
        )
    if steps.max() - steps.min() > 0.1 * step + 0.02:
        return f"inconsistent slice spacing: {steps.min():.2f} to {steps.max():.2f} mm"
    return None


def _common_folder(rels: list[str]) -> str:
    folder = os.path.commonpath([os.path.dirname(r) or "." for r in rels])
    return (folder or ".") + "/" if len(rels) > 1 else rels[0]


# -- subjects and studies --------------------------------------------------------------------


def _parse_date(text: str | None) -> dt.date | None:
    if not text:
        return None
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _seconds_of_day(text: str | None) -> int | None:
    """A DICOM TM value (HHMMSS.FFFFFF, or HH:MM:SS) as whole seconds after midnight.

    Only its keyed hash is stored (:func:`xds.schemas.ids.acquisition_time_key`): the
    audit matches it to find one study registered under two subject ids.
    """
    digits = (text or "").replace(":", "").split(".")[0]
    if len(digits) < 4 or not digits.isdigit():
        return None
    hours, minutes, seconds = int(digits[:2]), int(digits[2:4]), int(digits[4:6] or 0)
    if hours > 23 or minutes > 59 or seconds > 60:
        return None
    return hours * 3600 + minutes * 60 + min(seconds, 59)


def _age_years(h: dict) -> float | None:
    """Age at the study: the PatientAge tag, else study date minus birth date."""
    try:
        age = parse_age(h.get("age"))
    except ValueError:
        age = None
    if age is not None:
        return age
    birth, study = _parse_date(h.get("birth_date")), _parse_date(h.get("study_date"))
    if birth and study and study >= birth:
        return round((study - birth).days / 365.25, 2)
    return None


def _subjects_and_studies(head_of, subject_of, dataset, center, run, secret):
    now = utcnow()
    per_subject: dict[str, list[dict]] = defaultdict(list)
    for uid, h in sorted(head_of.items(), key=lambda kv: kv[1]["rel"]):
        per_subject[subject_of[uid]].append(h)
    subjects, studies = {}, {}
    for sid, heads in per_subject.items():
        heads.sort(key=lambda h: (h.get("study_date") or "", h["rel"]))
        shift = dt.timedelta(days=date_shift_days(secret, sid))
        ages = [a for a in (_age_years(h) for h in heads) if a is not None]
        sexes = Counter((h.get("sex") or "").upper()[:1] for h in heads)
        sex = sexes.most_common(1)[0][0]
        age = cap_age(ages[0]) if ages else None
        subjects[sid] = {
            "subject_id": sid,
            "dataset": dataset,
            "center": center,
            "sex": sex if sex in ("F", "M", "O") else "U",
            "age": age,
            "age_bin": age_bin(age),
            "added_at": now,
            "source": run,
        }
        per_study: dict[str, list[dict]] = defaultdict(list)
        for h in heads:
            per_study[str(h.get("study_uid") or h["series_uid"])].append(h)
        for uid, members in per_study.items():
            stid = pseudonym(secret, "study", uid, prefix="stu")
            date = _parse_date(members[0].get("study_date"))
            age = _age_years(members[0])
            studies[stid] = {
                "study_id": stid,
                "subject_id": sid,
                "dataset": dataset,
                "center": center,
                "study_date": date + shift if date else None,
                "age": cap_age(age),
                "modalities": sorted({(h.get("modality") or "").upper() for h in members}),
                "n_series": len(members),
                "added_at": now,
                "source": run,
            }
    return subjects, studies


def _series_facts(h: dict, secret: bytes, subject_id: str, series_hash: str, phi) -> dict:
    """What the conversion worker needs about a series: no raw identifiers."""
    date = _parse_date(h.get("series_date") or h.get("study_date"))
    shifted = date + dt.timedelta(days=date_shift_days(secret, subject_id)) if date else None
    keep = (
        "modality manufacturer model field_strength description protocol_name sequence_name "
        "body_part image_type acquisition_contrast scanning_sequence sequence_variant scan_options "
        "mr_acquisition_type te tr ti flip b_value contrast_agent acquisition_time"
    ).split()
    facts = {k: h.get(k) for k in keep}
    facts["acquisition_time_key"] = acquisition_time_key(
        secret, _seconds_of_day(facts.pop("acquisition_time"))
    )
    facts["description"] = clean_text(h.get("description"), list(phi))
    facts["protocol_name"] = clean_text(h.get("protocol_name"), list(phi))
    facts.update(
        series_uid_hash=series_hash,
        study_id=pseudonym(
            secret, "study", str(h.get("study_uid") or h["series_uid"]), prefix="stu"
        ),
        acquired_on=shifted.isoformat() if shifted else None,
    )
    return facts


# -- conversion (worker) ---------------------------------------------------------------------


def _convert_series(job: _SeriesJob) -> dict:
    """Worker: dcm2niix one series, then check, classify, de-identify and store each output."""
    out: dict = {"scans": [], "problems": []}
    work = Path(job.workdir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "in").mkdir(parents=True)
    (work / "out").mkdir()
    for i, rel in enumerate(job.files):  # neutral names: source names may carry PHI
        os.symlink(Path(job.root) / rel, work / "in" / f"{i:06d}.dcm")
    try:
        proc = subprocess.run(
            [
                job.dcm2niix,
                "-z",
                "n",
                "-b",
                "y",
                "-ba",
                "y",
                "-f",
                "x",
                "-o",
                str(work / "out"),
                str(work / "in"),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            preexec_fn=_die_with_worker,
        )
    except subprocess.TimeoutExpired:
        out["problems"].append((job.label, "convert", "dcm2niix took longer than 600 s"))
        return out
    outputs = sorted((work / "out").glob("*.nii"))
    if proc.returncode != 0 or not outputs:
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
        errors = [ln for ln in lines if re.search(r"error|unable|unsupported|skip", ln, re.I)]
        reason = clean_text((errors or lines or ["no output"])[-1], list(job.phi), limit=160)
        out["problems"].append((job.label, "convert", f"dcm2niix rejected the series: {reason}"))
        shutil.rmtree(work, ignore_errors=True)
        return out
    folder = Path("data") / job.dataset / job.subject_id
    for nii in outputs:
        try:
            volume = read_volume(nii, limit=job.max_voxels)
        except IngestError as exc:
            n = len(outputs)
            which = f"output {outputs.index(nii) + 1} of {n}: " if n > 1 else ""
            out["problems"].append((job.label, "convert", f"{which}{exc}"))
            continue
        sidecar_path = nii.with_suffix(".json")
        sidecar = json.loads(sidecar_path.read_text()) if sidecar_path.exists() else {}
        facts = dict(job.facts)
        if sidecar.get("EchoTime") is not None:
            facts["te"] = round(float(sidecar["EchoTime"]) * 1000.0, 4)
        if sidecar.get("ImageType"):
            facts["image_type"] = list(sidecar["ImageType"])
        if job.override:
            sequence, rule, confidence, source = job.override, job.override_rule, 1.0, "manual"
        else:
            found = classify(facts)
            sequence, rule, confidence, source = (
                found.sequence,
                found.rule,
                round(found.confidence, 3),
                "rule",
            )
        scan_id = stable_id("scn", job.subject_id, volume.hash)
        image_uri = (folder / f"{scan_id}.nii.gz").as_posix()
        sidecar_uri = (folder / f"{scan_id}.json").as_posix()
        store_volume(volume, Path(job.catalog_root) / image_uri, link=False)
        cleaned = clean_sidecar(sidecar, list(job.phi))
        tmp = Path(job.catalog_root) / f"{sidecar_uri}.{os.getpid()}.part"
        tmp.write_text(json.dumps(cleaned, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, Path(job.catalog_root) / sidecar_uri)
        modality = (facts.get("modality") or "MR").upper()
        contrast = True if facts.get("contrast_agent") else None
        if contrast is None and mentions_contrast(facts.get("description") or ""):
            contrast = True
        protocol = {
            k: "\\".join(v) if isinstance(v, list) else str(v)
            for k, v in (
                ("scanning_sequence", facts.get("scanning_sequence")),
                ("sequence_variant", facts.get("sequence_variant")),
                ("scan_options", facts.get("scan_options")),
                ("mr_acquisition_type", facts.get("mr_acquisition_type")),
                ("sequence_name", facts.get("sequence_name")),
                ("b_value", facts.get("b_value")),
                ("echo_number", sidecar.get("EchoNumber")),
                ("converter", sidecar.get("ConversionSoftwareVersion")),
            )
            if v not in (None, "", [])
        }
        out["scans"].append(
            {
                "scan_id": scan_id,
                "subject_id": job.subject_id,
                "study_id": facts["study_id"],
                "series_uid_hash": facts["series_uid_hash"],
                "modality": modality,
                "sequence": sequence,
                "sequence_source": source,
                "sequence_rule": rule,
                "sequence_confidence": confidence,
                "vendor": facts.get("manufacturer"),
                "scanner_model": facts.get("model"),
                "field_strength": facts.get("field_strength"),
                "image_uri": image_uri,
                **volume.scan_columns(),
                "acquisition_time_key": facts.get("acquisition_time_key"),
                "acquired_on": dt.date.fromisoformat(facts["acquired_on"])
                if facts.get("acquired_on")
                else None,
                "series_description": facts.get("description"),
                "body_part": facts.get("body_part"),
                "echo_time_ms": facts.get("te"),
                "repetition_time_ms": facts.get("tr"),
                "inversion_time_ms": facts.get("ti"),
                "flip_angle_deg": facts.get("flip"),
                "contrast": contrast,
                "image_type": "\\".join(facts.get("image_type") or []) or None,
                "protocol": protocol,
                "sidecar_uri": sidecar_uri,
            }
        )
    shutil.rmtree(work, ignore_errors=True)
    return out


def _die_with_worker() -> None:
    """In dcm2niix's process before it starts: end when the worker that ran it ends.

    Runs between fork and exec, so it only calls into libc, resolved beforehand by the
    worker's own :func:`xds.executors.die_with_parent`.
    """
    set_parent_death_signal(9)  # SIGKILL


# -- overrides, resume -----------------------------------------------------------------------


def read_overrides(path: str | Path) -> list[tuple[str, str, str, str]]:
    """Rows of a sequence-override CSV as (column, value, sequence, rule).

    Raises:
        IngestError: unreadable file, no ``sequence`` column, no key column, or an unknown
            sequence (the message names the file and line).
    """
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
            columns = set(rows[0]) if rows else set()
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise IngestError(f"{path}: unreadable override file ({exc})") from None
    keys = [c for c in ("series_uid", "path", "series_description") if c in columns]
    if "sequence" not in columns or not keys:
        raise IngestError(
            f"{path}: needs a 'sequence' column and one of series_uid, path, series_description"
        )
    out = []
    for line, row in enumerate(rows, start=2):
        sequence = (row.get("sequence") or "").strip().upper()
        if sequence not in SEQUENCES:
            raise IngestError(
                f"{path}:{line}: unknown sequence {row.get('sequence')!r}; known: "
                f"{', '.join(SEQUENCES)}"
            )
        for key in keys:
            if value := (row.get(key) or "").strip():
                out.append((key, value, sequence, f"manual:{path.name}:{line}"))
                break
        else:
            raise IngestError(f"{path}:{line}: no series_uid, path or series_description value")
    return out


def _match_override(overrides, uid: str, files: list[dict], first: dict):
    for column, value, sequence, rule in overrides:
        if column == "series_uid" and value == uid:
            return sequence, rule
    for column, value, sequence, rule in overrides:
        if column == "path" and any(
            h["rel"] == value or h["rel"].startswith(value.rstrip("/") + "/") for h in files
        ):
            return sequence, rule
    for column, value, sequence, rule in overrides:
        if column == "series_description" and value == (first.get("description") or ""):
            return sequence, rule
    return None, None


def _ingested_series(catalog: Catalog, dataset: str, center: str) -> set[str]:
    latest = catalog.latest()
    rows = latest.read(
        "scans",
        "dataset = ? AND center = ? AND series_uid_hash IS NOT NULL",
        [dataset, center],
    )
    return set(rows.column("series_uid_hash").to_pylist())


def _sweep_workdirs(tmp_root: Path) -> None:
    """Remove conversion folders left by ingests that died (their process is gone)."""
    if not tmp_root.is_dir():
        return
    for folder in tmp_root.iterdir():
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def set_sequence(catalog: Catalog, scan_ids: list[str], sequence: str, *, reason: str = "") -> int:
    """Correct the sequence of scans by hand (``xds set-sequence``); returns scans changed.

    The change is a new catalog version: ``sequence_source`` becomes ``manual`` and
    ``sequence_rule`` records ``manual:set-sequence`` (and the reason), so the classifier's
    answer stays visible in earlier versions. Re-ingesting the series does not undo it.

    Raises:
        IngestError: unknown sequence or scan ids (nothing is changed).
    """
    sequence = sequence.strip().upper()
    if sequence not in SEQUENCES:
        raise IngestError(f"unknown sequence {sequence!r}; known: {', '.join(SEQUENCES)}")
    ids = sorted(set(scan_ids))
    if not ids:
        raise IngestError("no scan ids given")
    latest = catalog.latest()
    found = set(latest.rows_for("scans", ids, ["scan_id"]).column("scan_id").to_pylist())
    unknown = [s for s in ids if s not in found]
    if unknown:
        raise IngestError(f"unknown scan id(s): {', '.join(unknown[:5])}")
    rule = "manual:set-sequence" + (f" ({reason})" if reason else "")
    with catalog.transaction(f"set-sequence {sequence} on {len(ids)} scan(s)") as txn:
        txn.update(
            "scans",
            "scan_id",
            ids,
            {
                "sequence": sequence,
                "sequence_source": "manual",
                "sequence_rule": rule,
                "sequence_confidence": 1.0,
            },
        )
    return txn.written.get("scans", 0)
