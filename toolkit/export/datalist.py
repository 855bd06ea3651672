"""Export a cohort's split as a MONAI (Decathlon-style) datalist: ``xds export datalist``.

``--out FILE.json`` writes the datalist and, in a folder named like it without ``.json``,
the files it lists::

    FILE.json                  {"labels": {"0": "background", ...}, "modality": {"0": "MRI"},
                                "training": [...], "validation": [...], "test": [...],
                                "unlabeled": [...], "xds": {cohort, catalog version, split}}
    FILE/images/{scan_id}.nii.gz
    FILE/labels/{scan_id}.nii.gz

Every entry has ``image`` (and ``label`` when the scan has one), relative to the JSON file
as ``monai.data.load_decathlon_datalist`` expects, plus ``scan_id`` and the metadata columns
(``center``, ``sequence``, ``sex``, ``age``...) for stratified evaluation. Entries of a
k-fold split carry ``fold``: the fold whose validation set holds them (MONAI Auto3DSeg's
convention). Exports with ``--partial`` list the classes each label annotates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from xds.catalog import Catalog
from xds.export.files import ExportResult, FileJob, place_files, writing_target
from xds.labels.cases import ExportPlan, plan_export
from xds.schemas.errors import ExportError

ROLE_KEYS = {"train": "training", "val": "validation", "test": "test", "unlabeled": "unlabeled"}
"""Split role -> datalist key (MONAI's names; ``unlabeled`` for semi-supervised splits)."""


@dataclass(kw_only=True)
class DatalistExport(ExportResult):
    """Where a datalist went and what it lists."""

    data_dir: str
    entries: dict[str, int] = field(default_factory=dict)  # datalist key -> count


def export_datalist(
    catalog: Catalog,
    cohort: str,
    *,
    split: str,
    out: str | Path,
    fold: int = 0,
    classes: list[str] | None = None,
    class_set: str | None = None,
    partial: bool = False,
    jobs: int = 1,
    copy: bool = False,
    force: bool = False,
) -> DatalistExport:
    """Write a MONAI datalist of a cohort's split, with its images and harmonized labels.

    Args:
        catalog: the catalog.
        cohort: cohort name.
        split: split name.
        out: the datalist file (``.json``); files go in the folder of the same name.
        fold: which fold of the split.
        classes: classes to export (see :func:`xds.labels.plan_export`).
        class_set: export the labels ``xds harmonize`` wrote for this class set, linked
            as they are (see :func:`xds.labels.plan_export`).
        partial: allow classes some label maps do not annotate (listed per entry).
        jobs: worker processes for label conversion.
        copy: copy files instead of hard-linking them.
        force: replace an existing datalist and its folder.

    Raises:
        ExportError: ``out`` is not a .json file, a target is not empty without ``force``,
            or the plan is refused (see :func:`~xds.labels.plan_export`).
    """
    out = Path(out).absolute()
    if out.suffix != ".json":
        raise ExportError(f"--out {out}: a datalist is a .json file")
    data_dir = out.with_suffix("")
    plan = plan_export(
        catalog,
        cohort,
        split=split,
        fold=fold,
        classes=classes,
        class_set=class_set,
        partial=partial,
    )
    with writing_target(out, data_dir, force=force):
        jobs_, lists = [], {}
        for case in plan.cases:
            image = data_dir / "images" / f"{case.scan_id}.nii.gz"
            entry = {"image": str(image.relative_to(out.parent))}
            jobs_.append(FileJob(case.image, str(image), copy=copy))
            if case.label is not None:
                label = data_dir / "labels" / f"{case.scan_id}.nii.gz"
                entry["label"] = str(label.relative_to(out.parent))
                jobs_.append(FileJob(case.label, str(label), case.remap, copy=copy))
            entry |= {"scan_id": case.scan_id, **case.meta}
            if case.fold is not None:
                entry["fold"] = case.fold
            if partial:
                entry["annotated"] = list(case.annotated)
            lists.setdefault(ROLE_KEYS.get(case.role, case.role), []).append(entry)
        data_dir.mkdir(parents=True, exist_ok=True)
        files = place_files(jobs_, workers=jobs, description="export datalist")
        document = _header(plan) | lists
        out.write_text(json.dumps(document, indent=2) + "\n")
        return DatalistExport(
            path=str(out),
            data_dir=str(data_dir),
            classes=plan.classes,
            entries={k: len(v) for k, v in lists.items()},
            files=files,
        )


def _header(plan: ExportPlan) -> dict:
    modalities = plan.modalities
    channel = (
        "CT" if modalities == ["CT"] else "MRI" if modalities == ["MR"] else "/".join(modalities)
    )
    by_role = plan.by_role()
    return {
        "name": plan.cohort.name,
        "description": f"xds cohort {plan.cohort.name!r} ({plan.cohort.where_sql}), "
        f"split {plan.split.name!r} fold {plan.fold}",
        "tensorImageSize": "3D",
        "modality": {"0": channel},
        "labels": {str(i): name for i, name in plan.labels.items()},
        "numTraining": len(by_role.get("train", [])),
        "numTest": len(by_role.get("test", [])),
        "xds": plan.provenance(),
    }
