"""Score a folder of predictions against a cohort's reference labels (``xds evaluate``).

Predictions are NIfTI files named by scan id (``{scan_id}.nii.gz``: what nnU-Net writes for
an ``xds export nnunet`` dataset, whose case ids are scan ids). Their label values are
named by ``--pred-labels`` or by the ``dataset.json`` nnU-Net leaves beside them. Each case
is compared per class with :func:`xds.evaluation.metrics.compare_label_maps`; the rows go to the
``metrics`` table (one per case x class) under one ``evaluations`` row, so
``metric_view`` joins every score to its scan's and subject's columns.

A class the reference's label map does not annotate (a partially labelled dataset) is
recorded with ``annotated = false`` and no scores: an organ nobody drew is not a false
positive.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from xds.catalog import Catalog, get_cohort, utcnow
from xds.catalog.cohorts import cohort_scans
from xds.evaluation.metrics import (
    BOTH_EMPTY,
    HD_MODES,
    METRIC_COLUMNS,
    MISSING_DISTANCE,
    SURFACES,
    compare_label_maps,
    set_dice,
)
from xds.io.images import voxel_hash
from xds.io.parallel import progress_map
from xds.labels.mapping import lookup_table
from xds.labels.selection import REFERENCE_ORIGINS, best_labels, label_maps
from xds.schemas.errors import EvaluationError, SchemaError
from xds.schemas.ids import stable_id
from xds.schemas.vocabulary import (
    CLASS_SETS,
    builtin_label_map,
    canonical_map,
    class_set,
    normalize,
)
from xds.splits.store import get_split

_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class Evaluation:
    """What one evaluation scored, and what it could not."""

    eval_id: str
    name: str
    cohort: str
    classes: list[str]
    n_cases: int = 0
    no_reference: int = 0
    missing: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    mean: dict[str, dict[str, float]] = field(default_factory=dict)  # class -> metric -> mean
    set_dice: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        """JSON-ready description."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class _Case:
    scan_id: str
    pred: str
    ref: str
    ref_lut: bytes
    pred_lut: bytes
    n_classes: int
    options: tuple


def prediction_labels(pred_dir: Path, spec: str | None) -> dict[int, str]:
    """Index -> canonical class of the prediction files.

    ``spec`` is a class set name (``aeval8``: index i is its i-th class), a built-in label
    map (``totalsegmentator``), comma-separated classes, or a JSON file (nnU-Net's
    ``dataset.json`` or ``{"name": index}``). Without it, ``dataset.json`` in the folder.

    Raises:
        EvaluationError: nothing names the labels.
        SchemaError: a name the vocabulary does not know.
    """
    if spec is None:
        found = pred_dir / "dataset.json"
        if not found.exists():
            raise EvaluationError(
                f"{pred_dir}: no dataset.json names the prediction labels; pass --pred-labels "
                "(a class set, a built-in label map, classes in index order, or a JSON file)"
            )
        spec = str(found)
    path = Path(spec)
    if spec.endswith(".json") or path.is_file():
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise EvaluationError(f"{path}: cannot read label names ({exc})") from None
        names = doc.get("labels", doc) if isinstance(doc, dict) else None
        if not isinstance(names, dict):
            raise EvaluationError(f"{path}: expected {{name: index}} or nnU-Net's dataset.json")
        try:
            return canonical_map({int(i): str(n) for n, i in names.items()}, str(path))
        except (TypeError, ValueError):
            raise EvaluationError(f"{path}: label indices must be integers") from None
    if normalize(spec) in CLASS_SETS or "," in spec:
        return dict(enumerate(class_set(spec), start=1))
    try:
        return dict(builtin_label_map(spec).classes)
    except SchemaError:
        return dict(enumerate(class_set(spec), start=1))


