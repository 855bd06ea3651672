"""Export a cohort and its split to nnU-Net v2's raw format (``xds export nnunet``).

Layout written under ``OUT/Dataset{ID:03d}_{NAME}/``::

    imagesTr/{case}_0000.nii.gz   labelsTr/{case}.nii.gz     train + val roles
    imagesTs/{case}_0000.nii.gz   labelsTs/{case}.nii.gz     test role (labels when known)
    dataset.json                  channel_names, consecutive labels, numTraining, file_ending
    splits_final.json             our patient-level folds: [{"train": [...], "val": [...]}]
                                  (all k folds of a kfold split, else the exported fold)
    xds_cases.csv                 case -> scan_id, subject_id, role, center, sequence, label_id

nnU-Net reads ``splits_final.json`` from ``$nnUNet_preprocessed/Dataset.../``: copy it there
after ``nnUNetv2_plan_and_preprocess`` (the trainers do this for you), and nnU-Net trains on
our folds instead of its own case-level ones, which would split a subject's scans.
Case ids are scan ids, so every prediction maps back to the catalog.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from xds.catalog import Catalog
from xds.export.files import ExportResult, FileJob, place_files, writing_target
from xds.labels.cases import plan_export
from xds.labels.mapping import IGNORE
from xds.schemas.errors import ExportError


@dataclass(kw_only=True)
class NnunetExport(ExportResult):
    """Where an nnU-Net export went and what it holds."""

    dataset_id: int
    cases: dict[str, int] = field(default_factory=dict)  # folder -> count
    skipped_unlabeled: int = 0


def export_nnunet(
    catalog: Catalog,
    cohort: str,
    *,
    split: str,
    dataset_id: int,
    out: str | Path,
    name: str | None = None,
    classes: list[str] | None = None,
    class_set: str | None = None,
    fold: int = 0,
    jobs: int = 1,
    link: bool = True,
    force: bool = False,
) -> NnunetExport:
    """Write a cohort's split as an nnU-Net v2 raw dataset.

    Args:
        catalog: the catalog.
        cohort: cohort name.
        split: split name; train and val go to imagesTr, test to imagesTs.
        dataset_id: nnU-Net dataset number (1-999).
        out: the nnU-Net raw folder (``$nnUNet_raw``); the dataset folder goes inside.
        name: dataset name (default: the cohort name).
        classes: classes to keep, in this order (label 1, 2, ...). Default: the classes
            every label map in the export names, so an organ one center does not annotate
            is never trained as background.
        class_set: export the labels ``xds harmonize`` wrote for this class set, linked
            as they are (see :func:`xds.labels.plan_export`).
        fold: which fold of the split to export.
        jobs: worker processes.
        link: hard-link images (and labels that need no remapping) instead of copying.
        force: replace an existing dataset folder.

    Raises:
        ExportError: bad id, unlabeled train/val scans, a class not labelled everywhere,
            CT and MR mixed in one channel, or a non-empty target without ``force``.
    """
    if not 1 <= dataset_id <= 999:
        raise ExportError(f"--dataset-id {dataset_id}: nnU-Net ids are 1-999")
    plan = plan_export(
        catalog,
        cohort,
        split=split,
        fold=fold,
        classes=classes,
        class_set=class_set,
        roles=("train", "val", "test"),
    )
    # nnU-Net's ignore label is the one after the last class: xds's 255 becomes n + 1
    ignore_index = len(plan.classes) + 1
    ignoring = {c.scan_id for c in plan.cases if c.lut and IGNORE in c.lut}
    name = re.sub(r"[^A-Za-z0-9]+", "", (name or plan.cohort.name).title()) or "Cohort"
    target = Path(out) / f"Dataset{dataset_id:03d}_{name}"
    modalities = plan.modalities
    if len(modalities) > 1:
        raise ExportError(
            f"cohort mixes modalities {modalities}; nnU-Net normalizes "
            "one channel one way: export them as separate datasets"
        )
    with writing_target(target, force=force):
        work, table = [], []
        for case in plan.cases:
            folder = "Tr" if case.role in ("train", "val") else "Ts"
            work.append(
                FileJob(
                    case.image,
                    str(target / f"images{folder}" / f"{case.scan_id}_0000.nii.gz"),
                    copy=not link,
                )
            )
            if case.label is not None:
                dst = target / f"labels{folder}" / f"{case.scan_id}.nii.gz"
                remap = case.remap
                if case.scan_id in ignoring:
                    remap = tuple(ignore_index if v == IGNORE else v for v in case.lut)
                work.append(FileJob(case.label, str(dst), remap, copy=not link))
            table.append(
                {
                    "case": case.scan_id,
                    "scan_id": case.scan_id,
                    "subject_id": case.meta["subject_id"],
                    "role": case.role,
                    "center": case.meta["center"],
                    "sequence": case.meta["sequence"],
                    "label_id": case.label_id or "",
                }
            )
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (target / sub).mkdir(parents=True, exist_ok=True)
        files = place_files(work, workers=jobs, description="export nnunet")

        roles = {r: [c.scan_id for c in cases] for r, cases in plan.by_role().items()}
        train_ids = roles.get("train", []) + roles.get("val", [])
        index = {c: i for i, c in plan.labels.items() if i}
        the_split = plan.split
        modality = modalities[0] if modalities else "MR"
        dataset_json = {
            "channel_names": {"0": "CT" if modality == "CT" else "MRI"},
            "labels": {"background": 0, **index, **({"ignore": ignore_index} if ignoring else {})},
            "numTraining": len(train_ids),
            "file_ending": ".nii.gz",
            "name": name,
            "description": f"xds cohort {plan.cohort.name!r} ({plan.cohort.where_sql}), "
            f"split {the_split.name!r}",
            "xds": plan.provenance(),
        }
        (target / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n")
        folds = [{"train": sorted(roles.get("train", [])), "val": sorted(roles.get("val", []))}]
        if the_split.strategy == "kfold":
            # every fold trains on the same pool (all but the fixed test set): nnU-Net's
            # folds 0..k-1 become our patient-level folds
            folds = [
                {"train": sorted(r.get("train", [])), "val": sorted(r.get("val", []))}
                for r in (the_split.roles(f["fold"]) for f in the_split.params["folds"])
            ]
        (target / "splits_final.json").write_text(json.dumps(folds, indent=2) + "\n")
        with open(target / "xds_cases.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(table[0]) if table else ["case"])
            writer.writeheader()
            writer.writerows(table)
        return NnunetExport(
            path=str(target),
            dataset_id=dataset_id,
            classes=plan.classes,
            cases={
                "imagesTr": len(train_ids),
                "imagesTs": len(roles.get("test", [])),
                "labelsTs": sum(1 for c in plan.by_role().get("test", []) if c.label),
            },
            skipped_unlabeled=len(the_split.roles(fold).get("unlabeled", [])),
            files=files,
        )
