"""Data into the catalog: ``xds ingest nifti|dicom|dataset``, set-sequence, quarantine."""

from __future__ import annotations

import click

from xds.cli.options import (
    XdsGroup,
    center_source,
    jobs_option,
    json_option,
    key_options,
    max_voxels_option,
    show_paths_option,
)
from xds.cli.options import resolve_jobs as _jobs
from xds.cli.output import emit_json, print_kv, print_table, warn


@click.group(cls=XdsGroup)
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
@click.option(
    "--metadata",
    type=click.Path(exists=True, dir_okay=False),
    help="The center's clinical sheet (CSV/TSV) keyed by --key; joined to the subjects "
    "through keyed pseudonyms, never stored by key (docs/dicom.md).",
)
@key_options
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
    metadata,
    key,
    key_column,
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

    DICOM SEG and RTSTRUCT objects in DIRECTORY (with the images, or alone in a later run)
    become labels of their source series' scans; RTSTRUCT ROIs are named through the
    vocabulary (TG-263 names included) and those it does not know are left out, each said
    on stderr. --metadata joins the center's clinical sheet, keyed by
    MRN (PatientID) or AccessionNumber, through keyed pseudonyms (see docs/dicom.md).
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
        metadata=metadata,
        key=key,
        key_column=key_column,
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
    from xds.ingest.datasets.ingest import ingest_dataset

    report = ingest_dataset(
        state.catalog(create=True), name, directory, dataset=dataset, jobs=_jobs(jobs)
    )
    _print_ingest(report, f"ingest {name}", as_json, show_paths)


@ingest.command("labels")
@center_source
@click.option("--label-map", type=click.Path(exists=True, dir_okay=False),
              help="Index -> class file (JSON, CSV, nnU-Net dataset.json).")
@click.option("--match", default="auto", show_default=True,
              help="How masks find their series: a manifest CSV (mask, series_uid), "
              "'series' (a SeriesInstanceUID names the file or its folder), 'grid' (the one "
              "scan with the same voxel grid) or 'auto' (series, else grid).")
@click.option("--origin", default="manual", show_default=True,
              help="The labels' origin: manual, revised, pseudo...")
@show_paths_option
@json_option
@click.pass_obj
def ingest_labels_cmd(state, directory, center, dataset, label_map, match, origin, show_paths,
                      as_json):  # fmt: skip
    """Pair NIfTI masks drawn on a center's DICOM series with its scans, and register them.

    The series DICOM ingest converted must be in the catalog. Series UIDs are compared as
    keyed hashes (none is stored); a mask stored in another axis order of the same grid is
    reoriented without resampling; a mask whose grid differs, an unknown series or an
    ambiguous grid is quarantined with its reason. A re-run adds nothing.
    """
    from xds.ingest import ingest_labels

    report = ingest_labels(state.catalog(), directory, center=center, dataset=dataset,
                           label_map=label_map, match=match, origin=origin)  # fmt: skip
    _print_ingest(report, f"labels {center}", as_json, show_paths)


@ingest.command("sheet")
@click.argument("sheet", type=click.Path(exists=True, dir_okay=False))
@click.option("--center", required=True, help="Center whose subjects the sheet describes.")
@click.option("--dataset", help="Dataset name (default: the center name).")
@key_options
@json_option
@click.pass_obj
def ingest_sheet_cmd(state, sheet, center, dataset, key, key_column, as_json):
    """Add or update a DICOM center's clinical data from a sheet keyed by MRN or accession.

    Each key is turned into the pseudonym the DICOM ingest gave that patient (PatientID)
    or study (AccessionNumber) under the catalog's key, then joined: sex, age, diagnosis,
    race, ethnicity and the other non-identifying columns (in extra) are stored in one new
    catalog version. Identifying columns are dropped; keys are never stored or printed,
    only the matched and unmatched counts.
    """
    from xds.ingest import apply_sheet, read_keyed_sheet

    catalog = state.catalog()
    keyed = read_keyed_sheet(sheet, key, key_column=key_column, secret=catalog.secret(),
                             center=center, dataset=dataset)  # fmt: skip
    report = apply_sheet(catalog, keyed, center=center, dataset=dataset)
    for problem in report.problems:
        warn(problem)
    if as_json:
        emit_json(report.summary())
    else:
        summary = report.summary()
        summary.pop("problems")
        print_kv(summary, f"sheet {center}")


def _print_ingest(report, title: str, as_json: bool, show_paths: bool = False) -> None:
    """Each quarantined file on stderr, then the report as JSON or a table.

    Files are named as the quarantine table stores them (scrubbed, relative to the source
    folder); ``show_paths`` names them by their real paths, bytes that are not UTF-8 escaped.
    """
    for (shown, error), real in zip(report.problems, report.sources, strict=True):
        if show_paths:
            shown = real.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        warn(f"quarantined {shown}: {error}")
    for line in getattr(report, "rois_left_out", ()):
        warn(line)
    summary = report.summary()
    if as_json:
        emit_json(summary)
        return
    summary.pop("problems")
    if "rois_left_out" in summary:
        summary["rois_left_out"] = len(summary["rois_left_out"])
    if "sequences" in summary:
        summary["sequences"] = ", ".join(
            f"{k} {v}" for k, v in sorted(summary["sequences"].items())
        )
    print_kv(summary, title)


@click.command("set-sequence")
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


@click.command("quarantine")
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


COMMANDS = [ingest, set_sequence_cmd, quarantine_cmd]