def evaluate(
    catalog: Catalog,
    predictions: str | Path,
    *,
    cohort: str,
    split: str | None = None,
    role: str = "test",
    fold: int = 0,
    classes: str | list[str] | None = None,
    pred_labels: str | None = None,
    tau: float = 2.0,
    surface: str = "surfel",
    hd: str = "max",
    both_empty: str = "nan",
    missing_distance: str = "diagonal",
    name: str | None = None,
    trained_on: str | None = None,
    set_by: str | None = None,
    allow_missing: bool = False,
    jobs: int = 1,
) -> Evaluation:
    """Score every prediction of a cohort (or one role of a split) and store the rows.

    Args:
        catalog: the catalog (moved to the version this evaluation creates).
        predictions: folder of ``{scan_id}.nii.gz`` label maps.
        cohort: the cohort whose scans are scored.
        split: a split of that cohort; only its ``role`` scans (in ``fold``) are scored.
        role: the role to score (``test`` by default).
        fold: the fold of ``split``.
        classes: classes to score (a class set or names); default every class the
            prediction labels name.
        pred_labels: what the prediction values mean (see :func:`prediction_labels`).
        tau: NSD tolerance (mm).
        surface: ``surfel`` (DeepMind's definition) or ``voxel`` (MONAI's default).
        hd: ``max`` of the directed 95th percentiles, or ``pooled``.
        both_empty: ``nan`` or ``perfect`` for a class absent from both.
        missing_distance: HD95/ASSD when one mask is empty: ``diagonal``, ``inf`` or ``nan``.
        name: the evaluation's name (default: the folder's name); unique in the catalog.
        trained_on: the training set's name, for cross-dataset matrices in ``xds report``.
        set_by: a ``scan_view`` column grouping the scans into sets: adds Set Dice per set.
        allow_missing: score the cases that have a prediction instead of refusing.
        jobs: worker processes.

    Raises:
        EvaluationError: bad options, a duplicate name, no reference labels, missing
            predictions (without ``allow_missing``), or no case could be scored. A case
            whose prediction does not match its reference's geometry is reported in
            ``errors`` (naming the case) and the others are still scored.
    """
    _check_options(surface, hd, both_empty, missing_distance, tau)
    pred_dir = Path(predictions)
    if not pred_dir.is_dir():
        raise EvaluationError(f"{pred_dir}: not a folder of predictions")
    name = name or pred_dir.resolve().name
    if catalog.read("evaluations", where="name = ?", params=[name]).num_rows:
        raise EvaluationError(f"an evaluation named {name!r} exists; pass another --name")
    found = get_cohort(catalog, cohort)
    scan_ids = list(found.scan_ids)
    split_id = None
    if split is not None:
        the_split = get_split(catalog, split)
        if the_split.cohort_id != found.cohort_id:
            raise EvaluationError(f"split {split!r} belongs to another cohort than {cohort!r}")
        scan_ids = the_split.roles(fold).get(role, [])
        split_id = the_split.split_id
        if not scan_ids:
            raise EvaluationError(f"split {split!r} has no {role!r} scans in fold {fold}")

    pred_map = prediction_labels(pred_dir, pred_labels)
    targets = class_set(classes) if classes is not None else tuple(pred_map.values())
    pred_lut, pred_has = lookup_table(pred_map, targets)
    lacking = [c for c in targets if c not in pred_has]
    if lacking:
        raise EvaluationError(f"the prediction labels do not name {lacking}")
    references = best_labels(catalog, scan_ids, derived=False, origins=REFERENCE_ORIGINS)
    report = Evaluation("", name, found.name, list(targets))
    report.no_reference = len(set(scan_ids) - set(references))
    if not references:
        raise EvaluationError(f"no scan of {cohort!r} has a reference label to score against")
    files = _prediction_files(pred_dir)
    report.missing = sorted(s for s in references if s not in files)
    if report.missing and not allow_missing:
        raise EvaluationError(
            f"{pred_dir}: {len(report.missing)} of {len(references)} cases have no prediction "
            f"(first: {report.missing[0]}.nii.gz); pass --allow-missing to score the rest"
        )
    maps = _label_maps(catalog, {r["label_map"] for r in references.values()})
    options = (("tau", tau), ("surface_kind", surface), ("hd", hd),
               ("both_empty", both_empty), ("missing_distance", missing_distance))  # fmt: skip
    cases, annotated = [], {}
    for scan_id, ref in sorted(references.items()):
        if scan_id not in files:
            continue
        source = canonical_map(maps[ref["label_map"]], f"label map {ref['label_map']}")
        ref_lut, ref_has = lookup_table(source, targets)
        annotated[scan_id] = set(ref_has)
        cases.append(
            _Case(
                scan_id,
                str(files[scan_id]),
                str(catalog.resolve(ref["uri"])),
                ref_lut.tobytes(),
                pred_lut.tobytes(),
                len(targets),
                options,
            )  # fmt: skip
        )
    results = progress_map(_score, cases, jobs=jobs, description=f"evaluate {name}")

    eval_id = stable_id("evl", name, found.cohort_id, split_id, role, catalog.version)
    report.eval_id = eval_id
    rows = []
    for case, result in zip(cases, results, strict=True):
        if "error" in result:
            report.errors.append(result["error"])
            continue
        for k, cls in enumerate(targets, start=1):
            scored = cls in annotated[case.scan_id]
            values = result["metrics"][k] if scored else {}
            rows.append({
                "eval_id": eval_id, "scan_id": case.scan_id, "class_name": cls,
                "annotated": scored, **{c: values.get(c) for c in METRIC_COLUMNS},
                "label_id": references[case.scan_id]["label_id"],
                "prediction_hash": result["hash"],
            })  # fmt: skip
    report.n_cases = len({r["scan_id"] for r in rows})
    if report.n_cases == 0:
        raise EvaluationError(
            "no case could be scored: " + (report.errors[0] if report.errors else "no cases")
        )
    report.mean = _means(rows, targets)
    set_rows = []
    if set_by is not None:
        scored = [c for c in cases if c.scan_id in {r["scan_id"] for r in rows}]
        set_rows = _set_dice(catalog, found, scored, set_by, targets, eval_id, jobs)
        report.set_dice = set_rows
    with catalog.transaction(f"evaluate {name}") as txn:
        txn.append("evaluations", [{
            "eval_id": eval_id, "name": name, "predictions": str(pred_dir.resolve()),
            "cohort_id": found.cohort_id, "split_id": split_id,
            "role": role if split else None, "fold": fold if split else None,
            "classes": list(targets), "tau_mm": tau, "surface": surface, "hd": hd,
            "both_empty": both_empty, "missing_distance": missing_distance,
            "trained_on": trained_on, "catalog_version": catalog.version,
            "n_cases": report.n_cases, "errors": report.errors, "created_at": utcnow(),
        }])  # fmt: skip
        txn.append("metrics", rows)
        if set_rows:
            txn.append("set_metrics", set_rows)
    return report


