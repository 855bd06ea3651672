"""Segmentation metrics: Dice, NSD, HD95, ASSD and volumes, spacing-aware and exact.

Two surface definitions, because the reference libraries disagree (docs/evaluation.md):

- ``surface="surfel"`` (default) equals DeepMind's ``surface-distance``: the surface is
  made of surfels on the voxel-corner grid, one per 2x2x2 neighbourhood that is neither
  empty nor full, each weighted by the area of its marching-cubes patch. Percentiles and
  NSD are area-weighted. (MONAI's ``use_subvoxels=True`` NSD is the same definition.)
- ``surface="voxel"`` equals MONAI's default: the surface is the mask's boundary voxels
  (the mask minus its 6-connected erosion), every voxel counting once; HD95 is the
  linearly interpolated 95th percentile.

HD95 is the larger of the two directed 95th percentiles (``hd="max"``, as MONAI and
DeepMind) or the 95th percentile of both directions pooled (``hd="pooled"``, as medpy).

Distances come from a KD-tree over the two surfaces' points (``pykdtree``), the
exact Euclidean distance a distance transform would give at those points, without a
dense transform of the bounding box: a false-positive island far away costs its own
surface points, not the volume between.

Empty masks are defined, never scored as a success by accident: with one mask empty,
Dice and NSD are 0 and the distances are the image diagonal (``missing_distance``); with
both empty the class is absent and its scores are NaN (``both_empty="nan"``) unless asked
to count it as perfect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from xds.schemas.errors import EvaluationError

SURFACES = ("surfel", "voxel")
HD_MODES = ("max", "pooled")
BOTH_EMPTY = ("nan", "perfect")
MISSING_DISTANCE = ("diagonal", "inf", "nan")
METRIC_COLUMNS = (
    "dice", "nsd", "hd95_mm", "assd_mm", "vol_pred_ml", "vol_ref_ml", "vol_diff_ml",
    "empty_pred", "empty_ref",
)  # fmt: skip

_OFFSETS = tuple(np.ndindex(2, 2, 2))  # corner o of a 2x2x2 cube has bit 4*o0 + 2*o1 + o2


@lru_cache(maxsize=1)
def _surfel_normals() -> tuple[np.ndarray, np.ndarray]:
    """Per triangle of every 2x2x2 code's marching-cubes patch: its code and area vector.

    The patches come from scikit-image's marching cubes (Lorensen tables) on the unit cube.
    A configuration with more than four corners inside takes its complement's patch, the
    same surface, which sidesteps the classic table's ambiguous five-corner cases.
    """
    from skimage.measure import marching_cubes

    codes, normals = [], []
    for code in range(1, 255):
        inside = code if bin(code).count("1") <= 4 else 255 - code
        cube = np.zeros((2, 2, 2), np.float32)
        for bit, offset in enumerate(_OFFSETS):
            cube[offset] = (inside >> (7 - bit)) & 1
        verts, faces, _, _ = marching_cubes(cube, 0.5, method="lorensen")
        tri = verts.astype(np.float64)[faces]
        normals.append(0.5 * np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]))
        codes.append(np.full(len(faces), code))
    return np.concatenate(codes), np.concatenate(normals)


@lru_cache(maxsize=256)
def surfel_areas(spacing: tuple[float, float, float]) -> np.ndarray:
    """Area (mm²) of the surface patch of each of the 256 2x2x2 neighbourhood codes.

    Scaling the axes by ``spacing`` scales a triangle's area vector by (s1·s2, s0·s2, s0·s1);
    the table equals DeepMind's neighbour-code table (a test checks it).
    """
    codes, normals = _surfel_normals()
    s0, s1, s2 = spacing
    scaled = normals * np.array([s1 * s2, s0 * s2, s0 * s1])
    return np.bincount(codes, weights=np.linalg.norm(scaled, axis=1), minlength=256)


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest slices holding every nonzero voxel of a 3D array; None when all zero."""
    plane = mask.any(axis=2)  # one pass over the volume, then over the box only
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    if len(rows) == 0:
        return None
    r, c = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    depth = np.flatnonzero(mask[r, c].any(axis=(0, 1)))
    return r, c, slice(depth[0], depth[-1] + 1)


