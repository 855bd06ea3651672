"""The subgroup report of one or more evaluations (``xds report``).

Writes into one folder::

    report.html      self-contained (figures embedded), opens anywhere, sortable tables
    report.json      the numbers, for scripts
    tables/*.csv     subgroups, gaps, paired, matrix, intra_subject: for papers and notebooks
    tables/*.md      the same as Markdown
    figures/*.png    box/strip and forest plots per subgroup column and metric, heatmaps
"""

from __future__ import annotations

import html
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

import xds.evaluation.plots as plots
import xds.evaluation.stats as stats
from xds.catalog import Catalog
from xds.evaluation.html import SORT_SCRIPT, STYLE, embed_png, html_table
from xds.schemas.errors import EvaluationError

DEFAULT_BY = ("sequence", "center", "vendor", "sex", "age_bin")
DEFAULT_METRICS = ("dice", "nsd", "hd95_mm")


@dataclass
class Report:
    """Where a report went and what it holds."""

    path: str
    evaluations: list[str]
    by: list[str]
    metrics: list[str]
    cases: int
    tables: dict[str, str] = field(default_factory=dict)  # name -> csv path
    figures: list[str] = field(default_factory=list)
    worst_groups: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        """JSON-ready description."""
        return dict(self.__dict__)


def load_metrics(catalog: Catalog, evaluations: list[str]) -> pd.DataFrame:
    """``metric_view`` rows of the named evaluations, as a pandas table.

    Raises:
        EvaluationError: an evaluation name the catalog does not know.
    """
    known = set(catalog.read("evaluations").column("name").to_pylist())
    unknown = [e for e in evaluations if e not in known]
    if unknown:
        listing = ", ".join(sorted(known)) or "none yet: run xds evaluate"
        raise EvaluationError(f"no evaluation named {unknown[0]!r}; known: {listing}")
    table = catalog.read("metric_view", where="list_contains(?, evaluation)", params=[evaluations])
    frame = table.to_pandas()
    for column in ("dice", "nsd", "hd95_mm", "assd_mm", "vol_diff_ml"):
        frame[column] = frame[column].astype("float64")
    return frame


def build_report(
    catalog: Catalog,
    evaluations: list[str],
    *,
    out: str | Path,
    by: tuple[str, ...] | list[str] = DEFAULT_BY,
    metrics: tuple[str, ...] | list[str] = DEFAULT_METRICS,
    classes: list[str] | None = None,
    matrix: str | None = None,
    pair: tuple[str, str, str] | None = None,
    seed: int = 0,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    title: str | None = None,
    force: bool = False,
) -> Report:
    """Subgroup statistics, tests, figures and an HTML page for evaluations.

    Args:
        catalog: the catalog.
        evaluations: one or more evaluation names; with two or more, the first is compared
            with each other one (paired Wilcoxon on shared cases, Holm-corrected).
        out: the report folder (created; must be empty unless ``force``).
        by: ``metric_view`` columns to stratify by; columns with no values are skipped.
        metrics: among dice, nsd, hd95_mm, assd_mm, vol_diff_ml.
        classes: classes to report (default: all evaluated).
        matrix: a column for the cross-dataset matrix's columns (e.g. ``dataset``); rows
            are the evaluations' ``trained_on``.
        pair: (column, first, second), e.g. ``("sequence", "T1W", "T2W")``: intra-subject
            comparison of the same subjects' two values.
        seed: bootstrap and jitter seed.
        n_resamples: bootstrap resamples.
        confidence: CI level.
        title: the page title.
        force: replace a non-empty ``out``.

    Raises:
        EvaluationError: unknown evaluation, column or metric; a non-empty ``out``.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise EvaluationError(f"{out} exists and is not empty (use --force to replace it)")
        shutil.rmtree(out)
    bad = [m for m in metrics if m not in stats.HIGHER_IS_BETTER]
    if bad:
        raise EvaluationError(
            f"unknown metric(s) {bad}; known: {', '.join(stats.HIGHER_IS_BETTER)}"
        )
    frame = load_metrics(catalog, list(evaluations))
    frame = frame[frame["annotated"]]
    if classes:
        frame = frame[frame["class_name"].isin(classes)]
    if frame.empty:
        raise EvaluationError("no scored case x class rows to report")
    missing = [b for b in by if b not in frame.columns]
    if missing:
        raise EvaluationError(f"--by column(s) {missing} are not in metric_view")
    by = [b for b in by if frame[b].notna().any()]
    (out / "tables").mkdir(parents=True)
    (out / "figures").mkdir()
    report = Report(str(out), list(evaluations), list(by), list(metrics),
                    int(frame["scan_id"].nunique()))  # fmt: skip

    sections: list[tuple[str, str]] = []
    summaries, gaps = [], []
    for metric in metrics:
        cases = _with_pooled(frame, metric)
        for column in by:
            summary = stats.subgroup_summary(
                cases, column, metric, seed=seed, n_resamples=n_resamples, confidence=confidence
            )
            summaries.append(summary)
            gaps.append(stats.group_gaps(cases, summary))
            figures = out / "figures"
            box = plots.box_strip(
                cases, column, metric, figures / f"box_{column}_{metric}.png", seed
            )
            tree = plots.forest(summary, column, metric, figures / f"forest_{column}_{metric}.png")
            report.figures += [str(box), str(tree)]
    subgroups = pd.concat(summaries, ignore_index=True)
    gap_table = pd.concat(gaps, ignore_index=True)
    _save(report, out, "subgroups", subgroups)
    _save(report, out, "gaps", gap_table)
    report.worst_groups = gap_table[gap_table["class_name"] == "all"].to_dict("records") or (
        gap_table.to_dict("records")
    )
    sections.append(("Subgroups", _subgroup_html(subgroups, gap_table, by, metrics, out)))

    if len(evaluations) > 1:
        paired = pd.concat(
            [stats.paired_comparison(frame, evaluations[0], other, by, metrics)
             for other in evaluations[1:]],
            ignore_index=True,
        )  # fmt: skip
        paired["p_holm"] = stats.holm(paired["p"].tolist())  # one family for the report
        _save(report, out, "paired", paired)
        sections.append(("Paired comparison (Wilcoxon signed-rank, Holm)", html_table(paired)))
    if matrix is not None:
        parts = []
        for metric in metrics:
            table = stats.cross_dataset_matrix(frame, metric, columns=matrix).assign(metric=metric)
            parts.append(table)
            fig = plots.heatmap(table, metric, out / "figures" / f"matrix_{metric}.png")
            report.figures.append(str(fig))
        matrix_table = pd.concat(parts, ignore_index=True)
        _save(report, out, "matrix", matrix_table)
        body = "".join(embed_png(out / "figures" / f"matrix_{m}.png") for m in metrics)
        sections.append(("Cross-dataset matrix", body + html_table(matrix_table)))
    if pair is not None:
        intra = stats.intra_subject(frame, pair[0], pair[1], pair[2], metrics)
        _save(report, out, "intra_subject", intra)
        sections.append((f"Intra-subject: {pair[1]} vs {pair[2]} ({pair[0]})", html_table(intra)))

    meta = _evaluations_html(catalog, evaluations)
    page = _page(title or "xds report: " + ", ".join(evaluations), meta, sections, catalog)
    (out / "report.html").write_text(page, encoding="utf-8")
    (out / "report.json").write_text(json.dumps(report.summary(), indent=2, default=str))
    return report


def _with_pooled(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per-class rows plus, with several classes, each case's mean as class ``all``."""
    per_class = stats.case_values(frame, metric, pooled=False)
    if per_class["class_name"].nunique() < 2:
        return per_class
    return pd.concat([per_class, stats.case_values(frame, metric, pooled=True)], ignore_index=True)