def _check_options(surface, hd, both_empty, missing_distance, tau) -> None:
    for value, allowed, flag in (
        (surface, SURFACES, "--surface"),
        (hd, HD_MODES, "--hd"),
        (both_empty, BOTH_EMPTY, "--both-empty"),
        (missing_distance, MISSING_DISTANCE, "--missing-distance"),
    ):
        if value not in allowed:
            raise EvaluationError(f"{flag} must be one of {', '.join(allowed)}, not {value!r}")
    if not tau >= 0:
        raise EvaluationError(f"--tau must be >= 0 mm, not {tau}")


def _prediction_files(folder: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(folder.iterdir()):
        for suffix in _SUFFIXES:
            if path.name.endswith(suffix) and path.is_file():
                out[path.name[: -len(suffix)]] = path
    return out


def _label_maps(catalog: Catalog, ids: set[str]) -> dict[str, dict[int, str]]:
    found = label_maps(catalog, ids)
    missing = ids - set(found)
    if missing:
        raise EvaluationError(f"label map(s) {sorted(missing)} are missing from the catalog")
    return found


def _load(path: str):
    image = nib.load(path)
    return np.asanyarray(image.dataobj), image.affine, image.header.get_zooms()[:3]


def _score(case: _Case) -> dict:
    """Worker: one case's metrics per class; geometry or file trouble becomes an error."""
    try:
        pred, pred_affine, _ = _load(case.pred)
        ref, ref_affine, spacing = _load(case.ref)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is that case's error
        return {"error": f"case {case.scan_id}: cannot read {case.pred}: {exc}"}
    if pred.shape != ref.shape:
        return {"error": f"case {case.scan_id}: prediction {case.pred} has shape "
                         f"{pred.shape}, its reference {ref.shape}"}  # fmt: skip
    if not np.allclose(pred_affine, ref_affine, atol=1e-3):
        return {"error": f"case {case.scan_id}: prediction {case.pred} is not on its "
                         "reference's grid (spacing, origin or orientation differ)"}  # fmt: skip
    if pred.dtype.kind == "f":
        if not np.array_equal(pred, np.round(pred)) or pred.min() < 0:
            return {"error": f"case {case.scan_id}: prediction {case.pred} holds "
                             "non-integer values; expected a label map"}  # fmt: skip
    values = pred.astype(np.int64)
    pred_lut = np.frombuffer(case.pred_lut, np.uint8)
    if values.max() >= len(pred_lut) or values.min() < 0:
        return {"error": f"case {case.scan_id}: prediction {case.pred} has label "
                         f"{int(values.max())}, outside the prediction labels"}  # fmt: skip
    ref_lut = np.frombuffer(case.ref_lut, np.uint8)
    mapped_pred = pred_lut[values]
    mapped_ref = ref_lut[ref.astype(np.int64)]
    classes = list(range(1, case.n_classes + 1))
    metrics = compare_label_maps(mapped_pred, mapped_ref, spacing, classes, **dict(case.options))
    return {"metrics": metrics, "hash": voxel_hash(np.asarray(pred))}


def _means(rows: list[dict], targets) -> dict[str, dict[str, float]]:
    out = {}
    for cls in targets:
        scored = [r for r in rows if r["class_name"] == cls and r["annotated"]]
        out[cls] = {
            m: _nanmean([r[m] for r in scored]) for m in ("dice", "nsd", "hd95_mm", "assd_mm")
        }
    return out


def _nanmean(values) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


@dataclass(frozen=True)
class _SetJob:
    key: str
    cases: tuple[_Case, ...]


def _set_dice(catalog, cohort, cases, column, targets, eval_id, jobs) -> list[dict]:
    """Set Dice per (set, class): sets are the scans sharing a ``scan_view`` column value."""
    table = cohort_scans(catalog, cohort)
    if column not in table.column_names:
        raise EvaluationError(f"--set-by {column!r} is not a scan_view column")
    ids, values = table.column("scan_id").to_pylist(), table.column(column).to_pylist()
    value_of = dict(zip(ids, values, strict=True))
    groups: dict[str, list[_Case]] = defaultdict(list)
    for case in cases:
        groups[str(value_of.get(case.scan_id))].append(case)
    jobs_list = [_SetJob(k, tuple(v)) for k, v in sorted(groups.items())]
    results = progress_map(_score_set, jobs_list, jobs=jobs, description="set dice")
    return [
        {
            "eval_id": eval_id,
            "set_by": column,
            "set_value": job.key,
            "class_name": targets[k - 1],
            "set_dice": value,
            "best_label": label,
            "n_images": len(job.cases),
        }  # fmt: skip
        for job, per_class in zip(jobs_list, results, strict=True)
        for k, (value, label) in per_class.items()
    ]


def _score_set(job: _SetJob) -> dict[int, tuple[float, int]]:
    """Worker: Set Dice of one set per reference class, over the raw prediction labels."""
    preds, refs = [], []
    for case in job.cases:
        preds.append(np.asanyarray(nib.load(case.pred).dataobj).astype(np.int64))
        ref = np.asanyarray(nib.load(case.ref).dataobj).astype(np.int64)
        refs.append(np.frombuffer(case.ref_lut, np.uint8)[ref])
    out = {}
    for k in range(1, job.cases[0].n_classes + 1):
        masks = [r == k for r in refs]
        if not any(m.any() for m in masks):
            continue
        result = set_dice(preds, masks)
        out[k] = (result.value, result.label)
    return out
