"""The CHAOS adapter: DICOM series plus PNG ground-truth slices.

CHAOS (Kavur et al., Medical Image Analysis 2021) ships, per patient::

    CT/<id>/DICOM_anon/*.dcm                  CT/<id>/Ground/*.png          (liver: 255)
    MR/<id>/T1DUAL/DICOM_anon/InPhase/*.dcm   MR/<id>/T1DUAL/Ground/*.png   (organ grey values)
    MR/<id>/T1DUAL/DICOM_anon/OutPhase/*.dcm
    MR/<id>/T2SPIR/DICOM_anon/*.dcm           MR/<id>/T2SPIR/Ground/*.png

The images go through the DICOM ingest with the sequence taken from the folder (InPhase ->
IP, OutPhase -> OOP, T2SPIR -> T2W, CT -> CT) and the subject from the patient folder (the
anonymized headers do not link a patient's series). Each PNG slice is then paired with the
DICOM slice of the same rank (file names sorted), its grey values snapped to the organ values
of the label map (MR: liver 63, right kidney 126, left kidney 189, spleen 252, each a range),
and placed on the converted image's voxel grid through the slice's DICOM geometry, so the
label volume matches the stored image whatever orientation dcm2niix chose.
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

from xds.catalog import Catalog, utcnow
from xds.ingest.common import IngestReport
from xds.ingest.datasets.base import builtin_map_row
from xds.ingest.dicom import ingest_dicom
from xds.io.deid import pseudonym
from xds.io.images import read_volume, store_volume
from xds.schemas.errors import IngestError
from xds.schemas.ids import stable_id
from xds.schemas.vocabulary import builtin_label_map

# Ground-truth grey-value ranges of the MR PNGs (CHAOS data description).
_MR_RANGES = ((55, 70, 63), (110, 135, 126), (175, 200, 189), (240, 255, 252))


def _series_folders(root: Path) -> list[tuple[Path, str, str, Path]]:
    """(DICOM folder, sequence, subject key, Ground folder) for every CHAOS series."""
    out = []
    for anon in sorted(p for p in root.rglob("DICOM_anon") if p.is_dir()):
        parts = anon.relative_to(root).parts
        modality = next((p for p in parts if p in ("CT", "MR")), None)
        if modality is None:
            continue
        patient = parts[parts.index(modality) + 1]
        key = f"{modality}-{patient}"
        if modality == "CT":
            out.append((anon, "CT", key, anon.parent / "Ground"))
        elif anon.parent.name == "T2SPIR":
            out.append((anon, "T2W", key, anon.parent / "Ground"))
        elif anon.parent.name == "T1DUAL":
            for phase, sequence in (("InPhase", "IP"), ("OutPhase", "OOP")):
                if (anon / phase).is_dir():
                    out.append((anon / phase, sequence, key, anon.parent / "Ground"))
    return out


def snap(values: np.ndarray, modality: str) -> np.ndarray:
    """PNG grey values as label indices: MR ranges to their organ value, CT > 127 to 255."""
    out = np.zeros(values.shape, np.uint8)
    if modality == "CT":
        out[values > 127] = 255
        return out
    for low, high, value in _MR_RANGES:
        out[(values >= low) & (values <= high)] = value
    return out


def ingest_chaos(
    catalog: Catalog, root: str | Path, *, dataset: str = "chaos", jobs: int = 1
) -> IngestReport:
    """Ingest a CHAOS download (``Train_Sets`` or the folder holding it).

    Raises:
        IngestError: no CHAOS series found, or a Ground folder whose slices do not pair with
            its series (the message names the folder).
    """
    root = Path(root).resolve()
    series = _series_folders(root)
    if not series:
        raise IngestError(f"{root}: no CHAOS DICOM_anon folders found")
    with tempfile.TemporaryDirectory() as tmp:
        overrides = Path(tmp) / "chaos_sequences.csv"
        with open(overrides, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "sequence"])
            for folder, sequence, _, _ in series:
                writer.writerow([folder.relative_to(root).as_posix(), sequence])
        keys = {folder.relative_to(root).as_posix(): key for folder, _, key, _ in series}

        def subject_of(rel: str) -> str | None:
            return next((k for prefix, k in keys.items() if rel.startswith(prefix + "/")), None)

        report = ingest_dicom(
            catalog,
            root,
            center="CHAOS",
            dataset=dataset,
            jobs=jobs,
            sequence_overrides=overrides,
            exclude=("*.png", "*/Ground/*"),
            subject_of_path=subject_of,
        )
    secret = catalog.secret()
    scans = {
        r["series_uid_hash"]: r
        for r in catalog.read("scans", "dataset = ?", [dataset]).to_pylist()
        if r["series_uid_hash"]
    }
    now = utcnow()
    rows, maps = [], {}
    for folder, _, _, ground in series:
        if not ground.is_dir():
            continue
        modality = "CT" if "CT" in folder.relative_to(root).parts else "MR"
        label_map = builtin_label_map("chaos_ct" if modality == "CT" else "chaos_mr")
        maps[label_map.name] = label_map
        dicoms = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        pngs = sorted(ground.glob("*.png"))
        if len(pngs) != len(dicoms):
            raise IngestError(f"{ground}: {len(pngs)} PNG slices for {len(dicoms)} DICOM files")
        first = pydicom.dcmread(dicoms[0], stop_before_pixels=True)
        scan = scans.get(pseudonym(secret, "series", str(first.SeriesInstanceUID), prefix="ser"))
        if scan is None:  # the series itself was quarantined
            continue
        row = _label_for(catalog, scan, dicoms, pngs, modality, label_map, now)
        if row is not None:
            rows.append(row)
    with catalog.transaction(f"ingest dataset chaos labels {dataset}") as txn:
        map_rows = [builtin_map_row(m, now) for m in maps.values()]
        txn.append("label_maps", map_rows, unique_by=["label_map_id"])
        txn.append("labels", rows, unique_by=["label_id"])
    report.labels_added = txn.written.get("labels", 0)
    report.catalog_version = catalog.version
    report.layout = "adapter:chaos"
    return report


def _label_for(catalog, scan, dicoms, pngs, modality, label_map, now) -> dict | None:
    from PIL import Image

    image = nib.load(catalog.resolve(scan["image_uri"]))
    to_voxel = np.linalg.inv(image.affine)
    shape = image.shape[:3]
    volume = np.zeros(shape, np.uint8)
    for dcm, png in zip(dicoms, pngs, strict=True):
        ds = pydicom.dcmread(dcm, stop_before_pixels=True)
        values = snap(np.asarray(Image.open(png).convert("L")), modality)
        rows, cols = values.shape
        if (rows, cols) != (int(ds.Rows), int(ds.Columns)):
            raise IngestError(f"{png}: {rows}x{cols} pixels, its DICOM has {ds.Rows}x{ds.Columns}")
        iop = np.array(ds.ImageOrientationPatient, float)
        ipp = np.array(ds.ImagePositionPatient, float)
        dr, dc = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
        r, c = np.nonzero(values)
        lps = ipp + np.outer(c * dc, iop[:3]) + np.outer(r * dr, iop[3:])
        ras = lps * np.array([-1.0, -1.0, 1.0])
        ijk = np.rint(ras @ to_voxel[:3, :3].T + to_voxel[:3, 3]).astype(int)
        inside = np.all((ijk >= 0) & (ijk < np.array(shape)), axis=1)
        volume[tuple(ijk[inside].T)] = values[r[inside], c[inside]]
    with tempfile.TemporaryDirectory(dir=catalog.root) as tmp:
        path = Path(tmp) / "label.nii.gz"
        nib.save(nib.Nifti1Image(volume, image.affine), path)
        stored = read_volume(path)
        label_id = stable_id("lbl", scan["scan_id"], stored.hash)
        uri = (Path(scan["image_uri"]).parent / f"{label_id}.nii.gz").as_posix()
        store_volume(stored, catalog.resolve(uri), link=False)
    present = sorted(label_map.classes[v] for v in np.unique(volume) if v in label_map.classes)
    return {
        "label_id": label_id,
        "scan_id": scan["scan_id"],
        "uri": uri,
        "hash": stored.hash,
        "label_map": f"builtin:{label_map.name}",
        "origin": "manual",
        "classes_present": present,
        "classes_annotated": sorted(label_map.classes.values()),
        "created_at": now,
        "source": "adapter:chaos",
    }
