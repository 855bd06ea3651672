"""Adapters for public datasets as they are downloaded (``xds ingest dataset NAME DIR``).

Each adapter knows its dataset's folder layout, file naming, official split, metadata sheet
and label map (``schemas/labelmaps``), so a user pointing at a downloaded copy gets center,
modality, sequence, split and demographics filled in without writing a layout or a sheet.

======================  =========================================================================
adapter                 what it reads
======================  =========================================================================
amos                    ``images{Tr,Va,Ts}/amos_NNNN.nii.gz`` + ``labels{Tr,Va}``; cases up to
                        0500 are CT, 0501-0600 MR; ``labeled_data_meta_0000_0599.csv`` (sex,
                        age such as ``045Y``, scanner model)
flare22                 ``*/FLARE22_Tr_NNNN_0000.nii.gz`` + ``labels*/FLARE22_Tr_NNNN.nii.gz``
word                    ``images{Tr,Val,Ts}/word_NNNN.nii.gz`` + ``labels{Tr,Val,Ts}``
btcv                    ``{Training,Testing}/img/imgNNNN.nii.gz`` + ``label/labelNNNN.nii.gz``
msd                     ``Task07_Pancreas/images{Tr,Ts}/pancreas_NNN.nii.gz`` + ``labelsTr``;
                        macOS ``._`` files skipped; ``dataset.json`` checked against the map
totalsegmentator        ``sNNNN/ct.nii.gz`` (or ``mri.nii.gz``: the MR release) +
                        ``sNNNN/segmentations/<class>.nii.gz`` combined with the v2 (or
                        total_mr) index order; ``meta.csv`` (``;``): age, gender, institute
                        (the center), manufacturer, scanner model, split
crosspan                ``<center>/<T1W|T2W|OOP>/{images,labels}/<case>.nii.gz``
chaos                   ``{CT,MR}/<patient>/...DICOM_anon`` converted by the DICOM ingest
                        (T1DUAL InPhase -> IP, OutPhase -> OOP, T2SPIR -> T2W, CT -> CT) and the
                        ``Ground/*.png`` slices turned into label volumes on the converted grid
======================  =========================================================================

Everything else (checks, hashing, de-identification, quarantine, idempotent re-runs) is
shared with ``xds ingest nifti`` and ``xds ingest dicom``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from xds.catalog import Catalog, utcnow
from xds.ingest.common import IngestReport, Quarantine, check_source, run_id
from xds.ingest.datasets import amos, btcv, chaos, crosspan, flare22, msd, totalsegmentator, word
from xds.ingest.datasets.base import Case, _files, builtin_map_row
from xds.ingest.nifti import _ingest_one, _Job
from xds.ingest.sheets import read_sheet
from xds.io.deid import pseudonym
from xds.io.images import read_volume
from xds.io.parallel import progress_map
from xds.schemas.errors import IngestError
from xds.schemas.vocabulary import LabelMap, builtin_label_map

ADAPTERS: dict[str, Callable[[Path], list[Case]]] = {
    "amos": amos.cases,
    "flare22": flare22.cases,
    "word": word.cases,
    "totalsegmentator": totalsegmentator.cases,
    "btcv": btcv.cases,
    "chaos": lambda root: [],  # DICOM: handled by chaos.ingest_chaos
    "msd": msd.cases,
    "crosspan": crosspan.cases,
}
"""Adapter name -> the function listing a downloaded copy's cases (one module each)."""


def _sheet(root: Path, name: str) -> dict[str, dict]:
    """The dataset's metadata sheet, keyed like its cases (empty when there is none)."""
    patterns = {"amos": "labeled_data_meta*.csv", "totalsegmentator": "meta.csv"}
    if name not in patterns:
        return {}
    found = _files(root, patterns[name])
    if not found:
        return {}
    sheet = read_sheet(found[0])
    if name == "amos":  # the sheet's amos_id is a number; cases are amos_NNNN
        return {f"amos_{int(k):04d}": v for k, v in sheet.items() if k.strip().isdigit()}
    return sheet


@dataclass(frozen=True)
class _CaseJob:
    job: _Job
    masks: tuple[tuple[str, str], ...]
    index_of: dict[str, int]


def _ingest_case(job: _CaseJob) -> dict:
    """Worker: combine per-class masks into one label map when needed, then ingest."""
    if not job.masks:
        return _ingest_one(job.job)
    root = Path(job.job.root)
    try:
        image = read_volume(root / job.job.image)
        combined = np.zeros(image.shape, np.uint8)
        for name, rel in job.masks:
            if name not in job.index_of:
                raise IngestError(f"{rel}: mask of a class the label map lacks ({name})")
            mask = read_volume(root / rel)
            if mask.shape != image.shape or not np.allclose(mask.affine, image.affine, atol=1e-3):
                raise IngestError(f"{rel}: mask grid differs from its image's")
            combined[np.asarray(mask.data) > 0] = job.index_of[name]
    except IngestError as exc:
        return {"scan": None, "label": None, "problems": [("label", job.job.image, str(exc))]}
    with tempfile.TemporaryDirectory(dir=Path(job.job.catalog_root)) as tmp:
        path = Path(tmp) / "combined.nii.gz"
        nib.save(nib.Nifti1Image(combined, image.affine), path)
        return _ingest_one(replace(job.job, label=str(path), link=False))


