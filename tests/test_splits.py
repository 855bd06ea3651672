from collections import Counter, defaultdict

import numpy as np
import pytest
from click.testing import CliRunner

from xds.catalog import build_cohort
from xds.cli.main import cli
from xds.schemas import SplitError
from xds.splits.audit import audit_split
from xds.splits.protocols import Scans, holdout
from xds.splits.store import get_split, list_splits, parse_ratios, split_cohort

RATIOS = {"train": 0.7, "val": 0.1, "test": 0.2}


def _cell_roles(catalog, split):
    meta = {
        r["scan_id"]: (r["center"], r["sequence"]) for r in catalog.read("scan_view").to_pylist()
    }
    cells, roles = Counter(), Counter()
    for r in split.rows.to_pylist():
        cells[meta[r["scan_id"]]] += 1
        roles[(meta[r["scan_id"]], r["role"])] += 1
    return cells, roles


@pytest.fixture
def cohort(catalog):
    return build_cohort(catalog, "has_label", "all")


def test_patient_level_and_proportions_per_center_sequence(catalog, cohort):
    for seed in range(5):
        split = split_cohort(catalog, "all", ratios="70,10,20", seed=seed)
        roles_of = defaultdict(set)
        for r in split.rows.to_pylist():
            roles_of[r["subject_id"]].add(r["role"])
        assert all(len(v) == 1 for v in roles_of.values())
        assert split.rows.num_rows == cohort.n_scans
        cells, roles = _cell_roles(catalog, split)
        for cell, n in cells.items():
            for role, fraction in RATIOS.items():
                assert abs(roles[(cell, role)] - fraction * n) <= 1 + 1e-9, (seed, cell, role)
        assert audit_split(catalog, split.name).clean


def test_same_seed_same_split(catalog, cohort):
    a = split_cohort(catalog, "all", seed=1, name="a")
    b = split_cohort(catalog, "all", seed=1, name="b")
    c = split_cohort(catalog, "all", seed=2, name="c")
    assert a.roles() == b.roles()
    assert a.roles() != c.roles()
    assert get_split(catalog, "a").roles() == a.roles()
    assert {s["name"] for s in list_splits(catalog)} == {"a", "b", "c"}


def test_assignment_holds_on_many_uneven_subjects():
    rng = np.random.default_rng(0)
    units, strata = [], []
    for i in range(3000):
        center = int(rng.integers(6))
        seqs = [s for s in range(3) if rng.random() < 0.6] or [1]
        units += [i] * len(seqs)
        strata += [center * 3 + s for s in seqs]
    scans = Scans(unit=np.array(units), stratum=np.array(strata))
    ((idx, roles),) = holdout(scans, (0.7, 0.1, 0.2), np.random.default_rng(0)).folds
    assert len(idx) == len(units)
    n = np.bincount(scans.stratum)
    got = np.zeros((len(n), 3))
    np.add.at(got, (scans.stratum[idx], roles), 1)
    worst = np.abs(got - n[:, None] * np.array([0.7, 0.1, 0.2])).max()
    assert worst <= 1 + 1e-9


def test_ratios_and_errors(catalog, cohort):
    assert parse_ratios("80,20") == (0.8, 0.0, 0.2)
    with pytest.raises(SplitError):
        parse_ratios("70,x,20")
    with pytest.raises(SplitError, match="unknown column"):
        split_cohort(catalog, "all", stratify=("scanner_colour",))
    split_cohort(catalog, "all", name="once")
    with pytest.raises(SplitError, match="already exists"):
        split_cohort(catalog, "all", name="once")
    two = split_cohort(catalog, "all", ratios="80,20", name="no-val")
    assert set(two.roles()) == {"train", "test"}


def test_audit_finds_a_subject_in_two_roles(catalog, cohort):
    split = split_cohort(catalog, "all", name="good")
    rows = [
        dict(r, name="leaky", split_id="spl-leaky")
        for r in catalog.read("splits", "name = 'good'").to_pylist()
    ]
    subject = next(s for s, n in Counter(r["subject_id"] for r in rows).items() if n > 1)
    victim = next(r for r in rows if r["subject_id"] == subject)
    victim["role"] = "test" if victim["role"] != "test" else "train"
    with catalog.transaction("inject leak") as txn:
        txn.append("splits", rows)
    report = audit_split(catalog, "leaky")
    assert not report.clean
    assert report.leaks[0]["kind"] == "subject_in_two_roles"
    assert report.leaks[0]["subject_id"] == subject
    result = CliRunner().invoke(cli, ["--catalog", str(catalog.root), "audit", "leaky"])
    assert result.exit_code == 1
    ok = CliRunner().invoke(cli, ["--catalog", str(catalog.root), "audit", split.name])
    assert ok.exit_code == 0


def test_every_protocol_on_the_catalog(catalog, cohort):
    from xds.splits.store import make_split

    seqs = sorted({r["sequence"] for r in catalog.read("scan_view").to_pylist()})
    loso = make_split(catalog, "all", "leave-one-out", column="sequence", seed=3)
    assert [f["held_out"] for f in loso.params["folds"]] == seqs
    loco = make_split(catalog, "all", "leave-one-out", column="center", external="center='Delta'")
    held = [f["held_out"] for f in loco.params["folds"]]
    assert held == ["Aurora", "Boreal", "Cedar", "Delta"]
    meta = {r["scan_id"]: r for r in catalog.read("scan_view").to_pylist()}
    for fold, name in enumerate(held):
        roles = loco.roles(fold)
        assert {meta[s]["center"] for s in roles["test"]} >= {name, "Delta"}
        assert "Delta" not in {meta[s]["center"] for s in roles["train"] + roles.get("val", [])}
    kf = make_split(catalog, "all", "kfold", k=4, test_share=0.2, stratify=("center",))
    assert len(kf.params["folds"]) == 4
    ssl = make_split(catalog, "all", "semi-supervised", fractions=(10, 40))
    small, large = ssl.roles(0), ssl.roles(1)
    assert set(small["train"]) < set(large["train"])
    assert set(small["train"]) | set(small["unlabeled"]) == set(large["train"]) | set(
        large["unlabeled"]
    )
    xd = make_split(catalog, "all", "cross-dataset", column="center")
    tests = [set(xd.roles(f)["test"]) for f in range(4)]
    assert all(t == tests[0] for t in tests)  # one test part per dataset, shared by all folds
    assert audit_split(catalog, loso.name).clean
    listing = {s["name"]: s for s in list_splits(catalog)}
    assert listing[loso.name]["n_folds"] == len(seqs)
    with pytest.raises(SplitError, match="unknown strategy"):
        make_split(catalog, "all", "bootstrap")
    with pytest.raises(SplitError, match="selects no scan"):
        make_split(catalog, "all", external="center='Nowhere'", name="x")
