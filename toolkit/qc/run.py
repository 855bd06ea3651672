"""``xds qc``: measure every scan of a cohort or center once, flag what stands out, store both.

Measures (:mod:`xds.qc.metrics`) are computed per scan with its best label (the one
exports use) and kept in the ``qc`` table keyed by scan; a scan whose voxels, label and
measure definitions are unchanged is not measured again (one whose files could not be read
is tried again). Flags (:mod:`xds.qc.outliers`)
compare each scan with its peers among the scans checked in this run, so they are
recomputed every run; a row is rewritten only when its measures or flags changed, and a run
that changes nothing writes no catalog version.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from xds.catalog import Catalog, cohort_scans, get_cohort, utcnow
from xds.io.parallel import progress_map
from xds.labels.selection import best_labels
from xds.qc.metrics import scan_measures
from xds.qc.outliers import FLAGS, flag_scans, peer_groups
from xds.schemas.errors import CatalogError

QC_VERSION = "1"
"""Bumped when a measure's definition changes: every scan is then measured again."""

_COLUMNS = ("image_hash", "label_id", "qc_version", "measures", "flags", "reasons", "score",
            "peers", "computed_at", "source")  # fmt: skip


@dataclass
class QcReport:
    """What one ``xds qc`` run did."""

    scope: str
    scans: int = 0
    measured: int = 0
    reused: int = 0  # unchanged scans whose stored measures were used
    rows_written: int = 0
    flagged: int = 0
    by_flag: dict[str, int] = field(default_factory=dict)
    worst: list[dict] = field(default_factory=list)  # the highest scores, with reasons
    catalog_version: int = 0
    seconds: float = 0.0
    scan_ids: list[str] = field(default_factory=list, repr=False)  # the scans checked

    def summary(self) -> dict:
        """JSON-ready counts."""
        return {k: v for k, v in self.__dict__.items() if k != "scan_ids"}


def _job(item: tuple) -> tuple[dict, str | None]:
    """A scan's measures, or none and why its files could not be measured."""
    try:
        return scan_measures(*item), None
    except Exception as exc:  # nibabel, gzip, numpy: a broken file raises many types
        return {}, f"image or label unreadable ({type(exc).__name__})"


def _thickness(catalog: Catalog, sidecar_uri: str | None) -> float | None:
    """SliceThickness from a scan's de-identified sidecar (DICOM centers), if it has one."""
    if not sidecar_uri:
        return None
    try:
        value = json.loads(catalog.resolve(sidecar_uri).read_text()).get("SliceThickness")
        return float(value) if value else None
    except (OSError, ValueError, TypeError):
        return None


def measure_items(catalog: Catalog, scans: list[dict], labels: dict | None = None) -> list[tuple]:
    """What :func:`~xds.qc.metrics.scan_measures` needs per ``scan_view`` row, in order.

    ``labels``: scan id -> label row (default: each scan's best label). Each item is
    (image path, label path or None, label map, modality, annotated classes, thickness).
    """
    ids = [s["scan_id"] for s in scans]
    if labels is None:
        labels = best_labels(catalog, ids)
    maps = {r["label_map_id"]: dict(zip(r["indices"], r["names"], strict=True))
            for r in catalog.read("label_maps").to_pylist()}  # fmt: skip
    sidecars = {r["scan_id"]: r["sidecar_uri"]
                for r in catalog.rows_for("scans", ids).select(["scan_id", "sidecar_uri"])
                .to_pylist()}  # fmt: skip
    items = []
    for s in scans:
        label = labels.get(s["scan_id"])
        items.append((
            str(catalog.resolve(s["image_uri"])),
            str(catalog.resolve(label["uri"])) if label else None,
            maps.get(label["label_map"]) if label else None,
            s["modality"],
            label.get("classes_annotated") if label else None,
            _thickness(catalog, sidecars.get(s["scan_id"])),
        ))  # fmt: skip
    return items


def qc_scope(catalog: Catalog, cohort: str | None, center: str | None,
             dataset: str | None) -> tuple[str, list[dict]]:  # fmt: skip
    """The ``scan_view`` rows a run checks, and how to name them.

    Raises:
        CatalogError: neither or both of cohort and center, or nothing to check.
    """
    if (cohort is None) == (center is None):
        raise CatalogError("give a cohort name or --center (one of them)")
    if cohort is not None:
        found = get_cohort(catalog, cohort)
        rows = cohort_scans(catalog, found).to_pylist()  # refuses series not pulled yet
        scope = f"cohort {cohort}"
    else:
        where, params = "center = ? AND status = 'ok'", [center]
        if dataset is not None:
            where, params = where + " AND dataset = ?", params + [dataset]
        rows = catalog.read("scan_view", where, params).to_pylist()
        scope = f"center {center}" + (f" of {dataset}" if dataset else "")
    if not rows:
        raise CatalogError(f"{scope}: no scan to check")
    return scope, sorted(rows, key=lambda r: r["scan_id"])


