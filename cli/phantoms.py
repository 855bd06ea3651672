"""``xds phantoms``: generate a phantom world of centers (the demo's and the tests' data)."""

from __future__ import annotations

import click

from xds.cli.options import (
    jobs_option,
    json_option,
)
from xds.cli.options import resolve_jobs as _jobs
from xds.cli.output import emit_json, print_table


@click.command()
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


COMMANDS = [phantoms]
