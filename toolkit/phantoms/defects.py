"""Copies of scans and labels with known defects, for testing QC (``xds.phantoms.defects``).

Each defect is what goes wrong in a real center's delivery; each harmless change is what
must *not* be flagged. :func:`inject` writes the changed image and label as new NIfTI
files (the originals are never touched) and returns what it did.

Defects (:data:`DEFECTS`), with the QC flags that catch them:

====================  ==========================================================  ==============
kind                  what changes                                                flags
====================  ==========================================================  ==============
``lr_flip_label``     the label mirrored left-right (image untouched)             lr_flip
``lr_flip_image``     the image mirrored left-right (label untouched)             lr_flip
``axis_swap``         image and label voxel axes i and j swapped, header kept     geometry, lr_flip
``label_shift``       the label moved 3-8 mm in the axial plane                   label_shift
``spacing``           the header's spacing doubled or halved along one axis      spacing
``truncated``         the last 30-45 % of slices missing                          truncated
``intensity``         intensities scaled by 3-10, or inverted                     intensity
``empty_label``       every label voxel cleared                                   empty_label
``extra_component``   a far blob of one class added                               extra_component
``bias``              a smooth multiplicative field (factor 6-10 across the FOV)   bias
====================  ==========================================================  ==============

Harmless (:data:`HARMLESS`): ``direction_noise`` (1e-6 noise on the direction cosines of
image and label), ``regrid`` (image and label resampled by nearest neighbour onto a grid
of 0.8 x the spacing over the same field of view), ``vendor_range`` (intensities scaled by
1.4 and offset by 5 % of their range, another scanner's range within the center).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from xds.io.images import axis_along
from xds.phantoms.records import save_nifti

DEFECTS = ("lr_flip_label", "lr_flip_image", "axis_swap", "label_shift", "spacing",
           "truncated", "intensity", "empty_label", "extra_component", "bias")  # fmt: skip
HARMLESS = ("direction_noise", "regrid", "vendor_range")

EXPECTED_FLAGS = {
    "lr_flip_label": {"lr_flip"},
    "lr_flip_image": {"lr_flip"},
    "axis_swap": {"geometry", "lr_flip"},
    "label_shift": {"label_shift"},
    "spacing": {"spacing"},
    "truncated": {"truncated"},
    "intensity": {"intensity"},
    "empty_label": {"empty_label"},
    "extra_component": {"extra_component"},
    "bias": {"bias"},
}
"""The flags any of which counts as catching a defect."""


@dataclass
class Injected:
    """One changed copy: where its files are and what was done."""

    kind: str
    image: str
    label: str | None
    detail: str


def _save(data: np.ndarray, affine: np.ndarray, like: nib.Nifti1Image, path: Path) -> str:
    save_nifti(data.astype(like.get_data_dtype()), affine, path)
    return str(path)


def inject(
    kind: str, image_path: str | Path, label_path: str | Path | None, out: str | Path,
    rng: np.random.Generator,
) -> Injected:  # fmt: skip
    """Write a copy of a scan (and its label) with one defect or harmless change under ``out``.

    Raises:
        ValueError: an unknown kind.
    """
    if kind not in DEFECTS + HARMLESS:
        raise ValueError(f"unknown defect {kind!r}; known: {', '.join(DEFECTS + HARMLESS)}")
    image = nib.load(str(image_path))
    label = nib.load(str(label_path)) if label_path else None
    data = np.asanyarray(image.dataobj).astype(np.float64)
    lab = np.asanyarray(label.dataobj).copy() if label is not None else None
    affine, lab_affine = image.affine.copy(), (label.affine.copy() if label is not None else None)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    detail = ""
    x = axis_along(affine, 0)
    if kind == "lr_flip_label":
        lab = np.flip(lab, axis=x)
    elif kind == "lr_flip_image":
        data = np.flip(data, axis=x)
    elif kind == "axis_swap":
        data = np.swapaxes(data, 0, 1)
        lab = np.swapaxes(lab, 0, 1) if lab is not None else None
    elif kind == "label_shift":
        mm = rng.uniform(3, 8)
        axis = int(rng.choice([a for a in range(3) if a != axis_along(affine, 2)]))
        steps = max(1, math.ceil(mm / spacing[axis])) * int(rng.choice([-1, 1]))
        lab = np.roll(lab, steps, axis=axis)
        detail = f"{abs(steps) * spacing[axis]:.1f} mm along axis {axis}"
    elif kind == "spacing":
        axis = int(rng.integers(0, 3))
        factor = float(rng.choice([0.5, 2.0]))
        affine[:3, axis] *= factor
        if lab_affine is not None:
            lab_affine[:3, axis] *= factor
        detail = f"axis {axis} x{factor}"
    elif kind == "truncated":
        axis = axis_along(affine, 2)
        keep = int(round(data.shape[axis] * (1 - rng.uniform(0.30, 0.45))))
        data = np.take(data, range(keep), axis=axis)
        lab = np.take(lab, range(keep), axis=axis) if lab is not None else None
        detail = f"{keep} of {image.shape[axis]} slices"
    elif kind == "intensity":
        if rng.random() < 0.5:
            data = data.max() + data.min() - data
            detail = "inverted"
        else:
            factor = rng.uniform(3, 10)
            data = data * factor
            detail = f"x{factor:.1f}"
    elif kind == "empty_label":
        lab = np.zeros_like(lab)
    elif kind == "extra_component":
        lab = _far_blob(lab, rng)
    elif kind == "bias":
        data = data * _bias_field(data.shape, affine, rng)
    elif kind == "direction_noise":
        affine[:3, :3] += rng.normal(0, 1e-6, (3, 3))
        if lab_affine is not None:
            lab_affine[:3, :3] += rng.normal(0, 1e-6, (3, 3))
    elif kind == "regrid":
        data, affine = _regrid(data, affine, 0.8)
        if lab is not None:
            lab, lab_affine = _regrid(lab, lab_affine, 0.8)
    elif kind == "vendor_range":
        data = data * 1.4 + 0.05 * (data.max() - data.min())
    out = Path(out)
    name = Path(image_path).name.split(".")[0]
    image_out = _save(data, affine, image, out / f"{name}_{kind}.nii.gz")
    label_out = None
    if lab is not None:
        label_out = _save(lab, lab_affine, label, out / f"{name}_{kind}_label.nii.gz")
    return Injected(kind, image_out, label_out, detail)


def _far_blob(lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``lab`` with a cube of one of its classes far from where that class is."""
    values = [int(v) for v in np.unique(lab) if v]
    if not values:
        return lab
    value = int(rng.choice(values))
    where = np.argwhere(lab == value).mean(0)
    shape = np.array(lab.shape)
    side = np.maximum(shape // 12, 2)
    # the corner region of the volume farthest from the class, kept off the border
    corner = np.where(where < shape / 2, shape - side - shape // 6, shape // 6)
    out = lab.copy()
    box = tuple(slice(int(c), int(c + s)) for c, s in zip(corner, side, strict=True))
    out[box] = value
    return out


def _bias_field(shape, affine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A smooth field rising by a factor of 6-10 along a random in-plane direction.

    Strong on purpose: the phantom world's own fields already reach 2 x across the field of
    view, as real coil non-uniformity does, and QC must not flag those.
    """
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), -1)
    direction = np.zeros(3)
    direction[[a for a in range(3) if a != axis_along(affine, 2)]] = rng.normal(size=2)
    direction /= np.linalg.norm(direction)
    strength = math.log(rng.uniform(6, 10)) / 2
    return np.exp(strength * (grid @ direction))


def _regrid(data: np.ndarray, affine: np.ndarray, factor: float):
    """Nearest-neighbour resampling onto ``factor`` x the spacing, same field of view."""
    shape = np.array(data.shape[:3])
    new_shape = np.maximum(np.round((shape - 1) / factor).astype(int) + 1, 1)
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] * factor
    idx = np.indices(new_shape).reshape(3, -1).T
    src = np.rint(idx * factor).astype(int)
    src = np.minimum(src, shape - 1)
    out = data[tuple(src.T)].reshape(tuple(new_shape))
    return out, new_affine
