"""Runs: a trained model traceable to the cohort, catalog version and split it learned from.

``train_run`` trains on the ``train`` role of one fold of a split and records a ``runs`` row
(cohort, split, fold, catalog version, classes, every setting, seed, code version, device,
time, checkpoint folder); ``predict_run`` predicts one role (or the whole cohort) with a
run and records a ``predictions`` row, so ``xds evaluate --pred RUN`` finds the files.
Checkpoints live in the catalog folder, ``models/<name>/``, unless an output folder is given.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from xds.catalog import Catalog, utcnow
from xds.catalog.cohorts import get_cohort, select_scans
from xds.export.torchio import cohort_subjects
from xds.schemas.errors import RunError
from xds.schemas.ids import stable_id
from xds.splits.store import get_split
from xds.trainers.checkpoints import config_fields
from xds.trainers.nnunet_backend import NnunetConfig, predict_nnunet, train_nnunet
from xds.trainers.torch_backend import TorchConfig, train_torch
from xds.trainers.torch_predict import predict_torch

BACKENDS = {"torch": TorchConfig, "nnunet": NnunetConfig}


@dataclass
class Run:
    """A ``runs`` row."""

    run_id: str
    name: str
    uri: str
    classes: list[str]
    device: str
    epoch_losses: list[float]
    seconds: float
    resumed_from: int = 0

    def summary(self) -> dict:
        """JSON-ready fields."""
        return asdict(self)


def code_version() -> str:
    """The xds version, with the git commit when xds runs from a checkout."""
    from importlib.metadata import version

    __version__ = version("xds-toolkit")
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}" if commit else __version__


def train_run(
    catalog: Catalog,
    cohort: str,
    *,
    split: str,
    fold: int = 0,
    backend: str = "torch",
    config: TorchConfig | NnunetConfig | None = None,
    classes: list[str] | None = None,
    partial: bool = False,
    train_where: str | None = None,
    name: str | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
) -> Run:
    """Train a model on the train role of ``split`` (fold ``fold``) and record the run.

    ``train_where`` (a ``scan_view`` clause, e.g. ``sequence='T1W'``) keeps only the train
    scans it matches: single-source training on a split made for all sources, so every
    model is tested on the same test role.

    Running the same command again resumes the checkpoint and records nothing new once
    the run is complete.

    Raises:
        RunError: an unknown backend, a name used by another run, no labelled train scan.
    """
    if backend not in BACKENDS:
        raise RunError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    config = config or BACKENDS[backend]()
    if not isinstance(config, BACKENDS[backend]):
        raise RunError(f"backend {backend!r} takes a {BACKENDS[backend].__name__}")
    found, the_split = get_cohort(catalog, cohort), get_split(catalog, split)
    if the_split.cohort_id != found.cohort_id:
        raise RunError(f"split {split!r} belongs to another cohort than {cohort!r}")
    settings = json.dumps({**asdict(config), "_train_where": train_where}, sort_keys=True,
                          default=list)  # fmt: skip
    name = name or f"{cohort}-{backend}-f{fold}-s{config.seed}"
    run_id = stable_id("run", name, found.cohort_id, the_split.split_id, fold, backend, settings)
    existing = catalog.read("runs", "name = ?", [name]).to_pylist()
    if existing and existing[0]["run_id"] != run_id:
        raise RunError(f"a run named {name!r} exists with other settings; pass another --name")
    subjects = cohort_subjects(catalog, cohort, split=split, role="train", fold=fold,
                               classes=classes, partial=partial)  # fmt: skip
    if train_where:
        if backend == "nnunet":
            raise RunError("--where selects train scans for the torch backend only")
        keep = set(select_scans(catalog, train_where).column("scan_id").to_pylist())
        subjects = [s for s in subjects if s["scan_id"] in keep]
    if not any("label" in s for s in subjects):
        raise RunError(f"split {split!r} fold {fold} has no labelled train scan"
                       + (f" matching {train_where!r}" if train_where else ""))  # fmt: skip
    folder = Path(out) if out else catalog.root / "models" / name
    if backend == "nnunet":
        result = train_nnunet(catalog, cohort, split=split, fold=fold, out=folder,
                              config=config, classes=classes, device=device)  # fmt: skip
    else:
        unlabeled = None
        if config.ssl != "none":
            unlabeled = cohort_subjects(catalog, cohort, split=split, role="unlabeled",
                                        fold=fold, classes=classes, partial=True)  # fmt: skip
        result = train_torch(subjects, folder, config, unlabeled=unlabeled, device=device,
                             progress=progress)  # fmt: skip
    run = Run(run_id, name, str(folder), result.classes, result.device, result.epoch_losses,
              result.seconds, result.resumed_from)  # fmt: skip
    if not existing:
        row = {
            "run_id": run_id, "name": name, "backend": backend,
            "cohort_id": found.cohort_id, "split_id": the_split.split_id, "fold": fold,
            "catalog_version": catalog.version, "classes": result.classes,
            "groups": getattr(config, "groups", None), "method": getattr(config, "dg", None),
            "config": settings,
            "seed": config.seed, "code_version": code_version(), "device": result.device,
            "n_train": sum("label" in s for s in subjects), "epochs": len(result.epoch_losses),
            "final_loss": result.epoch_losses[-1] if result.epoch_losses else None,
            "seconds": result.seconds, "uri": str(folder), "created_at": utcnow(),
        }  # fmt: skip
        with catalog.transaction(f"train {name}") as txn:
            txn.append("runs", [row], unique_by=["run_id"])
    return run


def get_run(catalog: Catalog, name: str) -> dict:
    """The ``runs`` row called ``name`` (or with that run_id).

    Raises:
        RunError: no such run.
    """
    rows = catalog.read("runs", "name = ? OR run_id = ?", [name, name]).to_pylist()
    if not rows:
        known = ", ".join(r["name"] for r in catalog.read("runs").to_pylist()) or "none yet"
        raise RunError(f"no run named {name!r} (known: {known})")
    return rows[0]


def predict_run(
    catalog: Catalog,
    run: str,
    *,
    cohort: str | None = None,
    split: str | None = None,
    role: str | None = "test",
    fold: int | None = None,
    out: str | Path | None = None,
    device: str = "auto",
) -> dict:
    """Predict a cohort (default: the run's) or one role of a split with a run; record it.

    Returns the ``predictions`` row.

    Raises:
        RunError: no such run, or nothing to predict.
    """
    row = get_run(catalog, run)
    found = get_cohort(catalog, cohort or row["cohort_id"])
    cohort = found.name
    split_id = None
    if role is not None:
        if split is None and found.cohort_id != row["cohort_id"]:
            raise RunError(f"--role needs --split for cohort {cohort!r}")
        the_split = get_split(catalog, split or row["split_id"])
        split, split_id = the_split.name, the_split.split_id
        fold = row["fold"] if fold is None else fold
    subjects = cohort_subjects(catalog, cohort, split=split if role else None, role=role,
                               fold=fold or 0, classes=list(row["classes"]),
                               partial=True)  # fmt: skip
    if not subjects:
        raise RunError(f"nothing to predict: {cohort!r} has no {role or 'scan'} in fold {fold}")
    where = role or "all"
    folder = Path(out) if out else Path(row["uri"]) / "predictions" / f"{cohort}-{where}-f{fold}"
    started = time.perf_counter()
    config = BACKENDS[row["backend"]](**config_fields(json.loads(row["config"])))
    if row["backend"] == "nnunet":
        predict_nnunet(row["uri"], subjects, folder, config=config, fold=row["fold"],
                       device=device)  # fmt: skip
    else:
        predict_torch(row["uri"], subjects, folder, device=device)
    from xds.io.parallel import resolve_device

    prediction = {
        "prediction_id": stable_id("prd", row["run_id"], found.cohort_id, split_id, role, fold),
        "run_id": row["run_id"], "cohort_id": found.cohort_id, "split_id": split_id,
        "role": role, "fold": fold, "scan_ids": sorted(s["scan_id"] for s in subjects),
        "uri": str(folder), "device": resolve_device(device),
        "seconds": round(time.perf_counter() - started, 2), "created_at": utcnow(),
    }  # fmt: skip
    with catalog.transaction(f"predict {row['name']} {cohort}/{where}") as txn:
        txn.append("predictions", [prediction], unique_by=["prediction_id"])
    return prediction


def prediction_folder(catalog: Catalog, run: str, cohort_id: str) -> Path | None:
    """The newest folder run ``run`` predicted for a cohort, or None."""
    try:
        row = get_run(catalog, run)
    except RunError:
        return None
    rows = catalog.read(
        "predictions", "run_id = ? AND cohort_id = ?", [row["run_id"], cohort_id]
    ).to_pylist()
    if not rows:
        return None
    return Path(max(rows, key=lambda r: r["created_at"])["uri"])
