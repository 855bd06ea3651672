"""``xds evaluate``, ``xds evaluations`` and ``xds report``: scores and subgroup reports."""

from __future__ import annotations

import click

from xds.cli.options import csv_list, jobs_option, json_option, resolve_jobs
from xds.cli.output import emit_json, print_kv, print_table, warn


@click.command("evaluate")
@click.option(
    "--pred",
    "predictions",
    required=True,
    help="Folder of {scan_id}.nii.gz label maps (e.g. nnU-Net's output folder), or the name "
    "of a run whose predictions of --cohort `xds predict` recorded.",
)
@click.option("--cohort", required=True, help="Cohort whose scans are scored.")
@click.option("--split", "split_name", help="Score only one role of this split.")
@click.option("--role", default="test", show_default=True, help="The split role to score.")
@click.option("--fold", type=int, default=0, show_default=True)
@click.option(
    "--classes",
    help="Class set (aeval8, crosspan...) or classes; default: all the prediction labels name.",
)
@click.option(
    "--pred-labels",
    help="What prediction values mean: a class set, a built-in "
    "label map, classes in index order, generic:N (label_1..label_N, e.g. synthetic sets), "
    "or a JSON file (default: DIR/dataset.json).",
)
@click.option("--tau", type=float, default=2.0, show_default=True, help="NSD tolerance (mm).")
@click.option(
    "--surface",
    type=click.Choice(["surfel", "voxel"]),
    default="surfel",
    show_default=True,
    help="surfel = DeepMind surface-distance; voxel = MONAI's default.",
)
@click.option(
    "--hd",
    type=click.Choice(["max", "pooled"]),
    default="max",
    show_default=True,
    help="HD95: larger directed percentile (MONAI, DeepMind) or pooled (medpy).",
)
@click.option(
    "--both-empty",
    type=click.Choice(["nan", "perfect"]),
    default="nan",
    show_default=True,
    help="Scores of a class absent from both masks.",
)
@click.option(
    "--missing-distance",
    type=click.Choice(["diagonal", "inf", "nan"]),
    default="diagonal",
    show_default=True,
    help="HD95/ASSD when exactly one mask is empty.",
)
@click.option("--name", help="Name of this evaluation (default: the folder's name).")
@click.option("--trained-on", help="Training set name, for cross-dataset matrices.")
@click.option("--set-by", help="scan_view column forming sets: adds Set Dice per set.")
@click.option("--allow-missing", is_flag=True, help="Score the cases that have a prediction.")
@jobs_option
@json_option
@click.pass_obj
def evaluate_cmd(state, predictions, cohort, split_name, role, fold, classes, pred_labels, tau,
                 surface, hd, both_empty, missing_distance, name, trained_on, set_by,
                 allow_missing, jobs, as_json):  # fmt: skip
    """Score predictions per case and class (Dice, NSD, HD95, ASSD, volumes).

    Rows go to the catalog's metrics table; `xds sql "SELECT * FROM metric_view"` joins
    them to every scan and subject column, and `xds report NAME` summarizes them. A case
    whose prediction is not on its reference's grid is reported and skipped (exit 1).
    """
    from pathlib import Path

    from xds.evaluation.scoring import evaluate

    catalog = state.catalog()
    if not Path(predictions).is_dir():
        predictions, name = _run_predictions(catalog, predictions, cohort), name or predictions
    result = evaluate(
        catalog, predictions, cohort=cohort, split=split_name, role=role, fold=fold,
        classes=classes,
        pred_labels=pred_labels, tau=tau, surface=surface, hd=hd, both_empty=both_empty,
        missing_distance=missing_distance, name=name, trained_on=trained_on, set_by=set_by,
        allow_missing=allow_missing, jobs=resolve_jobs(jobs),
    )  # fmt: skip
    if as_json:
        emit_json(result.summary())
    else:
        rows = [{"class": cls, **{m: f"{v:.4f}" for m, v in means.items()}}
                for cls, means in result.mean.items()]  # fmt: skip
        print_table(rows, f"evaluation {result.name}: {result.n_cases} cases (means)")
        if result.set_dice:
            columns = ["set_by", "set_value", "class_name", "set_dice", "best_label", "n_images"]
            print_table(result.set_dice, "Set Dice", columns)
        if result.no_reference:
            warn(f"{result.no_reference} scan(s) have no reference label and were not scored")
        if result.missing:
            warn(f"{len(result.missing)} case(s) had no prediction (--allow-missing)")
    for error in result.errors:
        warn(f"error: {error}")
    if result.errors:
        raise SystemExit(1)


