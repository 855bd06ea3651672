"""Ingest a center's NIfTI folder: subjects, scans, label maps, quarantine (``xds ingest nifti``).

Every image is decoded (a truncated file fails here, not during training), checked (3D,
finite, spacing), hashed by voxel content and stored under the catalog's ``data/`` folder
with a pseudonymous name and no free text in its header. Each label map is checked against
its image's grid and its label-map file. A file that fails any check becomes a quarantine
row with its reason; the rest is ingested in one catalog transaction. Re-running adds
nothing: scans are keyed by subject and voxel hash, labels by scan and voxel hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xds.catalog import Catalog, utcnow
from xds.ingest.common import (
    IngestReport,
    Quarantine,
    check_source,
    label_map_id,
    label_map_row,
    run_id,
    store_label,
)
from xds.ingest.layouts import Layout, detect_layout, parse_layout
from xds.ingest.sequences import sequence_from_name
from xds.ingest.sheets import canonical_label_map, read_sheet
from xds.io.deid import pseudonym, record_source_names, valid_utf8
from xds.io.images import nifti_files, read_volume, store_volume
from xds.io.parallel import progress_map
from xds.schemas.errors import IngestError
from xds.schemas.ids import stable_id
from xds.schemas.tables import SEQUENCES


@dataclass(frozen=True)
class _Job:
    root: str
    image: str
    label: str | None
    subject_id: str
    catalog_root: str
    dataset: str
    label_map: dict[int, str] | None
    link: bool
    max_voxels: int | None = None


def ingest_nifti(
    catalog: Catalog,
    root: str | Path,
    *,
    center: str,
    dataset: str | None = None,
    metadata: str | Path | None = None,
    label_map: str | Path | None = None,
    layout: str = "auto",
    label_layout: str | None = None,
    sequence: str | None = None,
    modality: str | None = None,
    vendor: str | None = None,
    scanner_model: str | None = None,
    field_strength: float | None = None,
    jobs: int = 1,
    link: bool = True,
    max_voxels: int | None = None,
) -> IngestReport:
    """Register a center's NIfTI images and label maps in the catalog.

    Args:
        catalog: the catalog to write (moved to the version this run creates).
        root: the center's folder.
        center: center name as it should appear in the catalog.
        dataset: dataset name (defaults to ``center``).
        metadata: a CSV/TSV with one row per subject (demographics).
        label_map: the file naming each label index (JSON or CSV).
        layout: ``auto``, a built-in layout name, or an image path pattern.
        label_layout: the label path pattern when ``layout`` is a pattern.
        sequence: force this sequence for every image (recorded as manual).
        modality: MR, CT or PT (default: CT for CT sequences, MR otherwise).
        vendor: scanner manufacturer, for every scan of this center.
        scanner_model: scanner model name, for every scan of this center.
        field_strength: magnet strength in tesla, for every scan of this center.
        jobs: worker processes.
        link: hard-link clean .nii.gz sources into the catalog instead of copying.
        max_voxels: refuse images with more voxels, before decoding them (default
            :data:`xds.io.images.MAX_VOXELS` or ``XDS_MAX_VOXELS``).

    Raises:
        IngestError: the folder, names, sheet, label map or layout are unusable as a whole.
    """
    root, dataset = check_source(root, center, dataset)
    if sequence is not None and sequence not in SEQUENCES:
        raise IngestError(f"unknown sequence {sequence!r}; known: {', '.join(SEQUENCES)}")
    found = sorted(p.relative_to(root).as_posix() for p in nifti_files(root))
    relpaths = [r for r in found if valid_utf8(r)]
    chosen: Layout = parse_layout(layout, label_layout) or detect_layout(relpaths)
    run = run_id()
    report = IngestReport(dataset, center, run, chosen.name, files_found=len(found))
    secret = catalog.secret()
    sheet = (
        read_sheet(metadata, lambda key: pseudonym(secret, dataset, center, key))
        if metadata
        else {}
    )
    mapping = canonical_label_map(label_map) if label_map else None
    map_id = label_map_id(dataset, mapping)

    images, labels, stray = _sort_files(relpaths, chosen)
    subject_ids = {key: pseudonym(secret, dataset, center, key) for key, _ in images}
    subject_ids.update({key: pseudonym(secret, dataset, center, key) for key, _ in labels})

    def shown(rel: str) -> str:
        for key, sid in subject_ids.items():
            rel = rel.replace(key, sid)
        return rel

    quarantine = Quarantine(catalog, report, root, run)
    record_source_names(catalog, found, quarantine.keep)

    def reject(rel: str, stage: str, error: str) -> None:
        quarantine.add(rel, stage, error, shown=shown(rel))

    for rel in found:
        if not valid_utf8(rel):
            reject(rel, "read", "file or folder name is not valid UTF-8")
    for rel in stray:
        reject(rel, "layout", f"does not match the {chosen.name} layout ({chosen.image})")
    for key in sorted(set(labels) - set(images)):
        reject(labels[key], "label", "label map without a matching image")

    work = [
        _Job(
            str(root),
            rel,
            labels.get(key),
            subject_ids[key[0]],
            str(catalog.root),
            dataset,
            mapping,
            link,
            max_voxels,
        )
        for key, rel in sorted(images.items())
    ]
    results = progress_map(_ingest_one, work, jobs=jobs, description=f"ingest {center}")

    now = utcnow()
    subjects, scans, label_rows = {}, {}, {}
    for (key, token), job, result in zip(sorted(images), work, results, strict=True):
        for stage, rel, error in result["problems"]:
            reject(rel, stage, error)
        if result["scan"] is None:
            continue
        seq, seq_source = (
            (sequence, "manual") if sequence else (sequence_from_name(token)[0], "rule")
        )
        scans.setdefault(
            result["scan"]["scan_id"],
            {
                **result["scan"],
                "subject_id": job.subject_id,
                "dataset": dataset,
                "center": center,
                "sequence": seq,
                "sequence_source": seq_source,
                "modality": modality or ("CT" if seq == "CT" else "PT" if seq == "PET" else "MR"),
                "vendor": vendor,
                "scanner_model": scanner_model,
                "field_strength": field_strength,
                "added_at": now,
                "source": run,
                "status": "ok",
            },
        )
        demo = sheet.get(key, {})
        subjects.setdefault(
            job.subject_id,
            {
                "subject_id": job.subject_id,
                "dataset": dataset,
                "center": center,
                **{
                    k: demo.get(k)
                    for k in ("sex", "age", "age_bin", "race", "ethnicity", "diagnosis", "extra")
                },
                "added_at": now,
                "source": run,
            },
        )
        if label := result["label"]:
            label_rows.setdefault(
                label["label_id"],
                {
                    **label,
                    "label_map": map_id,
                    "origin": "manual",
                    "created_at": now,
                    "source": run,
                },
            )

    # Rows the catalog already holds are dropped at commit, under the writers' lock, so a
    # re-run (even a concurrent one) adds nothing.
    with catalog.transaction(f"ingest nifti {dataset}/{center}") as txn:
        txn.append("subjects", list(subjects.values()), unique_by=["subject_id"])
        txn.append("scans", list(scans.values()), unique_by=["subject_id", "image_hash"])
        if label_rows:
            source = quarantine.uri(Path(label_map).name) if label_map else "none given"
            map_row = label_map_row(map_id, dataset, mapping or {0: "background"}, source, now)
            txn.append("label_maps", [map_row], unique_by=["label_map_id"])
        txn.append("labels", list(label_rows.values()), unique_by=["label_id"])
        txn.append("quarantine", quarantine.take(), unique_by=["uri", "error"])
    report.record(txn, catalog.version, len(scans))
    return report


def _sort_files(
    relpaths: list[str], layout: Layout
) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], str], list[str]]:
    """Images and labels keyed by (subject, sequence) path parts, and files matching neither.

    Labels are matched first: a label path can also look like an image whose sequence is
    "seg" (``doe_t1_seg.nii``).
    """
    images, labels, stray = {}, {}, []
    for rel in relpaths:
        if found := layout.match_label(rel):
            labels[(found["subject"], found["sequence"])] = rel
        elif found := layout.match_image(rel):
            images[(found["subject"], found["sequence"])] = rel
        else:
            stray.append(rel)
    return images, labels, stray


def _ingest_one(job: _Job) -> dict:
    """Worker: decode, check, hash and store one image and its label (never raises)."""
    out: dict = {"scan": None, "label": None, "problems": []}
    catalog_root = Path(job.catalog_root)
    folder = Path("data") / job.dataset / job.subject_id
    try:
        volume = read_volume(Path(job.root) / job.image, limit=job.max_voxels)
    except IngestError as exc:
        out["problems"].append(("read", job.image, str(exc)))
        return out
    scan_id = stable_id("scn", job.subject_id, volume.hash)
    image_uri = (folder / f"{scan_id}.nii.gz").as_posix()
    store_volume(volume, catalog_root / image_uri, link=job.link)
    out["scan"] = {
        "scan_id": scan_id,
        "study_id": None,
        "series_uid_hash": None,
        "image_uri": image_uri,
        **volume.scan_columns(),
        "acquired_on": None,
    }
    if job.label is None:
        return out
    try:
        label = read_volume(Path(job.root) / job.label, limit=job.max_voxels)
        classes = check_label(label.data, label.affine, volume, job.label_map)
    except IngestError as exc:
        out["problems"].append(("label", job.label, str(exc)))
        return out
    label_id, uri = store_label(catalog_root, label, dataset=job.dataset,
                                subject_id=job.subject_id, scan_id=scan_id, link=job.link)
    out["label"] = {
        "label_id": label_id,
        "scan_id": scan_id,
        "uri": uri,
        "hash": label.hash,
        "classes_present": classes,
        "classes_annotated": sorted(set(job.label_map.values()) - {"background"})
        if job.label_map
        else None,
    }
    return out


def check_label(data, affine, image, mapping: dict[int, str] | None) -> list[str]:
    """Class names present in a label map that fits ``image``.

    ``image`` is anything with ``shape`` and ``affine``: a :class:`~xds.io.images.Volume`
    or a :class:`~xds.io.images.Grid`.

    Raises:
        IngestError: another grid, non-integer or negative values, values the map lacks.
    """
    if tuple(data.shape) != image.shape:
        raise IngestError(f"label shape {tuple(data.shape)} differs from image shape {image.shape}")
    if not np.allclose(affine, image.affine, atol=1e-3):
        raise IngestError("label affine (orientation/spacing/origin) differs from its image's")
    if data.dtype.kind == "f" and not np.array_equal(data, np.round(data)):
        raise IngestError("label map holds non-integer values")
    values = [int(v) for v in np.unique(data) if v != 0]
    if any(v < 0 for v in values):
        raise IngestError("label map holds negative values")
    if mapping is None:
        return [f"label_{v}" for v in values]
    unknown = [v for v in values if v not in mapping]
    if unknown:
        raise IngestError(f"label values {unknown} are not in the label map")
    return sorted(mapping[v] for v in values)
