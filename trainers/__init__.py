"""Training backends: ``xds train`` / ``xds predict`` (see docs/training.md).

- :mod:`~xds.trainers.runs`: runs and predictions recorded in the catalog.
- :mod:`~xds.trainers.torch_backend`: nnU-Net's plain U-Net on torchio patches, with
  :mod:`~xds.trainers.losses` (Dice + cross-entropy for partial labels),
  :mod:`~xds.trainers.dg` (GroupDRO, V-REx, IB-ERM, spectral decoupling, RandConv),
  :mod:`~xds.trainers.ssl` (UA-MT, CPS), :mod:`~xds.trainers.synthmix` (Anatomix
  renderings) and :mod:`~xds.trainers.network` (topology, device, mixed precision).
- :mod:`~xds.trainers.nnunet_backend`: nnU-Net v2 through its Python API, on our folds.
- :mod:`~xds.trainers.demo`: the training part of ``xds demo``.
"""
