"""``xds``: the command line. Each command parses, calls one library function, prints.

Exit codes: 0 success; 1 a user error (one line on stderr, no traceback); 2 usage.
Library modules are imported inside the commands so ``xds --help`` starts fast.
"""

from __future__ import annotations

import os
import sys

import click

from xds.cli import evaluation, exports, synth, training
from xds.cli.options import (
    State,
    XdsGroup,
    apply_sql_limits,
    center_source,
    jobs_option,
    json_option,
    max_voxels_option,
    show_paths_option,
    sql_limits_option,
)
from xds.cli.options import resolve_jobs as _jobs
from xds.cli.output import emit_json, print_kv, print_table, warn

DEFAULT_CATALOG = "./xds-catalog"


@click.group(cls=XdsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--catalog",
    envvar="XDS_CATALOG",
    default=DEFAULT_CATALOG,
    show_default=True,
    help="Catalog directory (env XDS_CATALOG).",
)
@click.version_option(package_name="xds-toolkit")
@click.pass_context
def cli(ctx: click.Context, catalog: str) -> None:
    """xds: catalog, split, harmonize and export multi-center segmentation datasets.

    Start with `xds demo`, which builds a phantom world and runs the whole pipeline.
    """
    ctx.obj = State(catalog)


# -- phantoms --------------------------------------------------------------------------------


@cli.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New folder.")
@click.option("--centers", type=click.IntRange(1), default=4, show_default=True)
@click.option("--subjects-per-center", type=click.IntRange(1), default=12, show_default=True)
@click.option(
    "--sequences",
    default="T1W,T2W,OOP",
    show_default=True,
    help="Comma-separated, among T1W, T2W, OOP, IP, CT.",
)
@click.option("--shape", default="64,64,32", show_default=True, help="Nominal grid (voxels).")
@click.option(
    "--missing",
    type=click.FloatRange(0, 0.9),
    default=0.1,
    show_default=True,
    help="Probability that a subject lacks a given sequence.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["nifti", "dicom"]),
    default="nifti",
    show_default=True,
    help="nifti: images, label maps and sheets. dicom: DICOM series with vendor tags, fake "
    "PHI and four folder layouts (flat, DICOMDIR, nested per study, per series).",
)
@click.option(
    "--no-broken",
    is_flag=True,
    help="DICOM: leave out the broken files the first center gets (text, report, gaps...).",
)
@click.option(
    "--variability",
    type=click.FloatRange(0, 5),
    default=1.0,
    show_default=True,
    help="How much subjects' anatomy differs: scales organ position jitter, size spread "
    "and deformation (3: a handful of labelled subjects no longer covers the rest).",
)
@click.option(
    "--scanner-shift",
    type=click.FloatRange(0, 3),
    default=0.0,
    show_default=True,
    help="How far the last center's scanner departs from the others: noise x (1 + 3 S), "
    "bias field x (1 + 2 S). A new center's scans for pseudo-labelling.",
)
@click.option(
    "--protocol-shift",
    is_flag=True,
    help="The last center acquires T1W native, without the contrast agent the others give: "
    "a protocol no other center's labels show.",
)
@jobs_option
@json_option
def phantoms(
    out,
    centers,
    subjects_per_center,
    sequences,
    shape,
    missing,
    seed,
    fmt,
    no_broken,
    variability,
    scanner_shift,
    protocol_shift,
    jobs,
    as_json,
):
    """Write a phantom multi-center MRI world (NIfTI or DICOM).

    Each center has its own vendor, field strength, grid, orientation, noise, label
    convention, folder layout and metadata sheet; world.json describes them. With
    --format dicom every series carries its vendor's tags and a fake patient identity, so
    de-identification can be checked (world.json lists the PHI strings).
    """
    from xds.phantoms import generate_world

    manifest = generate_world(
        out,
        centers=centers,
        subjects_per_center=subjects_per_center,
        sequences=tuple(s.strip() for s in sequences.split(",") if s.strip()),
        shape=_ints(shape, 3, "--shape"),
        missing=missing,
        seed=seed,
        jobs=_jobs(jobs),
        format=fmt,
        broken=not no_broken,
        variability=variability,
        scanner_shift=scanner_shift,
        protocol_shift=protocol_shift,
    )
    if as_json:
        emit_json(manifest)
        return
    rows = [
        {
            "center": c["name"],
            "folder": c["path"],
            "layout": c["layout"],
            "vendor": c["vendor"],
            "tesla": c["field_strength"],
            **({"orientation": c["orientation"]} if "orientation" in c else {}),
            **({"classes": len(c["classes"])} if "classes" in c else {}),
            "scans": c["scans_per_sequence"],
        }
        for c in manifest["centers"]
    ]
    print_table(rows, f"phantom world: {manifest['n_scans']} scans in {out}")


