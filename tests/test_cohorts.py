import json

import pytest
from click.testing import CliRunner

from xds.catalog import build_cohort, get_cohort, list_cohorts
from xds.catalog.cohorts import rematerialize
from xds.cli.main import cli
from xds.ingest import ingest_nifti
from xds.phantoms import generate_world
from xds.schemas import CohortError, SqlError, SqlRefusedError


def test_build_cohort_selects_exactly_the_t2w_scans(catalog, world_counts):
    result = CliRunner().invoke(
        cli,
        [
            "--catalog",
            str(catalog.root),
            "build-cohort",
            "--where",
            "sequence='T2W'",
            "--name",
            "t2w",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    expected = catalog.latest().sql(
        "SELECT scan_id FROM scans WHERE sequence = 'T2W' ORDER BY scan_id"
    )
    assert out["scan_ids"] == expected.column("scan_id").to_pylist()
    assert out["n_scans"] == sum(n for (_, s), n in world_counts.items() if s == "T2W")
    sequences = catalog.latest().sql(
        f"SELECT DISTINCT sequence FROM scans WHERE scan_id IN {tuple(out['scan_ids'])}"
    )
    assert sequences.column("sequence").to_pylist() == ["T2W"]


def test_cohort_is_pinned_to_its_version(catalog, tmp_path):
    cohort = build_cohort(catalog, "sequence='T2W'", "t2w")
    more = tmp_path / "more"
    manifest = generate_world(
        more, centers=1, subjects_per_center=3, shape=(24, 24, 12), seed=99, missing=0.0
    )
    c = manifest["centers"][0]
    report = ingest_nifti(
        catalog, more / c["path"], center="Newcomer", label_map=more / c["label_map"]
    )
    assert report.scans_added > 0
    now = catalog.latest().sql("SELECT count(*) AS n FROM scan_view WHERE sequence='T2W'")
    assert now.column("n")[0].as_py() > cohort.n_scans  # the catalog grew...
    assert rematerialize(catalog, get_cohort(catalog.latest(), "t2w")) == cohort.scan_ids


def test_cohort_errors_are_clear(catalog):
    build_cohort(catalog, "sequence='T1W'", "t1w")
    with pytest.raises(CohortError, match="already exists"):
        build_cohort(catalog, "sequence='T1W'", "t1w")
    with pytest.raises(CohortError, match="no scan matches"):
        build_cohort(catalog, "sequence='FLAIR'", "none")
    with pytest.raises(CohortError, match="invalid cohort name"):
        build_cohort(catalog, "true", "a b")
    with pytest.raises(SqlError):
        build_cohort(catalog, "true) UNION SELECT * FROM read_csv('/etc/passwd') --", "x")
    with pytest.raises(SqlRefusedError, match="one boolean expression"):
        build_cohort(
            catalog,
            "true) UNION ALL SELECT column0, column0 FROM read_csv('/etc/passwd') WHERE (true",
            "y",
        )
    with pytest.raises(CohortError, match="no cohort named"):
        get_cohort(catalog, "nope")
    assert [c.name for c in list_cohorts(catalog)] == ["t1w"]


def test_where_can_use_subject_and_label_columns(catalog):
    cohort = build_cohort(catalog, "sex = 'F' AND list_contains(classes, 'liver')", "f-liver")
    rows = (
        catalog.sql(f"SELECT DISTINCT sex FROM scan_view WHERE scan_id IN {tuple(cohort.scan_ids)}")
        .column("sex")
        .to_pylist()
    )
    assert rows == ["F"]
    result = CliRunner().invoke(cli, ["--catalog", str(catalog.root), "cohorts", "--json"])
    assert json.loads(result.output)[0]["name"] == "f-liver"
