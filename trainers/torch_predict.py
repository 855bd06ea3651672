"""Inference with a trained torch run: sliding windows, test-time flips, teachers' probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from xds.schemas.errors import RunError
from xds.trainers.checkpoints import CHECKPOINT, config_fields, load_checkpoint
from xds.trainers.network import autocast, build_unet, select_device
from xds.trainers.torch_backend import TorchConfig, preprocess


class TorchTeacher:
    """A trained run of this backend, predicting class probabilities on a scan's own grid.

    Prediction: canonical orientation, resampling and normalization as in training, sliding
    windows with half-patch overlap weighted by nnU-Net's Gaussian, then the probabilities
    resampled (linearly) back onto the scan's grid, as nnU-Net does before its argmax.
    """

    def __init__(self, run: str | Path, *, device: str = "auto"):
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian

        state = load_checkpoint(Path(run))
        if state is None:
            raise RunError(f"{run}: no {CHECKPOINT} (train first)")
        self.config = TorchConfig(**config_fields(json.loads(state["config"])))
        self.classes: list[str] = state["classes"]
        self.device = select_device(device)
        config = self.config
        self.network = build_unet(1, len(self.classes) + 1, config.patch, config.spacing,
                                  base_features=config.base_features).to(self.device)  # fmt: skip
        self.network.load_state_dict(state["model"])
        self.network.eval()
        self._weights = compute_gaussian(tuple(config.patch), device=self.device,
                                         dtype=torch.float32)  # fmt: skip
        self._prepare = preprocess(config, train=False)

    def probabilities(self, image: str | Path, flips=((),)):
        """Yield (classes + 1, *scan shape) float32 probabilities, one array per flip.

        Args:
            image: the scan's NIfTI file.
            flips: test-time flips, each a tuple of voxel axes (``()``: none); the input is
                flipped and the output flipped back, so members differ only by what the
                network does with mirrored anatomy.
        """
        import nibabel as nib
        import torchio as tio

        from xds.export.torchio import NiftiReader

        original = nib.load(str(image))
        ready = self._prepare(tio.Subject(image=tio.ScalarImage(image, reader=NiftiReader())))
        back = tio.Resample((original.shape[:3], original.affine))
        for axes in flips:
            dims = [a + 1 for a in axes]
            data = ready["image"].data.flip(dims) if dims else ready["image"].data
            probs = self._windows(tio.ScalarImage(tensor=data, affine=ready["image"].affine))
            probs = probs.flip(dims) if dims else probs
            resampled = back(tio.ScalarImage(tensor=probs.cpu(), affine=ready["image"].affine))
            yield resampled.data.numpy().astype(np.float32, copy=False)

    def _windows(self, image) -> torch.Tensor:
        """Gaussian-weighted sliding-window softmax over one prepared image."""
        import torchio as tio

        patch = self.config.patch
        grid = tio.GridSampler(tio.Subject(image=image), patch, tuple(p // 2 for p in patch))
        shape = image.shape[1:]
        total = torch.zeros((len(self.classes) + 1, *shape), device=self.device)
        weight = torch.zeros(shape, device=self.device)
        loader = torch.utils.data.DataLoader(grid, batch_size=self.config.batch_size)
        with torch.no_grad(), autocast(self.device):
            for batch in loader:
                logits = self.network(batch["image"][tio.DATA].to(self.device).float()).float()
                for k, location in enumerate(batch[tio.LOCATION]):
                    i0, j0, k0, i1, j1, k1 = location.tolist()
                    total[:, i0:i1, j0:j1, k0:k1] += logits[k].softmax(0) * self._weights
                    weight[i0:i1, j0:j1, k0:k1] += self._weights
        return total / weight.clamp(min=1e-6)


def predict_torch(
    run: str | Path, subjects: list, out: str | Path, *, device: str = "auto", progress=True
) -> list[Path]:
    """Predict every subject with the checkpoint in folder ``run``.

    Writes ``{scan_id}.nii.gz`` on each scan's own grid and a ``dataset.json`` naming the
    labels, which is what ``xds evaluate --pred`` reads.

    Raises:
        RunError: ``run`` holds no checkpoint.
    """
    import nibabel as nib

    teacher = TorchTeacher(run, device=device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for subject in subjects:
        image = subject["image"].path
        probs = next(teacher.probabilities(image))
        path = out / f"{subject['scan_id']}.nii.gz"
        nib.save(nib.Nifti1Image(probs.argmax(0).astype(np.uint8), nib.load(str(image)).affine),
                 path)  # fmt: skip
        written.append(path)
    classes = teacher.classes
    names = {"background": 0, **{c: i for i, c in enumerate(classes, start=1)}}
    (out / "dataset.json").write_text(json.dumps({"labels": names}, indent=1))
    return written