def _run_predictions(catalog, run: str, cohort: str):
    """The folder run ``run`` predicted for ``cohort`` (``xds predict``)."""
    from xds.catalog.cohorts import get_cohort
    from xds.trainers.runs import prediction_folder

    folder = prediction_folder(catalog, run, get_cohort(catalog, cohort).cohort_id)
    if folder is None:
        raise click.ClickException(
            f"--pred {run!r}: not a folder, and no run of that name predicted cohort "
            f"{cohort!r} (xds predict {run} --cohort {cohort})"
        )
    return folder


@click.command("evaluations")
@json_option
@click.pass_obj
def evaluations_cmd(state, as_json):
    """List the stored evaluations."""
    table = state.catalog().read("evaluations")
    keep = ["name", "n_cases", "classes", "surface", "tau_mm", "role", "trained_on", "created_at"]
    rows = table.select(keep).to_pylist()
    for row in rows:
        row["classes"] = ",".join(row["classes"])
    emit_json(rows) if as_json else print_table(rows, "evaluations")


@click.command("report")
@click.argument("evaluations", nargs=-1, required=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Report folder (default: ./xds-report-NAME[-vs-NAME2]).",
)
@click.option(
    "--by",
    default="sequence,center,vendor,sex,age_bin",
    show_default=True,
    help="metric_view columns to stratify by.",
)
@click.option(
    "--metrics",
    default="dice,nsd,hd95_mm",
    show_default=True,
    help="Among dice, nsd, hd95_mm, assd_mm, vol_diff_ml.",
)
@click.option("--classes", help="Classes to report (default: all evaluated).")
@click.option(
    "--matrix",
    help="Cross-dataset matrix: this column (e.g. dataset) across, "
    "the evaluations' --trained-on down.",
)
@click.option("--pair", help="Intra-subject comparison, COLUMN=A,B (e.g. sequence=T1W,T2W).")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option(
    "--n-boot",
    type=click.IntRange(100),
    default=2000,
    show_default=True,
    help="Bootstrap resamples.",
)
@click.option("--confidence", type=click.FloatRange(0.5, 0.999), default=0.95, show_default=True)
@click.option("--title", help="Page title.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out folder.")
@json_option
@click.pass_obj
def report_cmd(state, evaluations, out, by, metrics, classes, matrix, pair, seed, n_boot,
               confidence, title, force, as_json):  # fmt: skip
    """Subgroup statistics, paired tests, plots and an HTML page for evaluations.

    \b
    Per group of each --by column: n, mean, median, bootstrap CI (cases resampled),
    worst group and gap, Kruskal-Wallis. With two or more evaluations, the first is
    compared with each other on shared cases (Wilcoxon signed-rank, Holm). Writes
    report.html (self-contained), tables/*.csv|md and figures/*.png.
    """
    from xds.evaluation.report import build_report

    pairing = None
    if pair:
        column, _, values = pair.partition("=")
        sides = csv_list(values) or []
        if not column or len(sides) != 2:
            raise click.BadParameter(
                "expected COLUMN=A,B, e.g. sequence=T1W,T2W", param_hint="--pair"
            )
        pairing = (column, sides[0], sides[1])
    result = build_report(
        state.catalog(), list(evaluations), out=out or "xds-report-" + "-vs-".join(evaluations),
        by=csv_list(by) or [], metrics=csv_list(metrics) or [], classes=csv_list(classes),
        matrix=matrix, pair=pairing, seed=seed, n_resamples=n_boot, confidence=confidence,
        title=title, force=force,
    )  # fmt: skip
    if as_json:
        emit_json(result.summary())
        return
    worst = [{k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()
              if k in ("evaluation", "class_name", "by", "metric", "worst_group", "worst_mean",
                       "gap", "kruskal_p")} for row in result.worst_groups]  # fmt: skip
    print_table(worst, "worst group per column")
    where = {"report": f"{result.path}/report.html", "cases": result.cases,
             "tables": len(result.tables), "figures": len(result.figures)}  # fmt: skip
    print_kv(where, "xds report")


COMMANDS = [evaluate_cmd, evaluations_cmd, report_cmd]
