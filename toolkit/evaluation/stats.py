"""Subgroup statistics of per-case metrics, by scipy.stats and statsmodels.

Every function takes a tidy table (pandas, one row per case x class, as ``metric_view``
gives) and returns a tidy table, so the report, a notebook and a paper's tables share them:

- :func:`subgroup_summary`: n, mean, SD, median and a bootstrap CI of the mean per group;
- :func:`group_gaps`: worst and best group, their gap, and Kruskal-Wallis across groups;
- :func:`paired_comparison`: Wilcoxon signed-rank between two evaluations on the same
  cases, per group, Holm-corrected over the family of tests;
- :func:`cross_dataset_matrix`: mean ± SD, rows the training set, columns the test set;
- :func:`intra_subject`: the same subject's two sequences (or modalities) compared.

Bootstrap CIs resample cases (a case's classes stay together when classes are pooled)
with a seeded generator, so the same seed gives the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from xds.schemas.errors import EvaluationError

HIGHER_IS_BETTER = {"dice": True, "nsd": True, "hd95_mm": False, "assd_mm": False,
                    "vol_diff_ml": False, "set_dice": True}  # fmt: skip
"""Direction of each metric: which group is the worst."""


def bootstrap_ci(
    values: Sequence[float],
    *,
    seed: int = 0,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    method: str = "percentile",
) -> tuple[float, float]:
    """A bootstrap confidence interval of the mean (``scipy.stats.bootstrap``).

    Fewer than two values, or values all equal, have no interval: (nan, nan).
    """
    data = np.asarray(values, dtype=np.float64)
    data = data[~np.isnan(data)]
    if len(data) < 2 or np.all(data == data[0]):
        return math.nan, math.nan
    result = stats.bootstrap(
        (data,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method=method,
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def case_values(frame: pd.DataFrame, metric: str, pooled: bool) -> pd.DataFrame:
    """One value per case x class, or per case (classes averaged) when ``pooled``."""
    scored = frame[frame["annotated"] & frame[metric].notna()]
    if not pooled:
        return scored
    keys = [c for c in scored.columns if c not in {metric, "class_name"}]
    keep = [c for c in ("evaluation", "scan_id", "subject_id", "trained_on") if c in keys]
    extra = [c for c in keys if c not in keep]
    agg = {metric: "mean", **{c: "first" for c in extra}}
    out = scored.groupby(keep, dropna=False, sort=True).agg(agg).reset_index()
    return out.assign(class_name="all")


def subgroup_summary(
    frame: pd.DataFrame,
    by: str,
    metric: str,
    *,
    seed: int = 0,
    n_resamples: int = 2000,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per evaluation x class x ``by`` group: n, mean, sd, median, ci_low, ci_high."""
    _need(frame, [by, metric])
    rows = []
    for (evaluation, cls, group), part in frame.groupby(
        ["evaluation", "class_name", frame[by].astype(str)], sort=True
    ):
        values = part[metric].to_numpy(dtype=np.float64)
        low, high = bootstrap_ci(values, seed=seed, n_resamples=n_resamples, confidence=confidence)
        rows.append({
            "evaluation": evaluation, "class_name": cls, "by": by, "group": group,
            "metric": metric, "n": len(values), "mean": float(np.mean(values)),
            "sd": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
            "median": float(np.median(values)), "ci_low": low, "ci_high": high,
        })  # fmt: skip
    return pd.DataFrame(rows)


