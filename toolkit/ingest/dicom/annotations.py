"""Annotations delivered as DICOM: SEG and RTSTRUCT objects attached to the catalog's scans.

``xds ingest dicom`` finds them among the images, or in a later run over a folder that holds
only annotations. Each names its source series (SEG: ReferencedSeriesSequence; RTSTRUCT:
RTReferencedSeriesSequence); that series must already be a scan of the catalog (the series
UID is compared as a keyed hash, never stored), else the file is quarantined with that
reason, and a run after the series arrives attaches it. Each file becomes one label row on
the stored scan's grid; a file that cannot be placed is quarantined with a one-line reason
and the others go on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xds.catalog import Catalog, utcnow
from xds.ingest.common import Quarantine, label_map_id, label_map_row, store_label
from xds.ingest.dicom.segmentations import read_segmentation, seg_label, seg_series
from xds.ingest.dicom.structures import read_structure_set, referenced_series, structure_label
from xds.io.deid import pseudonym
from xds.io.images import Grid, write_volume
from xds.schemas.errors import IngestError

KINDS = {
    "seg": ("DICOM SEG", read_segmentation, seg_series, seg_label),
    "rtstruct": ("RTSTRUCT", read_structure_set, referenced_series, structure_label),
}
"""Kind -> (name, read the file, its source series' UID, its label on a grid)."""


def attach_annotations(
    catalog: Catalog, root: Path, found: list[tuple[str, str]], *, dataset: str, center: str,
    run: str, quarantine: Quarantine, scratch: Path, notes: list[str] | None = None,
) -> tuple[list[dict], list[dict]]:  # fmt: skip
    """The ``labels`` and ``label_maps`` rows of the annotation files ``found``.

    ``found``: (path relative to ``root``, kind: ``seg`` or ``rtstruct``); ``scratch``: a
    folder of the run's own (made here) where volumes are written before they are stored,
    so one that dies leaves nothing in the catalog. Problems are quarantined; ROIs left out
    of a structure set are appended to ``notes`` (one line each, the file shown as the
    quarantine would show it).
    """
    if not found:
        return [], []
    scans = {
        r["series_uid_hash"]: r
        for r in catalog.latest()
        .read("scans", "dataset = ? AND center = ?", [dataset, center])
        .to_pylist()
        if r["series_uid_hash"]
    }
    secret = catalog.secret()
    labels, maps = [], {}
    now = utcnow()
    scratch.mkdir(parents=True, exist_ok=True)
    for n, (rel, kind) in enumerate(found):
        what, read, series_of, label_of = KINDS[kind]
        try:
            ds = read(root / rel)
            scan = scans.get(pseudonym(secret, "series", series_of(ds), prefix="ser"))
            if scan is None:
                raise IngestError("its source series is not in the catalog (ingest it, "
                                  "then run again)")  # fmt: skip
            grid = Grid.of(catalog.resolve(scan["image_uri"]))
            data, mapping, origin, left_out = label_of(ds, grid.affine, grid.shape)
        except IngestError as exc:
            quarantine.add(rel, "annotation", f"{what}: {exc}")
            continue
        except Exception as exc:  # pydicom / highdicom raise many types on odd files
            quarantine.add(rel, "annotation", f"{what} unreadable ({type(exc).__name__})")
            continue
        if notes is not None:
            notes.extend(f"{quarantine.uri(rel)}: {line}" for line in left_out)
        volume = write_volume(data, grid.affine, Path(scratch) / f"{n}.nii.gz")
        label_id, uri = store_label(catalog.root, volume, dataset=dataset,
                                    subject_id=scan["subject_id"], scan_id=scan["scan_id"],
                                    link=False)  # fmt: skip
        names = {0: "background", **mapping}
        map_id = label_map_id(dataset, names)
        maps[map_id] = label_map_row(map_id, dataset, names, what, now)
        present = sorted({mapping[int(v)] for v in np.unique(data) if v})
        labels.append({
            "label_id": label_id, "scan_id": scan["scan_id"], "uri": uri,
            "hash": volume.hash, "label_map": map_id, "origin": origin,
            "classes_present": present, "classes_annotated": sorted(set(mapping.values())),
            "created_at": now, "source": run,
        })  # fmt: skip
    return labels, list(maps.values())
