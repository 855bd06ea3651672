"""``xds split``, ``xds splits``, ``xds audit``: leak-free splits and the leakage audit."""

from __future__ import annotations

import sys

import click

from xds.cli.options import (
    jobs_option,
    json_option,
)
from xds.cli.options import resolve_jobs as _jobs
from xds.cli.output import emit_json, print_table, warn


@click.command()
@click.argument("cohort")
@click.option(
    "--strategy",
    type=click.Choice(["holdout", "kfold", "leave-one-out", "single-source", "cross-dataset",
                       "semi-supervised"]),
    default="holdout", show_default=True, help="The split protocol (listed above).",
)  # fmt: skip
@click.option("--ratios", default="70,10,20", show_default=True, help="train,val,test.")
@click.option(
    "--stratify",
    default="center,sequence",
    show_default=True,
    help="scan_view columns whose combinations are the strata ('' for none).",
)
@click.option("--column", help="Column a leave-one-out/single-source/cross-dataset split "
              "varies (default: sequence, sequence, dataset).")  # fmt: skip
@click.option("--group", help="scan_view column coarser than the subject to keep together.")
@click.option("--k", "k", type=int, default=5, show_default=True, help="kfold: folds.")
@click.option("--test-share", type=float, default=0.0, show_default=True,
              help="kfold: share of subjects held out as a fixed test set.")  # fmt: skip
@click.option("--fractions", default="5,10,20,40", show_default=True,
              help="semi-supervised: labelled percentages of train (nested).")  # fmt: skip
@click.option("--external", help="scan_view clause: a fixed external test set, e.g. "
              "\"center = 'Delta'\".")  # fmt: skip
@click.option("--external-fraction", type=float, default=0.0,
              help="Or this share of subjects as the external test set.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--name", help="Split name (default: <cohort>-<strategy>-s<seed>).")
@json_option
@click.pass_obj
def split(state, cohort, strategy, ratios, stratify, column, group, k, test_share, fractions,
          external, external_fraction, seed, name, as_json):  # fmt: skip
    """Split a cohort by subject with one of the seeds' protocols; store it.

    \b
    holdout          train/val/test by --ratios per stratum (CrossPan 70/10/20)
    kfold            stratified group k-fold (train/val per fold), --test-share fixed test
    leave-one-out    one fold per value of --column, tested on it, trained on the rest
                     (leave-one-center-out; CrossPan's leave-one-sequence-out)
    single-source    one fold per value: trained on it, tested on the rest
    cross-dataset    one fold per dataset: trained on it, tested on every dataset's test
                     part (A-Eval's matrix)
    semi-supervised  a holdout whose train role is labelled at nested --fractions, the
                     rest 'unlabeled' (one fold per fraction)

    A subject's scans (or a --group's) always share one role within a fold; --external
    units are test in every fold. Same seed, same split.
    """
    from xds.splits.store import make_split

    columns = tuple(c.strip() for c in stratify.split(",") if c.strip())
    result = make_split(
        state.catalog(), cohort, strategy, ratios=ratios, stratify=columns, column=column,
        group=group, k=k, test_share=test_share,
        fractions=tuple(float(f) for f in fractions.split(",") if f.strip()),
        external=external, external_fraction=external_fraction, seed=seed, name=name,
    )  # fmt: skip
    summary = result.summary()
    if as_json:
        emit_json(summary)
    else:
        rows = [{"role": r, **c} for r, c in sorted(summary["roles"].items())]
        print_table(rows, f"split {summary['name']} ({strategy}, {len(summary['folds'])} folds)")


@click.command()
@json_option
@click.pass_obj
def splits(state, as_json):
    """List the stored splits."""
    from xds.splits.store import list_splits

    rows = list_splits(state.catalog())
    if as_json:
        emit_json(rows)
    else:
        columns = ["name", "strategy", "seed", "n_scans", "n_subjects", "n_folds", "cohort_id"]
        print_table(rows, "splits", columns)


@click.command()
@click.argument("split_name", metavar="SPLIT")
@click.option("--cohort", "is_cohort", is_flag=True,
              help="SPLIT names a cohort: find duplicates across its subjects.")  # fmt: skip
@click.option("--no-images", is_flag=True, help="Metadata checks only (skip fingerprints).")
@click.option("--threshold", type=float, default=None,
              help="Fingerprint correlation from which two scans are one (0.85).")  # fmt: skip
@click.option("--fix", "show_fix", is_flag=True, help="Print the moves that remove the leaks.")
@click.option("--save-as", help="With --fix: store the fixed split under this name.")
@jobs_option
@json_option
@click.pass_obj
def audit(state, split_name, is_cohort, no_images, threshold, show_fix, save_as, jobs, as_json):
    """Check a split for leaks; exit 1 when there are any.

    \b
    (a) a subject in two roles
    (b) identical decoded voxels in two roles, under any subject id
    (c) near-duplicates in two roles: the same scan resampled, cropped, re-quantized
        or noisy, by its fingerprint
    (d) one study under two subject ids (study UID, or scanner + acquisition time +
        fingerprint)
    (e) a pseudo-label teacher trained on a scan that is now a test case
    """
    from xds.splits.audit import THRESHOLD, apply_fix, audit_cohort, audit_split

    run = audit_cohort if is_cohort else audit_split
    catalog = state.catalog()
    report = run(catalog, split_name, images=not no_images, threshold=threshold or THRESHOLD,
                 jobs=_jobs(jobs))  # fmt: skip
    saved = None
    if save_as:
        if is_cohort or not show_fix:
            raise click.UsageError("--save-as needs --fix on a split")
        saved = apply_fix(catalog, split_name, report.fix, save_as).name if report.fix else None
    if as_json:
        emit_json({**report.summary(), "saved_as": saved})
    else:
        for leak in report.leaks:
            detail = {k: v for k, v in leak.items() if k != "kind"}
            warn(f"leak {leak['kind']}: {detail}")
        if show_fix and report.fix:
            print_table(report.fix, "proposed fix", ["fold", "scan_id", "from", "to"])
        click.echo(
            f"{split_name}: {report.n_scans} scans, {report.n_subjects} subjects, "
            f"{len(report.leaks)} leak(s)" + (f"; fixed split saved as {saved}" if saved else "")
        )
    if not report.clean:
        sys.exit(1)


COMMANDS = [split, splits, audit]
