"""nnU-Net trainer classes loaded by path through ``nnUNet_extTrainer`` (see xds_trainers.py)."""
