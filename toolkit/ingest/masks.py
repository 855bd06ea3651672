"""Label masks drawn on converted DICOM series (``xds ingest labels``).

Annotators working in 3D Slicer or ITK-SNAP deliver NIfTI masks drawn on the series the
center sent. Each mask is paired with a scan already in the catalog, in this order:

1. a **manifest** CSV (``--match manifest.csv``): a ``mask`` column (path under the folder)
   and either a ``series_uid`` column (the source SeriesInstanceUID) or ``accession`` and
   ``series_number`` columns (the study's AccessionNumber and the series' SeriesNumber, as
   a PACS worklist names them);
2. a **series UID in the path** (``<SeriesInstanceUID>.nii.gz``, or a folder of that name);
3. the **voxel grid**, when exactly one scan of the center has it.

A series UID or accession number is hashed with the catalog's key
(``scans.series_uid_hash``, ``studies.accession_key``) before it is compared, so matching
needs no stored identifier. A mask on the same world grid as its scan but stored in
another axis order is reoriented losslessly (axes permuted or flipped, never
resampled); any other grid difference, an unknown series, an ambiguous grid or values the
label map does not name quarantine the mask with a one-line reason, and the rest goes on.
Labels are ``labels`` rows of origin ``manual`` (``--origin`` for others), one
transaction per run; a re-run adds nothing.
"""

from __future__ import annotations

import csv
import json
import re
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import nibabel as nib
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
from xds.ingest.nifti import check_label
from xds.ingest.sheets import canonical_label_map
from xds.io.deid import accession_key, pseudonym
from xds.io.images import Grid, Volume, nifti_files, read_volume, write_volume
from xds.schemas.errors import IngestError
from xds.schemas.tables import LABEL_ORIGINS

MATCHES = ("auto", "series", "grid")
"""How masks find their scans without a manifest."""

UID = re.compile(r"[0-2](?:\.(?:0|[1-9][0-9]*)){3,}")


@dataclass(frozen=True)
class _Scan:
    scan_id: str
    subject_id: str
    image_uri: str
    series_uid_hash: str | None
    study_id: str | None = None
    sidecar_uri: str | None = None


def _by_accession(catalog: Catalog, scans: list[_Scan], dataset: str, center: str):
    """``find(accession, series_number)``: the scan a manifest row names that way."""
    secret = catalog.secret()
    studies: dict[str, list[str]] = {}
    for row in catalog.read("studies", "dataset = ? AND center = ?", [dataset, center]).to_pylist():
        if row.get("accession_key"):
            studies.setdefault(row["accession_key"], []).append(row["study_id"])

    @cache  # a study's sidecars are read once, however many manifest rows name it
    def number(scan: _Scan) -> str | None:
        if not scan.sidecar_uri:
            return None
        sidecar = json.loads(catalog.resolve(scan.sidecar_uri).read_text())
        value = sidecar.get("SeriesNumber")
        return None if value is None else str(value).strip()

    def find(accession: str, series_number: str) -> _Scan:
        ids = studies.get(accession_key(secret, accession) or "", [])
        if not ids:
            raise IngestError("no study of the catalog has its accession number (ingest the "
                              "DICOM first)")  # fmt: skip
        found = [s for s in scans if s.study_id in ids and number(s) == series_number.strip()]
        if len(found) != 1:
            raise IngestError(f"its study has {len(found)} series numbered {series_number}")
        return found[0]

    return find


