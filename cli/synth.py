"""``xds synth``: synthetic data generators."""

from __future__ import annotations

from pathlib import Path

import click

from xds.cli.options import XdsGroup, jobs_option, json_option
from xds.cli.options import resolve_jobs as _jobs
from xds.cli.output import emit_json, print_kv


@click.group(cls=XdsGroup)
def synth():
    """Generate synthetic training data from real label maps."""


@synth.command("anatomix")
@click.option(
    "--templates",
    required=True,
    help="A folder of NIfTI label maps, or a cohort whose labels serve as templates.",
)
@click.option("--sets", type=click.IntRange(1), default=8, show_default=True, help="Sets.")
@click.option(
    "--set-size", type=click.IntRange(1), default=4, show_default=True, help="Images per set."
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New or empty folder.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--size", type=click.IntRange(16), default=128, show_default=True, help="Volume edge (voxels)."
)
@click.option(
    "--dims",
    type=click.Choice(["3", "2"]),
    default="3",
    show_default=True,
    help="3: volumes; 2: one random slice of each (axis random, slice 25-100 at size 128).",
)
@click.option("--min-labels", type=click.IntRange(1, 255), default=20, show_default=True)
@click.option("--max-labels", type=click.IntRange(1, 255), default=40, show_default=True)
@click.option("--name", default="anatomix", show_default=True, help="Dataset name in the catalog.")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="auto: the GPU when there is one.",
)
@click.option("--preview", type=click.Path(dir_okay=False), help="Write a montage PNG here.")
@click.option("--no-register", is_flag=True, help="Write files only; leave the catalog alone.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
@jobs_option
@json_option
@click.pass_obj
def anatomix_cmd(
    state, templates, sets, set_size, out, seed, size, dims, min_labels, max_labels, name,
    device, preview, no_register, force, jobs, as_json,
):  # fmt: skip
    """Anatomix sets (Pancakes): random multi-protocol images from label templates.

    \b
    Each set: one template of 20-40 real structures (from --templates) placed at random in
    a --size^3 volume, split into connected components with p=0.5, specks under 20 voxels
    dropped; one random protocol (mean and texture per label) and the across-set
    augmentations of Pancakes' Table 3; each image then adds its own within-set
    augmentations (affine, elastic, blur, sharpness, brightness/contrast, noise, flipped
    intensities). Files go to --out (set_XXXX/image_YY.nii.gz, label_YY.nii.gz and
    anatomix.json with every draw); the sets are registered as dataset --name: one subject
    per set, modality SYN, labels of origin synthetic. Same seed, same sets.

    \b
    Set Dice on them (one set per subject):
      xds evaluate --pred DIR --cohort C --set-by subject_id --pred-labels generic:40
    """
    from xds.schemas.errors import CatalogNotFoundError
    from xds.synth import AnatomixConfig, synth_anatomix

    config = AnatomixConfig(size=size, dims=int(dims), min_labels=min_labels, max_labels=max_labels)
    if no_register:
        try:
            catalog = None if Path(templates).is_dir() else state.catalog()
        except CatalogNotFoundError:
            catalog = None
    else:
        catalog = state.catalog(create=True)
    report = synth_anatomix(
        catalog,
        templates,
        out=out,
        sets=sets,
        set_size=set_size,
        seed=seed,
        config=config,
        name=name,
        device=device,
        jobs=_jobs(jobs),
        preview=preview,
        force=force,
        register=not no_register,
    )
    if as_json:
        emit_json(report.summary())
        return
    labels = report.labels_per_template
    print_kv(
        {
            "dataset": report.dataset,
            "run": report.run,
            "files": report.out,
            "sets x images": f"{report.sets} x {report.images // report.sets}",
            "labels per template": f"{min(labels)}-{max(labels)}",
            "volumes per second": report.images_per_second,
            "catalog version": report.catalog_version,
            "scans added": report.scans_added,
            "preview": report.preview,
        },
        "xds synth anatomix",
    )


COMMANDS = [synth]
