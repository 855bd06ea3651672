"""A compact image fingerprint that survives resampling, cropping, re-quantization and noise.

The image is averaged over cells of a grid fixed in world (scanner) coordinates: 12 mm
cubes aligned to the RAS origin. A resampled or cropped copy keeps its world coordinates
(NIfTI affines move with the grid), so it yields the same cells with nearly the same means
wherever the two overlap; noise averages out over a cell; a new intensity scale or
quantization is a (nearly) linear change that the correlation ignores. Two scans are
compared by the Pearson correlation of their cell means over the cells both cover.

Encoding (``bytes``, about 1-40 KB): int32 x 3 first cell index, int16 x 3 grid shape, then
one uint8 per cell: 0 where the cell is not fully inside the image, else 1..255 for the
cell's mean scaled between the image's smallest and largest cell mean.
"""

from __future__ import annotations

import struct

import numpy as np
from scipy import ndimage

CELL_MM = 12.0
BLOCK_MM = 4.0  # the image is first averaged to about this voxel size
MIN_OVERLAP = 64  # cells two fingerprints must share to be compared
THRESHOLD = 0.85
"""Correlation from which two scans are the same image (measured on the phantom world, real
MR volumes and volumes of photographs: docs/splits.md and docs/benchmarks.md)."""
_HEADER = struct.Struct("<3i3h")
_SUB = (np.arange(2) + 0.5) / 2  # 2 sample points per cell and axis


def fingerprint(data: np.ndarray, affine: np.ndarray) -> bytes:
    """The fingerprint of a 3D image with its voxel-to-world (RAS mm) affine."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    factor = np.maximum(1, np.floor(BLOCK_MM / zooms)).astype(int)
    n = np.array(data.shape[:3]) // factor
    if np.any(n < 2):
        return _encode(np.zeros(3, int), np.zeros((0, 0, 0), np.uint8))
    trimmed = np.asarray(data[: n[0] * factor[0], : n[1] * factor[1], : n[2] * factor[2]])
    small = (
        trimmed.astype(np.float32)
        .reshape(n[0], factor[0], n[1], factor[1], n[2], factor[2])
        .mean(axis=(1, 3, 5))
    )
    # small voxel i is the centre of original voxels i*f .. i*f+f-1
    to_small = np.diag([*factor.astype(float), 1.0])
    to_small[:3, 3] = (factor - 1) / 2
    small_affine = affine @ to_small
    corners = np.array([[i, j, k, 1] for i in (0, n[0] - 1) for j in (0, n[1] - 1)
                        for k in (0, n[2] - 1)], float)  # fmt: skip
    world = (small_affine @ corners.T)[:3]
    lo = np.floor(world.min(1) / CELL_MM).astype(int)
    hi = np.ceil(world.max(1) / CELL_MM).astype(int)
    shape = hi - lo
    # every cell's 27 sample points, in world mm, then in small-voxel coordinates
    cells = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    sub = np.stack(np.meshgrid(_SUB, _SUB, _SUB, indexing="ij"), -1).reshape(-1, 3)
    points = ((cells.reshape(-1, 1, 3) + lo + sub[None]) * CELL_MM).reshape(-1, 3)
    inverse = np.linalg.inv(small_affine)
    voxel = inverse[:3, :3] @ points.T + inverse[:3, 3:]
    inside = np.all((voxel >= 0) & (voxel <= (n - 1)[:, None]), axis=0)
    inside = inside.reshape(-1, len(sub)).all(1)
    means = np.zeros(len(inside))
    if inside.any():
        keep = np.repeat(inside, len(sub))
        samples = ndimage.map_coordinates(small, voxel[:, keep], order=1, mode="nearest")
        means[inside] = samples.reshape(-1, len(sub)).mean(1)
    values = np.zeros(len(inside), np.uint8)
    if inside.any():
        low, high = means[inside].min(), means[inside].max()
        scale = 254.0 / (high - low) if high > low else 0.0
        values[inside] = 1 + np.round((means[inside] - low) * scale).astype(np.uint8)
    return _encode(lo, values.reshape(tuple(shape)))


def _encode(start: np.ndarray, grid: np.ndarray) -> bytes:
    return _HEADER.pack(*(int(v) for v in start), *grid.shape) + grid.tobytes()


def decode(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(first cell index, float grid with NaN where a cell is not covered)."""
    values = _HEADER.unpack_from(blob)
    start, shape = np.array(values[:3]), tuple(values[3:])
    grid = np.frombuffer(blob, np.uint8, offset=_HEADER.size).reshape(shape).astype(np.float64)
    grid[grid == 0] = np.nan
    return start, grid


def prepare(blob: bytes | None) -> tuple[np.ndarray, np.ndarray] | None:
    """A fingerprint decoded for comparison: (first cell, local detail); None when empty."""
    if not blob:
        return None
    start, grid = decode(blob)
    if grid.size == 0:
        return None
    return start, local_detail(grid)


def correlate(a: tuple, b: tuple) -> tuple[float, int]:
    """Correlation of two prepared fingerprints over the cells both cover, and that count.

    Fewer than :data:`MIN_OVERLAP` shared cells, or a flat overlap, gives NaN.
    """
    (sa, ga), (sb, gb) = a, b
    lo = np.maximum(sa, sb)
    hi = np.minimum(sa + ga.shape, sb + gb.shape)
    if np.any(hi <= lo):
        return float("nan"), 0
    xa = ga[tuple(slice(low - s, h - s) for low, h, s in zip(lo, hi, sa, strict=True))]
    xb = gb[tuple(slice(low - s, h - s) for low, h, s in zip(lo, hi, sb, strict=True))]
    both = ~np.isnan(xa) & ~np.isnan(xb)
    count = int(both.sum())
    if count < MIN_OVERLAP:
        return float("nan"), count
    x, y = xa[both], xb[both]
    if x.std() == 0 or y.std() == 0:
        return float("nan"), count
    return float(np.corrcoef(x, y)[0, 1]), count


def local_detail(grid: np.ndarray) -> np.ndarray:
    """Each cell minus the mean of its 3x3x3 neighbourhood (NaN unless all are covered).

    The body outline and the broad intensity layout are alike in every subject and would
    dominate a plain correlation; what is left is the anatomy that tells subjects apart,
    and a copy keeps it exactly where both cover the neighbourhood.
    """
    if min(grid.shape, default=0) < 3:
        return np.full(grid.shape, np.nan)
    filled = np.nan_to_num(grid)
    valid = (~np.isnan(grid)).astype(np.float64)
    box = np.ones((3, 3, 3))
    total = ndimage.convolve(filled, box, mode="constant")
    count = ndimage.convolve(valid, box, mode="constant")
    out = grid - total / np.maximum(count, 1)
    out[count < 27] = np.nan
    return out
