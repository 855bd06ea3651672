"""Training backends (nnU-Net v2, native torch/torchio). Built by the Trainers issue."""