def _borders(padded: np.ndarray, kind: str, spacing: np.ndarray):
    """Surface elements of a mask padded by one False voxel on every side.

    Returns (border, weights): a boolean grid of surface elements and their weights on
    that grid (None for ``voxel``: all 1). Grid index i is crop voxel i (``voxel``), or the
    corner before it (``surfel``), so both kinds map to the volume by the crop's start.
    """
    if kind == "voxel":
        core = padded[1:-1, 1:-1, 1:-1]
        interior = core.copy()
        for axis in range(3):
            for lo in (0, 2):
                sl = [slice(1, -1)] * 3
                sl[axis] = slice(lo, lo + core.shape[axis])
                interior &= padded[tuple(sl)]
        return core & ~interior, None
    if kind != "surfel":
        raise EvaluationError(f"surface must be one of {SURFACES}, not {kind!r}")
    n = np.array(padded.shape) - 1
    code = np.zeros(tuple(n), np.uint8)
    for bit, (a, b, c) in enumerate(_OFFSETS):
        code |= padded[a : a + n[0], b : b + n[1], c : c + n[2]].view(np.uint8) << (7 - bit)
    border = (code != 0) & (code != 255)
    # grid index i spans padded voxels i..i+1: the corner before crop voxel i
    return border, surfel_areas(tuple(float(s) for s in spacing))[code]


