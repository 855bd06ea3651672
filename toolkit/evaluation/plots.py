"""Report figures with matplotlib (Agg): box/strip per subgroup, forest of CIs, heatmap.

Each function takes the tidy tables of :mod:`xds.evaluation.stats` and writes one PNG; none shows a
window, so reports build on servers without a display.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

LABELS = {"dice": "Dice", "nsd": "NSD", "hd95_mm": "HD95 (mm)", "assd_mm": "ASSD (mm)",
          "vol_diff_ml": "volume difference (ml)", "set_dice": "Set Dice"}  # fmt: skip
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def pyplot():
    """The pyplot module on matplotlib's Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _facets(n: int, width: float = 4.2, height: float = 3.2):
    plt = pyplot()
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat[:n])


def box_strip(frame: pd.DataFrame, by: str, metric: str, path: Path, seed: int = 0) -> Path:
    """Box plots with every case as a dot, per ``by`` group, one panel per class.

    Evaluations sit side by side within a group, in distinct colours.
    """
    classes = sorted(frame["class_name"].unique())
    evaluations = sorted(frame["evaluation"].unique())
    plt, fig, axes = _facets(len(classes))
    rng = np.random.default_rng(seed)  # jitter only; the same seed, the same picture
    width = 0.8 / len(evaluations)
    for ax, cls in zip(axes, classes, strict=True):
        part = frame[frame["class_name"] == cls]
        groups = sorted(part[by].astype(str).unique())
        for e, evaluation in enumerate(evaluations):
            color = _COLORS[e % len(_COLORS)]
            sub = part[part["evaluation"] == evaluation]
            data = [sub[sub[by].astype(str) == g][metric].dropna().to_numpy() for g in groups]
            pos = np.arange(len(groups)) + (e - (len(evaluations) - 1) / 2) * width
            keep = [i for i, d in enumerate(data) if len(d)]
            if keep:
                ax.boxplot(
                    [data[i] for i in keep], positions=pos[keep], widths=width * 0.8,
                    showfliers=False, patch_artist=True,
                    boxprops={"facecolor": color, "alpha": 0.25, "edgecolor": color},
                    medianprops={"color": color},
                )  # fmt: skip
            for i in keep:
                jitter = rng.uniform(-width * 0.3, width * 0.3, len(data[i]))
                ax.scatter(pos[i] + jitter, data[i], s=9, color=color, alpha=0.8,
                           label=evaluation if i == keep[0] else None)  # fmt: skip
        ax.set_xticks(np.arange(len(groups)), groups, rotation=30, ha="right")
        ax.set_title(cls)
        ax.set_xlabel(by)
        ax.set_ylabel(LABELS.get(metric, metric))
        ax.grid(axis="y", alpha=0.3)
    if len(evaluations) > 1:
        axes[0].legend(fontsize=8)
    return _save(plt, fig, path)


def forest(summary: pd.DataFrame, by: str, metric: str, path: Path) -> Path:
    """Mean and bootstrap CI per subgroup (rows), one panel per class."""
    part = summary[(summary["by"] == by) & (summary["metric"] == metric)]
    classes = sorted(part["class_name"].unique())
    evaluations = sorted(part["evaluation"].unique())
    groups = sorted(part["group"].unique())
    plt, fig, axes = _facets(len(classes), height=0.45 * len(groups) * len(evaluations) + 1.2)
    step = 0.8 / len(evaluations)
    for ax, cls in zip(axes, classes, strict=True):
        for e, evaluation in enumerate(evaluations):
            sub = part[(part["class_name"] == cls) & (part["evaluation"] == evaluation)]
            sub = sub.set_index("group").reindex(groups)
            y = np.arange(len(groups)) + (e - (len(evaluations) - 1) / 2) * step
            low = (sub["mean"] - sub["ci_low"]).clip(lower=0).fillna(0)
            high = (sub["ci_high"] - sub["mean"]).clip(lower=0).fillna(0)
            ax.errorbar(sub["mean"], y, xerr=[low, high], fmt="o", capsize=3,
                        color=_COLORS[e % len(_COLORS)], label=evaluation)  # fmt: skip
        ax.set_yticks(np.arange(len(groups)), groups)
        ax.invert_yaxis()
        ax.set_title(cls)
        ax.set_xlabel(f"mean {LABELS.get(metric, metric)} (95% CI)")
        ax.set_ylabel(by)
        ax.grid(axis="x", alpha=0.3)
    if len(evaluations) > 1:
        axes[0].legend(fontsize=8)
    return _save(plt, fig, path)


def heatmap(matrix: pd.DataFrame, metric: str, path: Path) -> Path:
    """The cross-dataset matrix: rows trained on, columns tested on, cells mean ± SD."""
    plt = pyplot()
    means = matrix.pivot(index="row", columns="column", values="mean")
    sds = matrix.pivot(index="row", columns="column", values="sd")
    fig, ax = plt.subplots(figsize=(1.3 * means.shape[1] + 2.5, 0.8 * means.shape[0] + 1.8))
    cmap = "viridis" if metric in ("dice", "nsd") else "viridis_r"
    im = ax.imshow(means.to_numpy(np.float64), cmap=cmap, aspect="auto")
    for i in range(means.shape[0]):
        for j in range(means.shape[1]):
            m, s = means.iat[i, j], sds.iat[i, j]
            if not np.isnan(m):
                text = f"{m:.3f}" + ("" if np.isnan(s) else f"\n± {s:.3f}")
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white")
    ax.set_xticks(range(means.shape[1]), [str(c) for c in means.columns], rotation=30, ha="right")
    ax.set_yticks(range(means.shape[0]), [str(r) for r in means.index])
    ax.set_xlabel("tested on")
    ax.set_ylabel("trained on")
    fig.colorbar(im, ax=ax, label=LABELS.get(metric, metric))
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
