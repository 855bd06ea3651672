"""``xds export {nnunet,datalist,hf}``: a cohort's split in the formats training tools read."""

from __future__ import annotations

import click

from xds.cli.options import XdsGroup, csv_list, jobs_option, json_option, resolve_jobs
from xds.cli.output import emit_json, print_kv


@click.group(cls=XdsGroup)
def export():
    """Write a cohort's split in the format a training tool reads.

    \b
    nnunet    nnU-Net v2 raw dataset with our patient-level folds (splits_final.json)
    datalist  MONAI / Decathlon datalist JSON (training, validation, test, unlabeled)
    hf        Hugging Face datasets DatasetDict + Parquet shards + dataset card

    Files are hard-linked from the catalog when they need no conversion (--copy copies);
    labels are remapped to the exported classes in parallel. In Python,
    xds.cohort_subjects(catalog, cohort, split=..., role=...) gives TorchIO subjects.
    """


def _common(fn):
    """Options every export takes."""
    fn = json_option(fn)
    fn = jobs_option(fn)
    fn = click.option("--force", is_flag=True, help="Replace a non-empty target.")(fn)
    fn = click.option("--copy", is_flag=True, help="Copy files instead of hard-linking them.")(fn)
    fn = click.option("--fold", type=int, default=0, show_default=True, help="Fold of the split.")(
        fn
    )
    fn = click.option(
        "--classes",
        help="Comma-separated classes, in label order (default: those every label map names).",
    )(fn)
    fn = click.option(
        "--class-set",
        help="Export the labels `xds harmonize COHORT --classes SET` wrote (a named set such as "
        "aeval8 or crosspan, or the classes given to it): vocabulary-merged, linked unconverted.",
    )(fn)
    fn = click.option("--split", "split_name", required=True, help="Split name.")(fn)
    return click.argument("cohort")(fn)


def _partial(fn):
    return click.option(
        "--partial",
        is_flag=True,
        help="Allow classes some label maps do not annotate; each case lists the classes its "
        "label annotates ('annotated') so a loss can mask the others.",
    )(fn)


def _run(exporter: str, title: str, state, as_json: bool, options: dict) -> None:
    """Call ``xds.export.<exporter>`` with the options every export shares, and print."""
    import xds.export

    options = dict(options)
    copy = options.pop("copy")
    if exporter == "export_nnunet":
        options["link"] = not copy
    else:
        options["copy"] = copy
    result = getattr(xds.export, exporter)(
        state.catalog(),
        options.pop("cohort"),
        split=options.pop("split_name"),
        classes=csv_list(options.pop("classes")),
        jobs=resolve_jobs(options.pop("jobs")),
        **options,
    )
    summary = result.summary()
    if as_json:
        emit_json(summary)
        return
    flat = {
        k: ", ".join(map(str, v)) if isinstance(v, list) else v
        for k, v in summary.items()
        if v not in ({}, [], None)
    }
    print_kv(flat, title)


@export.command("nnunet")
@_common
@click.option("--dataset-id", type=int, required=True, help="nnU-Net dataset number (1-999).")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="nnU-Net raw folder ($nnUNet_raw); Dataset{ID}_{NAME}/ goes inside.",
)
@click.option("--name", help="Dataset name (default: the cohort's).")
@click.pass_obj
def export_nnunet_cmd(state, as_json, **options):
    """Export to nnU-Net v2 raw format with our patient-level folds in splits_final.json.

    Copy splits_final.json to $nnUNet_preprocessed/DatasetXXX_NAME/ after planning so
    nnU-Net trains on these folds.
    """
    _run("export_nnunet", "nnU-Net export", state, as_json, options)


@export.command("datalist")
@_common
@_partial
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Datalist FILE.json; the files go in the folder FILE/ beside it.",
)
@click.pass_obj
def export_datalist_cmd(state, as_json, **options):
    """Export a MONAI / Decathlon datalist (monai.data.load_decathlon_datalist reads it).

    \b
    Keys: training (train), validation (val), test, unlabeled; each entry has image,
    label (when known), scan_id, subject_id, center, sequence, sex, age ... and, for
    k-fold splits, the fold whose validation set holds it.
    """
    _run("export_datalist", "datalist export", state, as_json, options)


@export.command("hf")
@_common
@_partial
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Dataset folder (datasets.load_from_disk reads it).",
)
@click.option(
    "--embed",
    is_flag=True,
    help="Store the NIfTI bytes in the dataset (datasets.Nifti features): self-contained, "
    "ready to move or push to the hub. Default: paths to linked files.",
)
@click.pass_obj
def export_hf_cmd(state, as_json, **options):
    """Export a Hugging Face DatasetDict (one split per role) with Parquet shards and a card.

    Metadata columns are typed (center, sequence, sex... as class labels) and the
    harmonized class names are the names of the 'annotated' class-label column.
    """
    _run("export_hf", "Hugging Face export", state, as_json, options)


COMMANDS = [export]