def _nearest(targets: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Euclidean distance from each query point to its nearest target point (exact).

    pykdtree's OpenMP queries measured 2-2.7x faster than scipy's cKDTree here on
    surface point clouds, with identical distances.
    """
    from pykdtree.kdtree import KDTree

    tree = KDTree(np.ascontiguousarray(targets, np.float64), leafsize=16)
    return tree.query(np.ascontiguousarray(queries, np.float64), k=1)[0]


def _surface_distances(pred, ref, boxes, spacing: np.ndarray, kind: str):
    """Both directed distance sets and weights of two non-empty masks.

    Each mask's surface is found inside its own bounding box (a far false-positive island
    costs its own box, not the space between). Elements on both surfaces are 0 mm apart
    without a query; only the rest is looked up in the other surface's KD-tree.

    Returns:
        ``[(ref -> pred distances, ref weights), (pred -> ref distances, pred weights)]``.
    """
    grids = []
    for mask, box in ((ref, boxes[1]), (pred, boxes[0])):
        border, weights = _borders(np.pad(mask[box], 1), kind, spacing)
        idx = np.argwhere(border)
        w = np.ones(len(idx)) if weights is None else weights[border]
        start = np.array([s.start for s in box])
        grids.append((border, start, idx + start, w))
    out = []
    for (_, _, mine, w), (other_border, other_start, other, _) in (grids, grids[::-1]):
        # a surface element of both masks sits at the same grid point: 0 mm, no query
        local = mine - other_start
        inside = np.all((local >= 0) & (local < other_border.shape), axis=1)
        shared = np.zeros(len(mine), bool)
        shared[inside] = other_border[tuple(local[inside].T)]
        dist = np.zeros(len(mine))
        if (~shared).any():
            dist[~shared] = _nearest(other * spacing, mine[~shared] * spacing)
        out.append((dist, w))
    return out


def _percentile(d: np.ndarray, w: np.ndarray, q: float, kind: str) -> float:
    if len(d) == 0:
        return math.nan
    if kind == "voxel":
        return float(np.percentile(d, q))
    order = np.lexsort((w, d))
    cum = np.cumsum(w[order]) / w.sum()
    return float(d[order][min(int(np.searchsorted(cum, q / 100.0)), len(d) - 1)])


def surface_metrics(
    d_ref: np.ndarray,
    w_ref: np.ndarray,
    d_pred: np.ndarray,
    w_pred: np.ndarray,
    *,
    tau: float = 2.0,
    kind: str = "surfel",
    hd: str = "max",
    percentile: float = 95.0,
) -> dict[str, float]:
    """NSD at ``tau`` mm, HD at ``percentile`` and ASSD from the two directed distance sets.

    Args:
        d_ref: distance (mm) of each reference surface element to the prediction's surface.
        w_ref: their weights (areas for surfels, 1 for voxels).
        d_pred: distance of each predicted surface element to the reference surface.
        w_pred: their weights.
        tau: NSD tolerance (mm).
        kind: ``surfel`` (area-weighted percentile) or ``voxel`` (linear interpolation).
        hd: ``max`` of the directed percentiles, or ``pooled``.
        percentile: 95 for HD95.
    """
    if hd not in HD_MODES:
        raise EvaluationError(f"hd must be one of {HD_MODES}, not {hd!r}")
    total = w_ref.sum() + w_pred.sum()
    nsd = (w_ref[d_ref <= tau].sum() + w_pred[d_pred <= tau].sum()) / total
    assd = (np.dot(d_ref, w_ref) + np.dot(d_pred, w_pred)) / total
    if hd == "max":
        hd95 = max(
            _percentile(d_ref, w_ref, percentile, kind),
            _percentile(d_pred, w_pred, percentile, kind),
        )
    else:
        both_d, both_w = np.concatenate([d_ref, d_pred]), np.concatenate([w_ref, w_pred])
        hd95 = _percentile(both_d, both_w, percentile, kind)
    return {"nsd": float(nsd), "hd95_mm": hd95, "assd_mm": float(assd)}


def compare_masks(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    *,
    tau: float = 2.0,
    surface_kind: str = "surfel",
    hd: str = "max",
    both_empty: str = "nan",
    missing_distance: str = "diagonal",
    boxes: tuple[tuple[slice, ...] | None, tuple[slice, ...] | None] | None = None,
    image_shape: Sequence[int] | None = None,
) -> dict[str, float | bool]:
    """Every metric of one binary prediction against its reference.

    Args:
        pred: boolean 3D prediction.
        ref: boolean 3D reference, same shape.
        spacing: voxel size (mm) along the array axes; anisotropy is honoured.
        tau: NSD tolerance (mm).
        surface_kind: ``surfel`` (DeepMind's definition) or ``voxel`` (MONAI's default).
        hd: ``max`` of the directed percentiles, or ``pooled``.
        both_empty: ``nan`` (class absent: not scored) or ``perfect`` (Dice 1, NSD 1, 0 mm).
        missing_distance: the HD95/ASSD of a case where exactly one mask is empty:
            ``diagonal`` (the image diagonal, mm: the worst finite value), ``inf`` or ``nan``.
        boxes: (pred, ref) bounding boxes when already known.
        image_shape: the whole image's shape when ``pred``/``ref`` are crops of it (for
            the diagonal).

    Returns:
        ``dice``, ``nsd``, ``hd95_mm``, ``assd_mm``, ``vol_pred_ml``, ``vol_ref_ml``,
        ``vol_diff_ml`` (pred - ref), ``empty_pred``, ``empty_ref``.

    Raises:
        EvaluationError: shapes differ or an option is unknown.
    """
    if pred.shape != ref.shape:
        raise EvaluationError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    if both_empty not in BOTH_EMPTY or missing_distance not in MISSING_DISTANCE:
        raise EvaluationError(
            f"both_empty must be one of {BOTH_EMPTY}, missing_distance one of {MISSING_DISTANCE}"
        )
    spacing = np.asarray(spacing, np.float64)
    box_p, box_r = boxes if boxes is not None else (bounding_box(pred), bounding_box(ref))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    n_pred = int(np.count_nonzero(pred[box_p])) if box_p else 0
    n_ref = int(np.count_nonzero(ref[box_r])) if box_r else 0
    row: dict[str, float | bool] = {
        "vol_pred_ml": n_pred * voxel_ml,
        "vol_ref_ml": n_ref * voxel_ml,
        "vol_diff_ml": (n_pred - n_ref) * voxel_ml,
        "empty_pred": n_pred == 0,
        "empty_ref": n_ref == 0,
    }
    if n_pred == 0 and n_ref == 0:
        perfect = both_empty == "perfect"
        score, dist = (1.0, 0.0) if perfect else (math.nan, math.nan)
        return {**row, "dice": score, "nsd": score, "hd95_mm": dist, "assd_mm": dist}
    if n_pred == 0 or n_ref == 0:
        worst = {
            "diagonal": float(np.linalg.norm(np.array(image_shape or ref.shape) * spacing)),
            "inf": math.inf,
            "nan": math.nan,
        }[missing_distance]
        return {**row, "dice": 0.0, "nsd": 0.0, "hd95_mm": worst, "assd_mm": worst}
    overlap = _intersection(pred, ref, box_p, box_r)
    row["dice"] = 2.0 * overlap / (n_pred + n_ref)
    (d_ref, w_ref), (d_pred, w_pred) = _surface_distances(
        pred, ref, (box_p, box_r), spacing, surface_kind
    )
    distances = surface_metrics(d_ref, w_ref, d_pred, w_pred, tau=tau, kind=surface_kind, hd=hd)
    return {**row, **distances}


def _intersection(pred, ref, box_p, box_r) -> int:
    lo = [max(a.start, b.start) for a, b in zip(box_p, box_r, strict=True)]
    hi = [min(a.stop, b.stop) for a, b in zip(box_p, box_r, strict=True)]
    if any(h <= low for low, h in zip(lo, hi, strict=True)):
        return 0
    box = tuple(slice(low, h) for low, h in zip(lo, hi, strict=True))
    return int(np.count_nonzero(pred[box] & ref[box]))


def compare_label_maps(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    classes: Sequence[int],
    **options,
) -> dict[int, dict[str, float | bool]]:
    """Metrics per class value of two integer label maps (one pass finds every box).

    ``options`` are those of :func:`compare_masks`.
    """
    top = max(classes, default=0)
    boxes_p = _boxes(pred, top)
    boxes_r = _boxes(ref, top)
    out = {}
    for k in classes:
        bp, br = boxes_p[k - 1], boxes_r[k - 1]
        # Masks only inside the union box: the rest of the volume is False for both.
        union = _union_box(bp, br)
        if union is None:
            mp = mr = np.zeros((1, 1, 1), bool)
            sub_p = sub_r = None
        else:
            mp, mr = pred[union] == k, ref[union] == k
            sub_p, sub_r = _shift(bp, union), _shift(br, union)
        metrics = compare_masks(
            mp, mr, spacing, boxes=(sub_p, sub_r), image_shape=ref.shape, **options
        )
        out[k] = metrics
    return out


def _boxes(labels: np.ndarray, top: int) -> list[tuple[slice, ...] | None]:
    """Bounding box of each label 1..top (None when absent).

    ``find_objects`` visits every voxel (about 6 ns each here); it runs only inside the
    foreground's box, found first by cheap projections.
    """
    if top == 0:
        return []
    fg = bounding_box(labels)
    if fg is None:
        return [None] * top
    arr = labels[fg] if labels.dtype.kind in "iu" else labels[fg].astype(np.int64)
    found = ndimage.find_objects(arr, max_label=top)
    found = [None if b is None else _shift(b, fg, sign=-1) for b in found]
    return found + [None] * (top - len(found))


def _union_box(a, b) -> tuple[slice, ...] | None:
    if a is None or b is None:
        return a if b is None else b
    return tuple(
        slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True)
    )


def _shift(box, within, sign: int = 1) -> tuple[slice, ...] | None:
    """``box`` relative to ``within``'s start (sign -1: from relative back to absolute)."""
    if box is None:
        return None
    return tuple(
        slice(s.start - sign * w.start, s.stop - sign * w.start)
        for s, w in zip(box, within, strict=True)
    )


