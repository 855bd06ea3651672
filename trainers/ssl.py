"""Semi-supervised objectives of CrossPan (appendix C).

They train on the ``unlabeled`` role of nested semi-supervised splits (``xds split
--strategy semi-supervised``).

- UA-MT (Yu et al., MICCAI 2019): a teacher that is the exponential moving average of the
  student (momentum 0.99); the teacher sees the unlabeled image ``passes`` times under input
  noise, its mean softmax's entropy is the uncertainty, and the student is pulled (mean
  squared error of softmaxes) towards the teacher only where the uncertainty is below a
  threshold rising from 0.75 to 1.0 times ln(C). Weight: sigmoid ramp-up over 50 epochs.
- CPS (Chen et al., CVPR 2021): two networks, each trained with cross-entropy on the other's
  hard pseudo-label (no gradient through the pseudo-label). Weight: linear 0 -> 1 over 50
  epochs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sigmoid_rampup(epoch: float, length: float = 50.0) -> float:
    """``exp(-5 (1 - t)^2)`` for t = epoch / length clipped to [0, 1] (Laine & Aila)."""
    if length <= 0:
        return 1.0
    t = min(max(epoch / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def linear_rampup(epoch: float, length: float = 50.0) -> float:
    """``epoch / length`` clipped to [0, 1]."""
    return 1.0 if length <= 0 else min(max(epoch / length, 0.0), 1.0)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float = 0.99) -> None:
    """Move the teacher towards the student: ``t <- momentum * t + (1 - momentum) * s``.

    Parameters are averaged; buffers (normalization statistics) are copied.
    """
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of (B, C, *spatial) class probabilities, per voxel."""
    return -(probs * torch.log(probs.clamp(min=1e-8))).sum(1)


class UAMTConsistency(nn.Module):
    """UA-MT's uncertainty-masked consistency between student and teacher predictions."""

    def __init__(self, n_classes: int, passes: int = 8, noise: float = 0.1, ramp: float = 50.0):
        super().__init__()
        self.n_classes, self.passes, self.noise, self.ramp = n_classes, passes, noise, ramp

    @torch.no_grad()
    def teacher_probs(self, teacher: nn.Module, image: torch.Tensor, generator=None):
        """Mean teacher softmax over ``passes`` noisy copies of ``image``, and its entropy."""
        total = None
        for _ in range(self.passes):
            noise = torch.randn(image.shape, generator=generator).to(image) * self.noise
            noise = noise.clamp(-2 * self.noise, 2 * self.noise)
            probs = torch.softmax(teacher(image + noise).float(), dim=1)
            total = probs if total is None else total + probs
        mean = total / self.passes
        return mean, predictive_entropy(mean)

    def forward(self, student_logits, teacher_mean, uncertainty, epoch: float) -> torch.Tensor:
        """Masked MSE of softmaxes, where uncertainty < (0.75 + 0.25 ramp) ln(C)."""
        threshold = (0.75 + 0.25 * sigmoid_rampup(epoch, self.ramp)) * math.log(self.n_classes)
        mask = (uncertainty < threshold).unsqueeze(1).float()
        student = torch.softmax(student_logits.float(), dim=1)
        squared = (student - teacher_mean) ** 2 * mask
        return squared.sum() / (mask.sum() * self.n_classes).clamp(min=1.0)


def cps_loss(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Cross pseudo supervision: CE(a, argmax b) + CE(b, argmax a), pseudo-labels detached."""
    pseudo_a = logits_a.detach().argmax(1)
    pseudo_b = logits_b.detach().argmax(1)
    return F.cross_entropy(logits_a.float(), pseudo_b) + F.cross_entropy(logits_b.float(), pseudo_a)


class UAMT:
    """UA-MT in a training loop: an EMA teacher and the masked consistency term."""

    def __init__(self, network: nn.Module, n_classes: int, ramp: float = 50.0, passes: int = 4):
        import copy

        self.teacher = copy.deepcopy(network)
        self.teacher.requires_grad_(False)
        self.consistency = UAMTConsistency(n_classes, passes=passes, ramp=ramp)
        self.ramp = ramp

    def parameters(self) -> list:
        """Parameters the optimizer must also update (none: the teacher is an average)."""
        return []

    def supervised(self, loss_fn, image, target, annotated) -> torch.Tensor:
        """Extra supervised loss (none)."""
        return torch.zeros((), device=image.device)

    def unsupervised(self, network: nn.Module, image: torch.Tensor, epoch: float):
        """0.1 x sigmoid ramp-up x the consistency of the student with the teacher."""
        noise = (torch.randn_like(image) * 0.1).clamp(-0.2, 0.2)
        student = network(image + noise)
        mean, uncertainty = self.consistency.teacher_probs(self.teacher, image)
        return (
            0.1
            * sigmoid_rampup(epoch, self.ramp)
            * self.consistency(student, mean, uncertainty, epoch)
        )

    def after_step(self, network: nn.Module) -> None:
        """Move the teacher (momentum 0.99)."""
        ema_update(self.teacher, network, 0.99)

    def state_dict(self) -> dict:
        """The teacher's weights."""
        return self.teacher.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore the teacher."""
        self.teacher.load_state_dict(state)


class CPS:
    """CPS in a training loop: a second, differently initialized network trained alongside."""

    def __init__(self, other: nn.Module, ramp: float = 50.0):
        self.other, self.ramp = other, ramp

    def parameters(self) -> list:
        """The second network's parameters (one optimizer trains both)."""
        return list(self.other.parameters())

    def supervised(self, loss_fn, image, target, annotated) -> torch.Tensor:
        """The second network's supervised loss on the labelled batch."""
        return loss_fn(self.other(image), target, annotated).mean()

    def unsupervised(self, network: nn.Module, image: torch.Tensor, epoch: float):
        """Linear ramp-up (0 -> 1) x cross pseudo supervision between the two networks."""
        return linear_rampup(epoch, self.ramp) * cps_loss(network(image), self.other(image))

    def after_step(self, network: nn.Module) -> None:
        """Nothing to do: both networks are updated by the optimizer."""

    def state_dict(self) -> dict:
        """The second network's weights."""
        return self.other.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore the second network."""
        self.other.load_state_dict(state)
