"""xds report: tables, figures and an HTML page that renders in headless Chromium."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from xds.catalog import Catalog, build_cohort
from xds.evaluation.report import build_report
from xds.evaluation.scoring import evaluate
from xds.schemas import EvaluationError
from xds.splits.store import split_cohort


@pytest.fixture(scope="module")
def two_runs(ingested, tmp_path_factory, write_predictions):
    """Two evaluations of one test role; the reports below only read this catalog."""
    tmp_path = tmp_path_factory.mktemp("two_runs")
    shutil.copytree(ingested, tmp_path / "catalog")
    catalog = Catalog.open(tmp_path / "catalog")
    build_cohort(catalog, "has_label", "all")
    split = split_cohort(catalog, "all", seed=0, ratios="40,10,50")
    test_ids = split.roles(0)["test"]
    write_predictions(catalog, test_ids, tmp_path / "a", shift_every=3)
    write_predictions(catalog, test_ids, tmp_path / "b", shift_every=1)  # all perfect
    for run, trained_on in (("a", "T1W-only"), ("b", "joint")):
        evaluate(
            catalog, tmp_path / run, cohort="all", split=split.name, name=f"run-{run}",
            trained_on=trained_on,
        )  # fmt: skip
    return catalog


def test_report_writes_tables_figures_and_html(two_runs, tmp_path):
    out = tmp_path / "report"
    report = build_report(
        two_runs, ["run-a", "run-b"], out=out, by=("sequence",),
        metrics=("dice", "hd95_mm"), matrix="sequence", pair=("sequence", "T1W", "T2W"),
        seed=3, n_resamples=500,
    )  # fmt: skip
    for name in ("subgroups", "gaps", "paired", "matrix", "intra_subject"):
        assert (out / "tables" / f"{name}.csv").exists()
        assert (out / "tables" / f"{name}.md").read_text().startswith("|")
    subgroups = pd.read_csv(out / "tables" / "subgroups.csv")
    assert set(subgroups["by"]) == {"sequence"}
    assert {"all", "pancreas"} <= set(subgroups["class_name"])
    # run-b is perfect, run-a shifts two of every three cases: b wins in every group
    a = subgroups[(subgroups.evaluation == "run-a") & (subgroups.metric == "dice")]
    b = subgroups[(subgroups.evaluation == "run-b") & (subgroups.metric == "dice")]
    joined = a.merge(b, on=["class_name", "by", "group"], suffixes=("_a", "_b"))
    assert (joined["mean_b"] >= joined["mean_a"]).all()
    assert (joined["mean_b"] > joined["mean_a"]).any()
    paired = pd.read_csv(out / "tables" / "paired.csv")
    assert (paired["p_holm"].dropna() >= paired["p"].dropna()).all()
    matrix = pd.read_csv(out / "tables" / "matrix.csv")
    assert set(matrix["row"]) == {"T1W-only", "joint"}
    assert len(report.figures) == 2 * 2 + 2  # box + forest per metric, 2 heatmaps
    assert all(Path(f).stat().st_size > 5000 for f in report.figures)
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(report.figures)
    assert 'src="http' not in page  # self-contained
    assert json.loads((out / "report.json").read_text())["evaluations"] == ["run-a", "run-b"]


def test_bootstrap_cis_are_reproducible_by_seed(two_runs, tmp_path):
    tables = []
    for i, seed in enumerate((5, 5, 6)):
        build_report(two_runs, ["run-a"], out=tmp_path / f"r{i}", by=("center",),
                     metrics=("dice",), seed=seed, n_resamples=300)  # fmt: skip
        tables.append(pd.read_csv(tmp_path / f"r{i}" / "tables" / "subgroups.csv"))
    pd.testing.assert_frame_equal(tables[0], tables[1])
    assert not tables[0][["ci_low", "ci_high"]].equals(tables[2][["ci_low", "ci_high"]])


def test_report_refuses_unknown_names_and_a_full_folder(two_runs, tmp_path):
    with pytest.raises(EvaluationError, match="no evaluation named 'nope'; known: run-a, run-b"):
        build_report(two_runs, ["nope"], out=tmp_path / "x")
    with pytest.raises(EvaluationError, match="--by"):
        build_report(two_runs, ["run-a"], out=tmp_path / "y", by=("colour",))
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(EvaluationError, match="--force"):
        build_report(two_runs, ["run-a"], out=full)


def test_html_report_renders_in_headless_chromium(two_runs, tmp_path, browse):
    """The page loads in Debian's chromium without console errors; its tables sort."""
    out = tmp_path / "report"
    build_report(two_runs, ["run-a", "run-b"], out=out, by=("center",), metrics=("dice",),
                 n_resamples=200)  # fmt: skip

    def sort_by_mean(page):
        table = page.locator("table.sortable").nth(1)
        table.locator("th", has_text="mean").first.click()
        column = table.locator("th").all_inner_texts().index("mean")
        return table.locator(f"tbody tr td:nth-child({column + 1})").all_inner_texts()

    shot = tmp_path / "report.png"
    seen = browse(out / "report.html", shot, then=sort_by_mean)
    assert seen["problems"] == []
    assert seen["widths"]
    assert all(w > 100 for w in seen["widths"])  # every embedded figure decoded
    values = [float(c) for c in seen["then"]]
    assert values == sorted(values)
    assert shot.stat().st_size > 20_000
