"""``xds labels ...`` (the vocabulary, label maps, class sets) and ``xds harmonize``."""

from __future__ import annotations

import click

from xds.cli.options import (
    XdsGroup,
    jobs_option,
    json_option,
)
from xds.cli.options import resolve_jobs as _jobs
from xds.cli.output import emit_json, print_kv, print_table


@click.group(cls=XdsGroup)
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


@click.command()
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
    from xds.labels.harmonization import harmonize as run

    report = run(state.catalog(), cohort, classes=classes, unmapped=unmapped, jobs=_jobs(jobs))
    if as_json:
        emit_json(report.summary())
    else:
        summary = report.summary()
        summary["classes"] = ", ".join(summary["classes"])
        summary["not_annotated"] = ", ".join(f"{k} ({v})" for k, v in report.not_annotated.items())
        print_kv(summary, f"harmonize {cohort}")


COMMANDS = [labels, harmonize]
