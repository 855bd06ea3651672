"""The end-to-end demo (``xds demo``): CrossPan's cross-sequence collapse, in small.

:func:`run_demo` runs phantoms -> catalog -> cohort -> split -> audit -> export, then
:func:`train_demo`. Everything lands under one folder: ``phantoms/`` (the generated
centers), ``catalog/``, ``nnunet_raw/`` and ``report/``.

A model trained on one sequence's train scans (T1W) is scored on every sequence's test
scans; a model trained on all sequences is scored on the same test scans; the report
compares them by sequence and center. On the phantom world the single-sequence model does
well on its own sequence and fails on the others (fluid and fat swap brightness between T1W
and T2W), and joint training recovers most of it. The liver is the class: at the demo's
8 mm grid and a few hundred batches the pancreas is a few voxels, which needs far longer
training than a demo has. One center does not annotate the liver: its scans train the
other classes' background nothing wrong (the partial-label loss) and are not scored.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

from xds.catalog import Catalog, build_cohort
from xds.catalog.cohorts import cohort_scans
from xds.export import export_nnunet
from xds.ingest import ingest_nifti
from xds.phantoms import generate_world
from xds.schemas.errors import LeakageError, XdsError
from xds.splits import audit_split, split_cohort

CLASSES = ["liver"]
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
    epochs: int = 10,
    device: str = "auto",
) -> dict:
    """Run the whole pipeline on a fresh phantom world; return a JSON-ready summary.

    phantoms -> ingest every center -> cohort (scans with a pancreas label) -> 70/10/20
    patient-level split stratified by center x sequence -> leakage audit -> nnU-Net export;
    then, unless ``epochs`` is 0, :func:`train_demo`: a model trained on T1W only and one on
    all sequences, each scored on every sequence's test scans, and the subgroup report
    (``report/``). ``xds demo`` calls this with its options' values.

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
    summary = {
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
    if epochs:
        started = time.perf_counter()
        summary["training"] = train_demo(
            catalog.latest(), cohort.name, split.name, out / "report", epochs=epochs,
            device=device,
        )  # fmt: skip
        timings["train+evaluate+report"] = round(time.perf_counter() - started, 1)
    return summary


def train_demo(
    catalog: Catalog,
    cohort: str,
    split: str,
    out: str | Path,
    *,
    single: str = "T1W",
    epochs: int = 10,
    base_features: int = 8,
    device: str = "auto",
) -> dict:
    """Train single-sequence and joint models, score them per sequence, write the report.

    The single-sequence model trains ``epochs`` epochs, the joint one ``epochs`` times the
    number of sequences: the same passes over each of its training scans.

    Returns mean Dice per (model, sequence) and the report's path.
    """
    from xds.evaluation.report import build_report
    from xds.evaluation.scoring import evaluate
    from xds.trainers.runs import predict_run, train_run
    from xds.trainers.torch_backend import TorchConfig

    sequences = catalog.sql(
        "SELECT count(DISTINCT sequence) AS n FROM scan_view WHERE scan_id IN "
        f"(SELECT scan_id FROM splits WHERE name = '{split}' AND role = 'train')"
    ).to_pylist()[0]["n"]
    scores: dict[str, dict[str, float]] = {}
    names = []
    # the joint model sees every sequence's scans as often as the single one sees its own
    for label, where, n in ((single, f"sequence = '{single}'", epochs),
                            ("joint", None, epochs * max(1, sequences))):  # fmt: skip
        name = f"demo-{label.lower()}"
        config = TorchConfig.small(epochs=n, base_features=base_features, seed=0)
        run = train_run(catalog, cohort, split=split, config=config, classes=CLASSES,
                        train_where=where, name=name, device=device, partial=True,
                        progress=False)  # fmt: skip
        predicted = predict_run(catalog, run.name, device=device)
        catalog = catalog.latest()
        evaluate(catalog, predicted["uri"], cohort=cohort, split=split, role="test",
                 classes=CLASSES, name=name, trained_on=label)  # fmt: skip
        rows = catalog.sql(
            "SELECT sequence, avg(dice) AS dice FROM metric_view "
            f"WHERE evaluation = '{name}' GROUP BY sequence ORDER BY sequence"
        ).to_pylist()
        scores[name] = {r["sequence"]: round(r["dice"], 3) for r in rows}
        names.append(name)
    build_report(catalog, names, out=Path(out), by=("sequence", "center"), n_resamples=500,
                 force=True, title="xds demo: one sequence vs all sequences")  # fmt: skip
    return {"classes": CLASSES, "dice_by_sequence": scores, "report": str(Path(out))}