def run_qc(
    catalog: Catalog, *, cohort: str | None = None, center: str | None = None,
    dataset: str | None = None, jobs: int = 1,
) -> QcReport:  # fmt: skip
    """Measure and flag the scans of a cohort (or a center); store the ``qc`` rows."""
    start = time.perf_counter()
    scope, scans = qc_scope(catalog, cohort, center, dataset)
    ids = [s["scan_id"] for s in scans]
    report = QcReport(scope, scans=len(scans), scan_ids=ids)
    labels = best_labels(catalog, ids)
    stored = {r["scan_id"]: r for r in catalog.rows_for("qc", ids).to_pylist()}
    todo, measures = [], {}
    for s in scans:
        label = labels.get(s["scan_id"])
        old = stored.get(s["scan_id"])
        if old and old["qc_version"] == QC_VERSION and old["image_hash"] == s["image_hash"] \
                and old["label_id"] == (label["label_id"] if label else None) \
                and "unreadable" not in (old["flags"] or ()):  # fmt: skip
            measures[s["scan_id"]] = dict(old["measures"])
        else:
            todo.append(s)
    items = measure_items(catalog, todo, labels)
    todo = [(s["scan_id"], item) for s, item in zip(todo, items, strict=True)]
    results = progress_map(_job, [item for _, item in todo], jobs=jobs, description="qc")
    errors = {}
    for (scan_id, _), (values, error) in zip(todo, results, strict=True):
        measures[scan_id] = values
        if error:
            errors[scan_id] = error
    report.measured, report.reused = len(todo), len(scans) - len(todo)
    rows = [{"center": s["center"], "sequence": s["sequence"], "modality": s["modality"],
             "measures": measures[s["scan_id"]]} for s in scans]  # fmt: skip
    flagged = flag_scans(rows)
    for n, s in enumerate(scans):
        if s["scan_id"] in errors:  # measured nothing: one flag that says why
            flagged[n] = {"flags": ["unreadable"], "reasons": [f"unreadable: "
                          f"{errors[s['scan_id']]}"], "score": 10.0}  # fmt: skip
    groups = peer_groups(rows)
    now, run = utcnow(), f"qc-{utcnow():%Y%m%dT%H%M%S}"
    new, changed = [], []
    for s, row, f, group in zip(scans, rows, flagged, groups, strict=True):
        label = labels.get(s["scan_id"])
        peers = ("center x sequence" if all(rows[i]["center"] == row["center"] for i in group)
                 else "sequence" if all(rows[i]["sequence"] == row["sequence"] for i in group)
                 else "cohort")  # fmt: skip
        record = {"scan_id": s["scan_id"], "image_hash": s["image_hash"],
                  "label_id": label["label_id"] if label else None, "qc_version": QC_VERSION,
                  "measures": {k: round(v, 6) for k, v in sorted(row["measures"].items())},
                  "flags": f["flags"] or None, "reasons": f["reasons"] or None,
                  "score": round(float(f["score"]), 4), "peers": peers, "computed_at": now,
                  "source": run}  # fmt: skip
        old = stored.get(s["scan_id"])
        if old is None:
            new.append(record)
        elif _differs(old, record):
            changed.append(record)
        for name in f["flags"]:
            report.by_flag[name] = report.by_flag.get(name, 0) + 1
        report.flagged += bool(f["flags"])
    if new or changed:
        with catalog.transaction(f"qc {scope}") as txn:
            txn.append("qc", new, unique_by=["scan_id"])
            txn.replace("qc", "scan_id", changed, _COLUMNS)
    report.rows_written = len(new) + len(changed)
    report.by_flag = {k: report.by_flag[k] for k in FLAGS if k in report.by_flag}
    order = sorted(range(len(scans)), key=lambda i: -flagged[i]["score"])
    report.worst = [{"scan_id": scans[i]["scan_id"], "center": scans[i]["center"],
                     "sequence": scans[i]["sequence"], "flags": flagged[i]["flags"],
                     "reasons": flagged[i]["reasons"], "score": round(flagged[i]["score"], 2)}
                    for i in order[:20] if flagged[i]["flags"]]  # fmt: skip
    report.catalog_version = catalog.version
    report.seconds = round(time.perf_counter() - start, 2)
    return report


def _differs(old: dict, new: dict) -> bool:
    """Whether a stored row says something other than a fresh one (times aside)."""
    for column in ("image_hash", "label_id", "qc_version", "flags", "reasons", "peers"):
        if (old.get(column) or None) != (new.get(column) or None):
            return True
    if abs(float(old["score"]) - new["score"]) > 1e-3:
        return True
    return dict(old["measures"]) != new["measures"]
