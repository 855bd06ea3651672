"""Statistics equal scipy/statsmodels on fixed vectors; bootstrap CIs reproducible by seed."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from xds.evaluation import stats

A = np.array([0.91, 0.85, 0.78, 0.88, 0.93, 0.67, 0.81, 0.9, 0.74, 0.86, 0.8, 0.95])
# distinct |differences| (no ties), one of them negative
B = A - np.array([0.02, 0.05, 0.08, 0.01, 0.03, 0.12, -0.025, 0.06, 0.04, 0.035, 0.09, 0.015])


def test_wilcoxon_equals_scipy():
    w, p = stats.wilcoxon(A, B)
    ref = sps.wilcoxon(A, B)
    assert (w, p) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue))
    # ties and zero differences: scipy's normal approximation, not a slow permutation test
    tied_a, tied_b = np.r_[A, 0.5, 0.5], np.r_[B, 0.5, 0.4]
    ref = sps.wilcoxon(tied_a, tied_b, method="approx")
    assert stats.wilcoxon(tied_a, tied_b) == (
        pytest.approx(ref.statistic),
        pytest.approx(ref.pvalue),
    )
    assert all(math.isnan(v) for v in stats.wilcoxon(A, A))


def test_holm_equals_statsmodels_and_keeps_nan():
    p = [0.01, 0.04, 0.03, 0.2, math.nan]
    got = stats.holm(p)
    ref = multipletests(p[:4], method="holm")[1]
    np.testing.assert_allclose(got[:4], ref)
    assert math.isnan(got[4])


def test_bootstrap_ci_equals_scipy_and_is_reproducible_by_seed():
    low, high = stats.bootstrap_ci(A, seed=11, n_resamples=1000)
    ref = sps.bootstrap((A,), np.mean, n_resamples=1000, method="percentile",
                        rng=np.random.default_rng(11)).confidence_interval  # fmt: skip
    assert (low, high) == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert stats.bootstrap_ci(A, seed=11, n_resamples=1000) == (low, high)
    assert stats.bootstrap_ci(A, seed=12, n_resamples=1000) != (low, high)
    assert low < A.mean() < high
    assert all(math.isnan(v) for v in stats.bootstrap_ci([0.5]))


def _frame():
    rows = []
    for i, (a, b) in enumerate(zip(A, B, strict=True)):
        for evaluation, value in (("first", a), ("second", b)):
            rows.append({
                "evaluation": evaluation, "scan_id": f"s{i}", "subject_id": f"p{i // 2}",
                "class_name": "pancreas", "annotated": True, "dice": value,
                "sequence": "T1W" if i % 2 == 0 else "T2W", "center": "X" if i < 6 else "Y",
                "trained_on": "A" if evaluation == "first" else "B", "dataset": "D",
            })  # fmt: skip
    return pd.DataFrame(rows)


def test_subgroup_summary_gaps_and_kruskal():
    frame = _frame()
    summary = stats.subgroup_summary(frame, "center", "dice", seed=1, n_resamples=500)
    first_x = summary[(summary.evaluation == "first") & (summary.group == "X")].iloc[0]
    assert first_x["n"] == 6
    assert first_x["mean"] == pytest.approx(A[:6].mean())
    assert first_x["median"] == pytest.approx(np.median(A[:6]))
    assert first_x["sd"] == pytest.approx(A[:6].std(ddof=1))
    gaps = stats.group_gaps(frame, summary)
    row = gaps[gaps.evaluation == "first"].iloc[0]
    worst = "X" if A[:6].mean() < A[6:].mean() else "Y"
    assert row["worst_group"] == worst
    assert row["gap"] == pytest.approx(abs(A[:6].mean() - A[6:].mean()))
    assert row["kruskal_p"] == pytest.approx(sps.kruskal(A[:6], A[6:]).pvalue)
    # distances: the worst group is the highest mean
    frame["hd95_mm"] = frame["dice"] * 10
    s2 = stats.subgroup_summary(frame, "center", "hd95_mm", n_resamples=200)
    g2 = stats.group_gaps(frame, s2)
    assert g2[g2.evaluation == "first"].iloc[0]["worst_group"] != worst


def test_paired_comparison_equals_scipy_per_group():
    table = stats.paired_comparison(_frame(), "first", "second", ["center"], ["dice"])
    overall = table[table.by == "all"].iloc[0]
    assert overall["n_pairs"] == len(A)
    assert overall["p"] == pytest.approx(sps.wilcoxon(A, B).pvalue)
    x = table[(table.by == "center") & (table.group == "X")].iloc[0]
    assert x["p"] == pytest.approx(sps.wilcoxon(A[:6], B[:6]).pvalue)
    np.testing.assert_allclose(table["p_holm"], multipletests(table["p"], method="holm")[1])


def test_cross_dataset_matrix_and_intra_subject():
    frame = _frame()
    matrix = stats.cross_dataset_matrix(frame, "dice", columns="dataset")
    row = matrix[matrix.row == "A"].iloc[0]
    assert (row["n"], row["mean"], row["sd"]) == (
        len(A), pytest.approx(A.mean()), pytest.approx(A.std(ddof=1)),
    )  # fmt: skip
    intra = stats.intra_subject(frame, "sequence", "T1W", "T2W", ["dice"])
    first = intra[intra.evaluation == "first"].iloc[0]
    assert first["n_subjects"] == len(A) // 2
    ref = sps.wilcoxon(A[0::2], A[1::2])
    assert first["p"] == pytest.approx(ref.pvalue)
