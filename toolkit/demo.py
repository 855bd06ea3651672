"""The end-to-end demo (``xds demo``): phantoms -> catalog -> cohort -> split -> audit -> export.

Everything lands under one folder: ``phantoms/`` (the generated centers), ``catalog/``
and ``nnunet_raw/``. Later issues add training and evaluation to the same run.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

from xds.audit import audit_split
from xds.catalog import Catalog, build_cohort
from xds.catalog.cohorts import cohort_scans
from xds.export import export_nnunet
from xds.ingest import ingest_nifti
from xds.phantoms import generate_world
from xds.schemas.errors import LeakageError, XdsError
from xds.splits import split_cohort

DEMO_WHERE = "list_contains(classes, 'pancreas')"
_MARKER = ".xds-demo"


def run_demo(
    out: str | Path,
    *,
    centers: int = 4,
    subjects_per_center: int = 12,
    sequences: tuple[str, ...] = ("T1W", "T2W", "OOP"),
    seed: int = 0,
    jobs: int = 1,
    force: bool = False,
) -> dict:
    """Run the whole pipeline on a fresh phantom world; return a JSON-ready summary.

    Raises:
        XdsError: ``out`` is not empty (without ``force``).
        LeakageError: the audit found a subject or image in two roles (a bug, never expected).
    """
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()):
        # A previous demo's folder is replaced; anything else needs --force.
        if not (force or (out / _MARKER).exists()):
            raise XdsError(f"{out} is not empty and not an earlier demo (use --force)")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / _MARKER).write_text("written by xds demo; the next xds demo here replaces it\n")
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[step] = round(now - clock, 2)
        clock = now

    world = generate_world(
        out / "phantoms",
        centers=centers,
        subjects_per_center=subjects_per_center,
        sequences=sequences,
        seed=seed,
        jobs=jobs,
    )
    lap("phantoms")
    catalog = Catalog.create(out / "catalog")
    ingests = []
    for center in world["centers"]:
        report = ingest_nifti(
            catalog,
            out / "phantoms" / center["path"],
            center=center["name"],
            dataset="phantom-world",
            metadata=out / "phantoms" / center["metadata"],
            label_map=out / "phantoms" / center["label_map"],
            vendor=center["vendor"],
            scanner_model=center["scanner_model"],
            field_strength=center["field_strength"],
            jobs=jobs,
        )
        ingests.append(report.summary())
    lap("ingest")
    cohort = build_cohort(catalog, DEMO_WHERE, "pancreas")
    split = split_cohort(
        catalog, cohort.name, ratios="70,10,20", stratify=("center", "sequence"), seed=seed
    )
    lap("cohort+split")
    audit = audit_split(catalog, split.name)
    if not audit.clean:
        raise LeakageError(f"split {split.name} leaks: {audit.leaks[:3]}")
    export = export_nnunet(
        catalog,
        cohort.name,
        split=split.name,
        dataset_id=501,
        out=out / "nnunet_raw",
        classes=["pancreas"],
        jobs=jobs,
    )
    lap("audit+export")
    scans = cohort_scans(catalog, cohort).select(["center", "sequence"]).to_pylist()
    table = Counter((r["center"], r["sequence"]) for r in scans)
    return {
        "out": str(out),
        "catalog": str(out / "catalog"),
        "catalog_version": catalog.version,
        "phantoms": str(out / "phantoms"),
        "scans_ingested": sum(r["scans_added"] for r in ingests),
        "quarantined": sum(r["quarantined"] for r in ingests),
        "cohort": cohort.summary(),
        "cohort_by_center_sequence": {f"{c}/{s}": n for (c, s), n in sorted(table.items())},
        "split": split.summary(),
        "audit": {"clean": audit.clean, "leaks": len(audit.leaks)},
        "nnunet": export.summary(),
        "seconds": timings,
    }
