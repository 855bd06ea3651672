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
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from xds.catalog import Catalog, get_cohort
from xds.catalog.cohorts import cohort_scans
from xds.executors import progress_map
from xds.labels import best_labels, label_maps
from xds.schemas.errors import ExportError
from xds.splits import get_split


@dataclass
class NnunetExport:
    """Where an export went and what it holds."""

    path: str
    dataset_id: int
    classes: list[str]
    cases: dict[str, int] = field(default_factory=dict)  # folder -> count
    skipped_unlabeled: int = 0

    def summary(self) -> dict:
        """JSON-ready description."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class _CaseJob:
    case: str
    image_src: str
    image_dst: str
    label_src: str | None
    label_dst: str | None
    lut: tuple[int, ...] | None
    link: bool


def export_nnunet(
    catalog: Catalog,
    cohort: str,
    *,
    split: str,
    dataset_id: int,
    out: str | Path,
    name: str | None = None,
    classes: list[str] | None = None,
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
        fold: which fold of the split to export.
        jobs: worker processes.
        link: hard-link images instead of copying them.
        force: replace an existing dataset folder.

    Raises:
        ExportError: bad id, unlabeled train/val scans, a class not labelled everywhere,
            CT and MR mixed in one channel, or a non-empty target without ``force``.
    """
    if not 1 <= dataset_id <= 999:
        raise ExportError(f"--dataset-id {dataset_id}: nnU-Net ids are 1-999")
    found = get_cohort(catalog, cohort)
    the_split = get_split(catalog, split)
    if the_split.cohort_id != found.cohort_id:
        raise ExportError(f"split {split!r} belongs to another cohort than {cohort!r}")
    name = re.sub(r"[^A-Za-z0-9]+", "", (name or found.name).title()) or "Cohort"
    target = Path(out) / f"Dataset{dataset_id:03d}_{name}"
    if target.exists() and any(target.iterdir()):
        if not force:
            raise ExportError(f"{target} exists and is not empty (use --force to replace it)")
        shutil.rmtree(target)

    roles = the_split.roles(fold)
    scans = {r["scan_id"]: r for r in cohort_scans(catalog, found).to_pylist()}
    modalities = {scans[s]["modality"] for ids in roles.values() for s in ids}
    if len(modalities) > 1:
        raise ExportError(
            f"cohort mixes modalities {sorted(modalities)}; nnU-Net normalizes "
            "one channel one way: export them as separate datasets"
        )
    labels = best_labels(catalog, list(scans), derived=False)
    train_ids = roles.get("train", []) + roles.get("val", [])
    missing = [s for s in train_ids if s not in labels]
    if missing:
        raise ExportError(
            f"{len(missing)} train/val scan(s) have no label (e.g. {missing[0]}); "
            "build the cohort with --where 'has_label'"
        )
    maps = label_maps(catalog, {labels[s]["label_map"] for s in labels})
    classes = _choose_classes(maps, classes)
    index = {c: i + 1 for i, c in enumerate(classes)}
    luts = {m: _lut(mapping, index) for m, mapping in maps.items()}

    work, table = [], []
    for folder, role_ids in (("Tr", train_ids), ("Ts", roles.get("test", []))):
        for scan_id in sorted(role_ids):
            label = labels.get(scan_id)
            work.append(
                _CaseJob(
                    scan_id,
                    str(catalog.resolve(scans[scan_id]["image_uri"])),
                    str(target / f"images{folder}" / f"{scan_id}_0000.nii.gz"),
                    str(catalog.resolve(label["uri"])) if label else None,
                    str(target / f"labels{folder}" / f"{scan_id}.nii.gz") if label else None,
                    luts[label["label_map"]] if label else None,
                    link,
                )
            )
            table.append(
                {
                    "case": scan_id,
                    "scan_id": scan_id,
                    "subject_id": scans[scan_id]["subject_id"],
                    "role": next(r for r, ids in roles.items() if scan_id in ids),
                    "center": scans[scan_id]["center"],
                    "sequence": scans[scan_id]["sequence"],
                    "label_id": label["label_id"] if label else "",
                }
            )
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    progress_map(_write_case, work, jobs=jobs, description="export nnunet")

    modality = modalities.pop() if modalities else "MR"
    dataset_json = {
        "channel_names": {"0": "CT" if modality == "CT" else "MRI"},
        "labels": {"background": 0, **index},
        "numTraining": len(train_ids),
        "file_ending": ".nii.gz",
        "name": name,
        "description": f"xds cohort {found.name!r} ({found.where_sql}), split {the_split.name!r}",
        "xds": {
            "cohort_id": found.cohort_id,
            "catalog_version": found.catalog_version,
            "split_id": the_split.split_id,
            "fold": fold,
        },
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
        str(target),
        dataset_id,
        classes,
        {
            "imagesTr": len(train_ids),
            "imagesTs": len(roles.get("test", [])),
            "labelsTs": sum(1 for s in roles.get("test", []) if s in labels),
        },
        skipped_unlabeled=len(roles.get("unlabeled", [])),
    )


def _choose_classes(maps: dict[str, dict[int, str]], wanted: list[str] | None) -> list[str]:
    named = [{n for i, n in m.items() if i != 0} for m in maps.values()]
    common = set.intersection(*named) if named else set()
    if wanted is None:
        if not common:
            raise ExportError("the cohort's label maps share no class; pass --classes")
        return sorted(common)
    lacking = [c for c in wanted if c not in common]
    if lacking:
        raise ExportError(
            f"class(es) {lacking} are not labelled in every label map of the "
            f"cohort; classes labelled everywhere: {sorted(common)}"
        )
    return list(wanted)


def _lut(mapping: dict[int, str], index: dict[str, int]) -> tuple[int, ...]:
    lut = [0] * (max(mapping) + 1)
    for i, name in mapping.items():
        lut[i] = index.get(name, 0)
    return tuple(lut)


def _write_case(job: _CaseJob) -> None:
    dst = Path(job.image_dst)
    dst.unlink(missing_ok=True)
    try:
        if not job.link:
            raise OSError("copy requested")
        os.link(job.image_src, dst)
    except OSError:
        shutil.copyfile(job.image_src, dst)
    if job.label_src is None:
        return
    label = nib.load(job.label_src)
    data = np.asanyarray(label.dataobj).astype(np.int64)
    out = np.asarray(job.lut, np.uint8)[data]
    image = nib.Nifti1Image(out, label.affine, header=label.header.copy())
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1, 0)
    nib.save(image, job.label_dst)
