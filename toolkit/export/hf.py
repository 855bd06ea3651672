"""Export a cohort's split as a Hugging Face ``datasets.DatasetDict`` (``xds export hf``).

Layout under ``OUT/``::

    dataset_dict.json, train/, validation/, test/, unlabeled/   save_to_disk (Arrow)
    data/{split}-00000-of-00001.parquet                         the same rows as Parquet shards
    README.md                                                   the dataset card
    files/images/{scan_id}.nii.gz, files/labels/...            without --embed only

One dataset split per split role (``val`` is called ``validation``, the hub's name). Columns:
``scan_id``, ``image``, ``label``, ``annotated`` (the classes the label annotates, as class
labels named background + the exported classes), ``fold`` (k-fold splits) and the metadata
columns, with ``dataset``, ``center``, ``sequence``, ``modality`` and ``sex`` as class labels.

With ``--embed``, ``image`` and ``label`` are ``datasets.Nifti`` features holding the file
bytes: the folder is self-contained and decodes to nibabel images. Without it they are
absolute paths to the linked files under ``files/`` (``ds.cast_column("image", Nifti())``
decodes them), which costs no copy but ties the dataset to this disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from xds.catalog import Catalog
from xds.export.files import ExportResult, FileJob, place_files, writing_target
from xds.labels.cases import ExportPlan, plan_export

HF_SPLITS = {"train": "train", "val": "validation", "test": "test", "unlabeled": "unlabeled"}
"""Split role -> dataset split name."""

CLASS_COLUMNS = ("dataset", "center", "sequence", "modality", "sex")
"""Metadata columns stored as ``ClassLabel`` features (names shared by every split)."""

SHARD_BYTES = 500 << 20
"""Parquet shard size the hub recommends."""


@dataclass(kw_only=True)
class HfExport(ExportResult):
    """Where a Hugging Face export went and what it holds."""

    embedded: bool
    rows: dict[str, int] = field(default_factory=dict)  # dataset split -> rows
    parquet: list[str] = field(default_factory=list)


def export_hf(
    catalog: Catalog,
    cohort: str,
    *,
    split: str,
    out: str | Path,
    fold: int = 0,
    classes: list[str] | None = None,
    class_set: str | None = None,
    partial: bool = False,
    embed: bool = False,
    jobs: int = 1,
    copy: bool = False,
    force: bool = False,
) -> HfExport:
    """Write a cohort's split as a ``DatasetDict`` with Parquet shards and a dataset card.

    Args:
        catalog: the catalog.
        cohort: cohort name.
        split: split name.
        out: the dataset folder (``datasets.load_from_disk(out)`` reads it).
        fold: which fold of the split.
        classes: classes to export (see :func:`xds.labels.plan_export`).
        class_set: export the labels ``xds harmonize`` wrote for this class set, linked
            as they are (see :func:`xds.labels.plan_export`).
        partial: allow classes some label maps do not annotate (see ``annotated``).
        embed: store the NIfTI bytes in the dataset (``Nifti`` features) instead of paths.
        jobs: worker processes for label conversion.
        copy: copy files instead of hard-linking them (without ``embed``).
        force: replace a non-empty ``out``.

    Raises:
        ExportError: ``out`` is not empty without ``force``, or the plan is refused.
    """
    import datasets

    out = Path(out).absolute()
    plan = plan_export(
        catalog,
        cohort,
        split=split,
        fold=fold,
        classes=classes,
        class_set=class_set,
        partial=partial,
    )
    with writing_target(out, force=force):
        files_dir = out / (".staging" if embed else "files")

        jobs_, paths = [], {}
        for case in plan.cases:
            image = case.image  # embedded straight from the catalog
            if not embed:
                image = str(files_dir / "images" / f"{case.scan_id}.nii.gz")
                jobs_.append(FileJob(case.image, image, copy=copy))
            label = None
            if case.label is not None:
                label = str(files_dir / "labels" / f"{case.scan_id}.nii.gz")
                jobs_.append(FileJob(case.label, label, case.remap, copy=copy and not embed))
            paths[case.scan_id] = (image, label)
        out.mkdir(parents=True, exist_ok=True)
        files = place_files(jobs_, workers=jobs, description="export hf")

        features = _features(plan, embed)
        splits, num_shards = {}, {}
        for role, cases in plan.by_role().items():
            columns = {name: [] for name in features}
            for case in cases:
                row = {
                    "scan_id": case.scan_id,
                    "image": paths[case.scan_id][0],
                    "label": paths[case.scan_id][1],
                    "annotated": list(case.annotated),
                    "fold": case.fold,
                    **case.meta,
                }
                for name in columns:
                    columns[name].append(row[name])
            name = HF_SPLITS.get(role, role)
            if embed:
                # datasets sizes shards from the Arrow table, which holds only paths until it
                # embeds the files: count the files' bytes, or a 1,000-scan split would be one
                # shard written in one batch, past Arrow's 2 GB per binary array
                size = sum(os.path.getsize(p) for c in cases for p in paths[c.scan_id] if p)
                num_shards[name] = max(1, min(len(cases), math.ceil(size / SHARD_BYTES)))
            splits[name] = datasets.Dataset.from_dict(
                columns, features=features, info=_info(plan, features), split=name
            )
        dataset = datasets.DatasetDict(splits)
        rows = {name: len(ds) for name, ds in dataset.items()}
        with _quiet_progress():
            # in this process: embedding reads files, and datasets' worker pools cost seconds
            dataset.save_to_disk(str(out), num_shards=num_shards if embed else None)
            if embed:
                shutil.rmtree(files_dir)  # the bytes live in the dataset now
                dataset = datasets.load_from_disk(str(out))
            shards = _write_parquet(dataset, out / "data")
        (out / "README.md").write_text(dataset_card(plan, rows, embed=embed, folder=out.name))
        return HfExport(
            path=str(out),
            classes=plan.classes,
            embedded=embed,
            rows=rows,
            parquet=shards,
            files=files,
        )


def _features(plan: ExportPlan, embed: bool):
    import datasets

    def names(column: str) -> list[str]:
        return sorted({str(c.meta[column]) for c in plan.cases if c.meta[column] is not None})

    media = datasets.Nifti() if embed else datasets.Value("string")
    spec = {
        "scan_id": datasets.Value("string"),
        "image": media,
        "label": media,
        "annotated": datasets.List(datasets.ClassLabel(names=list(plan.labels.values()))),
        "subject_id": datasets.Value("string"),
        **{c: datasets.ClassLabel(names=names(c)) for c in CLASS_COLUMNS},
        "vendor": datasets.Value("string"),
        "scanner_model": datasets.Value("string"),
        "field_strength": datasets.Value("float32"),
        "age": datasets.Value("float32"),
        "age_bin": datasets.Value("string"),
    }
    if plan.split is not None and plan.split.strategy == "kfold":
        spec["fold"] = datasets.Value("int32")
    return datasets.Features(spec)


def _info(plan: ExportPlan, features):
    import datasets

    return datasets.DatasetInfo(
        features=features,
        description=f"xds cohort {plan.cohort.name!r} ({plan.cohort.where_sql}) at catalog "
        f"version {plan.cohort.catalog_version}, split {plan.split.name!r} fold {plan.fold}",
    )


def _write_parquet(dataset, folder: Path) -> list[str]:
    """Each split as Parquet shards of about :data:`SHARD_BYTES`, named as the hub names them."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, ds in dataset.items():
        n = max(1, math.ceil(ds.data.nbytes / SHARD_BYTES))
        for i in range(n):
            path = folder / f"{name}-{i:05d}-of-{n:05d}.parquet"
            shard = ds if n == 1 else ds.shard(num_shards=n, index=i, contiguous=True)
            shard.to_parquet(str(path))
            written.append(str(path.relative_to(folder.parent)))
    return written


