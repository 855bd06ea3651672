"""Per-scan quality measures: geometry, intensity and labels (``xds qc``).

Every measure is a number computed from one scan (and its label, when it has one); what is
unusual is decided later, against the scan's peers (:mod:`xds.qc.outliers`). Names and
definitions (MRIQC's where they carry over from brain MRI to a body scan):

Geometry
    ``spacing_{i,j,k}``, ``shape_{i,j,k}``, ``fov_{i,j,k}`` (mm); ``anisotropy`` (largest
    over smallest spacing); ``thickness_ratio`` (DICOM SliceThickness over the spacing
    between slices: above 1 the slices overlap, below 1 there are gaps); ``orthogonality``
    (largest |cosine| between two voxel axes: 0 for a proper grid); ``label_offset_mm``
    (largest distance between the label's and the image's voxel-grid corners);
    ``label_grid_ok`` (1 when the label has the image's shape and its corners lie within a
    hundredth of a voxel: a tolerance, not exact equality).
Intensity, on a body mask (:func:`body_mask`)
    ``p01``, ``p50``, ``p99`` (body percentiles); ``bg_p50`` (the air's median); ``snr``
    (body mean over body standard deviation); ``snr_d`` (Dietrich's: body mean over the
    air's standard deviation corrected for the Rayleigh distribution, sqrt(2 / (4 - pi));
    MRIQC ``snrd``); ``cnr`` (|mean(label) - mean(body outside it)| / sqrt(sd_air^2 +
    sd_label^2 + sd_rest^2): MRIQC's CNR with label and body for grey and white matter);
    ``efc`` (MRIQC's entropy focus criterion, normalized by its maximum: 1 for noise, lower
    for sharp images); ``fber`` (median energy in the body over median energy in the air);
    ``bias`` (how far a smooth multiplicative field rises across the tissue it is fitted
    to, in log units: the label's classes and the body's outer layer, :func:`bias_range`);
    ``body_at_border`` (share of the slices' edges inside the body mask: an inverted
    image's "body" is its air); ``lr_asymmetry`` ((mean of the patient-right half - mean of
    the left half) / body mean); ``body_fraction``; ``extent_{x,y,z}`` (the body's size
    along R, A, S in mm) and ``slices_{x,y,z}`` (the voxel count along the axis nearest
    each); ``hu_air``, ``hu_body`` (CT only: the air's and the body's medians).
Labels, per class (``<class>.<measure>``) and over classes
    ``volume_ml``; ``components`` (26-connected); ``largest_share`` (the largest piece's
    share of the class); ``outside_body`` (share of the class outside the body mask);
    ``centroid_{x,y,z}`` (the class's centre in the body's bounding box, 0..1 along R, A,
    S); ``edge_contrast`` (|mean intensity just inside the label's border - just outside|
    / body standard deviation); ``side`` (for organs with a side: +1 when the centre lies
    on that side of the body's midline, else -1); over classes: ``sides_wrong``,
    ``empty_classes`` (annotated classes with no voxel), ``extra_share`` (labelled voxels
    outside each class's largest piece), ``far_gap_mm`` (how far the farthest piece of at
    least 8 voxels lies from its class's largest piece), ``shift_gain`` and
    ``mirror_gain`` (:func:`alignment`: how much better the label would fit moved or
    mirrored).
"""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np

from xds.evaluation.metrics import bounding_box
from xds.io.images import axis_along

SIDES = {"liver": 1, "gallbladder": 1, "kidney_right": 1, "adrenal_gland_right": 1,
         "inferior_vena_cava": 1, "spleen": -1, "kidney_left": -1, "stomach": -1,
         "adrenal_gland_left": -1}  # fmt: skip
"""Organs whose side the anatomy fixes: +1 patient right (RAS x > midline), -1 left."""

_RAYLEIGH = math.sqrt(2 / (4 - math.pi))