def _ints(text: str, n: int, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected {n} integers like 64,64,32", param_hint=flag) from None
    if len(values) != n or min(values) < 4:
        raise click.BadParameter(f"expected {n} integers >= 4", param_hint=flag)
    return values


# -- ingest ------------------------------------------------------------------------------------


@cli.group(cls=XdsGroup)
def ingest():
    """Register a center's data in the catalog (created on first use)."""


@ingest.command("nifti")
@center_source
@click.option(
    "--metadata",
    type=click.Path(exists=True, dir_okay=False),
    help="CSV/TSV sheet, one row per subject (sex, age, diagnosis, ...).",
)
@click.option(
    "--label-map",
    type=click.Path(exists=True, dir_okay=False),
    help="JSON or CSV naming each label index (nnU-Net dataset.json works).",
)
@click.option(
    "--layout",
    default="auto",
    show_default=True,
    help="auto, bids, nnunet, folders, flat, or a pattern such as "
    "'{subject}/{sequence}/image.nii.gz'.",
)
@click.option("--label-layout", help="Label path pattern when --layout is a pattern.")
@click.option("--sequence", help="Force this sequence for every image (recorded as manual).")
@click.option("--modality", type=click.Choice(["MR", "CT", "PT"]), help="Default: from sequence.")
@click.option("--vendor")
@click.option("--scanner-model")
@click.option("--field-strength", type=float, help="Tesla.")
@click.option("--copy", is_flag=True, help="Copy files into the catalog instead of hard-linking.")
@max_voxels_option
@show_paths_option
@jobs_option
@json_option
@click.pass_obj
def ingest_nifti_cmd(
    state,
    directory,
    center,
    dataset,
    metadata,
    label_map,
    layout,
    label_layout,
    sequence,
    modality,
    vendor,
    scanner_model,
    field_strength,
    copy,
    max_voxels,
    show_paths,
    jobs,
    as_json,
):
    """Ingest a folder of NIfTI images and label maps from one center.

    Bad files (truncated, not 3D, label grid differs from its image, unknown label values)
    are quarantined with their reason; the rest is ingested. Re-running adds nothing.
    """
    from xds.ingest import ingest_nifti

    report = ingest_nifti(
        state.catalog(create=True),
        directory,
        center=center,
        dataset=dataset,
        metadata=metadata,
        label_map=label_map,
        layout=layout,
        label_layout=label_layout,
        sequence=sequence,
        modality=modality,
        vendor=vendor,
        scanner_model=scanner_model,
        field_strength=field_strength,
        jobs=_jobs(jobs),
        link=not copy,
        max_voxels=max_voxels,
    )
    _print_ingest(report, f"ingest {center}", as_json, show_paths)


@ingest.command("dicom")
@center_source
@click.option(
    "--sequence-overrides",
    type=click.Path(exists=True, dir_okay=False),
    help="CSV: a 'sequence' column and one of series_uid, path, series_description; "
    "matching series get that sequence (recorded as manual).",
)
@click.option(
    "--commit-every",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Series per catalog commit: an interrupted run loses at most this many.",
)
@click.option(
    "--min-slices",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="Series with fewer slices are quarantined as not a volume (localizers, scouts, "
    "screenshots).",
)
@max_voxels_option
@show_paths_option
@jobs_option
@json_option
@click.pass_obj
def ingest_dicom_cmd(
    state,
    directory,
    center,
    dataset,
    sequence_overrides,
    commit_every,
    min_slices,
    max_voxels,
    show_paths,
    jobs,
    as_json,
):
    """Convert, classify, de-identify and register a center's DICOM export.

    Walks DIRECTORY in any layout (DICOMDIR included), groups files into series, converts
    each with dcm2niix, classifies it as T1W, T2W, OOP, IP, DWI, ADC, FLAIR, CT, PET or
    UNKNOWN from its tags (the rule and a confidence are stored; see docs/dicom.md), and
    stores images and BIDS sidecars without PHI: subject, study and series ids are keyed
    pseudonyms and dates are shifted per subject. Unreadable files, non-images, broken
    or inconsistent series are quarantined with their reason; the rest goes on. Re-running
    (also after a crash) converts only the series not yet in the catalog.
    """
    from xds.ingest import ingest_dicom

    report = ingest_dicom(
        state.catalog(create=True),
        directory,
        center=center,
        dataset=dataset,
        jobs=_jobs(jobs),
        sequence_overrides=sequence_overrides,
        commit_every=commit_every,
        min_slices=min_slices,
        max_voxels=max_voxels,
    )
    _print_ingest(report, f"ingest {center}", as_json, show_paths)


@ingest.command("dataset")
@click.argument(
    "name",
    type=click.Choice(
        ["amos", "flare22", "word", "totalsegmentator", "btcv", "chaos", "msd", "crosspan"]
    ),
)
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--dataset", help="Dataset name in the catalog (default: NAME).")
@show_paths_option
@jobs_option
@json_option
@click.pass_obj
def ingest_dataset_cmd(state, name, directory, dataset, show_paths, jobs, as_json):
    """Ingest a downloaded public dataset: its layout, split, sheet and label map are known.

    \b
    amos              images{Tr,Va,Ts}/amos_NNNN.nii.gz (<=0500 CT, 0501-0600 MR) + meta CSV
    flare22           FLARE22_Tr_NNNN_0000.nii.gz + labels/FLARE22_Tr_NNNN.nii.gz
    word              images{Tr,Val,Ts}/word_NNNN.nii.gz + labels{Tr,Val,Ts}
    totalsegmentator  sNNNN/ct.nii.gz|mri.nii.gz + segmentations/<class>.nii.gz + meta.csv
    btcv              {Training,Testing}/img/imgNNNN.nii.gz + label/labelNNNN.nii.gz
    chaos             {CT,MR}/<id>/.../DICOM_anon (DICOM) + Ground/*.png
    msd               Task07_Pancreas images{Tr,Ts}/pancreas_NNN.nii.gz + labelsTr
    crosspan          <center>/<T1W|T2W|OOP>/{images,labels}/<case>.nii.gz
    """
    from xds.ingest.adapters import ingest_dataset

    report = ingest_dataset(
        state.catalog(create=True), name, directory, dataset=dataset, jobs=_jobs(jobs)
    )
    _print_ingest(report, f"ingest {name}", as_json, show_paths)


def _print_ingest(report, title: str, as_json: bool, show_paths: bool = False) -> None:
    """Each quarantined file on stderr, then the report as JSON or a table.

    Files are named as the quarantine table stores them (scrubbed, relative to the source
    folder); ``show_paths`` names them by their real paths, bytes that are not UTF-8 escaped.
    """
    for (shown, error), real in zip(report.problems, report.sources, strict=True):
        if show_paths:
            shown = real.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        warn(f"quarantined {shown}: {error}")
    summary = report.summary()
    if as_json:
        emit_json(summary)
        return
    summary.pop("problems")
    if "sequences" in summary:
        summary["sequences"] = ", ".join(
            f"{k} {v}" for k, v in sorted(summary["sequences"].items())
        )
    print_kv(summary, title)


@cli.command("set-sequence")
@click.argument("scan_ids", nargs=-1, required=True)
@click.option("--sequence", required=True, help="T1W, T2W, OOP, IP, DWI, ADC, FLAIR, CT, PET...")
@click.option("--reason", default="", help="Why (stored with the change).")
@json_option
@click.pass_obj
def set_sequence_cmd(state, scan_ids, sequence, reason, as_json):
    """Correct the sequence of scans by hand (wins over the classifier, kept on re-ingest).

    The change is a new catalog version; earlier versions still show the old value.
    """
    from xds.ingest import set_sequence

    cat = state.catalog()
    changed = set_sequence(cat, list(scan_ids), sequence, reason=reason)
    result = {"changed": changed, "sequence": sequence.upper(), "catalog_version": cat.version}
    emit_json(result) if as_json else print_kv(result, "set-sequence")


@cli.command()
@json_option
@click.pass_obj
def migrate(state, as_json):
    """Bring a catalog written by an older xds up to this version's schema.

    Additive: new tables and columns are added in one new catalog version; every earlier
    version stays readable.
    """
    from xds.catalog import migrate as migrate_catalog

    changes = migrate_catalog(state.catalog_path)
    if as_json:
        emit_json({"changes": changes})
    elif changes:
        for line in changes:
            click.echo(line)
    else:
        click.echo("catalog is up to date")


# -- queries and cohorts -------------------------------------------------------------------------


@cli.command()
@click.argument("query")
@click.option("--at-version", type=int, help="Query this catalog version (time travel).")
@sql_limits_option
@json_option
@click.pass_obj
def sql(state, query, at_version, timeout, memory_limit, threads, temp_limit, as_json):
    """Run one read-only SELECT on the catalog (views: scan_view and every table).

    Anything else (COPY, ATTACH, INSTALL/LOAD, SET, PRAGMA, several statements, file
    functions such as read_csv, settings and metadata functions such as current_setting
    or duckdb_views) is refused with exit code 1. The query is stopped at the time limit,
    runs within the memory and thread limits and spills only to the catalog's scratch
    folder (see docs/security.md).
    """
    cat = state.catalog(version=at_version)
    table = apply_sql_limits(cat, timeout, memory_limit, threads, temp_limit).sql(query)
    rows = table.to_pylist()
    if as_json:
        emit_json(rows)
    else:
        print_table(rows, f"{len(rows)} row(s)", table.column_names)


@cli.command("build-cohort")
@click.option(
    "--where",
    "where",
    required=True,
    help="SQL condition over scan_view, e.g. \"sequence='T2W' AND sex='F'\".",
)
@click.option("--name", required=True, help="New cohort name.")
@sql_limits_option
@json_option
@click.pass_obj
def build_cohort_cmd(state, where, name, timeout, memory_limit, threads, temp_limit, as_json):
    """Store the scans matching --where as a cohort pinned to the current catalog version.

    --where is one boolean expression over scan_view's columns; text that closes it and
    adds a UNION, ORDER BY or LIMIT is refused, and nothing is stored.
    """
    from xds.catalog import build_cohort

    cat = apply_sql_limits(state.catalog(), timeout, memory_limit, threads, temp_limit)
    cohort = build_cohort(cat, where, name)
    if as_json:
        emit_json({**cohort.summary(), "scan_ids": list(cohort.scan_ids)})
    else:
        print_kv(cohort.summary(), f"cohort {name}")


@cli.command()
@json_option
@click.pass_obj
def cohorts(state, as_json):
    """List the stored cohorts."""
    from xds.catalog import list_cohorts

    rows = [c.summary() for c in list_cohorts(state.catalog())]
    emit_json(rows) if as_json else print_table(rows, "cohorts")


@cli.command()
@json_option
@click.pass_obj
def versions(state, as_json):
    """List the catalog's versions (open an old one with `xds sql --at-version N`)."""
    rows = state.catalog().history()
    if as_json:
        emit_json(rows)
    else:
        print_table(rows, "catalog versions", ["catalog_version", "operation", "at"])


@cli.command("quarantine")
@click.option("--center", help="Only this center's rows.")
@click.option("--dataset", help="Only this dataset's rows.")
@click.option("--source", type=click.Path(exists=True, file_okay=False),
              help="The center's source folder: find each quarantined file in it and print "
              "its real path (on your own machine; the catalog never stores it).")  # fmt: skip
@json_option
@click.pass_obj
def quarantine_cmd(state, center, dataset, source, as_json):
    """List quarantined files with their stage and reason.

    The catalog names them relative to their source folder with identifier-like names
    replaced by keyed hashes; --source matches those hashes against the folder's real
    names with the catalog's key and prints where each file is.
    """
    from xds.ingest.common import locate_quarantined

    cat = state.catalog()
    rows = [
        {k: r[k] for k in ("dataset", "center", "uri", "stage", "error")}
        for r in cat.read("quarantine").to_pylist()
        if (center is None or r["center"] == center)
        and (dataset is None or r["dataset"] == dataset)
    ]
    if source:
        for row, found in zip(rows, locate_quarantined(cat, source, rows), strict=True):
            row["source_path"] = ", ".join(
                p.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                for p in found
            ) or "(not found)"
    if as_json:
        emit_json(rows)
    else:
        print_table(rows, f"{len(rows)} quarantined file(s)")


@cli.command("verify")
@click.argument("exports", nargs=-1, type=click.Path(exists=True))
@click.option("--deny", multiple=True, help="A name, ID or other string that must appear "
              "nowhere (repeatable; case-insensitive).")  # fmt: skip
@click.option("--deny-list", type=click.Path(exists=True, dir_okay=False),
              help="A file of such strings, one per line.")  # fmt: skip
@click.option("--no-hashes", is_flag=True, help="Skip re-hashing every image and label.")
@click.option("--fix-gzip", is_flag=True, help="First rewrite the gzip headers of managed "
              "files that keep a file name or time (catalogs from older xds), then check.")
@jobs_option
@json_option
@click.pass_obj
def verify_cmd(state, exports, deny, deny_list, no_hashes, fix_gzip, jobs, as_json):
    """Check the catalog (and EXPORTS of it) before sharing: exit 1 on any finding.

    Re-hashes every image and label against the catalog, then reads every stored byte
    (gzip and NIfTI headers and extensions, sidecars, table cells, Delta logs, file
    names) looking for DICOM UIDs, date-like strings, the --deny names and the words of
    source folder and file names that ingest hid. One line per finding; findings name
    the file and the kind of problem, never the identifier.
    """
    from pathlib import Path

    from xds.verify import clean_gzip_headers, verify

    if fix_gzip:
        fixed = clean_gzip_headers(state.catalog())
        warn(f"rewrote the gzip header of {len(fixed)} file(s)")
    names = list(deny)
    if deny_list:
        names += [ln.strip() for ln in Path(deny_list).read_text().splitlines() if ln.strip()]
    report = verify(state.catalog(), exports, deny=names, hashes=not no_hashes, jobs=_jobs(jobs))
    if as_json:
        emit_json(report.summary())
    else:
        for file, problem in report.findings:
            click.echo(f"{file}: {problem}")
        done = f"{report.files_scanned} files scanned, {report.images_checked} images re-hashed"
        warn(f"{done}: {len(report.findings)} finding(s)" if report.findings else f"{done}: ok")
    if report.findings:
        sys.exit(1)


# -- splits ------------------------------------------------------------------------------------


@cli.command()
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
    from xds.splits import make_split

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


@cli.command()
@json_option
@click.pass_obj
def splits(state, as_json):
    """List the stored splits."""
    from xds.splits import list_splits

    rows = list_splits(state.catalog())
    if as_json:
        emit_json(rows)
    else:
        columns = ["name", "strategy", "seed", "n_scans", "n_subjects", "n_folds", "cohort_id"]
        print_table(rows, "splits", columns)


@cli.command()
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
    from xds.audit import THRESHOLD, apply_fix, audit_cohort, audit_split

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


# -- labels ------------------------------------------------------------------------------------


@cli.group(cls=XdsGroup)
def labels():
    """Label vocabulary, public datasets' label maps and shared class sets."""


@labels.command("shared")
@click.argument("maps", nargs=-1, required=True)
@json_option
def labels_shared(maps, as_json):
    """Print the classes every one of MAPS labels (e.g. amos flare22 word totalsegmentator btcv).

    MAPS are built-in label maps (see `xds labels maps`) or label-map files (JSON/CSV).
    Classes are compared by canonical name, so 'postcava' and 'inferior vena cava' match.
    """
    loaded = [_label_map(m) for m in maps]
    from xds.schemas.vocabulary import shared_classes

    shared = shared_classes(loaded)
    if as_json:
        emit_json({"maps": [m.name for m in loaded], "shared": shared})
    else:
        click.echo("\n".join(shared) if shared else "(no class is labelled by all of them)")


@labels.command("maps")
@json_option
def labels_maps(as_json):
    """List the built-in label maps with their class counts and sources."""
    from xds.schemas.vocabulary import builtin_label_map, label_map_names

    rows = []
    for name in label_map_names():
        m = builtin_label_map(name)
        rows.append({"name": name, "classes": len(m.classes), "modalities": ",".join(m.modalities),
                     "title": m.title, "source": m.source})  # fmt: skip
    if as_json:
        emit_json(rows)
    else:
        print_table(rows, "label maps", ["name", "classes", "modalities", "title"])


@labels.command("show")
@click.argument("name")
@json_option
def labels_show(name, as_json):
    """Show one label map (built-in name or file): index, name as spelt, canonical class."""
    m = _label_map(name)
    rows = [
        {"index": i, "name": (m.spelled or {}).get(i, c), "class": c} for i, c in m.classes.items()
    ]
    if as_json:
        emit_json({"name": m.name, "source": m.source, "labels": rows})
    else:
        print_table(rows, f"{m.name}: {m.source or m.title}")


@labels.command("sets")
@json_option
def labels_sets(as_json):
    """List the named class sets (aeval8, touchstone9, crosspan)."""
    from xds.schemas.vocabulary import CLASS_SETS

    if as_json:
        emit_json({k: list(v) for k, v in CLASS_SETS.items()})
    else:
        print_table([{"set": k, "classes": ", ".join(v)} for k, v in CLASS_SETS.items()])


@labels.command("resolve")
@click.argument("names", nargs=-1, required=True)
@json_option
def labels_resolve(names, as_json):
    """Print the canonical class (and SNOMED CT code) of each name or synonym."""
    from xds.schemas.vocabulary import vocabulary

    vocab = vocabulary()
    rows = [{"name": n, "class": vocab.resolve(n), "snomed": vocab.code(n)} for n in names]
    emit_json(rows) if as_json else print_table(rows)


def _label_map(name: str):
    """A built-in label map, or one read from a file."""
    from pathlib import Path

    from xds.schemas.vocabulary import LabelMap, builtin_label_map

    if Path(name).is_file():
        from xds.ingest.sheets import canonical_label_map

        classes = canonical_label_map(name)
        classes.pop(0, None)
        return LabelMap(name=Path(name).stem, classes=classes, source=name)
    return builtin_label_map(name)


@cli.command()
@click.argument("cohort")
@click.option(
    "--classes",
    default="aeval8",
    show_default=True,
    help="A class set (aeval8, touchstone9, crosspan) or comma-separated classes.",
)
@click.option(
    "--unmapped",
    type=click.Choice(["background", "ignore"]),
    default="background",
    show_default=True,
    help="What classes outside the set become: background (0) or ignore (255).",
)
@jobs_option
@json_option
@click.pass_obj
def harmonize(state, cohort, classes, unmapped, jobs, as_json):
    """Write each cohort scan's label remapped to a shared class set, as new label rows.

    Source labels are kept; each new row records derived_from (the source label),
    class_set, and classes_annotated (the set's classes its source map really labels), so a
    class a dataset does not annotate is never mistaken for background.
    """
    from xds.harmonize import harmonize as run

    report = run(state.catalog(), cohort, classes=classes, unmapped=unmapped, jobs=_jobs(jobs))
    if as_json:
        emit_json(report.summary())
    else:
        summary = report.summary()
        summary["classes"] = ", ".join(summary["classes"])
        summary["not_annotated"] = ", ".join(f"{k} ({v})" for k, v in report.not_annotated.items())
        print_kv(summary, f"harmonize {cohort}")


# -- demo --------------------------------------------------------------------------------------


@cli.command()
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
    import time
    from pathlib import Path

    from xds.demo import run_demo

    summary = run_demo(
        out,
        centers=centers,
        subjects_per_center=subjects_per_center,
        seed=seed,
        jobs=_jobs(jobs),
        force=force,
    )
    if epochs:
        from xds.catalog import Catalog
        from xds.trainers.demo import train_demo

        started = time.perf_counter()
        summary["training"] = train_demo(
            Catalog.open(summary["catalog"]), summary["cohort"]["name"],
            summary["split"]["name"], Path(out) / "report", epochs=epochs,
        )  # fmt: skip
        summary["seconds"]["train+evaluate+report"] = round(time.perf_counter() - started, 1)
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


# -- evaluation and export (their own modules: cli/evaluation.py, cli/exports.py) ------------

cli.add_command(evaluation.evaluate_cmd)
cli.add_command(evaluation.evaluations_cmd)
cli.add_command(evaluation.report_cmd)
cli.add_command(exports.export)
cli.add_command(synth.synth)
cli.add_command(training.train_cmd)
cli.add_command(training.predict_cmd)
cli.add_command(training.pseudo_label_cmd)


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONHASHSEED", "0")
    cli(prog_name="xds")


if __name__ == "__main__":
    main()