@dataclass(frozen=True)
class SetDice:
    """Set Dice of Pancakes: the best (map, label) pair's mean Dice over a set's images."""

    value: float
    map_index: int
    label: int
    per_image: tuple[float, ...]


def set_dice(
    predictions: Sequence[np.ndarray], references: Sequence[np.ndarray], exclude=(0,)
) -> SetDice:
    """Set Dice = max over (map m, label k) of the mean over images s of Dice(ŷ[s,m]==k, y[s]).

    Args:
        predictions: per image, an integer label map (spatial) or a stack of M maps
            (M x spatial), one per protocol.
        references: per image, the boolean ground truth of one structure.
        exclude: labels never matched (background).

    Raises:
        EvaluationError: empty set, mismatched shapes or map counts.
    """
    if not predictions or len(predictions) != len(references):
        raise EvaluationError("set_dice needs one prediction per reference, at least one")
    stacks = [
        p if p.ndim == r.ndim + 1 else p[None] for p, r in zip(predictions, references, strict=True)
    ]
    n_maps = {s.shape[0] for s in stacks}
    if len(n_maps) != 1:
        raise EvaluationError(f"every image needs the same number of maps, got {sorted(n_maps)}")
    top = int(max(s.max() for s in stacks)) + 1
    scores = np.zeros((len(stacks), n_maps.pop(), top))
    for i, (stack, ref) in enumerate(zip(stacks, references, strict=True)):
        if stack.shape[1:] != ref.shape:
            raise EvaluationError(
                f"image {i}: prediction {stack.shape[1:]} != reference {ref.shape}"
            )
        ref = ref.astype(bool)
        n_ref = np.count_nonzero(ref)
        for m, labels in enumerate(stack):
            flat = labels.astype(np.int64, copy=False)
            inter = np.bincount(flat[ref], minlength=top)
            size = np.bincount(flat.ravel(), minlength=top)
            denom = size + n_ref
            scores[i, m] = np.divide(2.0 * inter, denom, out=np.zeros(top), where=denom > 0)
    mean = scores.mean(axis=0)
    for k in exclude:
        if 0 <= k < top:
            mean[:, k] = -1.0
    m, k = np.unravel_index(int(np.argmax(mean)), mean.shape)
    return SetDice(float(mean[m, k]), int(m), int(k), tuple(float(v) for v in scores[:, m, k]))