def grid_measures(image: nib.Nifti1Image, label: nib.Nifti1Image | None) -> dict[str, float]:
    """Geometry: spacing, shape, field of view, axis angles, label-image agreement."""
    affine = image.affine
    axes = affine[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    shape = np.array(image.shape[:3], float)
    out = {}
    for n, name in enumerate("ijk"):
        out[f"spacing_{name}"] = float(spacing[n])
        out[f"shape_{name}"] = float(shape[n])
        out[f"fov_{name}"] = float(spacing[n] * shape[n])
    out["anisotropy"] = float(spacing.max() / max(spacing.min(), 1e-9))
    unit = axes / np.maximum(spacing, 1e-9)
    cos = np.abs(unit.T @ unit - np.eye(3))
    out["orthogonality"] = float(cos.max())
    if label is not None:
        corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], float)
        ends = corners * (shape - 1)
        same_shape = tuple(label.shape[:3]) == tuple(image.shape[:3])
        lab_ends = corners * (np.array(label.shape[:3], float) - 1)
        here = nib.affines.apply_affine(affine, ends)
        offset = np.linalg.norm(here - nib.affines.apply_affine(label.affine, lab_ends), axis=1)
        out["label_offset_mm"] = float(offset.max())
        out["label_grid_ok"] = float(same_shape and offset.max() <= 0.01 * spacing.min())
    return out