def ingest_dataset(
    catalog: Catalog,
    name: str,
    root: str | Path,
    *,
    dataset: str | None = None,
    jobs: int = 1,
) -> IngestReport:
    """Register a downloaded public dataset with its adapter (see the module table).

    Raises:
        IngestError: unknown adapter, unusable folder, or a dataset file contradicting the
            adapter's label map.
    """
    name = name.lower()
    if name not in ADAPTERS:
        raise IngestError(f"no adapter {name!r}; known: {', '.join(ADAPTERS)}")
    if name == "chaos":
        return chaos.ingest_chaos(catalog, root, dataset=dataset or "chaos", jobs=jobs)
    root, dataset = check_source(root, name, dataset)
    cases = ADAPTERS[name](root)
    if not cases:
        raise IngestError(f"{root}: no {name} images found (see `xds ingest dataset --help`)")
    sheet = _sheet(root, name)
    run = run_id()
    report = IngestReport(dataset, name, run, f"adapter:{name}", files_found=len(cases))
    secret = catalog.secret()
    maps: dict[str, LabelMap] = {c.label_map: builtin_label_map(c.label_map) for c in cases}
    jobs_list = []
    for case in cases:
        label_map = maps[case.label_map]
        jobs_list.append(
            _CaseJob(
                _Job(
                    str(root),
                    case.image,
                    case.label,
                    pseudonym(secret, dataset, case.center or name, case.key),
                    str(catalog.root),
                    dataset,
                    label_map.names(),
                    True,
                ),
                case.masks,
                label_map.index_of(),
            )
        )
    results = progress_map(_ingest_case, jobs_list, jobs=jobs, description=f"ingest {name}")
    now = utcnow()
    subjects, scans, labels = {}, {}, {}
    quarantine = Quarantine(catalog, report, root, run)
    for case, job, result in zip(cases, jobs_list, results, strict=True):
        center = case.center or name
        for stage, rel, error in result["problems"]:
            shown = rel.replace(case.key, job.job.subject_id)
            quarantine.add(rel, stage, error, shown=shown, center=center)
        if result["scan"] is None:
            continue
        demo = sheet.get(case.key, {})
        extra = dict(demo.get("extra") or {})
        if case.split:
            extra["official_split"] = case.split
        if demo.get("extra", {}).get("split"):
            extra["official_split"] = demo["extra"]["split"]
        subjects.setdefault(
            job.job.subject_id,
            {
                "subject_id": job.job.subject_id,
                "dataset": dataset,
                "center": demo.get("extra", {}).get("institute") or center,
                **{
                    k: demo.get(k)
                    for k in ("sex", "age", "age_bin", "race", "ethnicity", "diagnosis")
                },
                "extra": extra or None,
                "added_at": now,
                "source": run,
            },
        )
        meta = demo.get("extra", {})
        scans.setdefault(
            result["scan"]["scan_id"],
            {
                **result["scan"],
                "subject_id": job.job.subject_id,
                "dataset": dataset,
                "center": subjects[job.job.subject_id]["center"],
                "modality": case.modality,
                "sequence": case.sequence,
                "sequence_source": "adapter",
                "sequence_rule": f"adapter:{name}",
                "vendor": meta.get("manufacturer"),
                "scanner_model": meta.get("scanner_model") or meta.get("manufacturer_s_model_name"),
                "added_at": now,
                "source": run,
                "status": "ok",
            },
        )
        if label := result["label"]:
            labels.setdefault(
                label["label_id"],
                {
                    **label,
                    "label_map": f"builtin:{case.label_map}",
                    "origin": "manual",
                    "created_at": now,
                    "source": run,
                },
            )
    with catalog.transaction(f"ingest dataset {name}") as txn:
        txn.append("subjects", list(subjects.values()), unique_by=["subject_id"])
        txn.append("scans", list(scans.values()), unique_by=["subject_id", "image_hash"])
        txn.append(
            "label_maps",
            [builtin_map_row(m, now) for m in maps.values()],
            unique_by=["label_map_id"],
        )
        txn.append("labels", list(labels.values()), unique_by=["label_id"])
        txn.append("quarantine", quarantine.take(), unique_by=["uri", "error"])
    report.record(txn, catalog.version, len(scans))
    return report


