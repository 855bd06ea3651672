"""Harmonize label maps to a shared class set (``xds harmonize``).

Every dataset numbers its organs differently. Harmonizing a cohort to a class set (``aeval8``,
``touchstone9``, ``crosspan`` or a list) writes, for each scan's best label, a new label map
whose index i+1 is the set's i-th class, as a new ``labels`` row with its lineage
(``derived_from`` = the source label, ``class_set``); nothing is overwritten.

Per source class (canonical name from its label map):

- a class of the set keeps its voxels under the set's index;
- a class inside a set class that is a parent (``kidney_left`` into ``kidney``) merges into it;
- anything else is *unmapped*: background (0) or, with ``unmapped="ignore"``, 255, which
  nnU-Net-style losses can skip.

``classes_annotated`` of the new row lists the set's classes the source map fully annotates
(every leaf of the class is a source class or inside one); the others are *not annotated*:
a trainer must mask them, not learn them as background. A set class the source map labels
only as part of a coarser class (WORD's ``adrenal`` for ``adrenal_gland_left``) cannot be
split: it is not annotated and those voxels are unmapped.

Remapping is one lookup-table gather per volume (``numpy.take``), parallel over cases.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from xds.catalog import Catalog, get_cohort, utcnow
from xds.io.images import read_volume, voxel_hash
from xds.io.parallel import progress_map
from xds.labels.mapping import IGNORE, lookup_table
from xds.labels.selection import best_labels, label_maps
from xds.schemas.errors import CohortError, IngestError, SchemaError
from xds.schemas.ids import stable_id
from xds.schemas.vocabulary import canonical_map, class_set, normalize

UNMAPPED = ("background", "ignore")


@dataclass
class HarmonizeReport:
    """What one harmonization wrote."""

    cohort: str
    class_set: str
    classes: list[str]
    unmapped: str
    label_map_id: str
    catalog_version: int = 0
    labels_added: int = 0
    already_present: int = 0
    scans_without_label: int = 0
    not_annotated: dict[str, int] = field(default_factory=dict)  # class -> scans lacking it

    def summary(self) -> dict:
        """JSON-ready description."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class _Job:
    src: str
    dst: str
    source_map: dict[int, str]
    lut: bytes
    label_id: str
    scan_id: str
    set_name: str


def _remap(job: _Job) -> dict:
    """Worker: check the source values against its map, remap, store; never raises."""
    try:
        volume = read_volume(job.src)
    except IngestError as exc:
        return {"error": f"{job.src}: {exc}"}
    data = np.asarray(volume.data)
    if data.dtype.kind == "f":
        if not np.array_equal(data, np.round(data)):
            return {"error": f"{job.src}: label holds non-integer values"}
        data = data.astype(np.int64)
    values = np.unique(data)
    unknown = [int(v) for v in values if int(v) not in job.source_map and v != 0]
    if unknown:
        return {
            "error": f"{job.src}: label value(s) {unknown[:10]} are not in its label map "
            f"({len(job.source_map)} classes)"
        }
    lut = np.frombuffer(job.lut, dtype=np.uint8)
    out = np.take(lut, data)  # one gather per volume
    digest = voxel_hash(out)
    label_id = stable_id("lbl", job.scan_id, digest, job.set_name)
    dst = Path(job.dst).with_name(f"{label_id}.nii.gz")
    image = nib.Nifti1Image(out, volume.affine)
    image.set_qform(volume.affine, code=1)
    image.set_sform(volume.affine, code=1)
    tmp = dst.with_name(f"{label_id}.{os.getpid()}.part.nii.gz")
    nib.save(image, tmp)
    os.replace(tmp, dst)  # readers never see a half-written file
    return {"label_id": label_id, "hash": digest, "present": [int(v) for v in np.unique(out)]}


def resolve_class_set(classes: str | list[str]) -> tuple[str, tuple[str, ...]]:
    """(the name harmonized labels record as ``class_set``, the set's canonical classes).

    A named set keeps its name (``aeval8``); a list of classes is ``custom:a+b``.

    Raises:
        SchemaError: unknown set or class.
    """
    targets = class_set(classes)
    if isinstance(classes, str) and "," not in classes:
        return normalize(classes), targets
    return "custom:" + "+".join(targets), targets


