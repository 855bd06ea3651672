"""xds evaluate: predictions in a folder -> metrics rows joined to the catalog."""

import json
import math

import nibabel as nib
import numpy as np
import pytest

from xds.catalog import build_cohort
from xds.evaluate import evaluate
from xds.harmonize import lookup_table
from xds.labels import best_labels
from xds.metrics import compare_label_maps
from xds.schemas import EvaluationError
from xds.schemas.vocabulary import canonical_map
from xds.splits import split_cohort

CLASSES = ("liver", "spleen", "pancreas")


def _reference(catalog, scan_id):
    ref = best_labels(catalog, [scan_id], derived=False)[scan_id]
    row = catalog.read("label_maps", where="label_map_id = ?", params=[ref["label_map"]])
    names = dict(zip(row.column("indices")[0].as_py(), row.column("names")[0].as_py()))
    lut, annotated = lookup_table(canonical_map(names, "map"), CLASSES)
    image = nib.load(catalog.resolve(ref["uri"]))
    data = lut[np.asanyarray(image.dataobj).astype(np.int64)]
    return data, image, annotated


def write_predictions(catalog, scan_ids, folder, shift_every=2):
    """Perfect predictions for some scans, ones shifted two voxels for the others."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for i, scan_id in enumerate(scan_ids):
        data, image, annotated = _reference(catalog, scan_id)
        pred = np.roll(data, 2, axis=0) if i % shift_every else data
        nib.save(nib.Nifti1Image(pred.astype(np.uint8), image.affine), folder / f"{scan_id}.nii.gz")
        expected[scan_id] = (pred, data, image.header.get_zooms()[:3], annotated)
    (folder / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, **{c: i for i, c in enumerate(CLASSES, 1)}}})
    )
    return expected


@pytest.fixture
def evaluated(catalog, tmp_path):
    build_cohort(catalog, "has_label", "all")
    split = split_cohort(catalog, "all", seed=0)
    test_ids = split.roles(0)["test"]
    expected = write_predictions(catalog, test_ids, tmp_path / "preds")
    return catalog, split, test_ids, expected, tmp_path / "preds"


def test_evaluate_stores_one_row_per_case_and_class(evaluated):
    catalog, split, test_ids, expected, preds = evaluated
    result = evaluate(catalog, preds, cohort="all", split=split.name, name="run-a", jobs=2)
    assert result.n_cases == len(test_ids) and not result.errors
    rows = catalog.sql(
        "SELECT * FROM metric_view WHERE evaluation = 'run-a' ORDER BY scan_id, class_name"
    ).to_pylist()
    assert len(rows) == len(test_ids) * len(CLASSES)
    for row in rows:
        pred, ref, spacing, annotated = expected[row["scan_id"]]
        assert row["annotated"] == (row["class_name"] in annotated)
        assert row["center"] and row["sequence"]  # joined to scan_view
        if not row["annotated"]:
            assert row["dice"] is None  # a class nobody drew is not scored
            continue
        k = CLASSES.index(row["class_name"]) + 1
        direct = compare_label_maps(pred, ref, spacing, [k])[k]
        for metric in ("dice", "nsd", "hd95_mm", "assd_mm", "vol_diff_ml"):
            if math.isnan(direct[metric]):
                assert row[metric] is None or math.isnan(row[metric])
            else:
                assert row[metric] == pytest.approx(direct[metric])
    perfect = [r for r in rows if r["scan_id"] == test_ids[0] and r["annotated"]]
    assert perfect and all(r["dice"] == 1.0 for r in perfect if not r["empty_ref"])
    assert any(r["dice"] < 1 for r in rows if r["annotated"] and r["dice"] is not None)


def test_geometry_mismatch_names_the_case_and_the_rest_is_scored(evaluated):
    catalog, split, test_ids, _, preds = evaluated
    bad = preds / f"{test_ids[1]}.nii.gz"
    image = nib.load(bad)
    moved = image.affine.copy()
    moved[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), moved), bad)
    result = evaluate(catalog, preds, cohort="all", split=split.name, name="run-b")
    assert len(result.errors) == 1
    assert test_ids[1] in result.errors[0] and "grid" in result.errors[0]
    assert result.n_cases == len(test_ids) - 1
    stored = catalog.read("evaluations", where="name = 'run-b'").to_pylist()[0]
    assert stored["errors"] == result.errors


def test_missing_predictions_and_duplicate_names_are_refused(evaluated):
    catalog, split, test_ids, _, preds = evaluated
    (preds / f"{test_ids[0]}.nii.gz").unlink()
    with pytest.raises(EvaluationError, match="have no prediction"):
        evaluate(catalog, preds, cohort="all", split=split.name, name="run-c")
    result = evaluate(
        catalog, preds, cohort="all", split=split.name, name="run-c", allow_missing=True
    )
    assert result.missing == [test_ids[0]] and result.n_cases == len(test_ids) - 1
    with pytest.raises(EvaluationError, match="exists"):
        evaluate(catalog, preds, cohort="all", split=split.name, name="run-c", allow_missing=True)
    with pytest.raises(EvaluationError, match="--surface"):
        evaluate(catalog, preds, cohort="all", name="x", surface="mesh")


def test_labels_are_named_by_the_option_when_no_dataset_json(evaluated):
    catalog, split, test_ids, _, preds = evaluated
    (preds / "dataset.json").unlink()
    with pytest.raises(EvaluationError, match="--pred-labels"):
        evaluate(catalog, preds, cohort="all", split=split.name, name="run-d")
    result = evaluate(
        catalog, preds, cohort="all", split=split.name, name="run-d",
        pred_labels=",".join(CLASSES), classes="pancreas",
    )  # fmt: skip
    assert result.classes == ["pancreas"]
    assert catalog.count("metrics") == result.n_cases


def test_set_dice_per_center(evaluated):
    catalog, split, test_ids, expected, preds = evaluated
    result = evaluate(
        catalog, preds, cohort="all", split=split.name, name="run-e", set_by="center",
        classes="pancreas",
    )  # fmt: skip
    rows = catalog.read("set_metrics").to_pylist()
    assert rows and rows == [{k: r[k] for k in rows[0]} for r in result.set_dice]
    assert all(0 < r["set_dice"] <= 1 and r["best_label"] == 3 for r in rows)
    assert sum(r["n_images"] for r in rows) == result.n_cases
