"""nnU-Net trainer classes xds chooses by name (found through ``nnUNet_extTrainer``).

nnU-Net looks a trainer up by class name, for training and again for prediction (the name
is in the checkpoint), in its own package and in the folders ``nnUNet_extTrainer`` lists;
xds points that variable at this folder. This file is loaded by path, so it imports only
nnU-Net and the standard library.
"""

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerXds(nnUNetTrainer):  # noqa: N801 (nnU-Net's naming)
    """nnU-Net's default trainer with the schedule xds sets per run.

    ``XDS_NNUNET_EPOCHS``, ``XDS_NNUNET_ITERATIONS`` and ``XDS_NNUNET_VAL_ITERATIONS``
    replace nnU-Net's 1000 epochs x 250 (+ 50 validation) batches. nnU-Net's own short
    trainers (``nnUNetTrainer_5epochs``...) keep 250 batches per epoch: minutes per epoch on
    a CPU.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008  # fmt: skip
        super().__init__(plans, configuration, fold, dataset_json, device)
        env = os.environ
        self.num_epochs = int(env.get("XDS_NNUNET_EPOCHS", self.num_epochs))
        self.num_iterations_per_epoch = int(
            env.get("XDS_NNUNET_ITERATIONS", self.num_iterations_per_epoch)
        )
        self.num_val_iterations_per_epoch = int(
            env.get("XDS_NNUNET_VAL_ITERATIONS", self.num_val_iterations_per_epoch)
        )
