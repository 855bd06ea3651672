"""Training backends (nnU-Net v2, native torch/torchio), built by the Trainers issue.

What has landed: the torch backend's building blocks, each tested against its method's
definition: :mod:`~xds.trainers.losses` (Dice + cross-entropy for partial labels),
:mod:`~xds.trainers.dg` (GroupDRO, V-REx, IB-ERM, spectral decoupling, RandConv),
:mod:`~xds.trainers.ssl` (UA-MT, CPS) and :mod:`~xds.trainers.network` (nnU-Net's plain
U-Net, device and mixed-precision selection). ``xds train`` / ``xds predict`` come next.
"""
