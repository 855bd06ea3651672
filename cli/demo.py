"""``xds demo``: the whole pipeline on a generated phantom world."""

from __future__ import annotations

import click

from xds.cli.options import (
    jobs_option,
    json_option,
)
from xds.cli.options import resolve_jobs as _jobs
from xds.cli.output import emit_json, print_kv, print_table


@click.command()
@click.option(
    "--out",
    default="./xds-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for phantoms/, catalog/, nnunet_raw/ (an earlier demo's is replaced).",
)
@click.option("--centers", type=click.IntRange(1), default=4, show_default=True)
@click.option("--subjects-per-center", type=click.IntRange(2), default=12, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace --out even if it is not an earlier demo.")
@click.option(
    "--epochs", type=click.IntRange(0), default=10, show_default=True,
    help="Training epochs (20 batches each) per model; 0 skips training.",
)  # fmt: skip
@jobs_option
@json_option
def demo(out, centers, subjects_per_center, seed, force, epochs, jobs, as_json):
    """Run the pipeline end to end on a generated phantom world.

    phantoms -> ingest every center -> cohort (scans with a pancreas label) -> 70/10/20
    patient-level split stratified by center x sequence -> leakage audit -> nnU-Net export
    -> a torch model trained on T1W only and one on all sequences (a few CPU minutes),
    each scored on every sequence's test scans -> the subgroup report (report/): CrossPan's
    cross-sequence collapse, in small.
    """
    from xds.trainers.demo import run_demo

    summary = run_demo(out, centers=centers, subjects_per_center=subjects_per_center, seed=seed,
                       jobs=_jobs(jobs), force=force, epochs=epochs)  # fmt: skip
    if as_json:
        emit_json(summary)
        return
    centers_seen = sorted({k.split("/")[0] for k in summary["cohort_by_center_sequence"]})
    sequences = sorted({k.split("/")[1] for k in summary["cohort_by_center_sequence"]})
    grid = summary["cohort_by_center_sequence"]
    print_table(
        [{"center": c, **{s: grid.get(f"{c}/{s}", 0) for s in sequences}} for c in centers_seen],
        f"cohort '{summary['cohort']['name']}' by center x "
        f"sequence ({summary['cohort']['n_scans']} scans)",
    )
    print_table(
        [{"role": r, **n} for r, n in sorted(summary["split"]["roles"].items())],
        f"split {summary['split']['name']}",
    )
    if "training" in summary:
        scores = summary["training"]["dice_by_sequence"]
        seqs = sorted({q for per in scores.values() for q in per})
        print_table(
            [{"model": m, **{q: per.get(q, "") for q in seqs}} for m, per in scores.items()],
            f"{', '.join(summary['training']['classes'])} Dice on the test scans, by sequence",
        )
    print_kv(
        {
            "leakage audit": "clean" if summary["audit"]["clean"] else "LEAKS",
            "phantoms": summary["phantoms"],
            "catalog": summary["catalog"],
            "nnU-Net raw dataset": summary["nnunet"]["path"],
            "report": summary.get("training", {}).get("report", "(no training: --epochs 0)"),
            "seconds": summary["seconds"],
            "next": f'xds --catalog {summary["catalog"]} sql "SELECT center, sequence, '
            'count(*) FROM scan_view GROUP BY ALL"',
        },
        "xds demo",
    )


COMMANDS = [demo]