def harmonize(
    catalog: Catalog,
    cohort: str,
    *,
    classes: str | list[str] = "aeval8",
    unmapped: str = "background",
    jobs: int = 1,
) -> HarmonizeReport:
    """Write shared-class label maps for every labelled scan of a cohort.

    Args:
        catalog: the catalog (moved to the version this run creates).
        cohort: cohort name.
        classes: a named class set (``aeval8``, ``touchstone9``, ``crosspan``) or classes.
        unmapped: what source classes outside the set become: ``background`` or ``ignore``.
        jobs: worker processes.

    Raises:
        CohortError: unknown cohort.
        SchemaError: unknown class set or class.
        IngestError: a source label holds a value its map does not name, or is unreadable;
            the message names the file and the values, and nothing is registered.
    """
    if unmapped not in UNMAPPED:
        raise SchemaError(f"--unmapped must be background or ignore, not {unmapped!r}")
    set_name, targets = resolve_class_set(classes)
    found = get_cohort(catalog, cohort)
    scan_ids = list(found.scan_ids)
    sources = best_labels(catalog, scan_ids, derived=False)
    maps = label_maps(catalog, {row["label_map"] for row in sources.values()})
    set_map_id = f"xds:{set_name}:{unmapped}"
    report = HarmonizeReport(cohort, set_name, list(targets), unmapped, set_map_id)
    report.scans_without_label = len(scan_ids) - len(sources)
    jobs_list, annotated_of = [], {}
    for scan_id, row in sorted(sources.items()):
        source_map = maps.get(row["label_map"])
        if source_map is None:
            raise CohortError(
                f"label {row['label_id']}: its label map {row['label_map']} is missing"
            )
        canonical = canonical_map(source_map, f"label map {row['label_map']}")
        lut, annotated = lookup_table(canonical, targets, unmapped)
        annotated_of[scan_id] = annotated
        src = catalog.resolve(row["uri"])
        dst = catalog.root / Path(row["uri"]).parent / "harmonized.nii.gz"  # renamed by hash
        jobs_list.append(
            _Job(str(src), str(dst), canonical, lut.tobytes(), row["label_id"], scan_id, set_name)
        )
    results = progress_map(_remap, jobs_list, jobs=jobs, description=f"harmonize {cohort}")
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise IngestError(errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
    now = utcnow()
    names = {0: "background", **{i: t for i, t in enumerate(targets, start=1)}}
    if unmapped == "ignore":
        names[IGNORE] = "ignore"
    rows = []
    for job, result in zip(jobs_list, results, strict=True):
        source = sources[job.scan_id]
        present = [names[v] for v in result["present"] if v not in (0, IGNORE)]
        for t in targets:
            if t not in annotated_of[job.scan_id]:
                report.not_annotated[t] = report.not_annotated.get(t, 0) + 1
        rows.append(
            {
                "label_id": result["label_id"],
                "scan_id": job.scan_id,
                "uri": (Path(source["uri"]).parent / f"{result['label_id']}.nii.gz").as_posix(),
                "hash": result["hash"],
                "label_map": set_map_id,
                "origin": source["origin"],
                "classes_present": present,
                "classes_annotated": annotated_of[job.scan_id],
                "round": source["round"],
                "teacher_run": source["teacher_run"],
                "quality": source["quality"],
                "created_at": now,
                "source": f"harmonize {set_name}",
                "derived_from": job.label_id,
                "class_set": set_name,
            }
        )
    map_row = {
        "label_map_id": set_map_id,
        "dataset": "xds",
        "indices": list(names),
        "names": list(names.values()),
        "source": json.dumps({"class_set": set_name, "unmapped": unmapped}),
        "created_at": now,
    }
    with catalog.transaction(f"harmonize {cohort} to {set_name}") as txn:
        txn.append("label_maps", [map_row], unique_by=["label_map_id"])
        txn.append("labels", rows, unique_by=["label_id"])
    report.catalog_version = catalog.version
    report.labels_added = txn.written.get("labels", 0)
    report.already_present = len(rows) - report.labels_added
    return report