def body_mask(data: np.ndarray) -> np.ndarray:
    """The body: voxels above the triangle threshold, largest component, holes filled.

    The triangle method puts the threshold at the foot of the histogram's air peak, so dark
    tissue stays in the body whatever the sequence (Otsu's threshold splits bright from
    dark tissue in some MR contrasts and cuts the body). A very strong bias field darkens
    one side of the body below it; that side is then missing from the mask.
    """
    import cc3d
    from scipy import ndimage
    from skimage.filters import threshold_triangle

    sample = data[:: max(1, data.shape[0] // 48), :: max(1, data.shape[1] // 48)]
    finite = sample[np.isfinite(sample)]
    if finite.size == 0 or finite.min() == finite.max():
        return np.zeros(data.shape, bool)
    above = data > threshold_triangle(finite)
    labels, n = cc3d.connected_components(above, connectivity=6, return_N=True)
    if n == 0:
        return above
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    for k in range(body.shape[2]):
        body[:, :, k] = ndimage.binary_fill_holes(body[:, :, k])
    return body


def body_facts(body: np.ndarray, affine: np.ndarray) -> tuple:
    """What several measures need of the body mask, computed once.

    Its bounding box (None when empty), the RAS x of every other body voxel in-plane, and
    the body's midline (their median).
    """
    idx = np.argwhere(body[::2, ::2]) * np.array([2, 2, 1])
    x = idx @ affine[0, :3] + affine[0, 3]
    return bounding_box(body), x, float(np.median(x)) if x.size else 0.0


def intensity_measures(
    data: np.ndarray, body: np.ndarray, affine: np.ndarray, modality: str,
    facts: tuple | None = None,
) -> dict[str, float]:  # fmt: skip
    """Robust range, SNR, EFC, FBER and left-right asymmetry on the body mask.

    Statistics of the body and the air use every other voxel in-plane (robust statistics
    need no more); EFC uses every voxel. ``facts``: :func:`body_facts` of ``body``.
    """
    box, body_x, mid_x = facts if facts is not None else body_facts(body, affine)
    out: dict[str, float] = {"body_fraction": float(body.mean())}
    out.update(body_extent(body, affine, box))
    out["body_at_border"] = _at_border(body)
    sub, sub_body = data[::2, ::2], body[::2, ::2]
    inside, air = sub[sub_body], sub[~sub_body]
    if inside.size < 10:
        return out
    p01, p50, p99 = np.percentile(inside, [1, 50, 99])
    out.update(p01=float(p01), p50=float(p50), p99=float(p99))
    if air.size < 10:
        return out
    out["bg_p50"] = float(np.median(air))
    sd_body = float(inside.std())
    air_sd = float(1.4826 * np.median(np.abs(air - np.median(air))))
    out["snr"] = float(inside.mean() / max(sd_body, 1e-9))
    out["snr_d"] = float(inside.mean() / max(_RAYLEIGH * air_sd, 1e-9))
    shifted = data - data.min()
    energy = math.sqrt(float((shifted.astype(np.float64) ** 2).sum())) or 1.0
    x = shifted[shifted > 0] / energy
    n = data.size
    efc_max = n / math.sqrt(n) * math.log(1 / math.sqrt(n))
    out["efc"] = float((x * np.log(x)).sum() / efc_max) if x.size else 0.0
    low = float(data.min())
    out["fber"] = float(np.median((inside - low) ** 2) / max(np.median((air - low) ** 2), 1e-9))
    out["lr_asymmetry"] = _lr_asymmetry(data, body, body_x, mid_x)
    if modality == "CT":
        out["hu_air"] = float(np.median(air))
        out["hu_body"] = float(p50)
    return out


def body_extent(body: np.ndarray, affine: np.ndarray, box: tuple | None) -> dict[str, float]:
    """The body's size along R, A, S (mm) and the voxel count along the axis nearest each.

    ``box``: the body's bounding box (:func:`body_facts`), None when it is empty.
    """
    out = {}
    corners = None
    if box is not None:
        lo, hi = _ends(box)
        corners = np.array([[(lo, hi)[c][a] for a, c in enumerate(bits)]
                            for bits in np.ndindex(2, 2, 2)], float)  # fmt: skip
        corners = nib.affines.apply_affine(affine, corners)
    for axis, letter in enumerate("xyz"):
        nearest = axis_along(affine, axis)
        out[f"slices_{letter}"] = float(body.shape[nearest])
        if corners is not None:
            size = np.ptp(corners[:, axis]) + np.linalg.norm(affine[:3, nearest])
            out[f"extent_{letter}"] = float(size)
    return out


def _ends(box: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The first and last voxel index of a box along each axis."""
    return np.array([b.start for b in box]), np.array([b.stop - 1 for b in box])


def bias_range(data: np.ndarray, body: np.ndarray, affine: np.ndarray,
               tissue: np.ndarray) -> float:  # fmt: skip
    """How far a smooth multiplicative field rises across the body (log units).

    Log intensity is modelled, over the voxels with a tissue class (``tissue`` > 0: the
    label's classes, each one tissue), as the class's own level plus one plane shared by
    all classes; the result is the plane's rise over those voxels (extrapolating it to the
    whole body would amplify the noise of a small label). Anatomy shows as the levels, not
    as tilt, and what is left is the field (the model of FSL FAST and N4, with the classes
    given by the label instead of estimated).
    """
    idx = np.argwhere(tissue > 0)
    if idx.shape[0] < 100:
        return float("nan")
    step = max(1, idx.shape[0] // 20000)
    idx = idx[::step]
    values = data[tuple(idx.T)].astype(np.float64)
    keep = values > 0
    if keep.sum() < 100:
        return float("nan")
    classes = np.unique(tissue[tuple(idx[keep].T)], return_inverse=True)[1]
    centre = nib.affines.apply_affine(affine, idx[keep].mean(0))
    world = (nib.affines.apply_affine(affine, idx[keep]) - centre) / 100.0  # decimetres
    design = np.column_stack([world, np.eye(int(classes.max()) + 1)[classes]])
    coef, *_ = np.linalg.lstsq(design, np.log(values[keep]), rcond=None)
    plane = world @ coef[:3]
    return float(np.ptp(plane))


def _at_border(body: np.ndarray) -> float:
    """Share of the volume's outer faces (in-plane edges of every slice) inside the body."""
    faces = [body[0], body[-1], body[:, 0], body[:, -1]]
    return float(np.mean(np.concatenate([f.ravel() for f in faces])))


def _lr_asymmetry(data: np.ndarray, body: np.ndarray, x: np.ndarray, mid: float) -> float:
    values = data[::2, ::2][body[::2, ::2]].astype(np.float64)
    right, left = values[x > mid], values[x <= mid]
    if not right.size or not left.size or values.mean() == 0:
        return 0.0
    return float((right.mean() - left.mean()) / abs(values.mean()))


_PAD = 5  # voxels around a class's box: room for its rings and the largest shift


def label_measures(
    data: np.ndarray, body: np.ndarray, labels: np.ndarray, names: dict[int, str],
    affine: np.ndarray, annotated: list[str] | None, facts: tuple | None = None,
) -> dict[str, float]:  # fmt: skip
    """Per class volume, pieces, place in the body, border contrast and side.

    Each class is measured inside its bounding box (padded by a few voxels), found for
    every class in one pass; its border rings are kept as voxel indices, which
    :func:`alignment` moves and mirrors without touching whole volumes. ``facts``:
    :func:`body_facts` of ``body``.
    """
    import cc3d
    from scipy import ndimage

    out: dict[str, float] = {}
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    sd_body = float(data[body].std()) if body.any() else 1.0
    box, _, mid_x = facts if facts is not None else body_facts(body, affine)
    lo, hi = _ends(box) if box is not None else (np.zeros(3), np.ones(3))
    ras_lo = nib.affines.apply_affine(affine, lo)
    ras_hi = nib.affines.apply_affine(affine, hi)
    span = np.where(np.abs(ras_hi - ras_lo) > 0, ras_hi - ras_lo, 1.0)
    boxes = ndimage.find_objects(labels)
    shape = np.array(labels.shape)
    extra, total, empty, far_gap = 0, 0, 0, 0.0
    edges, rings, sides_wrong, sides_known = [], [], 0, 0
    present = 0
    for value, name in sorted(names.items()):
        if not value or name == "background":
            continue
        box = boxes[value - 1] if 0 < value <= len(boxes) else None
        if box is None:
            if annotated is None or name in annotated:
                empty += 1
            continue
        present += 1
        start = np.array([max(sl.start - _PAD, 0) for sl in box])
        stop = np.minimum(np.array([sl.stop + _PAD for sl in box]), shape)
        crop = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
        mask = labels[crop] == value
        count = int(mask.sum())
        prefix = f"{name}."
        comp, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
        sizes = np.bincount(comp.ravel())[1:]
        out[prefix + "volume_ml"] = count * voxel_ml
        out[prefix + "components"] = float(n)
        out[prefix + "largest_share"] = float(sizes.max() / count)
        extra += count - int(sizes.max())
        total += count
        if n > 1:
            far_gap = max(far_gap, _far_gap(comp, sizes, affine))
        out[prefix + "outside_body"] = float((mask & ~body[crop]).sum() / count)
        centre = nib.affines.apply_affine(affine, np.argwhere(mask).mean(0) + start)
        for axis, letter in enumerate("xyz"):
            out[prefix + f"centroid_{letter}"] = float((centre[axis] - ras_lo[axis]) / span[axis])
        inner = np.argwhere(mask & ~ndimage.binary_erosion(mask)) + start
        outer = np.argwhere(ndimage.binary_dilation(mask) & ~mask) + start
        if len(inner) and len(outer):
            contrast = _ring_contrast(data, inner, outer) / max(sd_body, 1e-9)
            out[prefix + "edge_contrast"] = contrast
            edges.append((contrast, count))
            if count >= 8:
                rings.append((inner, outer, float(count)))
        if name in SIDES:
            side = 1.0 if (centre[0] - mid_x) * SIDES[name] > 0 else -1.0
            out[prefix + "side"] = side
            sides_known += 1
            sides_wrong += side < 0
    out["label_classes"] = float(present)
    out["empty_classes"] = float(empty)
    out["extra_share"] = float(extra / total) if total else 0.0
    out["far_gap_mm"] = far_gap
    if edges:
        weights = np.array([w for _, w in edges], float)
        out["edge_contrast"] = float(np.average([c for c, _ in edges], weights=weights))
        out.update(alignment(data, rings, affine))
    if sides_known:
        out["sides_wrong"] = float(sides_wrong / sides_known)
    return out


def _ring_contrast(data: np.ndarray, inner: np.ndarray, outer: np.ndarray) -> float:
    """|mean intensity on the inner ring - on the outer ring| (rings as voxel indices)."""
    return abs(float(data[tuple(inner.T)].mean() - data[tuple(outer.T)].mean()))


def alignment(data: np.ndarray, rings: list[tuple], affine: np.ndarray) -> dict[str, float]:
    """How much better the label would fit its image moved or mirrored.

    ``rings``: per class, the voxel indices just inside and just outside its border, and
    its size. ``shift_gain``: the size-weighted contrast across the borders with the label
    displaced by up to 10 mm along each voxel axis (the best of them), over the contrast
    where it is; ``mirror_gain``: the same with the label mirrored left-right. A label on
    its organs scores about 1 or less; one shifted or flipped off them scores higher,
    whatever the sequence's contrast.
    """
    if not rings:
        return {}
    shape = np.array(data.shape)

    def contrast(move) -> float:
        value, weight = 0.0, 0.0
        for inner, outer, size in rings:
            a, b = move(inner), move(outer)
            a, b = a[((a >= 0) & (a < shape)).all(1)], b[((b >= 0) & (b < shape)).all(1)]
            if len(a) and len(b):
                value += size * _ring_contrast(data, a, b)
                weight += size
        return value / weight if weight else 0.0

    here = contrast(lambda idx: idx)
    if here <= 0:
        return {}
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    best = 0.0
    for axis in range(3):
        for step in range(1, min(4, max(1, int(10 // spacing[axis]))) + 1):
            for sign in (-1, 1):
                delta = np.zeros(3, int)
                delta[axis] = sign * step
                best = max(best, contrast(lambda idx, d=delta: idx + d))
    x = axis_along(affine, 0)
    flip = np.ones(3, int)
    flip[x] = -1
    offset = np.zeros(3, int)
    offset[x] = shape[x] - 1
    mirrored = contrast(lambda idx: idx * flip + offset)
    return {"shift_gain": best / here, "mirror_gain": mirrored / here}


def _far_gap(comp: np.ndarray, sizes: np.ndarray, affine: np.ndarray, least: int = 8) -> float:
    """How far (mm) the farthest piece of at least ``least`` voxels lies from the largest."""
    from scipy import ndimage

    main = int(np.argmax(sizes)) + 1
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    distance = ndimage.distance_transform_edt(comp != main, sampling=spacing)
    gap = 0.0
    for piece, size in enumerate(sizes, start=1):
        if piece != main and size >= least:
            gap = max(gap, float(distance[comp == piece].min()))
    return gap


def body_shell(body: np.ndarray, affine: np.ndarray, depth_mm: float = 8.0) -> np.ndarray:
    """The body's outer layer, one voxel in from its edge to ``depth_mm`` deeper.

    Under the skin lies subcutaneous fat all around the body: one tissue spanning the whole
    field of view, which is what a field estimate needs (a label may be a small organ).
    It is sampled about every 4 mm: the shell feeds a fit, not a mask.
    """
    from scipy import ndimage

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    step = np.maximum(1, np.rint(4.0 / spacing)).astype(int)  # about 4 mm: enough for a fit
    coarse = body[:: step[0], :: step[1], :: step[2]]
    inside = ndimage.distance_transform_edt(coarse, sampling=spacing * step)
    edge = float(spacing.max())
    shell = np.zeros(body.shape, bool)
    shell[:: step[0], :: step[1], :: step[2]] = (inside > edge) & (inside <= edge + depth_mm)
    return shell


def scan_measures(
    image_path: str | Path, label_path: str | Path | None, names: dict[int, str] | None,
    modality: str, annotated: list[str] | None = None, thickness: float | None = None,
) -> dict[str, float]:  # fmt: skip
    """Every measure of one scan (and its label; ``thickness``: SliceThickness, mm)."""
    from scipy import ndimage

    image = nib.load(str(image_path))
    label = nib.load(str(label_path)) if label_path else None
    out = grid_measures(image, label)
    if thickness:
        slice_axis = axis_along(image.affine, 2)
        out["thickness_ratio"] = float(thickness) / out[f"spacing_{'ijk'[slice_axis]}"]
    data = np.asanyarray(image.dataobj, dtype=np.float32)
    if data.ndim > 3:
        data = data[..., 0]
    body = body_mask(data)
    facts = body_facts(body, image.affine)
    out.update(intensity_measures(data, body, image.affine, modality, facts))
    tissue = np.zeros(data.shape, np.int64)
    if label is not None and names and out.get("label_grid_ok"):
        values = np.asanyarray(label.dataobj).astype(np.int64)
        out.update(label_measures(data, body, values, names, image.affine, annotated, facts))
        out.update(_cnr(data, body, values > 0))
        core = np.where(ndimage.binary_erosion(values > 0), values, 0)  # no partial volumes
        tissue = core if np.count_nonzero(core) >= 200 else values
    shell = body_shell(body, image.affine) & (tissue == 0)
    out["bias"] = bias_range(data, body, image.affine, np.where(shell, tissue.max() + 1, tissue))
    # each tissue source alone too: a strong field moves the body's edge (and so the shell)
    # in some contrasts, and some labels are too small or mixed to carry a fit
    out["bias_label"] = bias_range(data, body, image.affine, tissue)
    out["bias_shell"] = bias_range(data, body, image.affine, shell.astype(np.int64))
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}


def _cnr(data: np.ndarray, body: np.ndarray, labelled: np.ndarray) -> dict[str, float]:
    data, body, labelled = data[::2, ::2], body[::2, ::2], labelled[::2, ::2]
    inside, rest, air = data[labelled & body], data[body & ~labelled], data[~body]
    if not (inside.size and rest.size and air.size):
        return {}
    air_sd = 1.4826 * float(np.median(np.abs(air - np.median(air))))
    noise = math.sqrt(air_sd**2 + float(inside.var()) + float(rest.var()))
    return {"cnr": abs(float(inside.mean() - rest.mean())) / max(noise, 1e-9)}
