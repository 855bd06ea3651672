"""Segmentation loss for cohorts with partial labels: Dice + cross-entropy per sample.

A scan whose label map does not annotate a class (a center that never draws the spleen, a
harmonized label missing one of the shared classes) must not teach the network that the
class is absent there. Following the marginal loss of Shi et al. (MedIA 2021), the
probabilities of the classes a sample does not annotate are merged into background for
cross-entropy, and Dice is averaged over the foreground classes it annotates only. Voxels
labelled ``ignore_index`` (nnU-Net's ignore label, used by pseudo-label gates) count in
neither term.

The loss is returned per sample, so domain-generalization objectives can group it.
"""

from __future__ import annotations

import torch
from torch import nn


class PartialDiceCELoss(nn.Module):
    """Soft Dice + cross-entropy over the classes each sample annotates.

    >>> loss = PartialDiceCELoss(3)
    >>> logits = torch.zeros(2, 3, 4, 4, 4)
    >>> target = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    >>> loss(logits, target).shape
    torch.Size([2])
    """

    def __init__(
        self,
        n_classes: int,
        *,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        smooth: float = 1e-5,
        ignore_index: int | None = None,
    ):
        super().__init__()
        self.n_classes = n_classes
        self.dice_weight, self.ce_weight, self.smooth = dice_weight, ce_weight, smooth
        self.ignore_index = ignore_index

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-sample loss (B,).

        Args:
            logits: (B, C, *spatial) network output.
            target: (B, *spatial) integer labels (0 background).
            annotated: (B, C) bool, the classes each sample's label annotates (background is
                always annotated); None when every sample annotates every class.
        """
        b, c = logits.shape[:2]
        if annotated is None:
            annotated = torch.ones(b, c, dtype=torch.bool, device=logits.device)
        annotated = annotated.clone()
        annotated[:, 0] = True
        valid = torch.ones_like(target, dtype=torch.bool)
        if self.ignore_index is not None:
            valid = target != self.ignore_index
            target = torch.where(valid, target, torch.zeros_like(target))
        view = (b, c) + (1,) * (logits.dim() - 2)

        log_p = torch.log_softmax(logits.float(), dim=1)
        # background absorbs every class the sample does not annotate
        merged = annotated.clone()
        merged[:, 1:] = ~annotated[:, 1:]
        log_bg = torch.logsumexp(log_p.masked_fill(~merged.view(view), float("-inf")), dim=1)
        picked = log_p.gather(1, target.unsqueeze(1)).squeeze(1)
        log_true = torch.where(target == 0, log_bg, picked)
        dims = tuple(range(1, target.dim()))
        count = valid.sum(dims).clamp(min=1)
        ce = -(log_true * valid).sum(dims) / count

        probs = log_p.exp() * valid.unsqueeze(1)
        onehot = torch.zeros_like(probs).scatter_(1, target.unsqueeze(1), 1.0) * valid.unsqueeze(1)
        sums = tuple(range(2, logits.dim()))
        intersection = (probs * onehot).sum(sums)
        denominator = probs.sum(sums) + onehot.sum(sums)
        dice = (2 * intersection + self.smooth) / (denominator + self.smooth)  # (B, C)
        scored = annotated.clone()
        scored[:, 0] = False
        n_scored = scored.sum(1)
        dice_loss = torch.where(
            n_scored > 0,
            1 - (dice * scored).sum(1) / n_scored.clamp(min=1),
            torch.zeros_like(ce),
        )
        return self.ce_weight * ce + self.dice_weight * dice_loss