def ingest_labels(
    catalog: Catalog,
    root: str | Path,
    *,
    center: str,
    dataset: str | None = None,
    label_map: str | Path | None = None,
    match: str | Path = "auto",
    origin: str = "manual",
) -> IngestReport:
    """Pair the NIfTI masks under ``root`` with the center's scans and register them.

    Args:
        catalog: the catalog (moved to the version this run creates).
        root: the folder of masks.
        center: the center whose scans the masks were drawn on.
        dataset: its dataset (default: the center's name).
        label_map: index -> class file (JSON, CSV, nnU-Net dataset.json); without it classes
            are ``label_<index>``.
        match: a manifest CSV with ``mask`` and ``series_uid`` columns, or ``auto`` (a
            series UID in the path, else the grid), ``series`` (the UID only) or ``grid``
            (the grid only).
        origin: the labels' origin (manual, revised, pseudo...).

    Raises:
        IngestError: an unusable folder, label map or manifest, or no scan of the center.
    """
    root, dataset = check_source(root, center, dataset)
    mode = str(match) if str(match) in MATCHES else "manifest"
    if mode == "manifest" and not Path(match).is_file():
        raise IngestError(f"--match {match}: not a manifest file, nor one of {', '.join(MATCHES)}")
    if origin not in LABEL_ORIGINS:
        raise IngestError(f"--origin must be one of {', '.join(LABEL_ORIGINS)}, not {origin!r}")
    mapping = canonical_label_map(label_map) if label_map is not None else None
    by_mask = _read_manifest(Path(match), root) if mode == "manifest" else {}
    secret = catalog.secret()
    scans = [
        _Scan(r["scan_id"], r["subject_id"], r["image_uri"], r["series_uid_hash"],
              r["study_id"], r["sidecar_uri"])  # fmt: skip
        for r in catalog.read("scans", "dataset = ? AND center = ?", [dataset, center])
        .to_pylist()
    ]
    if not scans:
        raise IngestError(f"no scan of center {center!r} in dataset {dataset!r} to label")
    find_accession = _by_accession(catalog, scans, dataset, center)
    by_series = {s.series_uid_hash: s for s in scans if s.series_uid_hash}
    grids: dict[str, tuple] = {}  # scan -> world corners, read (headers only) when first needed
    masks = [p.relative_to(root).as_posix() for p in nifti_files(root)]
    run = run_id()
    report = IngestReport(dataset, center, run, "masks", files_found=len(masks))
    quarantine = Quarantine(catalog, report, root, run)
    map_id = label_map_id(dataset, mapping)
    now = utcnow()
    labels = []
    with tempfile.TemporaryDirectory(dir=catalog.root) as scratch:
        for rel in masks:
            try:
                mask = read_volume(root / rel)
                uid = by_mask.get(rel) or (_uid_in_path(rel) if mode != "grid" else None)
                if uid is None and mode in ("manifest", "series"):
                    raise IngestError("no series UID names it" + (" in the manifest"
                                      if mode == "manifest" else ""))  # fmt: skip
                if isinstance(uid, tuple):  # (accession, series number)
                    scan = find_accession(*uid)
                elif uid is not None:
                    scan = by_series.get(pseudonym(secret, "series", uid, prefix="ser"))
                    if scan is None:
                        raise IngestError("its series is not in the catalog (ingest the DICOM "
                                          "first)")  # fmt: skip
                else:
                    if not grids:
                        grids.update((s.scan_id, _corners(Grid.of(catalog.resolve(s.image_uri))))
                                     for s in scans)  # fmt: skip
                    scan = _by_grid(mask, scans, grids)
                image = Grid.of(catalog.resolve(scan.image_uri))
                mask = _onto(mask, image, Path(scratch))
                classes = check_label(mask.data, mask.affine, image, mapping)
            except IngestError as exc:
                quarantine.add(rel, "label", str(exc))
                continue
            label_id, uri = store_label(catalog.root, mask, dataset=dataset,
                                        subject_id=scan.subject_id, scan_id=scan.scan_id,
                                        link=False)  # fmt: skip
            labels.append({
                "label_id": label_id, "scan_id": scan.scan_id, "uri": uri, "hash": mask.hash,
                "label_map": map_id, "origin": origin, "classes_present": classes,
                "classes_annotated": sorted(set(mapping.values()) - {"background"})
                if mapping else None,
                "created_at": now, "source": run,
            })  # fmt: skip
    source = quarantine.uri(Path(label_map).name) if label_map else "none given"
    map_row = label_map_row(map_id, dataset, mapping or {0: "background"}, source, now)
    with catalog.transaction(f"ingest labels {dataset}/{center}") as txn:
        if labels:
            txn.append("label_maps", [map_row], unique_by=["label_map_id"])
        txn.append("labels", labels, unique_by=["label_id"])
        txn.append("quarantine", quarantine.take(), unique_by=["uri", "error"])
    report.catalog_version = catalog.version
    report.labels_added = txn.written.get("labels", 0)
    report.already_present = len(labels) - report.labels_added
    report.quarantined = len(report.problems)
    return report


