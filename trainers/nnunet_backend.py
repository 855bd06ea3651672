"""The nnU-Net v2 backend, through nnU-Net's Python API (no shelling out to its CLI).

One run folder holds nnU-Net's three folders (``nnUNet_raw``, ``nnUNet_preprocessed``,
``nnUNet_results``). Training: ``xds export nnunet`` writes the cohort's split as a raw
dataset (case ids are scan ids), nnU-Net extracts its fingerprint, plans and preprocesses
one configuration, our ``splits_final.json`` goes into the preprocessed folder (so nnU-Net's
fold F is our patient-level fold F: a fold beyond the file would silently become a random
80:20 case-level split, so it is refused), and the trainer class is chosen by name:
``nnUNetTrainerXds`` (nnU-Net's trainer with the epochs and batches per epoch of the run)
unless another is asked for. nnU-Net's environment variables are set for the duration of
each call and restored after. Prediction: ``nnUNetPredictor`` with Gaussian-weighted
sliding windows, sequential (no worker processes), GPU when present.

CrossPan's schedule (appendix C) is nnU-Net's trainer with 400 epochs x 250
batches of 2, SGD (Nesterov, 0.99) at 0.01 with poly decay: ``NnunetConfig(epochs=400)``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xds.catalog import Catalog
from xds.export.nnunet import export_nnunet
from xds.schemas.errors import RunError
from xds.trainers.network import select_device
from xds.trainers.torch_backend import TrainResult

EXT_TRAINERS = Path(__file__).parent / "nnunet_ext"
PLANS = "nnUNetPlans"


@dataclass
class NnunetConfig:
    """nnU-Net settings xds passes on (the rest is nnU-Net's own planning)."""

    configuration: str = "3d_fullres"
    trainer: str = "nnUNetTrainerXds"
    epochs: int = 400  # CrossPan's; nnU-Net's default is 1000
    iterations: int = 250
    val_iterations: int = 50
    dataset_id: int = 990
    processes: int = 2  # nnU-Net's worker processes (planning, preprocessing, augmentation)
    mirroring: bool = True  # test-time mirroring at prediction (8 passes per window in 3D)
    seed: int = 0

    @classmethod
    def small(cls, **changes) -> NnunetConfig:
        """Minutes on a CPU: a few epochs of a few batches, no test-time mirroring."""
        base = {"epochs": 3, "iterations": 10, "val_iterations": 2, "mirroring": False}
        return cls(**{**base, **changes})


@contextmanager
def _stdout_to_stderr():
    """Send what nnU-Net (and its worker processes) print to stderr.

    nnU-Net prints plans and progress on stdout; ``--json`` output must stay parseable.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextmanager
def nnunet_environment(folder: Path, config: NnunetConfig):
    """nnU-Net's variables pointing into ``folder`` (and xds's schedule) for one call.

    What nnU-Net prints meanwhile goes to stderr.
    """
    values = {
        "nnUNet_raw": str(folder / "nnUNet_raw"),
        "nnUNet_preprocessed": str(folder / "nnUNet_preprocessed"),
        "nnUNet_results": str(folder / "nnUNet_results"),
        "nnUNet_extTrainer": str(EXT_TRAINERS),
        "nnUNet_def_n_proc": str(config.processes),
        "nnUNet_n_proc_DA": str(max(1, config.processes)),  # 0 crashes planning
        "XDS_NNUNET_EPOCHS": str(config.epochs),
        "XDS_NNUNET_ITERATIONS": str(config.iterations),
        "XDS_NNUNET_VAL_ITERATIONS": str(config.val_iterations),
    }
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        with _stdout_to_stderr():
            yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _model_folder(folder: Path, dataset: str, config: NnunetConfig) -> Path:
    name = f"{config.trainer}__{PLANS}__{config.configuration}"
    return folder / "nnUNet_results" / dataset / name


def train_nnunet(
    catalog: Catalog,
    cohort: str,
    *,
    split: str,
    fold: int,
    out: str | Path,
    config: NnunetConfig,
    classes: list[str] | None = None,
    device: str = "auto",
) -> TrainResult:
    """Export, plan, preprocess and train fold ``fold`` of ``split`` with nnU-Net.

    A finished run is not trained again; an interrupted one continues from nnU-Net's latest
    checkpoint.

    Raises:
        RunError: the fold is not in the split's folds file.
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.run.run_training import run_training

    folder = Path(out)
    where = select_device(device)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    raw = folder / "nnUNet_raw"
    with nnunet_environment(folder, config):
        exported = None
        datasets = sorted(raw.glob(f"Dataset{config.dataset_id:03d}_*")) if raw.exists() else []
        if not datasets:
            exported = export_nnunet(catalog, cohort, split=split, dataset_id=config.dataset_id,
                                     out=raw, classes=classes, fold=fold)  # fmt: skip
            datasets = [Path(exported.path)]
        dataset = datasets[0].name
        labels = json.loads((datasets[0] / "dataset.json").read_text())["labels"]
        folds = json.loads((datasets[0] / "splits_final.json").read_text())
        if not 0 <= fold < len(folds):
            raise RunError(
                f"fold {fold} is not among the split's {len(folds)} fold(s); nnU-Net would "
                "fall back to a random case-level split"
            )
        preprocessed = folder / "nnUNet_preprocessed" / dataset
        if not (preprocessed / f"{PLANS}.json").exists():
            n = config.processes
            extract_fingerprints([config.dataset_id], num_processes=n,
                                 check_dataset_integrity=True)  # fmt: skip
            plan_experiments([config.dataset_id])
            preprocess([config.dataset_id], configurations=(config.configuration,),
                       num_processes=(n,))  # fmt: skip
        shutil.copyfile(datasets[0] / "splits_final.json", preprocessed / "splits_final.json")
        results = _model_folder(folder, dataset, config) / f"fold_{fold}"
        resumed = 0
        if not (results / "checkpoint_final.pth").exists():
            partial = (results / "checkpoint_latest.pth").exists()
            run_training(str(config.dataset_id), config.configuration, fold,
                         trainer_class_name=config.trainer, plans_identifier=PLANS,
                         continue_training=partial, device=where)  # fmt: skip
        else:
            resumed = config.epochs
    state = torch.load(results / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    losses = [float(x) for x in state.get("logging", {}).get("train_losses", [])]
    classes_out = [name for name, index in sorted(labels.items(), key=lambda kv: kv[1])
                   if index and name != "ignore"]  # fmt: skip
    return TrainResult(str(folder), str(where), classes_out, ["all"], losses,
                       round(time.perf_counter() - started, 2), resumed)  # fmt: skip


def _predictor(folder: Path, config: NnunetConfig, fold: int, device: str):
    """nnU-Net's predictor for a run's fold (Gaussian sliding windows, sequential)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    datasets = sorted((folder / "nnUNet_results").glob("Dataset*"))
    if not datasets:
        raise RunError(f"{folder}: no trained nnU-Net model (train first)")
    model = _model_folder(folder, datasets[0].name, config)
    where = select_device(device)
    with nnunet_environment(folder, config):
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True,
                                    use_mirroring=config.mirroring,
                                    perform_everything_on_device=where.type == "cuda",
                                    device=where, allow_tqdm=False)  # fmt: skip
        predictor.initialize_from_trained_model_folder(str(model), use_folds=(fold,))
    labels = json.loads((model / "dataset.json").read_text())["labels"]
    return predictor, labels


def predict_nnunet(
    run: str | Path, subjects: list, out: str | Path, *, config: NnunetConfig, fold: int,
    device: str = "auto",
) -> list[Path]:  # fmt: skip
    """Predict every subject with the run's fold; ``{scan_id}.nii.gz`` and ``dataset.json``.

    Raises:
        RunError: the run holds no finished model.
    """
    folder = Path(run)
    predictor, labels = _predictor(folder, config, fold, device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with nnunet_environment(folder, config):
        images = [[str(s["image"].path)] for s in subjects]
        targets = [str(out / s["scan_id"]) for s in subjects]
        predictor.predict_from_files_sequential(images, targets, save_probabilities=False)
    labels = {k: v for k, v in labels.items() if k != "ignore"}  # never predicted
    (out / "dataset.json").write_text(json.dumps({"labels": labels}, indent=1))
    return [out / f"{s['scan_id']}.nii.gz" for s in subjects]


class NnunetTeacher:
    """A trained nnU-Net run predicting class probabilities on a scan's own grid.

    nnU-Net reads a scan through its planned reader (whose arrays are the file's voxel axes
    reversed), preprocesses, predicts and resamples the probabilities back itself; they are
    returned in the file's voxel order, like every other xds array.
    """

    def __init__(self, run: str | Path, *, config: NnunetConfig, fold: int,
                 device: str = "auto"):  # fmt: skip
        self.folder, self.config = Path(run), config
        self.predictor, labels = _predictor(self.folder, config, fold, device)
        self.classes = [n for n, i in sorted(labels.items(), key=lambda kv: kv[1])
                        if i and n != "ignore"]  # fmt: skip
        reader = self.predictor.plans_manager.image_reader_writer_class
        if "Reorient" in reader.__name__:
            raise RunError(f"{run}: nnU-Net's {reader.__name__} reorients scans; xds needs the "
                           "file's own voxel order (SimpleITKIO or NibabelIO)")  # fmt: skip
        self._reader = reader()

    def probabilities(self, image: str | Path, flips=((),)):
        """Yield (classes + 1, *scan shape) float32 probabilities, one array per flip.

        See :meth:`xds.trainers.torch_predict.TorchTeacher.probabilities`.
        """
        data, properties = self._reader.read_images([str(image)])
        for axes in flips:
            dims = [3 - a for a in axes]  # reader arrays are (channel, z, y, x)
            flipped = np.ascontiguousarray(np.flip(data, dims)) if dims else data
            with nnunet_environment(self.folder, self.config):
                _, probs = self.predictor.predict_single_npy_array(
                    flipped, properties, None, None, True
                )
            probs = np.flip(probs, dims) if dims else probs
            yield np.ascontiguousarray(probs.transpose(0, 3, 2, 1), dtype=np.float32)
