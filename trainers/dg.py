"""Domain generalization objectives of CrossPan (appendix B).

Groups come from a catalog column: centers for single-source training, sequences for
multi-source, as the seed's DG protocol says.

Each objective takes the per-sample losses of a batch (``PartialDiceCELoss``) and each
sample's group index and returns the scalar to minimize:

- :class:`ERM`: the mean.
- :class:`GroupDRO` (Sagawa et al., 2019): an online distribution over groups, pushed towards
  the groups with the highest loss (``q_g <- q_g exp(eta * loss_g)``, renormalized); the
  objective is the q-weighted sum of group losses.
- :class:`VREx` (Krueger et al., 2021): mean group risk plus beta times their variance.
- :class:`IBERM` (Ahuja et al., 2021): the mean plus lambda times the variance of the
  network's penultimate features within each group (an information bottleneck).
- :class:`SpectralDecoupling` (Pezeshki et al., 2021): the mean plus lambda times the mean
  squared logit (the issue calls it SD; so does the seed).
- :class:`RandConv` (Xu et al., 2021) is an augmentation: a random convolution of the image
  mixed with the image, intensities changed and labels untouched.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xds.schemas.errors import RunError


def group_means(losses: torch.Tensor, groups: torch.Tensor, n_groups: int):
    """(mean loss per group, groups present) for one batch."""
    total = torch.zeros(n_groups, device=losses.device, dtype=losses.dtype)
    count = torch.zeros(n_groups, device=losses.device, dtype=losses.dtype)
    total = total.index_add(0, groups, losses)
    count = count.index_add(0, groups, torch.ones_like(losses))
    present = count > 0
    return total / count.clamp(min=1), present


class ERM(nn.Module):
    """Empirical risk minimization: the batch mean."""

    def forward(self, losses, groups=None, features=None, logits=None) -> torch.Tensor:
        """The mean per-sample loss."""
        return losses.mean()


class GroupDRO(nn.Module):
    """Group distributionally robust optimization with online group weights.

    The weights ``q`` are a buffer: saved with checkpoints, resumed with them.
    """

    def __init__(self, n_groups: int, eta: float = 0.01):
        super().__init__()
        self.n_groups, self.eta = n_groups, eta
        self.register_buffer("q", torch.full((n_groups,), 1.0 / n_groups))

    def forward(self, losses, groups, features=None, logits=None) -> torch.Tensor:
        """Update ``q`` with this batch's group losses and return their q-weighted sum."""
        means, present = group_means(losses, groups, self.n_groups)
        with torch.no_grad():
            step = torch.where(present, self.eta * means.detach(), torch.zeros_like(means))
            q = self.q * torch.exp(step.to(self.q.dtype))
            self.q.copy_(q / q.sum())
        return (self.q.to(means.dtype) * means * present).sum()


class VREx(nn.Module):
    """Risk extrapolation: mean of group risks + ``beta`` x their variance."""

    def __init__(self, n_groups: int, beta: float = 1.0):
        super().__init__()
        self.n_groups, self.beta = n_groups, beta

    def forward(self, losses, groups, features=None, logits=None) -> torch.Tensor:
        """Mean group risk plus the penalty (zero when one group is in the batch)."""
        means, present = group_means(losses, groups, self.n_groups)
        risks = means[present]
        penalty = risks.var(unbiased=False) if len(risks) > 1 else risks.sum() * 0
        return risks.mean() + self.beta * penalty


class IBERM(nn.Module):
    """ERM + ``lam`` x the variance of penultimate features within each group."""

    def __init__(self, n_groups: int, lam: float = 0.1):
        super().__init__()
        self.n_groups, self.lam = n_groups, lam

    def forward(self, losses, groups, features, logits=None) -> torch.Tensor:
        """The mean loss plus the information-bottleneck penalty."""
        return losses.mean() + self.lam * ib_penalty(features, groups)


def ib_penalty(features: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean over groups of the per-channel variance of features (B, F, *spatial)."""
    flat = features.float().movedim(1, -1)  # (B, *spatial, F)
    penalties = []
    for g in groups.unique():
        chosen = flat[groups == g].reshape(-1, flat.shape[-1])
        penalties.append(chosen.var(dim=0, unbiased=False).mean())
    return torch.stack(penalties).mean()


class SpectralDecoupling(nn.Module):
    """ERM + ``lam`` x the mean squared logit (spectral decoupling)."""

    def __init__(self, lam: float = 0.01):
        super().__init__()
        self.lam = lam

    def forward(self, losses, groups=None, features=None, logits=None) -> torch.Tensor:
        """The mean loss plus the logit penalty."""
        return losses.mean() + self.lam * logits.float().pow(2).mean()


class RandConv(nn.Module):
    """Random convolution augmentation (Xu et al., ICLR 2021), 2D or 3D.

    Per call: a kernel size from ``sizes``, weights from N(0, 1 / fan_in) (He), output mixed
    with the input by alpha ~ U(0, 1), then scaled back to the input's mean and std per image.
    Shapes (textures, contrasts) change; geometry, and so the label map, does not.
    """

    def __init__(self, sizes: tuple[int, ...] = (1, 3, 5, 7), p: float = 0.5):
        super().__init__()
        self.sizes, self.p = sizes, p

    def forward(self, image: torch.Tensor, generator: torch.Generator | None = None):
        """(B, C, *spatial) -> same shape; each image is changed with probability ``p``."""
        spatial = image.dim() - 2
        conv = (F.conv2d, F.conv3d)[spatial - 2]
        out = image.clone()
        channels = image.shape[1]
        for i in range(image.shape[0]):
            if torch.rand(1, generator=generator).item() >= self.p:
                continue
            k = self.sizes[int(torch.randint(len(self.sizes), (1,), generator=generator))]
            fan_in = channels * k**spatial
            weight = torch.randn((channels, channels) + (k,) * spatial, generator=generator)
            weight = (weight / math.sqrt(fan_in)).to(image)
            x = image[i : i + 1]
            mixed = conv(x, weight, padding=k // 2)
            alpha = torch.rand(1, generator=generator).item()
            mixed = alpha * x + (1 - alpha) * mixed
            dims = tuple(range(2, image.dim()))
            mean, std = x.mean(dims, keepdim=True), x.std(dims, keepdim=True)
            mixed = (mixed - mixed.mean(dims, keepdim=True)) / mixed.std(dims, keepdim=True).clamp(
                min=1e-6
            )
            out[i : i + 1] = mixed * std + mean
        return out


METHODS = {
    "erm": ERM,
    "groupdro": GroupDRO,
    "vrex": VREx,
    "iberm": IBERM,
    "sd": SpectralDecoupling,
}
"""Objectives by name (``xds train --dg``); RandConv is an augmentation (``--randconv``)."""


def make_objective(name: str, n_groups: int, **params) -> nn.Module:
    """The objective called ``name`` for ``n_groups`` groups.

    Raises:
        RunError: an unknown name.
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in METHODS:
        raise RunError(f"unknown DG method {name!r}; known: {', '.join(METHODS)}")
    cls = METHODS[key]
    if cls in (ERM,):
        return cls()
    if cls is SpectralDecoupling:
        return cls(**params)
    return cls(n_groups, **params)
