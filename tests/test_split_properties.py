"""Property tests of the split protocols (hypothesis): random cohorts, every protocol."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as hs

from xds.splits import protocols as st


@hs.composite
def cohorts(draw):
    n_units = draw(hs.integers(2, 40))
    n_values = draw(hs.integers(2, 4))
    unit, stratum, column = [], [], []
    for u in range(n_units):
        center = draw(hs.integers(0, 2))
        values = draw(hs.lists(hs.integers(0, n_values - 1), min_size=1, max_size=4))
        for v in values:
            unit.append(u)
            column.append(v)
            stratum.append(center * n_values + v)
    names = tuple(f"v{i}" for i in range(n_values))
    # every value present at least once, as a real column would be
    for v in range(n_values):
        if v not in column:
            unit.append(0)
            column.append(v)
            stratum.append(v)
    external = None
    if draw(hs.booleans()):
        picked = draw(hs.lists(hs.integers(0, n_units - 1), max_size=3))
        external = np.isin(np.array(unit), picked)
    scans = st.Scans(np.array(unit), np.array(stratum), np.array(column), names)
    return scans, external, draw(hs.integers(0, 2**16))


SHARES = (0.7, 0.1, 0.2)


def _run(name, scans, external, seed):
    rng = np.random.default_rng(seed)
    if name == "holdout":
        return st.holdout(scans, SHARES, rng, external)
    if name == "kfold":
        return st.kfold(scans, 3, rng, 0.2, external)
    if name == "leave-one-out":
        return st.leave_one_out(scans, SHARES, rng, external)
    if name == "single-source":
        return st.leave_one_out(scans, SHARES, rng, external, single_source=True)
    if name == "cross-dataset":
        return st.cross_dataset(scans, SHARES, rng, external)
    return st.semi_supervised(scans, SHARES, (0.05, 0.1, 0.2, 0.4), rng, external)


def _unit_roles(scans, fold):
    idx, roles = fold
    table = {}
    for u, r in zip(scans.unit[idx].tolist(), roles.tolist(), strict=True):
        table.setdefault(u, set()).add(r)
    return table


@settings(max_examples=60, deadline=None)
@given(cohorts(), hs.sampled_from(st.STRATEGIES))
def test_no_unit_in_two_roles_and_external_never_trained(case, strategy):
    scans, external, seed = case
    result = _run(strategy, scans, external, seed)
    assert result.folds
    ext_units = set(scans.unit[external].tolist()) if external is not None else set()
    for fold in result.folds:
        for unit, roles in _unit_roles(scans, fold).items():
            assert len(roles) == 1, (strategy, unit, roles)
            if unit in ext_units:
                assert roles == {st.TEST}


@settings(max_examples=40, deadline=None)
@given(cohorts(), hs.sampled_from(st.STRATEGIES))
def test_same_seed_same_split(case, strategy):
    scans, external, seed = case
    a, b = _run(strategy, scans, external, seed), _run(strategy, scans, external, seed)
    for (ia, ra), (ib, rb) in zip(a.folds, b.folds, strict=True):
        assert np.array_equal(ia, ib)
        assert np.array_equal(ra, rb)
    assert a.fold_info == b.fold_info


@settings(max_examples=40, deadline=None)
@given(cohorts())
def test_nested_fractions_are_nested(case):
    scans, external, seed = case
    result = _run("semi-supervised", scans, external, seed)
    labelled = []
    for idx, roles in result.folds:
        labelled.append(set(scans.unit[idx][roles == st.TRAIN].tolist()))
        pool = set(scans.unit[idx][np.isin(roles, [st.TRAIN, st.UNLABELED])].tolist())
        assert labelled[-1] <= pool
    for smaller, larger in zip(labelled, labelled[1:], strict=False):
        assert smaller <= larger
    # val and test never change between fractions
    fixed = [
        sorted(zip(idx[roles >= st.VAL].tolist(), roles[roles >= st.VAL].tolist(), strict=True))
        for idx, roles in result.folds
    ]
    fixed = [[p for p in f if p[1] in (st.VAL, st.TEST)] for f in fixed]
    assert all(f == fixed[0] for f in fixed)
    # a fraction is that share of the train units, whatever the number of strata
    idx, roles = result.folds[0]
    n_train = len(set(scans.unit[idx][np.isin(roles, [st.TRAIN, st.UNLABELED])].tolist()))
    for fraction, units in zip((0.05, 0.1, 0.2, 0.4), labelled, strict=True):
        assert len(units) == (max(int(np.floor(fraction * n_train + 0.5)), 1) if n_train else 0)


def test_labelled_fraction_is_exact_and_stratified():
    # 200 subjects of one scan each, 50 in stratum 0 and 150 in stratum 1
    strata = np.r_[np.zeros(50, int), np.ones(150, int)]
    scans = st.Scans(np.arange(200), strata, strata, ("a", "b"))
    for seed in range(5):
        result = st.semi_supervised(scans, (1.0, 0.0, 0.0), (0.1, 0.2), np.random.default_rng(seed))
        for (idx, roles), fraction in zip(result.folds, (0.1, 0.2), strict=True):
            labelled = strata[idx[roles == st.TRAIN]]
            expected = [round(50 * fraction), round(150 * fraction)]
            assert np.bincount(labelled, minlength=2).tolist() == expected


@settings(max_examples=60, deadline=None)
@given(cohorts(), hs.booleans())
def test_leave_one_out_tests_each_value_exactly_once(case, single_source):
    scans, _, seed = case
    result = st.leave_one_out(scans, SHARES, np.random.default_rng(seed), None, single_source)
    key = "trained_on" if single_source else "held_out"
    assert sorted(info[key] for info in result.fold_info) == sorted(scans.column_names)
    for (idx, roles), info in zip(result.folds, result.fold_info, strict=True):
        value = scans.column_names.index(info[key])
        tested = scans.column[idx][roles == st.TEST]
        trained = scans.column[idx][roles != st.TEST]
        if single_source:
            assert np.all(tested != value)
            assert np.all(trained == value)
        else:
            assert np.all(tested == value)
            assert np.all(trained != value)


@settings(max_examples=40, deadline=None)
@given(cohorts())
def test_kfold_validates_every_unit_once(case):
    scans, _, seed = case
    result = st.kfold(scans, 3, np.random.default_rng(seed), 0.0, None)
    val_count = np.zeros(scans.n_units, int)
    for idx, roles in result.folds:
        val_count[np.unique(scans.unit[idx][roles == st.VAL])] += 1
    assert np.all(val_count == 1)
