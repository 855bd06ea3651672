"""``xds qc``: quality measures and flags of a cohort's or a center's scans."""

from __future__ import annotations

import click

from xds.cli.options import jobs_option, json_option
from xds.cli.options import resolve_jobs as _jobs
from xds.cli.output import emit_json, print_kv, print_table


@click.command("qc")
@click.argument("cohort", required=False)
@click.option("--center", help="Check a center's scans instead of a cohort's.")
@click.option("--dataset", help="With --center: the dataset (default: any).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False),
              help="Also write the QC page (qc.html, figures) into this folder.")  # fmt: skip
@jobs_option
@json_option
@click.pass_obj
def qc_cmd(state, cohort, center, dataset, report_dir, jobs, as_json):
    """Measure every scan once, flag what stands out among its peers, store both.

    \b
    Per scan, with its label: geometry (spacing, field of view, axis angles, the label on
    the image's grid within a hundredth of a voxel), intensity on a body mask (range, SNR,
    CNR, EFC, FBER, bias field, CT HU), and per class volume, pieces, place in the body,
    border contrast, side. Peers are the scans of the same center and sequence (else the
    sequence, else the cohort); robust z-scores and ratios to them raise flags:
    geometry, spacing, truncated, intensity, bias, lr_flip, label_shift, empty_label,
    extra_component, each with a one-line reason. Stored in the versioned qc table and in
    scan_view (qc_flags, qc_score): --where "qc_flags IS NULL" builds a clean cohort.
    Re-running on unchanged scans measures nothing again and writes nothing.
    """
    from xds.qc import run_qc

    catalog = state.catalog()
    report = run_qc(catalog, cohort=cohort, center=center, dataset=dataset, jobs=_jobs(jobs))
    page = None
    if report_dir:
        from xds.qc import write_qc_page

        page = write_qc_page(catalog, report, report_dir)
    summary = report.summary()
    if page:
        summary["page"] = page
    if as_json:
        emit_json(summary)
        return
    worst = summary.pop("worst")
    summary["by_flag"] = ", ".join(f"{k} {v}" for k, v in summary["by_flag"].items()) or "none"
    print_kv(summary, f"qc {report.scope}")
    if worst:
        print_table([{"scan_id": w["scan_id"], "center": w["center"], "sequence": w["sequence"],
                      "score": w["score"], "reasons": "; ".join(w["reasons"])} for w in worst],
                    "flagged (highest scores first)")  # fmt: skip


COMMANDS = (qc_cmd,)