def _save(report: Report, out: Path, name: str, table: pd.DataFrame) -> None:
    csv = out / "tables" / f"{name}.csv"
    table.to_csv(csv, index=False)
    (out / "tables" / f"{name}.md").write_text(
        table.to_markdown(index=False, floatfmt=".4g") + "\n", encoding="utf-8"
    )
    report.tables[name] = str(csv)


def _subgroup_html(subgroups, gap_table, by, metrics, out: Path) -> str:
    parts = []
    for column in by:
        parts.append(f"<h3>by {html.escape(column)}</h3>")
        for metric in metrics:
            parts.append(f"<h4>{html.escape(plots.LABELS.get(metric, metric))}</h4>")
            parts.append('<div class="figs">')
            parts.append(embed_png(out / "figures" / f"box_{column}_{metric}.png"))
            parts.append(embed_png(out / "figures" / f"forest_{column}_{metric}.png"))
            parts.append("</div>")
            sel = subgroups[(subgroups["by"] == column) & (subgroups["metric"] == metric)]
            parts.append(html_table(sel.drop(columns=["by", "metric"])))
            gaps = gap_table[(gap_table["by"] == column) & (gap_table["metric"] == metric)]
            parts.append("<p>Worst group, gap and Kruskal-Wallis across groups:</p>")
            parts.append(html_table(gaps.drop(columns=["by", "metric"])))
    return "\n".join(parts)


def _evaluations_html(catalog: Catalog, names: list[str]) -> str:
    rows = catalog.read("evaluations", where="list_contains(?, name)", params=[names])
    keep = ["name", "predictions", "n_cases", "classes", "surface", "tau_mm", "hd", "role",
            "trained_on", "catalog_version", "created_at"]  # fmt: skip
    frame = rows.select(keep).to_pandas()
    frame["predictions"] = frame["predictions"].map(lambda p: Path(p).name)
    frame["classes"] = frame["classes"].map(", ".join)
    return html_table(frame)


def _page(title: str, meta: str, sections: list[tuple[str, str]], catalog: Catalog) -> str:
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{content}" for h, content in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body><h1>{html.escape(title)}</h1>
<p class="meta">catalog {html.escape(str(catalog.root.name))}, version {catalog.version}.
Bootstrap 95% CIs resample cases; class "all" is each case's mean over its scored classes.</p>
<h2>Evaluations</h2>{meta}
{body}
<script>{SORT_SCRIPT}</script>
</body></html>
"""
