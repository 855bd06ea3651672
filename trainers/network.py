"""The torch backend's network: nnU-Net's own plain 3D U-Net, and where to run it.

The U-Net is ``PlainConvUNet`` from ``dynamic_network_architectures``, the package nnU-Net v2
builds its networks from (installed with it). Writing another U-Net would add nothing, and
MONAI's would add a dependency; with this one the torch backend and the nnU-Net backend
train the same architecture family, as CrossPan's DG methods sit "on top of a 3D nnU-Net
backbone" (CrossPan, appendix B). Its topology follows nnU-Net's rule: an axis is
downsampled only while its spacing is at most twice the finest one and its feature map stays
at least 4 voxels; 3x3x3 kernels, or 1x3x3 where an axis is still too coarse.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from xds.io.parallel import resolve_device


def select_device(spec: str = "auto") -> torch.device:
    """``cuda`` when asked or when ``auto`` finds a GPU, else ``cpu``.

    See :func:`xds.io.parallel.resolve_device`.
    """
    return torch.device(resolve_device(spec))


def autocast(device: torch.device):
    """Mixed precision (bfloat16 where supported, else float16) on CUDA; nothing on a CPU."""
    if device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def topology(patch: tuple[int, ...], spacing: tuple[float, ...], max_stages: int = 5):
    """(kernel sizes, strides) per stage for a patch (voxels) at a spacing (mm)."""
    dims = len(patch)
    size, space = list(patch), list(spacing)
    kernels, strides = [], [[1] * dims]
    kernels.append([3 if s <= 2 * min(space) else 1 for s in space])
    while len(strides) < max_stages:
        finest = min(space)
        stride = [
            2 if (s <= 2 * finest and n >= 8) else 1 for s, n in zip(space, size, strict=True)
        ]
        if sum(x == 2 for x in stride) == 0:
            break
        strides.append(stride)
        size = [n // st for n, st in zip(size, stride, strict=True)]
        space = [s * st for s, st in zip(space, stride, strict=True)]
        kernels.append([3 if s <= 2 * min(space) else 1 for s in space])
    return kernels, strides


def build_unet(
    in_channels: int,
    n_classes: int,
    patch: tuple[int, ...],
    spacing: tuple[float, ...],
    *,
    base_features: int = 16,
    max_features: int = 320,
    dropout: float | None = None,
) -> nn.Module:
    """A plain conv U-Net (instance norm, leaky ReLU) sized for ``patch`` at ``spacing``."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    dims = len(patch)
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    norm = nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d
    drop = nn.Dropout3d if dims == 3 else nn.Dropout2d
    kernels, strides = topology(patch, spacing)
    stages = len(strides)
    features = [min(base_features * 2**i, max_features) for i in range(stages)]
    return PlainConvUNet(
        input_channels=in_channels,
        n_stages=stages,
        features_per_stage=features,
        conv_op=conv,
        kernel_sizes=kernels,
        strides=strides,
        n_conv_per_stage=2,
        num_classes=n_classes,
        n_conv_per_stage_decoder=2,
        conv_bias=True,
        norm_op=norm,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        dropout_op=drop if dropout else None,
        dropout_op_kwargs={"p": dropout} if dropout else None,
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    )


class PenultimateFeatures:
    """The last decoder stage's output of the latest forward pass, for IB-ERM's penalty.

    These are the features the 1x1 segmentation layer reads.

    >>> net = build_unet(1, 2, (16, 16, 16), (1.0, 1.0, 1.0))  # doctest: +SKIP
    >>> hook = PenultimateFeatures(net); net(x); hook.value.shape  # doctest: +SKIP
    """

    def __init__(self, network: nn.Module):
        self.value: torch.Tensor | None = None
        network.decoder.stages[-1].register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.value = output
