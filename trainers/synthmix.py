"""Anatomix rendering as a training augmentation (``--synthetic-mix P``; Pancakes).

With probability ``P`` a training patch's image is replaced by a synthetic one rendered from
the patch's own label map: a random protocol (intensity mean and texture per label) and one
element's worth of the Anatomix augmentations (affine, elastic, blur, sharpness,
brightness/contrast, noise, flipped intensities), geometry applied to the label map too.
The classes stay the cohort's, so the network sees its organs under contrasts no sequence
of the cohort has, the domain randomization that helps a model trained on one MRI sequence
on another. Background (and any class the scan does not annotate) is one tissue to it.
"""

from __future__ import annotations

import numpy as np
import torch

from xds.labels.mapping import IGNORE
from xds.schemas.errors import RunError
from xds.synth.render import draw_set, render_set


class SyntheticMix:
    """Replace each patch with probability ``p`` by an Anatomix rendering of its labels."""

    def __init__(self, p: float, seed: int = 0):
        if not 0.0 <= p <= 1.0:
            raise RunError(f"--synthetic-mix must be within [0, 1], not {p}")
        self.p = p
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, image: torch.Tensor, target: torch.Tensor):
        """(B, 1, *spatial) images and (B, *spatial) labels -> new ones, and which changed."""
        changed = torch.rand(len(image), generator=self.generator) < self.p
        if not changed.any():
            return image, target, changed
        image, target = image.clone(), target.clone()
        dims = target.dim() - 1
        for i in changed.nonzero()[:, 0].tolist():
            labels = target[i].cpu().numpy()
            # ignored voxels (pseudo-label gates) render as a tissue of their own and stay
            # ignored where the warp takes them
            unsure = labels == IGNORE
            top = int(labels[~unsure].max(initial=0)) + int(unsure.any())
            labels = np.where(unsure, top, labels).astype(np.uint8)
            draw = draw_set(self.generator, top, 1, dims)
            rendered, warped = render_set(labels, draw, self.generator, device=image.device)
            synthetic = torch.from_numpy(rendered[0]).to(image)
            synthetic = (synthetic - synthetic.mean()) / synthetic.std().clamp(min=1e-6)
            image[i, 0] = synthetic
            warped = warped[0].astype(np.int64)
            if unsure.any():
                warped[warped == top] = IGNORE
            target[i] = torch.from_numpy(warped).to(target)
        return image, target, changed
