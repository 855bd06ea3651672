"""Training backends: ``xds train`` / ``xds predict`` / ``xds pseudo-label`` (docs/training.md).

- :mod:`~xds.trainers.runs`: :func:`train_run`, :func:`predict_run`; runs and predictions
  recorded in the catalog.
- :mod:`~xds.trainers.torch_backend`: nnU-Net's plain U-Net on torchio patches, with
  :mod:`~xds.trainers.losses` (Dice + cross-entropy for partial labels),
  :mod:`~xds.trainers.dg` (GroupDRO, V-REx, IB-ERM, spectral decoupling, RandConv),
  :mod:`~xds.trainers.ssl` (UA-MT, CPS), :mod:`~xds.trainers.synthmix` (Anatomix
  renderings), :mod:`~xds.trainers.network` (topology, device, mixed precision),
  :mod:`~xds.trainers.checkpoints` and :mod:`~xds.trainers.torch_predict` (sliding windows,
  teachers).
- :mod:`~xds.trainers.nnunet_backend`: nnU-Net v2 through its Python API, on our folds.
- :mod:`~xds.trainers.students`: :func:`pseudo_label`, teachers, gates and student rounds.
- :mod:`~xds.trainers.demo`: :func:`run_demo`, the whole ``xds demo``.

The names are imported on first use, so ``import xds.trainers.demo`` does not load torch
until training starts.
"""

from importlib import import_module

_NAMES = {
    "NnunetConfig": "nnunet_backend",
    "TorchConfig": "torch_backend",
    "predict_run": "runs",
    "pseudo_label": "students",
    "run_demo": "demo",
    "train_demo": "demo",
    "train_run": "runs",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_NAMES])