def _read_manifest(path: Path, root: Path) -> dict[str, str | tuple[str, str]]:
    """Mask path (relative to ``root``) -> source series UID, or (accession, series number).

    The manifest's own name is not shown in errors: a hospital may name it after a study.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise IngestError(f"--match manifest: unreadable ({type(exc).__name__})") from None
    columns = set(rows[0]) if rows else set()
    by_accession = {"mask", "accession", "series_number"} <= columns
    if not by_accession and not {"mask", "series_uid"} <= columns:
        raise IngestError("--match manifest: needs a 'mask' column and a 'series_uid' column, "
                          "or 'accession' and 'series_number' columns")  # fmt: skip
    out: dict[str, str | tuple[str, str]] = {}
    for line, row in enumerate(rows, start=2):
        mask, uid = (row.get("mask") or "").strip(), (row.get("series_uid") or "").strip()
        accession = (row.get("accession") or "").strip()
        number = (row.get("series_number") or "").strip()
        if mask and not uid and by_accession and accession and number.isdigit():
            uid = (accession, number)
        elif not mask or not UID.fullmatch(uid):
            raise IngestError(f"--match manifest, line {line}: needs a mask path and a DICOM "
                              "series UID, or an accession number and a series number")  # fmt: skip
        candidate = Path(mask)
        rel = candidate.relative_to(root) if candidate.is_absolute() else candidate
        out[rel.as_posix()] = uid
    return out


def _uid_in_path(rel: str) -> str | None:
    """A series UID that names the mask file or one of its folders."""
    for part in reversed(Path(rel).parts):
        stem = part.split(".nii")[0]
        if UID.fullmatch(stem):
            return stem
    return None


def _corners(grid: Grid | Volume) -> tuple:
    """A grid's voxel-centre corners in the world, independent of its storage order."""
    shape = grid.shape
    ijk = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                    for k in (0, shape[2] - 1)], float)  # fmt: skip
    xyz = nib.affines.apply_affine(grid.affine, ijk)
    return tuple(sorted(tuple(np.round(p, 2)) for p in xyz))


def _by_grid(mask: Volume, scans: list[_Scan], grids: dict) -> _Scan:
    wanted = _corners(mask)
    found = [s for s in scans if np.allclose(grids[s.scan_id], wanted, atol=1e-2)]
    if not found:
        raise IngestError("no series UID names it and no scan of the center has its grid")
    if len(found) > 1:
        raise IngestError(f"its grid fits {len(found)} scans; name the series in a manifest")
    return found[0]


def _onto(mask: Volume, image: Grid, scratch: Path) -> Volume:
    """The mask in the image's axis order when both cover one world grid (no resampling)."""
    if tuple(mask.shape) == image.shape and np.allclose(mask.affine, image.affine, atol=1e-3):
        return mask
    have = nib.orientations.io_orientation(mask.affine)
    want = nib.orientations.io_orientation(image.affine)
    transform = nib.orientations.ornt_transform(have, want)
    data = nib.orientations.apply_orientation(np.asarray(mask.data), transform)
    affine = mask.affine @ nib.orientations.inv_ornt_aff(transform, mask.shape)
    if data.shape != image.shape or not np.allclose(affine, image.affine, atol=1e-3):
        raise IngestError("grid differs from its scan's (masks are never resampled)")
    # written once to a scratch file, so it is stored like any other volume
    name = f"{len(list(scratch.iterdir()))}.nii.gz"
    return write_volume(np.ascontiguousarray(data), image.affine, scratch / name)