def group_gaps(frame: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Worst and best group per evaluation x class x metric, their gap, and Kruskal-Wallis.

    The worst group is the lowest mean for Dice/NSD and the highest for distances.
    Kruskal-Wallis (``scipy.stats.kruskal``) needs two groups with values.
    """
    rows = []
    for (evaluation, cls, by, metric), part in summary.groupby(
        ["evaluation", "class_name", "by", "metric"], sort=True
    ):
        ordered = part.sort_values("mean", ascending=HIGHER_IS_BETTER.get(metric, True))
        worst, best = ordered.iloc[0], ordered.iloc[-1]
        sel = frame[(frame["evaluation"] == evaluation) & (frame["class_name"] == cls)]
        groups = [g[metric].to_numpy(np.float64) for _, g in sel.groupby(sel[by].astype(str))]
        groups = [g for g in groups if len(g)]
        h, p = math.nan, math.nan
        pooled = np.concatenate(groups) if groups else np.empty(0)
        if len(groups) >= 2 and not np.all(pooled == pooled[0]):
            h, p = (float(v) for v in stats.kruskal(*groups))
        rows.append({
            "evaluation": evaluation, "class_name": cls, "by": by, "metric": metric,
            "groups": len(part), "worst_group": worst["group"], "worst_mean": worst["mean"],
            "best_group": best["group"], "best_mean": best["mean"],
            "gap": abs(best["mean"] - worst["mean"]), "kruskal_h": h, "kruskal_p": p,
        })  # fmt: skip
    return pd.DataFrame(rows)


def wilcoxon(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Paired Wilcoxon signed-rank (``scipy.stats.wilcoxon``); (nan, nan) when undefined.

    Zero differences are dropped (Wilcoxon's convention). With ties or zeros the p-value
    is the normal approximation: scipy's default would run a permutation test, which
    costs about a second per test and adds nothing at these sample sizes.
    """
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(x) < 2 or np.all(x == y):
        return math.nan, math.nan
    d = x - y
    ties = np.any(d == 0) or len(np.unique(np.abs(d))) < len(d)
    result = stats.wilcoxon(x, y, method="approx" if ties else "auto")
    return float(result.statistic), float(result.pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (``statsmodels.multipletests``); NaN stays NaN."""
    p = np.asarray(pvalues, np.float64)
    out = np.full(len(p), np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out.tolist()


def paired_comparison(
    frame: pd.DataFrame, first: str, second: str, by: Sequence[str], metrics: Sequence[str]
) -> pd.DataFrame:
    """Wilcoxon signed-rank of ``first`` vs ``second`` on the cases both scored.

    One test per class x metric overall and per group of each ``by`` column; the Holm
    correction runs over all of them (one family per report).
    """
    a = frame[frame["evaluation"] == first]
    b = frame[frame["evaluation"] == second]
    if a.empty or b.empty:
        raise EvaluationError(f"paired comparison needs rows of both {first!r} and {second!r}")
    rows = []
    for metric in metrics:
        keep = ["scan_id", "class_name", *by, metric]
        merged = a[keep].merge(
            b[["scan_id", "class_name", metric]], on=["scan_id", "class_name"],
            suffixes=("_a", "_b"),
        ).dropna(subset=[f"{metric}_a", f"{metric}_b"])  # fmt: skip
        parts = [("all", "all", merged)]
        for column in by:
            parts += [(column, str(g), p) for g, p in merged.groupby(merged[column].astype(str))]
        for column, group, part in parts:
            for cls, sub in part.groupby("class_name"):
                x, y = sub[f"{metric}_a"], sub[f"{metric}_b"]
                w, p = wilcoxon(x, y)
                rows.append({
                    "first": first, "second": second, "metric": metric, "class_name": cls,
                    "by": column, "group": group, "n_pairs": len(sub),
                    "mean_first": float(x.mean()), "mean_second": float(y.mean()),
                    "median_diff": float(np.median(x - y)), "wilcoxon_w": w, "p": p,
                })  # fmt: skip
    out = pd.DataFrame(rows)
    if not out.empty:
        out["p_holm"] = holm(out["p"].tolist())
    return out


def cross_dataset_matrix(
    frame: pd.DataFrame, metric: str, rows: str = "trained_on", columns: str = "dataset"
) -> pd.DataFrame:
    """Mean and SD of ``metric`` per (training set, test set): A-Eval's matrix.

    Cases pool their classes first. Returns a long table (row, column, n, mean, sd).
    """
    _need(frame, [rows, columns, metric])
    if frame[rows].isna().all():
        raise EvaluationError(
            "no evaluation says what it was trained on; pass --trained-on to xds evaluate"
        )
    out = []
    per_case = case_values(frame, metric, pooled=True)
    for (r, c), part in per_case.groupby([rows, columns], sort=True):
        values = part[metric].to_numpy(np.float64)
        out.append({
            "row": r, "column": c, "n": len(values), "mean": float(values.mean()),
            "sd": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
        })  # fmt: skip
    return pd.DataFrame(out)


def intra_subject(
    frame: pd.DataFrame, column: str, first: str, second: str, metrics: Sequence[str]
) -> pd.DataFrame:
    """The same subjects' ``first`` vs ``second`` value of ``column`` (e.g. T1W vs T2W).

    Per evaluation x class x metric: subjects with both (their scans averaged within a
    value), the two means, and a paired Wilcoxon signed-rank test, Holm-corrected.
    """
    _need(frame, [column, "subject_id"])
    rows = []
    for metric in metrics:
        scored = frame[frame[metric].notna()]
        for (evaluation, cls), part in scored.groupby(["evaluation", "class_name"], sort=True):
            per = part[part[column].isin([first, second])]
            table = per.pivot_table(index="subject_id", columns=column, values=metric)
            if first not in table or second not in table:
                continue
            both = table[[first, second]].dropna()
            w, p = wilcoxon(both[first], both[second])
            rows.append({
                "evaluation": evaluation, "class_name": cls, "metric": metric,
                "column": column, "first": first, "second": second, "n_subjects": len(both),
                "mean_first": float(both[first].mean()) if len(both) else math.nan,
                "mean_second": float(both[second].mean()) if len(both) else math.nan,
                "wilcoxon_w": w, "p": p,
            })  # fmt: skip
    out = pd.DataFrame(rows)
    if not out.empty:
        out["p_holm"] = holm(out["p"].tolist())
    return out


def _need(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise EvaluationError(
            f"column(s) {missing} are not in metric_view; known: {', '.join(frame.columns)}"
        )
