"""Files grouped into series: geometry checks, subjects and studies, the scans row's facts."""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter, defaultdict

import numpy as np

from xds.catalog import Catalog, utcnow
from xds.ingest.dicom.headers import (
    MODALITIES,
    age_years,
    localizer_reason,
    parse_date,
    projection_reason,
    seconds_of_day,
)
from xds.io.deid import accession_key, age_bin, cap_age, clean_text, date_shift_days, pseudonym
from xds.schemas.ids import acquisition_time_key

MIN_SLICES = 5
"""Series with fewer slices are no volume (localizers, scouts, screenshots): quarantined."""


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


def common_folder(rels: list[str]) -> str:
    """The folder a series' files share (the file itself for a one-file series)."""
    folder = os.path.commonpath([os.path.dirname(r) or "." for r in rels])
    return (folder or ".") + "/" if len(rels) > 1 else rels[0]


def subjects_and_studies(head_of, subject_of, dataset, center, run, secret):
    """The ``subjects`` and ``studies`` rows of the converted series, de-identified."""
    now = utcnow()
    per_subject: dict[str, list[dict]] = defaultdict(list)
    for uid, h in sorted(head_of.items(), key=lambda kv: kv[1]["rel"]):
        per_subject[subject_of[uid]].append(h)
    subjects, studies = {}, {}
    for sid, heads in per_subject.items():
        heads.sort(key=lambda h: (h.get("study_date") or "", h["rel"]))
        shift = dt.timedelta(days=date_shift_days(secret, sid))
        ages = [a for a in (age_years(h) for h in heads) if a is not None]
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
            date = parse_date(members[0].get("study_date"))
            age = age_years(members[0])
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
                "accession_key": accession_key(secret, members[0].get("accession")),
            }
    return subjects, studies


def series_facts(h: dict, secret: bytes, subject_id: str, series_hash: str, phi) -> dict:
    """What the conversion worker needs about a series: no raw identifiers."""
    date = parse_date(h.get("series_date") or h.get("study_date"))
    shifted = date + dt.timedelta(days=date_shift_days(secret, subject_id)) if date else None
    keep = (
        "modality manufacturer model field_strength description protocol_name sequence_name "
        "body_part image_type acquisition_contrast scanning_sequence sequence_variant scan_options "
        "mr_acquisition_type te tr ti flip b_value contrast_agent acquisition_time"
    ).split()
    facts = {k: h.get(k) for k in keep}
    facts["acquisition_time_key"] = acquisition_time_key(
        secret, seconds_of_day(facts.pop("acquisition_time"))
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


def ingested_series(catalog: Catalog, dataset: str, center: str) -> set[str]:
    """Keyed series-UID hashes this center already has in the catalog (skipped on a re-run)."""
    latest = catalog.latest()
    rows = latest.read(
        "scans",
        "dataset = ? AND center = ? AND series_uid_hash IS NOT NULL",
        [dataset, center],
    )
    return set(rows.column("series_uid_hash").to_pylist())


def series_problem(first: dict, files: list[dict], min_slices: int,
                   max_voxels: int) -> tuple[str, str] | None:  # fmt: skip
    """Why a series cannot be a volume, as (stage, reason), or None when it can.

    Checked in order: the modality (MR, CT or PT), a localizer, a projection image (MIP),
    the geometry (:func:`check_series_geometry`), at least ``min_slices`` slices, and at
    most ``max_voxels`` voxels, all before anything is converted.
    """
    modality = (first.get("modality") or "").upper()
    if modality not in MODALITIES:
        return "series", f"modality {modality or 'missing'} is not MR, CT or PT"
    if reason := localizer_reason(first):
        return "series", f"localizer, not a volume ({reason})"
    if reason := projection_reason(first):
        return "series", f"projection image, not a volume ({reason})"
    if error := check_series_geometry(files):
        return "geometry", error
    slices = sum(h["frames"] for h in files)
    if slices < min_slices:
        return "series", f"not a volume: {slices} slice(s), fewer than the minimum of {min_slices}"
    rows, columns = files[0]["size"]
    if rows * columns * slices > max_voxels:
        return "series", (
            f"{rows * columns * slices:,} voxels, over the limit of {max_voxels:,} "
            "(raise it with --max-voxels or XDS_MAX_VOXELS)"
        )
    return None