@contextlib.contextmanager
def _quiet_progress():
    """Show the datasets library's bars only on a terminal (or with XDS_PROGRESS=1)."""
    from datasets.utils import logging as hf_logging

    show = os.environ.get("XDS_PROGRESS") == "1" or sys.stderr.isatty()
    was_enabled = hf_logging.is_progress_bar_enabled()
    if not show:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def dataset_card(plan: ExportPlan, rows: dict[str, int], *, embed: bool, folder: str) -> str:
    """The dataset card (README.md): sources, class map, split protocol, counts per subgroup."""
    prov = plan.provenance()
    split = plan.split
    yaml = [
        "---",
        f"pretty_name: {plan.cohort.name}",
        "task_categories:",
        "- image-segmentation",
        "tags:",
        "- medical",
        "- nifti",
        "- xds",
        "configs:",
        f"- config_name: {config_name(plan, embed)}",
        "  data_files:",
        *[f"  - split: {name}\n    path: data/{name}-*" for name in rows],
        "---",
    ]
    sources = _table(
        ["dataset", "center", "vendor", "scanner_model", "scans"],
        _count(plan, ("dataset", "center", "vendor", "scanner_model")),
    )
    n_labelled = sum(1 for c in plan.cases if c.label)
    class_rows = [
        [str(i), name, str(sum(1 for c in plan.cases if c.label and name in c.annotated))]
        for i, name in plan.labels.items()
        if i
    ]
    params = ", ".join(
        f"{k}={v}" for k, v in sorted(split.params.items()) if k != "folds" and v not in (None, [])
    )
    media = (
        "`image` and `label` are `datasets.Nifti` features holding the NIfTI bytes: "
        "`ds[0]['image']` is a nibabel image."
        if embed
        else "`image` and `label` are absolute paths to hard-linked NIfTI files under `files/`;"
        " `ds.cast_column('image', datasets.Nifti())` decodes them to nibabel images. "
        "Re-export with `--embed` for a self-contained copy to move or upload."
    )
    body = [
        f"# {plan.cohort.name}",
        "",
        f"Exported by xds {prov['xds_version']} from cohort `{plan.cohort.name}` "
        f"(`{plan.cohort.where_sql}`, {plan.cohort.n_scans} scans of "
        f"{plan.cohort.n_subjects} subjects) at **catalog version {prov['catalog_version']}**, "
        f"split `{split.name}` (`{split.split_id}`), fold {plan.fold}.",
        "",
        "```python",
        "import datasets",
        f'ds = datasets.load_from_disk("{folder}")  # this folder (Arrow)',
        f'ds = datasets.load_dataset("{folder}")  # the same rows, from the Parquet shards',
        "```",
        "",
        media,
        "",
        "## Sources",
        "",
        sources,
        "",
        "## Classes",
        "",
        "Label values after harmonization (0 is background). `annotated` lists, per scan, the "
        "classes its source label map annotates; a class outside it is unknown there, not "
        f"background. {n_labelled} of {len(plan.cases)} scans have a label.",
        "",
        _table(["value", "class", "scans annotating it"], class_rows),
        "",
        "## Split protocol",
        "",
        f"Strategy `{split.strategy}` ({params}), seed {split.seed}. Splits are patient-level: "
        "no subject has scans in two of them. Roles map to dataset splits as "
        + ", ".join(f"{r} -> `{n}`" for r, n in HF_SPLITS.items())
        + ".",
        "",
        _table(["split", "rows"], [[n, str(r)] for n, r in rows.items()]),
        "",
        "## Counts per subgroup",
        "",
        _table(
            ["split", "center", "sequence", "scans"], _count(plan, ("center", "sequence"), True)
        ),
        "",
        _table(["split", "sex", "scans"], _count(plan, ("sex",), True)),
        "",
    ]
    return "\n".join(yaml + [""] + body)


def config_name(plan: ExportPlan, embed: bool) -> str:
    """The card's config name: unique per export content.

    ``datasets.load_dataset(folder)`` caches by folder name and config name, not by the
    files' location: two exports in folders of the same name (``hf/``) would share a cache
    entry, and the second would load the first's rows. A name derived from the cohort,
    catalog version, split, fold and classes keeps them apart.
    """
    digest = hashlib.sha256(
        json.dumps([plan.provenance(), plan.classes, embed], sort_keys=True, default=str).encode()
    ).hexdigest()
    return f"xds-{digest[:12]}"


def _count(plan: ExportPlan, columns: tuple[str, ...], by_split: bool = False) -> list[list[str]]:
    """Table rows: the values of ``columns`` (after the dataset split) and their scan count."""
    counts = Counter(
        ((HF_SPLITS.get(c.role, c.role),) if by_split else ())
        + tuple(str(c.meta[col]) for col in columns)
        for c in plan.cases
    )
    return [[*key, str(n)] for key, n in sorted(counts.items())]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
