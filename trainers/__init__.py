"""Training backends (nnU-Net v2, native torch/torchio), built by the Trainers issue.

What has landed: the torch backend as a Python API (:mod:`~xds.trainers.torch_backend`:
``train_torch`` on ``xds.cohort_subjects``, ``predict_torch`` writing what ``xds evaluate``
reads) and its parts, each tested against its method's definition:
:mod:`~xds.trainers.losses` (Dice + cross-entropy for partial labels),
:mod:`~xds.trainers.dg` (GroupDRO, V-REx, IB-ERM, spectral decoupling, RandConv),
:mod:`~xds.trainers.ssl` (UA-MT, CPS) and :mod:`~xds.trainers.network` (nnU-Net's plain
U-Net, device and mixed-precision selection). Still to come: ``xds train`` / ``xds
predict``, the runs table, the nnU-Net backend and the SSL training loop.
"""
