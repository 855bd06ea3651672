"""xds evaluate: predictions in a folder -> metrics rows joined to the catalog."""

import json
import math

import nibabel as nib
import numpy as np
import pytest

from xds.catalog import build_cohort
from xds.evaluation.metrics import compare_label_maps
from xds.evaluation.scoring import evaluate
from xds.schemas import EvaluationError
from xds.splits.store import split_cohort

CLASSES = ("liver", "spleen", "pancreas")


@pytest.fixture
def evaluated(catalog, tmp_path, write_predictions):
    build_cohort(catalog, "has_label", "all")
    split = split_cohort(catalog, "all", seed=0)
    test_ids = split.roles(0)["test"]
    expected = write_predictions(catalog, test_ids, tmp_path / "preds")
    return catalog, split, test_ids, expected, tmp_path / "preds"


def test_evaluate_stores_one_row_per_case_and_class(evaluated):
    catalog, split, test_ids, expected, preds = evaluated
    result = evaluate(catalog, preds, cohort="all", split=split.name, name="run-a", jobs=2)
    assert result.n_cases == len(test_ids)
    assert not result.errors
    rows = catalog.sql(
        "SELECT * FROM metric_view WHERE evaluation = 'run-a' ORDER BY scan_id, class_name"
    ).to_pylist()
    assert len(rows) == len(test_ids) * len(CLASSES)
    for row in rows:
        pred, ref, spacing, annotated = expected[row["scan_id"]]
        assert row["annotated"] == (row["class_name"] in annotated)
        assert row["center"]  # joined to scan_view
        assert row["sequence"]
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
    assert perfect
    assert all(r["dice"] == 1.0 for r in perfect if not r["empty_ref"])
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
    assert test_ids[1] in result.errors[0]
    assert "grid" in result.errors[0]
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
    assert result.missing == [test_ids[0]]
    assert result.n_cases == len(test_ids) - 1
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
    assert rows
    assert rows == [{k: r[k] for k in rows[0]} for r in result.set_dice]
    assert all(0 < r["set_dice"] <= 1 and r["best_label"] == 3 for r in rows)
    assert sum(r["n_images"] for r in rows) == result.n_cases


def test_cli_evaluate_and_report(evaluated, tmp_path):
    from click.testing import CliRunner

    from xds.cli.main import cli

    catalog, split, test_ids, _, preds = evaluated
    base = ["--catalog", str(catalog.root)]
    args = [*base, "evaluate", "--pred", str(preds), "--cohort", "all", "--split", split.name]
    result = CliRunner().invoke(cli, [*args, "--name", "cli-run", "-j", "1", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["n_cases"] == len(test_ids)
    assert set(summary["mean"]) == set(CLASSES)
    # a prediction off its grid: named on stderr, exit 1, the rest stored
    bad = preds / f"{test_ids[0]}.nii.gz"
    image = nib.load(bad)
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj)[:, :, :-1], image.affine), bad)
    result = CliRunner().invoke(cli, [*args, "--name", "cli-bad", "-j", "1"])
    assert result.exit_code == 1
    assert f"case {test_ids[0]}" in result.output
    assert "shape" in result.output
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, [
        *base, "report", "cli-run", "cli-bad", "--out", str(out), "--by", "center",
        "--metrics", "dice", "--n-boot", "200", "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["cases"] == len(test_ids)
    assert (out / "report.html").exists()
    result = CliRunner().invoke(cli, [*base, "report", "cli-run", "--out", str(out)])
    assert result.exit_code == 1
    assert "--force" in result.output
    listing = CliRunner().invoke(cli, [*base, "evaluations", "--json"])
    assert {r["name"] for r in json.loads(listing.output)} == {"cli-run", "cli-bad"}
